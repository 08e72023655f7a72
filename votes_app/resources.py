"""Per-process connections: the SQLAlchemy engine and the Redis client, made on first use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import redis
import sqlalchemy as sa
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from votes_app.ballot_box import BallotBox
from votes_app.config import get_settings

# What the connections raise while a service is down or restarting: worth a retry with
# backoff, unlike anything else. Redis also answers, without losing the connection, OOM
# when it is full under `noeviction` and READONLY from a replica during a failover: both
# pass once an operator acts, and both refuse a write before it is made (a script stops at
# its first write). redis-py makes them subclasses of ResponseError, whose other kinds
# (WRONGTYPE, a script's error, NOPERM) are bugs, not weather: those two alone are listed.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    redis.OutOfMemoryError,
    redis.ReadOnlyError,
    # Also what kombu makes of a confirmed publish the broker refused (`basic.nack`: a queue
    # at QUEUE_MAX_BYTES, `reject-publish`): room comes back as the workers drain it.
    BrokerError,
    ConnectionError,
)


@lru_cache
def get_engine() -> sa.Engine:
    settings = get_settings()
    return sa.create_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.database_pool_size,
        # No ping before each checkout (a round trip per batch): a connection that died with
        # the server fails its first statement, SQLAlchemy then discards the whole pool, and
        # the batch is retried like any other transient error.
        # Error messages must not carry vote hashes and choices into the logs.
        hide_parameters=True,
    )


@lru_cache
def get_owner_engine() -> sa.Engine:
    """The owner's connection: for the migrations and the operator's lifecycle commands,
    never for a worker."""
    return sa.create_engine(
        get_settings().owner_database_url.get_secret_value(),
        poolclass=sa.NullPool,
        hide_parameters=True,
    )


@lru_cache
def get_reader_engine() -> sa.Engine:
    """The read-only role's connection (READER_DATABASE_URL), for results; the application's
    where it is not set."""
    url = get_settings().reader_database_url
    if url is None:
        return get_engine()
    return sa.create_engine(url.get_secret_value(), poolclass=sa.NullPool, hide_parameters=True)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@lru_cache
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(
        get_settings().redis_url.get_secret_value(),
        decode_responses=True,
        health_check_interval=30,
    )


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    with get_sessionmaker().begin() as session:
        yield session


@contextmanager
def snapshot_scope() -> Iterator[Session]:
    """`session_scope` reading one snapshot (REPEATABLE READ): what it reads agrees with
    itself, whatever the flushes commit meanwhile."""
    with session_scope() as session:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        yield session


@contextmanager
def owner_session_scope() -> Iterator[Session]:
    """`session_scope` with the owner's role."""
    with sessionmaker(get_owner_engine(), expire_on_commit=False).begin() as session:
        yield session


@contextmanager
def reader_session_scope() -> Iterator[Session]:
    """`session_scope` with the read-only role (READER_DATABASE_URL), where it is set."""
    with sessionmaker(get_reader_engine(), expire_on_commit=False).begin() as session:
        yield session


def forget_inherited_connections() -> None:
    """Drop the connections a forked child inherited from its parent, without network I/O.

    close=False keeps the parent's sockets intact (SQLAlchemy: "Using Connection Pools
    with Multiprocessing or os.fork()"); redis-py notices the new pid by itself, but
    resetting its pool here keeps the child from ever touching the parent's sockets.
    """
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
    if get_redis.cache_info().currsize:
        get_redis().connection_pool.reset()


@lru_cache
def get_ballot_box() -> BallotBox:
    settings = get_settings()
    return BallotBox(
        get_redis(),
        claim_ttl_seconds=settings.claim_ttl_seconds,
        duplicate_marks_per_hour=settings.review_quota_per_hour,
    )
