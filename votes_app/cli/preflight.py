"""`votes preflight`: refuse placeholder passwords before a stack starts, the other services'
included (RabbitMQ, Redis, PostgreSQL, Grafana, Flower), which would take any password."""

from __future__ import annotations

import os
import sys

import click

from votes_app.placeholders import environment_problems, is_secret_variable


@click.command()
def preflight() -> None:
    """Check every secret of the environment (*_PASSWORD, *_URL, *_BASIC_AUTH variables):
    none may be a placeholder (`change-me` and the like, a user's name as its password), and
    no two *_PASSWORD variables may share a password.

    Names each variable that fails, never its value; exit code 1 when any fails. The compose
    stack's one-shot `preflight` service runs it before anything that holds a secret starts.
    """
    checked = sorted(name for name in os.environ if is_secret_variable(name))
    problems = environment_problems(os.environ)
    for problem in problems:
        click.echo(f"refused: {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{len(checked)} secrets checked, none refused: {', '.join(checked) or '-'}")
