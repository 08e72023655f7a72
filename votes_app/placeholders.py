"""Placeholder passwords: the examples' `change-me` and the obvious ones, refused where secrets
are read (the settings at start-up, `votes preflight` before the compose stack starts).

Each function says why a secret must not be used, naming the variable and never the value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

# Lower case. The examples' own (.env.example, deploy/README.md) and what anyone guessing tries
# first: a deployment that kept one lets in whoever has read the examples.
PLACEHOLDERS = frozenset(
    {
        "change-me",
        "changeme",
        "change_me",
        "changeit",
        "password",
        "passw0rd",
        "secret",
        "admin",
        "guest",
        "postgres",
        "rabbitmq",
        "redis",
        "grafana",
        "flower",
        "votes",
        "root",
        "default",
        "example",
        "test",
        "123456",
        "12345678",
    }
)
# RabbitMQ's default user, which RabbitMQ itself admits from the loopback interface only
# (`loopback_users`): the development default, CELERY_BROKER_URL's.
LOCAL_DEFAULT = ("guest", "guest")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
ADVICE = "set one of your own (for example `openssl rand -hex 24`)"


def password_problem(password: str, *, user: str = "") -> str | None:
    """Why `password` is not a password (None when nothing is wrong with it)."""
    lowered = password.strip().lower()
    if lowered in PLACEHOLDERS or "change-me" in lowered or "changeme" in lowered:
        return "holds a placeholder password"
    if user and lowered == user.lower():
        return "holds its user's name as the password"
    return None


def url_problem(url: str) -> str | None:
    """Why the password in `url` is not one; a URL without a password (PostgreSQL's trust or
    peer authentication, a Redis without AUTH) has none to refuse."""
    try:
        parts = urlsplit(url)
        password, user, host = parts.password, parts.username, parts.hostname
    except ValueError:  # a port that is not a number: the URL's user will say so
        return None
    if not password:
        return None
    password, user = unquote(password), unquote(user or "")
    if (user, password) == LOCAL_DEFAULT and host in LOOPBACK:
        return None
    return password_problem(password, user=user)


def basic_auth_problem(pairs: str) -> str | None:
    """Why one of `user:password[,user:password...]` (Flower's --basic-auth) is refused."""
    for number, pair in enumerate(pairs.split(","), start=1):
        user, _, password = pair.strip().partition(":")
        if problem := password_problem(password, user=user):
            # Not the user: with its name as the password, that would print the password.
            return f"{problem} (pair {number})"
    return None


def secret_problem(name: str, value: str) -> str | None:
    """Why the variable `name` (a URL if its name ends in _URL, `user:password` pairs if in
    _BASIC_AUTH, a password otherwise) holds no real secret; the message names it alone."""
    if name.endswith("_URL"):
        problem = url_problem(value)
    elif name.endswith("_BASIC_AUTH"):
        problem = basic_auth_problem(value)
    else:
        problem = password_problem(value)
    return None if problem is None else f"{name} {problem}: {ADVICE}"


def is_secret_variable(name: str) -> bool:
    return name.endswith(("_URL", "_PASSWORD", "_BASIC_AUTH"))


def environment_problems(environment: Mapping[str, str]) -> list[str]:
    """What is wrong with the secrets among `environment`'s variables: placeholders, and one
    password given to two variables (two roles that should hold a key each)."""
    secrets = {name: value for name, value in environment.items() if is_secret_variable(name)}
    problems = [
        problem
        for name, value in sorted(secrets.items())
        if (problem := secret_problem(name, value)) is not None
    ]
    problems += shared_passwords(
        (name, value) for name, value in secrets.items() if name.endswith("_PASSWORD") and value
    )
    return problems


def shared_passwords(passwords: Iterable[tuple[str, str]]) -> list[str]:
    holders: dict[str, list[str]] = {}
    for name, value in passwords:
        holders.setdefault(value, []).append(name)
    return [
        f"{' and '.join(sorted(names))} have the same password: give each its own"
        for names in holders.values()
        if len(names) > 1
    ]
