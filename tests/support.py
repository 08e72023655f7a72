"""Helpers for the integration tests: state resets, votes, polling; the worker and beat
processes are the tools' own (`votes_tools.processes`)."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from alembic import command
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from votes_app.celery import ALL_QUEUES, WORK_QUEUES
from votes_app.migrations import alembic_config
from votes_app.status import queue_depths
from votes_tools import polling, workload
from votes_tools.processes import Beat as Beat
from votes_tools.processes import Worker as Worker
from votes_tools.processes import run_votes as run_votes

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from votes_app.ballot_box import BallotBox
    from votes_app.schemas import Submission
    from votes_app.validation import Outcome

TIMESTAMP = "2026-11-27T09:30:00+00:00"
# The window of the laws the tests register: every timestamp they send falls in it.
WINDOW = ("2000-01-01T00:00:00+00:00", "2100-01-01T00:00:00+00:00")
# The law each hash made here was issued for, as the front end that computes it knows.
_LAW_OF: dict[str, str] = {}

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.1, what: str = ""
) -> T:
    """`polling.wait_for`, failing the test (AssertionError) when the deadline passes."""
    try:
        return polling.wait_for(predicate, timeout=timeout, interval=interval, what=what)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def voter_hash(voter: int, law_id: str, tag: str = "") -> str:
    """`votes_tools.workload.voter_hash`, remembered for `load_roll`."""
    vote_hash = workload.voter_hash(voter, law_id, tag)
    _LAW_OF[vote_hash] = law_id
    return vote_hash


# --- state --------------------------------------------------------------------------------


def migrate_fresh_database(url: str) -> None:
    """Drop and re-create the database, then build it the one supported way: Alembic."""
    target = make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        name = target.database
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    alembic_upgrade(url, "head")


def alembic_upgrade(url: str, revision: str) -> None:
    command.upgrade(alembic_config(url), revision)


def alembic_downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def reset_database() -> None:
    """Empty every table (the owner's role: the application's may not)."""
    from votes_app.models import Base
    from votes_app.resources import get_owner_engine

    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with get_owner_engine().begin() as connection:
        connection.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY"))


def reset_redis() -> None:
    from votes_app.resources import get_redis

    get_redis().flushdb()


def reset_broker() -> None:
    """Empty our queues by deleting and declaring them again.

    Declared again at once: a producer's connection remembers the queues it declared, and
    would publish a vote into an exchange with no queue bound to it.
    """
    from votes_app.celery import app, declare_topology

    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        for name in ALL_QUEUES:
            channel.queue_delete(name)
        declare_topology(connection)


def vote(vote_hash: str, law_id: str, choice: str, **extra: Any) -> dict[str, Any]:
    return {
        "vote_hash": vote_hash,
        "law_id": law_id,
        "choice": choice,
        "timestamp": TIMESTAMP,
        **extra,
    }


def register_laws(*law_ids: str) -> None:
    """Register the laws not registered yet, open over `WINDOW`."""
    from votes_app.models import Law
    from votes_app.resources import owner_session_scope

    opens, closes = WINDOW
    with owner_session_scope() as session:
        session.execute(
            sa.dialects.postgresql.insert(Law)
            .values(
                [
                    {
                        "law_id": law,
                        "title": f"question {law}",
                        "opens_at": opens,
                        "closes_at": closes,
                    }
                    for law in sorted(set(law_ids))
                ]
            )
            .on_conflict_do_nothing()
        )


def load_roll(hashes: Iterable[str]) -> int:
    """Put each hash (made by `voter_hash`) on the roll of its law, registering the law."""
    from votes_app.ballot_box import load_rolls
    from votes_app.resources import get_redis

    entries = [(_LAW_OF[vote_hash], vote_hash) for vote_hash in hashes]
    if entries:
        register_laws(*(law for law, _ in entries))
    return sum(new for _, new in load_rolls(get_redis(), entries))


def validate_now(
    box: BallotBox,
    submissions: Sequence[Submission],
    *,
    scope: Callable[[], AbstractContextManager[Session]] | None = None,
) -> Outcome:
    """`validate` in this process, as a worker runs it: now, with a five-minute clock skew."""
    from votes_app.resources import session_scope
    from votes_app.schemas import utcnow
    from votes_app.validation import validate

    return validate(
        submissions,
        ballot_box=box,
        session_scope=scope or session_scope,
        now=utcnow(),
        max_clock_skew=timedelta(minutes=5),
    )


def publish(votes: Iterable[dict[str, Any]]) -> list[str]:
    """Publish one `validate_vote` task per vote, as a producer would; the task ids."""
    from votes_app.celery import app

    return [app.send_task("votes_app.validate_vote", kwargs=kwargs).id for kwargs in votes]


def count_rows(table: str, where: str = "") -> int:
    from votes_app.resources import get_engine

    with get_engine().connect() as connection:
        return int(connection.scalar(sa.text(f"SELECT count(*) FROM {table} {where}")) or 0)


def results() -> dict[tuple[str, str], int]:
    """`vote_results` as `(law_id, choice) -> count`, zero counts left out."""
    from votes_app.resources import get_engine

    with get_engine().connect() as connection:
        rows = connection.execute(sa.text("SELECT law_id, oui_count, non_count FROM vote_results"))
        counts = {}
        for law_id, oui, non in rows:
            counts.update({(law_id, "oui"): oui, (law_id, "non"): non})
    return {key: value for key, value in counts.items() if value}


# --- the pipeline draining ---------------------------------------------------------------


def work_queues_empty() -> bool:
    depths = queue_depths()
    return all(depths[name] == 0 for name in WORK_QUEUES)


def wait_until_drained(
    observe: Callable[[], dict[str, Any]], expected: dict[str, Any], timeout: float
) -> None:
    """Wait until `observe()` equals `expected` with the work queues empty; diff if never."""
    try:
        wait_for(
            lambda: observe() == expected and work_queues_empty(),
            timeout=timeout,
            interval=0.2,
            what="the pipeline to drain into the expected state",
        )
    except AssertionError:
        assert observe() == expected
        raise


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample at a worker's /metrics, keyed by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
