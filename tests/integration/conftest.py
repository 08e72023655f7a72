"""Fixtures for tests against the real PostgreSQL, Redis and RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from tests.conftest import TEST_OWNER_DATABASE_URL
from tests.support import (
    Beat,
    Worker,
    migrate_fresh_database,
    reset_broker,
    reset_database,
    reset_redis,
)


@pytest.fixture(scope="session")
def fresh_database() -> None:
    """Drop and re-create the test database once, then build it with `alembic upgrade head`."""
    migrate_fresh_database(TEST_OWNER_DATABASE_URL)


@pytest.fixture(autouse=True)
def clean_state(fresh_database: None) -> None:
    """Every test starts with empty tables, an empty Redis index and no queued messages."""
    reset_database()
    reset_redis()
    reset_broker()


@pytest.fixture
def redis_client() -> redis.Redis:
    from votes_app.resources import get_redis

    return get_redis()


@pytest.fixture
def engine() -> sa.Engine:
    from votes_app.resources import get_engine

    return get_engine()


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    """One worker on all three queues, two prefork processes; stopped after the test."""
    with Worker(tmp_path / "worker.log") as running:
        yield running


@pytest.fixture
def beat(tmp_path: Path) -> Iterator[Beat]:
    with Beat(tmp_path) as running:
        yield running
