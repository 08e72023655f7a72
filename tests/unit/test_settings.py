"""Settings: defaults, overrides from the environment and `.env`, bad values, masked secrets."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from votes_app.config import Settings

ENV_NAMES = [name.upper() for name in Settings.model_fields]
SECRET_URLS = {
    "CELERY_BROKER_URL": ("amqp://votes:br0ker-pw-51@rabbit.example:5672/prod", "br0ker-pw-51"),
    "REDIS_URL": ("redis://:r3dis-pw-52@redis.example:6379/2", "r3dis-pw-52"),
    "DATABASE_URL": ("postgresql+psycopg2://votes:pg-pw-53@db.example:5432/votes", "pg-pw-53"),
}


@pytest.fixture(autouse=True)
def bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No VOTES knob in the environment (tests/conftest.py sets some), no `.env` around."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    # `.env` is read from the working directory: an empty one keeps a developer's out.
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_work_on_a_developer_machine() -> None:
    settings = Settings()

    broker = urlsplit(settings.broker_url)
    redis = urlsplit(settings.redis_url.get_secret_value())
    database = urlsplit(settings.database_url.get_secret_value())
    assert (broker.scheme, broker.hostname, broker.port) == ("amqp", "127.0.0.1", 5672)
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "127.0.0.1", 6379)
    assert (database.scheme, database.hostname, database.port) == (
        "postgresql+psycopg2",
        "127.0.0.1",
        5432,
    )
    assert settings.flush_interval_seconds == 1.0
    assert settings.claim_ttl_seconds == 86_400
    # Per-choice series tell a lone vote's choice: withheld unless an operator says otherwise.
    assert settings.export_choice_metrics is False
    assert (settings.validate_batch_size, settings.validate_batch_ms) == (100, 50)
    # Room for a full batch held unacknowledged while the next one fills.
    assert settings.worker_prefetch_multiplier == 200
    assert settings.worker_prefetch_multiplier >= settings.validate_batch_size
    assert settings.max_clock_skew_seconds == 300
    assert settings.broker_confirm_publish is True


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    default = Settings()
    monkeypatch.setenv("FLUSH_INTERVAL_SECONDS", "2.5")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "17")
    monkeypatch.setenv("BROKER_CONFIRM_PUBLISH", "false")
    monkeypatch.setenv("CLAIM_TTL_SECONDS", "3600")
    monkeypatch.setenv("EXPORT_CHOICE_METRICS", "true")
    monkeypatch.setenv("VALIDATE_BATCH_SIZE", "250")
    monkeypatch.setenv("VALIDATE_BATCH_MS", "20")
    monkeypatch.setenv("WORKER_PREFETCH_MULTIPLIER", "300")
    for name, (url, _) in SECRET_URLS.items():
        monkeypatch.setenv(name, url)

    settings = Settings()

    assert settings.flush_interval_seconds == 2.5 != default.flush_interval_seconds
    assert settings.database_pool_size == 17 != default.database_pool_size
    assert settings.broker_confirm_publish is False
    assert settings.claim_ttl_seconds == 3600 != default.claim_ttl_seconds
    assert settings.export_choice_metrics is True is not default.export_choice_metrics
    assert settings.validate_batch_size == 250 != default.validate_batch_size
    assert settings.validate_batch_ms == 20 != default.validate_batch_ms
    assert settings.worker_prefetch_multiplier == 300 != default.worker_prefetch_multiplier
    assert settings.broker_url == SECRET_URLS["CELERY_BROKER_URL"][0]
    assert settings.redis_url.get_secret_value() == SECRET_URLS["REDIS_URL"][0]
    assert settings.database_url.get_secret_value() == SECRET_URLS["DATABASE_URL"][0]


def test_dot_env_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, bare_environment: Path
) -> None:
    (bare_environment / ".env").write_text("FLUSH_INTERVAL_SECONDS=3\nMAX_RETRIES=7\n")
    monkeypatch.setenv("MAX_RETRIES", "9")

    settings = Settings()

    assert settings.flush_interval_seconds == 3.0
    assert settings.max_retries == 9


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FLUSH_INTERVAL_SECONDS", "0"),
        ("FLUSH_INTERVAL_SECONDS", "-1"),
        ("FLUSH_INTERVAL_SECONDS", "abc"),
        ("FLUSH_INTERVAL_SECONDS", "nan"),
        ("DATABASE_POOL_SIZE", "0"),
        ("DATABASE_POOL_SIZE", "2.5"),
        ("WORKER_PREFETCH_MULTIPLIER", "0"),
        ("CLAIM_TTL_SECONDS", "59"),
        ("CLAIM_TTL_SECONDS", "1.5"),
        ("EXPORT_CHOICE_METRICS", "sometimes"),
        ("VALIDATE_BATCH_SIZE", "0"),
        ("VALIDATE_BATCH_SIZE", "10001"),
        ("VALIDATE_BATCH_MS", "0"),
        ("MAX_CLOCK_SKEW_SECONDS", "-1"),
        ("RETRY_BACKOFF_MAX_SECONDS", "0"),
        ("MAX_RETRIES", "-1"),
        ("ROLL_MISSING_RETRY_SECONDS", "0"),
        ("BROKER_CONFIRM_PUBLISH", "maybe"),
    ],
)
def test_bad_value_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    refused(name)


def refused(name: str) -> str:
    """The one error of Settings() from the environment, which must be `name`'s: its text."""
    with pytest.raises(ValidationError) as caught:
        Settings()

    assert [error["loc"] for error in caught.value.errors()] == [(name.lower(),)]
    return str(caught.value)


def test_settings_are_frozen() -> None:
    settings = Settings()

    with pytest.raises(ValidationError):
        settings.flush_interval_seconds = 5.0  # type: ignore[misc]


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (url, _) in SECRET_URLS.items():
        monkeypatch.setenv(name, url)

    settings = Settings()

    shown = [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
    for _, password in SECRET_URLS.values():
        for text in shown:
            assert password not in text
    # The secrets are there, only hidden.
    assert SECRET_URLS["DATABASE_URL"][1] in settings.database_url.get_secret_value()


def test_validation_error_does_not_show_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, (url, _) in SECRET_URLS.items():
        monkeypatch.setenv(name, url)
    monkeypatch.setenv("DATABASE_POOL_SIZE", "0")

    with pytest.raises(ValidationError) as caught:
        Settings()

    for _, password in SECRET_URLS.values():
        assert password not in str(caught.value)


# --- found while testing ------------------------------------------------------------------


def test_infinite_flush_interval_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUSH_INTERVAL_SECONDS", "inf")

    with pytest.raises(ValidationError):
        Settings()


# --- placeholder passwords ----------------------------------------------------------------

PLACEHOLDER_SETTINGS = [
    ("DATABASE_URL", "postgresql+psycopg2://votes_app:change-me@postgres:5432/votes"),
    ("OWNER_DATABASE_URL", "postgresql+psycopg2://votes:CHANGEME@postgres:5432/votes"),
    ("READER_DATABASE_URL", "postgresql+psycopg2://votes_reader:votes_reader@db:5432/votes"),
    ("CELERY_BROKER_URL", "amqp://guest:guest@rabbitmq:5672/votes"),
    ("CELERY_BROKER_URL", "amqp://votes:Passw0rd@rabbitmq:5672/votes"),
    ("REDIS_URL", "redis://:change-me@redis:6379/0"),
    ("APP_DATABASE_PASSWORD", "change-me"),
    ("READER_DATABASE_PASSWORD", "Secret"),
]


@pytest.mark.parametrize(("name", "value"), PLACEHOLDER_SETTINGS)
def test_a_placeholder_password_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    shown = refused(name)

    assert f"{name} holds " in shown
    assert value.rsplit("@", 1)[0].rsplit(":", 1)[-1] not in shown


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # RabbitMQ's guest, which RabbitMQ admits from the loopback interface only.
        ("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
        ("CELERY_BROKER_URL", "amqp://guest:guest@[::1]:5672/votes_test"),
        # PostgreSQL's trust or peer authentication, a Redis without AUTH: no password.
        ("OWNER_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/votes"),
        ("REDIS_URL", "redis://127.0.0.1:6379/15"),
        ("DATABASE_URL", "postgresql+psycopg2://votes_app:Xq3v9LzR7t@db.example:5432/votes"),
        ("APP_DATABASE_PASSWORD", "8f1c2a9e4b7d6035"),
    ],
)
def test_development_defaults_and_real_passwords_are_accepted(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    assert getattr(Settings(), name.lower()).get_secret_value() == value
