"""Test isolation: a database, a Redis index and a RabbitMQ vhost of the suite's own.

The environment is fixed here, before votes_app is imported, so that no test can reach
a developer's data whatever `.env` or the shell says. Override with VOTES_TEST_*.
"""

from __future__ import annotations

import os

# The application's role, as workers connect; the owner's, for migrations and resets.
TEST_DATABASE_URL = os.environ.get(
    "VOTES_TEST_DATABASE_URL", "postgresql+psycopg2://votes_app@127.0.0.1:5432/votes_test"
)
TEST_OWNER_DATABASE_URL = os.environ.get(
    "VOTES_TEST_OWNER_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/votes_test"
)
TEST_REDIS_URL = os.environ.get("VOTES_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_BROKER_URL = os.environ.get(
    "VOTES_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/votes_test"
)

os.environ.update(
    DATABASE_URL=TEST_DATABASE_URL,
    OWNER_DATABASE_URL=TEST_OWNER_DATABASE_URL,
    REDIS_URL=TEST_REDIS_URL,
    CELERY_BROKER_URL=TEST_BROKER_URL,
    FLUSH_INTERVAL_SECONDS="0.2",
    ROLL_MISSING_RETRY_SECONDS="0.5",
    RETRY_BACKOFF_MAX_SECONDS="2",
    # Test workers serve no metrics unless a test gives them a port of its own.
    METRICS_PORT="0",
    # Under RabbitMQ's max_message_size, so that the workers' own refusal is what is tested.
    MAX_MESSAGE_BYTES="65536",
)
