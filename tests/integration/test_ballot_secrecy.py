"""The ballot is secret: after a real worker and beat have processed first votes, second votes,
unknown voters, malformed votes and a message for votes.dead, no artifact anyone can read links
a voter to a choice.

A voter is named by its hash, the hash's first 8 characters, or the task id of a message it
sent. The artifacts read: every row of every table and view (all columns), every Redis key with
its value, every task event that a consumer bound to `celeryev` received, every line the worker
and beat logged at INFO, every row of `votes dead list`, and the worker's /metrics page. An
artifact that names a voter and a choice (`oui` or `non`, in any case, other than the two named
together as the allowed values in an error message) fails the test.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from tests.support import (
    count_rows,
    load_roll,
    results,
    vote,
    voter_hash,
    wait_until_drained,
)
from votes_app.celery import app
from votes_app.producer import VotePublisher
from votes_app.resources import get_engine, get_redis
from votes_app.status import queue_depths
from votes_tools.processes import Beat, Worker, free_port, python, run

CHOICE = re.compile(r"\b(oui|non)\b", re.IGNORECASE)
# The allowed values named together, as a validation error does: no vote's choice.
ALLOWED_VALUES = re.compile(r"'oui' or 'non'|\('oui', 'non'\)", re.IGNORECASE)
LAWS = ("law-001", "law-002")


@dataclass
class Voter:
    vote_hash: str
    task_ids: set[str] = field(default_factory=set)

    @property
    def names(self) -> set[str]:
        return {self.vote_hash, self.vote_hash[:8], *self.task_ids}


@dataclass
class Electorate:
    voters: dict[str, Voter] = field(default_factory=dict)

    def sent(self, kwargs: dict[str, Any], task_id: str) -> tuple[str, dict[str, Any]]:
        voter = self.voters.setdefault(kwargs["vote_hash"], Voter(kwargs["vote_hash"]))
        voter.task_ids.add(task_id)
        return task_id, kwargs

    def named_with_a_choice(self, artifact: str) -> list[str]:
        """The voters an artifact names, if it also names a choice."""
        text = ALLOWED_VALUES.sub("", artifact)
        if not CHOICE.search(text):
            return []
        lowered = text.lower()
        return sorted(
            voter.vote_hash[:8]
            for voter in self.voters.values()
            if any(name.lower() in lowered for name in voter.names)
        )


class EventLog(threading.Thread):
    """Every task event of the vhost, as a monitoring consumer bound to `celeryev` sees it."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._receiver: Any = None

    def run(self) -> None:
        with app.connection_for_read() as connection:
            self._receiver = app.events.Receiver(connection, handlers={"*": self.events.append})
            self.ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self.join(timeout=10)


def publish_as_another_service(kwargs: dict[str, Any], task_id: str) -> None:
    """A validate_vote message as Celery writes it in a producer that is not votes_app's:
    protocol 2, with Celery's default reprs of the arguments in its headers."""
    from kombu import Producer

    from votes_app.celery import VOTES_EXCHANGE

    headers = {
        "lang": "py",
        "task": "votes_app.validate_vote",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "argsrepr": "()",
        "kwargsrepr": repr(kwargs),
        "origin": "front-end@elsewhere",
    }
    body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    with app.connection_for_write() as connection:
        Producer(connection.default_channel).publish(
            body,
            exchange=VOTES_EXCHANGE,
            routing_key="votes.validation",
            headers=headers,
            serializer="json",
            delivery_mode=2,
        )


def table_rows() -> Iterator[str]:
    metadata = sa.MetaData()
    engine = get_engine()
    metadata.reflect(engine, views=True)
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            for row in connection.execute(sa.select(table)):
                yield f"{table.name}: " + json.dumps(dict(row._mapping), default=str)


def redis_entries(client: redis.Redis) -> Iterator[str]:
    """Each key with its value (the client decodes responses: text, not bytes)."""
    for key in client.scan_iter("*"):
        kind = str(client.type(key))
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = f"<{kind}>"
        yield f"{key} {json.dumps(value, default=str)}"


def dead_list_rows() -> list[str]:
    # Wide enough that each row of the table is one line.
    done = run(python("votes_app.cli", "dead", "list"), env=os.environ | {"COLUMNS": "4000"})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def metrics_page(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def leaks(electorate: Electorate, artifacts: Iterable[str]) -> list[str]:
    return [
        f"{artifact[:300]} -> {named}"
        for artifact in artifacts
        if (named := electorate.named_with_a_choice(artifact))
    ]


@pytest.fixture(scope="module")
def processed(
    fresh_database: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The mix, sent through a real worker and beat; what each reader can reach, read."""
    from tests.support import reset_broker, reset_database, reset_redis

    reset_database()
    reset_redis()
    reset_broker()
    directory = tmp_path_factory.mktemp("secrecy")
    electorate = Electorate()
    firsts = [
        vote(voter_hash(n, LAWS[n % 2]), LAWS[n % 2], "oui" if n % 3 else "non") for n in range(40)
    ]
    load_roll(kwargs["vote_hash"] for kwargs in firsts)
    malformed_voters = [voter_hash(1_000 + n, LAWS[0]) for n in range(3)]
    load_roll(malformed_voters)
    seconds = [
        {**kwargs, "choice": "non" if kwargs["choice"] == "oui" else "oui"} for kwargs in firsts[:6]
    ]
    unknown = [vote(voter_hash(2_000 + n, LAWS[1]), LAWS[1], "oui") for n in range(5)]
    malformed = [
        vote(malformed_voters[0], LAWS[0], "oui", timestamp="not a time"),
        vote(malformed_voters[1], LAWS[0], "Non"),
        {**vote(malformed_voters[2], LAWS[0], "oui"), "ballot": "non"},
    ]
    with_ids = [electorate.sent(kwargs, str(uuid.uuid4())) for kwargs in firsts]
    later = [electorate.sent(kwargs, str(uuid.uuid4())) for kwargs in seconds + unknown + malformed]
    dead_vote = vote(voter_hash(3_000, LAWS[0]), LAWS[0], "non")
    dead_id = str(uuid.uuid4())
    electorate.sent(dead_vote, dead_id)

    port = free_port()
    env = os.environ | {"METRICS_PORT": str(port)}
    events = EventLog()
    events.start()
    assert events.ready.wait(timeout=30)
    worker = Worker(directory / "worker.log", env=env)
    beat = Beat(directory)
    with worker, beat:
        # Half as another service's Celery producer writes them (the vote in the headers'
        # argument reprs too), half through the project's publisher.
        for task_id, kwargs in with_ids[::2]:
            publish_as_another_service(kwargs, task_id)
        with VotePublisher(window=10) as publisher:
            for task_id, kwargs in with_ids[1::2]:
                publisher.publish(kwargs, task_id=task_id)
        wait_until_drained(lambda: {"tallied": sum(results().values())}, {"tallied": 40}, 60)
        for task_id, kwargs in later:
            app.send_task("votes_app.validate_vote", kwargs=kwargs, task_id=task_id)
        app.send_task("votes_app.validate_vote_v2", kwargs=dead_vote, task_id=dead_id)

        def settled() -> dict[str, Any]:
            return {
                "tallied": sum(results().values()),
                "duplicates": count_rows("duplicate_attempts"),
                "reviewed": count_rows("vote_review"),
                "dead": queue_depths()["votes.dead"],
            }

        wait_until_drained(settled, {"tallied": 40, "duplicates": 6, "reviewed": 8, "dead": 1}, 90)
        page = metrics_page(port)
    events.stop()
    yield {
        "electorate": electorate,
        "tables": list(table_rows()),
        "redis": list(redis_entries(get_redis())),
        "events": [json.dumps(event, default=str) for event in events.events],
        "logs": worker.log.read_text(errors="replace").splitlines()
        + beat.log.read_text(errors="replace").splitlines(),
        "dead list": dead_list_rows(),
        "metrics": page,
    }


@pytest.fixture(autouse=True)
def clean_state() -> None:
    """The tests read what the module fixture left: no reset between them."""


@pytest.mark.parametrize("artifact", ["tables", "redis", "events", "logs", "dead list"])
def test_no_artifact_names_a_voter_with_a_choice(processed: dict[str, Any], artifact: str) -> None:
    units = processed[artifact]

    assert units, f"nothing read from {artifact}: the test would prove nothing"
    assert leaks(processed["electorate"], units) == []


def test_the_artifacts_do_name_the_voters(processed: dict[str, Any]) -> None:
    """Without this, a reader that saw no voter at all would pass the test above."""
    electorate: Electorate = processed["electorate"]
    text = "\n".join(processed["tables"] + processed["logs"] + processed["dead list"]).lower()

    named = [v for v in electorate.voters.values() if any(n in text for n in v.names)]
    assert len(named) == len(electorate.voters)
    assert any(CHOICE.search(row) for row in processed["tables"])  # the ballots are there


def test_the_metrics_page_names_no_voter_and_no_choice(processed: dict[str, Any]) -> None:
    page: str = processed["metrics"]
    electorate: Electorate = processed["electorate"]

    assert "validation_votes_processed_total" in page
    assert not any(name in page for voter in electorate.voters.values() for name in voter.names)
    # Per-choice series are withheld by default: absent, not zero.
    assert "votes_aggregated_total" not in page
    assert "current_vote_totals" not in page
    assert not CHOICE.search(page)
