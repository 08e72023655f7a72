"""`votes preflight` refuses placeholder passwords before the stack starts, and the compose
stack runs it before every service that holds a secret."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from votes_app.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# The variables compose reads (${NAME...}) that hold a secret.
SECRET_VARIABLE = re.compile(r"\$\{(\w*(?:PASSWORD|SECRET|AUTH)\w*)")
GOOD = {
    "RABBITMQ_PASSWORD": "3b1f0c6e9a2d",
    "POSTGRES_PASSWORD": "c7e4a1f09b3d",
    "FLOWER_BASIC_AUTH": "operator:5d8a2e7c1f4b,auditor:9e0b3c6a2d7f",
    "REDIS_URL": "redis://:a4c9e2b7d1f0@redis:6379/0",
}


def preflight(environment: dict[str, str]) -> tuple[int, str]:
    # Only these variables: the test suite's own URLs (guest on 127.0.0.1) stay out.
    result = CliRunner().invoke(main, ["preflight"], env=environment, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(autouse=True)
def no_other_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.endswith(("_URL", "_PASSWORD", "_BASIC_AUTH")):
            monkeypatch.delenv(name)


def test_real_secrets_pass() -> None:
    code, output = preflight(GOOD)

    assert code == 0, output
    assert "4 secrets checked, none refused" in output
    assert not any(value in output for value in GOOD.values())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RABBITMQ_PASSWORD", "change-me"),
        ("GRAFANA_ADMIN_PASSWORD", "Admin"),
        ("FLOWER_BASIC_AUTH", "operator:5d8a2e7c1f4b,admin:change-me-please"),
        ("FLOWER_BASIC_AUTH", "operator:operator"),
        ("REDIS_URL", "redis://:changeme@redis:6379/0"),
        ("CELERY_BROKER_URL", "amqp://guest:guest@rabbitmq:5672/votes"),
    ],
)
def test_a_placeholder_is_refused_by_name_never_by_value(name: str, value: str) -> None:
    code, output = preflight(GOOD | {name: value})

    assert code == 1
    [line] = output.splitlines()
    assert line.startswith(f"refused: {name} ")
    assert value.rsplit(":", 1)[-1].split("@")[0] not in line


def test_two_variables_with_one_password_are_refused() -> None:
    code, output = preflight(GOOD | {"APP_DATABASE_PASSWORD": GOOD["POSTGRES_PASSWORD"]})

    assert code == 1
    assert "APP_DATABASE_PASSWORD and POSTGRES_PASSWORD have the same password" in output


# --- the compose stack ---------------------------------------------------------------------


def waits_for(name: str) -> set[str]:
    """The services `name` waits for, directly or through the ones it waits for."""
    found: set[str] = set()
    todo = [name]
    while todo:
        for dependency in SERVICES[todo.pop()].get("depends_on", {}):
            if dependency not in found:
                found.add(dependency)
                todo.append(dependency)
    return found


def secrets_read(service: dict[str, Any]) -> set[str]:
    return set(SECRET_VARIABLE.findall(yaml.safe_dump(service)))


def test_preflight_checks_every_secret_of_the_stack() -> None:
    checked = set(SERVICES["preflight"]["environment"])
    everywhere = set(SECRET_VARIABLE.findall((ROOT / "docker-compose.yml").read_text()))

    assert everywhere, "the pattern finds the stack's secrets"
    assert everywhere <= checked
    assert SERVICES["preflight"]["entrypoint"] == ["votes", "preflight"]
    assert SERVICES["preflight"]["restart"] == "no"


def test_every_service_holding_a_secret_waits_for_preflight() -> None:
    holders = {name for name, service in SERVICES.items() if secrets_read(service)} - {"preflight"}

    assert {"rabbitmq", "redis", "postgres", "grafana", "flower"} <= holders
    assert {name for name in holders if "preflight" not in waits_for(name)} == set()
    for name, service in SERVICES.items():
        rule = service.get("depends_on", {}).get("preflight")
        assert rule is None or rule["condition"] == "service_completed_successfully", name
