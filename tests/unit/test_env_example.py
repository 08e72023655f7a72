"""`.env.example` documents every setting, with values the settings accept."""

from __future__ import annotations

from pathlib import Path

import pytest

from votes_app.config import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
# Read by other programs than the application's settings: the tools' namespaces, Flower.
OTHERS = {"FLOWER_BASIC_AUTH"} | {
    f"{tool}_{url}"
    for tool in ("DEMO", "BENCH", "FAULTS")
    for url in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")
}


def example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def test_every_setting_is_documented() -> None:
    assert {name.upper() for name in Settings.model_fields} <= set(example())


def test_nothing_documented_is_unknown() -> None:
    unknown = set(example()) - {name.upper() for name in Settings.model_fields} - OTHERS
    assert not unknown


def test_documented_values_are_accepted_and_are_the_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of a developer's
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)  # nor the test suite's own values
    defaults = Settings()
    values = {k: v for k, v in example().items() if k.lower() in Settings.model_fields}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    documented = Settings()
    assert documented == defaults
