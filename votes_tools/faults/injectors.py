"""The faults themselves: processes killed, RabbitMQ, PostgreSQL and Redis taken away. Each
affects the campaign's namespace alone, unless it says it stops a service for everyone."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import redis
import sqlalchemy as sa
from amqp.exceptions import AMQPError
from kombu import Connection
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.engine import make_url

from votes_app.celery import DEAD, VALIDATION, VOTES_EXCHANGE, app, declare_topology
from votes_app.config import get_settings
from votes_app.resources import get_redis
from votes_tools.faults.options import BrokerRestart, RedisRestart
from votes_tools.polling import wait_for
from votes_tools.processes import REPO, Worker, alive, run

T = TypeVar("T")

RESTART_ATTEMPTS = 5

# Errors a read may meet while a service is down on purpose: the reader tries again.
UNAVAILABLE = (
    AMQPError,
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    redis.RedisError,
    BrokerError,
    ConnectionError,
    OSError,
)


def polled(read: Callable[[], T], default: T) -> T:
    """`read()`, or `default` while the service it reads is down on purpose."""
    try:
        return read()
    except UNAVAILABLE:
        return default


# --- RabbitMQ ---------------------------------------------------------------------------


def broker_vhost() -> str:
    return str(Connection(get_settings().broker_url).virtual_host)


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    return run(["rabbitmqctl", *args], check=True, timeout=timeout).stdout


def in_flight(queues: Sequence[str]) -> int:
    """Messages ready or delivered-but-unacknowledged in `queues`, as the broker counts them."""
    out = rabbitmqctl(
        "list_queues", "-q", "-p", broker_vhost(), "name", "messages_ready",
        "messages_unacknowledged",
    )  # fmt: skip
    total = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in queues:
            total += int(parts[1]) + int(parts[2])
    return total


def broker_outage(mode: BrokerRestart, seconds: float) -> None:
    """RabbitMQ goes away: for everyone (`stop-app`: the node stops serving for `seconds`)
    or for our vhost only (`close-connections`: its connections closed at once). The node
    is always started again."""
    if mode == "close-connections":
        rabbitmqctl("close_all_connections", "--vhost", broker_vhost(), "fault campaign")
        return
    rabbitmqctl("stop_app")
    try:
        # The outage lasts this long by design: there is nothing to poll for.
        time.sleep(seconds)
    finally:
        for attempt in range(RESTART_ATTEMPTS):
            try:
                rabbitmqctl("start_app")
                rabbitmqctl("await_startup")
                break
            except subprocess.SubprocessError:
                if attempt == RESTART_ATTEMPTS - 1:
                    raise


# --- PostgreSQL -------------------------------------------------------------------------


def database_name() -> str:
    name = make_url(get_settings().owner_database_url.get_secret_value()).database
    # The name goes into ALTER DATABASE, which takes no bound parameters.
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise click.ClickException(f"database name {name!r} is not a plain identifier")
    return name


def database_outage(seconds: float) -> int:
    """Our database refuses connections and loses the ones it had, for `seconds`: what the
    application sees of a PostgreSQL restart, without stopping anyone else's database.
    Returns the number of connections terminated."""
    url = make_url(get_settings().owner_database_url.get_secret_value())
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = database_name()
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            try:
                terminated = connection.scalar(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                # The outage lasts this long by design: there is nothing to poll for.
                time.sleep(seconds)
            finally:
                connection.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    finally:
        admin.dispose()
    return int(terminated or 0)


# --- Redis ------------------------------------------------------------------------------


def redis_restart_empty(mode: RedisRestart) -> int:
    """Redis comes back empty. `empty`: our index is emptied and its clients disconnected,
    as a restart would (other indexes untouched). `shutdown`: the real thing, for everyone.
    Returns the number of clients disconnected."""
    if mode == "shutdown":
        run(["redis-cli", "shutdown", "nosave"])
        # scripts/services.sh starts whatever is down, with this machine's own command.
        run(["bash", str(REPO / "scripts" / "services.sh")], check=True, timeout=None)
        return -1
    client = get_redis()
    database = int(client.connection_pool.connection_kwargs.get("db", 0))
    client.flushdb()
    me = int(client.client_id())
    killed = 0
    for entry in client.client_list():
        if int(entry["db"]) == database and int(entry["id"]) != me:
            killed += int(client.client_kill_filter(_id=entry["id"]))
    return killed


# --- worker processes -------------------------------------------------------------------


def kill_pool_process(worker: Worker) -> None:
    """SIGKILL one pool process; returns once the pool has replaced it."""
    before = worker.children()
    os.kill(before[0], signal.SIGKILL)

    def replaced() -> bool:
        now = worker.children()
        return len(now) == len(before) and before[0] not in now

    wait_for(replaced, timeout=60, what="the pool to replace its process")


def kill_main_process(worker: Worker) -> bool:
    """SIGKILL the worker's main process alone; True if its pool processes outlived it
    and had to be killed too."""
    orphans = worker.children()
    os.kill(worker.pid, signal.SIGKILL)
    assert worker.process is not None
    worker.process.wait(timeout=30)
    # A supervisor such as systemd kills what is left of the group; so does this, if the
    # pool processes have not noticed by then that their parent is gone.
    try:
        wait_for(
            lambda: not any(alive(pid) for pid in orphans),
            timeout=10,
            what="orphaned pool processes to exit",
        )
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        return True
    return False


def bury_votes(messages: Sequence[tuple[str, dict[str, Any]]]) -> int:
    """Put `validate_vote` messages into votes.dead as RabbitMQ dead-letters what a worker
    rejected from votes.validation: same task ids, an `x-death` header naming the queue."""
    death = {
        "count": 1,
        "reason": "rejected",
        "queue": VALIDATION,
        "exchange": VOTES_EXCHANGE.name,
        "routing-keys": [VALIDATION],
        "time": datetime.now(UTC).replace(microsecond=0),
    }
    with app.connection_for_write() as connection:
        declare_topology(connection)
        producer = connection.Producer()
        for task_id, kwargs in messages:
            producer.publish(
                [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
                exchange="",  # the default exchange: straight into votes.dead
                routing_key=DEAD,
                serializer="json",
                delivery_mode=2,
                headers={
                    "lang": "py",
                    "task": "votes_app.validate_vote",
                    "id": task_id,
                    "root_id": task_id,
                    "parent_id": None,
                    "retries": 0,
                    "x-death": [death],
                },
            )
    return len(messages)
