"""The producer edge: however a producer declares (or does not), a confirmed vote is counted or
refused back to it, workers keep starting, and each RabbitMQ user holds only its own keys."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import AccessRefused, ChannelError, MessageNacked, PreconditionFailed
from celery import Celery
from kombu import Connection
from kombu.exceptions import OperationalError

from tests.conftest import TEST_BROKER_URL
from tests.support import Beat, Worker, count_rows, load_roll, register_laws, vote, voter_hash
from tests.support import wait_for as wait_until
from votes_app.celery import ALL_QUEUES, DEAD, VALIDATION, app
from votes_app.dead_letters import list_dead
from votes_app.producer import VotePublisher
from votes_app.resources import get_redis
from votes_app.topology import INTAKE_EXCHANGE, VOTES_EXCHANGE
from votes_tools.faults.injectors import rabbitmqctl
from votes_tools.processes import python

LAW = "loi-edge"
ROOT = Path(__file__).resolve().parents[2]
VHOST = TEST_BROKER_URL.rsplit("/", 1)[1]
# deploy/rabbitmq/users.sh, run on the test vhost with these users.
USERS = {
    "RABBITMQ_PRODUCER_USER": "votes_test_producer",
    "RABBITMQ_WORKER_USER": "votes_test_worker",
    "RABBITMQ_MONITOR_USER": "votes_test_monitor",
}
PASSWORD = "test-only-password"


def broker_url(user: str) -> str:
    return TEST_BROKER_URL.replace("guest:guest@", f"{user}:{PASSWORD}@", 1)


# A producer written the common Celery way: no votes_app settings.
PRODUCER = Celery("producer")


def send(url: str, name: str, **options: Any) -> str:
    """`send_task` as the user of `url`, confirms on. (Celery's CELERY_BROKER_URL, which the
    suite sets, would win over a `broker=` given to the producer's app.)"""
    with Connection(url, transport_options={"confirm_publish": True}) as connection:
        return str(PRODUCER.send_task(name, connection=connection, **options).id)


def recipe(kwargs: dict[str, Any], url: str = TEST_BROKER_URL) -> str:
    """docs/PRODUCERS.md's recipe: the producers' exchange, declare nothing, mandatory."""
    return send(
        url,
        "votes_app.validate_vote",
        kwargs=kwargs,
        exchange="votes.validation",
        routing_key="votes.validation",
        declare=[],
        mandatory=True,
        argsrepr="()",
        kwargsrepr="{...}",
    )


def ballots(count: int, tag: str) -> list[dict[str, Any]]:
    hashes = [voter_hash(n, LAW, tag) for n in range(count)]
    load_roll(hashes)
    return [vote(h, LAW, "oui" if n % 3 else "non") for n, h in enumerate(hashes)]


def delete_topology() -> None:
    """As a fresh vhost (or a broker restored without definitions): nothing declared."""
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        for name in ALL_QUEUES:
            channel.queue_delete(name)
        for exchange in (VOTES_EXCHANGE.name, INTAKE_EXCHANGE.name, DEAD):
            channel.exchange_delete(exchange)


def queue_exists(name: str) -> bool:
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        try:
            channel.queue_declare(name, passive=True)
        except ChannelError:
            return False
    return True


def recorded() -> int:
    return count_rows("vote_audit")


@pytest.fixture(autouse=True)
def law() -> None:
    register_laws(LAW)


def test_the_recipe_before_any_worker_while_beat_runs_loses_nothing(tmp_path: Path) -> None:
    # The case: beat had declared the exchange `votes` (it publishes flushes), no
    # worker had bound votes.validation, and 200 confirmed votes were dropped.
    delete_topology()
    votes = ballots(200, "beat-first")
    with Beat(tmp_path):
        wait_until(lambda: queue_exists(VALIDATION), timeout=30, what="beat to declare")
        for kwargs in votes:
            recipe(kwargs)
        with Worker(tmp_path / "worker.log"):
            wait_until(lambda: recorded() == len(votes), timeout=60, what="every vote recorded")


def test_a_vote_with_no_queue_to_take_it_comes_back_to_its_producer() -> None:
    delete_topology()
    with app.connection_for_write() as connection:
        VOTES_EXCHANGE.bind(connection.default_channel).declare()
        INTAKE_EXCHANGE.bind(connection.default_channel).declare()

    with pytest.raises(ChannelError, match="NO_ROUTE"):
        recipe(ballots(1, "no-queue")[0])


def test_a_producer_naming_the_queue_neither_stops_workers_nor_loses_votes(
    tmp_path: Path,
) -> None:
    # `send_task(..., queue="votes.validation")` declares the queue with no arguments, as
    # the workers do: before a worker ever started, and while one runs.
    delete_topology()
    before, after = ballots(20, "named-before"), ballots(20, "named-after")
    for kwargs in before:
        send(TEST_BROKER_URL, "votes_app.validate_vote", kwargs=kwargs, queue=VALIDATION)
    with Worker(tmp_path / "worker.log") as worker:
        for kwargs in after:
            send(TEST_BROKER_URL, "votes_app.validate_vote", kwargs=kwargs, queue=VALIDATION)
        wait_until(lambda: recorded() == 40, timeout=60, what="every vote recorded")
        assert worker.running()
    # A second worker starts on the queue the producer declared.
    with Worker(tmp_path / "second.log") as second:
        assert second.running()


def test_a_full_queue_refuses_votes_back_to_their_producer() -> None:
    # votes-work bounds each work queue (QUEUE_MAX_BYTES) with `reject-publish`; a policy of
    # higher priority stands in for a queue that reached its bound.
    rabbitmqctl(
        "set_policy", "-p", VHOST, "--apply-to", "queues", "--priority", "99", "test-full",
        "^votes\\.validation$", json.dumps({"max-length": 3, "overflow": "reject-publish"}),
    )  # fmt: skip
    try:
        votes = ballots(5, "full")
        for kwargs in votes[:3]:
            recipe(kwargs)
        with pytest.raises(OperationalError) as refused:
            recipe(votes[3])
        assert isinstance(refused.value.__cause__, MessageNacked)
        with (
            pytest.raises(ConnectionError, match="unconfirmed"),
            VotePublisher(max_reconnects=1) as publisher,
        ):
            publisher.publish(votes[4])
    finally:
        rabbitmqctl("clear_policy", "-p", VHOST, "test-full")


def test_votes_due_later_do_not_hold_back_votes_due_now(tmp_path: Path) -> None:
    # Within MAX_ETA_SECONDS a delayed vote waits in the worker, as Celery's own delayed
    # tasks do, with the prefetch window raised while it waits: here a window of 2 holds
    # 5 such votes, and a vote due now still goes through.
    later, now = ballots(5, "later"), ballots(1, "now")
    due = datetime.now(UTC) + timedelta(seconds=12)
    for kwargs in later:
        app.send_task("votes_app.validate_vote", kwargs=kwargs, eta=due)
    small_window = os.environ | {"WORKER_PREFETCH_MULTIPLIER": "2"}
    with Worker(tmp_path / "worker.log", concurrency=1, env=small_window):
        app.send_task("votes_app.validate_vote", kwargs=now[0])
        # Held back, the vote due now would be counted with the others, once they are due.
        wait_until(lambda: recorded() == 1, timeout=10, interval=0.05, what="the vote due now")
        wait_until(lambda: recorded() == 6, timeout=30, what="the votes due later, when due")


# --- roles ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker_users() -> Iterator[None]:
    """The users of deploy/rabbitmq/users.sh, made on the test vhost."""
    environment = os.environ | {"VOTES_VHOST": VHOST}
    for variable, user in USERS.items():
        environment |= {variable: user, variable.replace("_USER", "_PASSWORD"): PASSWORD}
    subprocess.run(
        ["sh", str(ROOT / "deploy" / "rabbitmq" / "users.sh")], env=environment, check=True
    )
    yield


def test_each_broker_user_holds_only_its_own_keys(broker_users: None, tmp_path: Path) -> None:
    worker_url = broker_url(USERS["RABBITMQ_WORKER_USER"])
    producer_url = broker_url(USERS["RABBITMQ_PRODUCER_USER"])
    monitor_url = broker_url(USERS["RABBITMQ_MONITOR_USER"])
    votes = ballots(30, "roles")
    as_worker = os.environ | {"CELERY_BROKER_URL": worker_url}
    with (
        Worker(tmp_path / "worker.log", env=as_worker) as worker,
        Beat(tmp_path, env=as_worker),
    ):
        # A producer publishes votes through its own route, with the project's publisher
        # (which may not declare anything) and with the documented recipe.
        with VotePublisher(window=10, broker_url=producer_url) as publisher:
            for kwargs in votes[:15]:
                publisher.publish(kwargs)
        for kwargs in votes[15:]:
            recipe(kwargs, producer_url)
        wait_until(lambda: recorded() == len(votes), timeout=60, what="every vote recorded")

        def as_producer(task: str, route: str, user: str, **options: Any) -> str:
            return send(
                producer_url,
                task,
                exchange=route,
                routing_key=route,
                declare=[],
                user_id=user,
                **options,
            )

        # ... and nothing else: not the workers' exchange, not another user's name.
        producer = USERS["RABBITMQ_PRODUCER_USER"]
        with pytest.raises((AccessRefused, OperationalError)):
            as_producer("votes_app.flush_tallies", "votes", producer)
        with pytest.raises(PreconditionFailed, match="user_id"):
            as_producer("votes_app.flush_tallies", VALIDATION, USERS["RABBITMQ_WORKER_USER"])
        # An internal task it sends down its own route is refused by the worker.
        forged = as_producer(
            "votes_app.aggregate_vote", VALIDATION, producer, kwargs={"recorded": {LAW: {"oui": 1}}}
        )

        def forged_is_dead() -> str | None:
            with app.connection_for_write() as connection:
                dead = {d.task_id: d for d in list_dead(connection, get_redis())}
            return dead[forged].reason if forged in dead else None

        reason = wait_until(forged_is_dead, timeout=30, what="the forged task in votes.dead")
        assert reason is not None
        assert f"untrusted publisher ({USERS['RABBITMQ_PRODUCER_USER']})" in reason

        # Monitoring (the exporter, Flower) may inspect workers, not drive them: the workers
        # answer anything but read-only remote control with an error, whoever sends it.
        node = worker.name.replace("%h", socket.gethostname())
        as_monitor = os.environ | {"CELERY_BROKER_URL": monitor_url}
        inspected = subprocess.run(
            python("celery", "-A", "votes_app", "inspect", "active_queues", "-d", node),
            env=as_monitor,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert VALIDATION in inspected.stdout, inspected.stderr
        for command, arguments in (
            ("shutdown", {}),
            ("revoke", {"task_id": forged, "terminate": True}),
            ("cancel_consumer", {"queue": VALIDATION}),
            ("pool_shrink", {"n": 1}),
        ):
            replies = app.control.broadcast(
                command, arguments=arguments, destination=[node], reply=True, timeout=5
            )
            assert replies is not None
            [reply] = replies
            assert "error" in reply[node], (command, reply)
        assert worker.answers_ping()
        recipe(ballots(1, "after")[0])
        wait_until(lambda: recorded() == len(votes) + 1, timeout=30, what="still consuming")
