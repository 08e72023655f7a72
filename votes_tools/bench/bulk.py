"""The bulk phases, each on an emptied namespace: `validate` alone in this process, the real
`votes voters load` of a large roll, and one flush of a large backlog of pending votes."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from votes_app import reconcile
from votes_app.ballot_box import roll_key, voter_roll_size
from votes_app.config import get_settings
from votes_app.resources import (
    get_ballot_box,
    get_engine,
    get_owner_engine,
    get_redis,
    session_scope,
)
from votes_app.schemas import Submission
from votes_app.tallies import flush
from votes_app.validation import validate
from votes_tools import election, namespace
from votes_tools.bench.display import Display
from votes_tools.bench.pipeline import redis_key_bytes
from votes_tools.bench.report import rate
from votes_tools.processes import run_votes

VALIDATE_ALONE_VOTES = 20_000
ROLL_LAW = "law-001"  # the law of the bulk phases' voters

# A backlog as an outage of beat leaves it: voters and their ballots recorded, none counted.
FILL_VOTERS = """
INSERT INTO vote_audit (vote_hash, law_id, voted_at, task_id)
SELECT encode(sha256(convert_to('bench-flush|' || n, 'UTF8')), 'hex'),
       'law-' || lpad((n % :laws + 1)::text, 3, '0'),
       now(),
       'bench-flush-' || n
FROM generate_series(0, :count - 1) AS n
"""
FILL_BALLOTS = """
INSERT INTO ballots (law_id, choice)
SELECT 'law-' || lpad((n % :laws + 1)::text, 3, '0'),
       CASE WHEN (n / :laws) % 2 = 0 THEN 'oui' ELSE 'non' END
FROM generate_series(0, :count - 1) AS n
ORDER BY random()
"""


def measure_voters_load(count: int, directory: Path, display: Display) -> dict[str, Any]:
    """Time the real `votes voters load FILE` on `count` new hashes, from an empty Redis
    index: what an operator waits for, interpreter start included."""
    client = get_redis()
    namespace.reset()
    election.open_laws([ROLL_LAW])
    roll_file = directory / "voter-roll.txt"
    with roll_file.open("w") as out:
        for n in range(count):
            out.write(hashlib.sha256(f"bench-roll|{n}".encode()).hexdigest() + "\n")
    display.show("votes voters load", 0, count)
    started = time.monotonic()
    done = run_votes("voters", "load", "--law", ROLL_LAW, str(roll_file), timeout=None)
    seconds = time.monotonic() - started
    roll_file.unlink()
    loaded = voter_roll_size(client, ROLL_LAW)
    display.show("votes voters load", loaded, count)
    if done.returncode != 0 or loaded != count:
        raise RuntimeError(
            f"votes voters load: exit {done.returncode}, {loaded:,} loaded: {done.stderr[-500:]}"
        )
    roll_bytes = redis_key_bytes(roll_key(ROLL_LAW))[roll_key(ROLL_LAW)]
    client.flushdb()
    return {
        "hashes": count,
        "seconds": seconds,
        "hashes_per_second": rate(count, seconds),
        "roll_bytes_per_hash": roll_bytes / count,
    }


def measure_validation(count: int, display: Display) -> dict[str, Any]:
    """`validate` alone, in this process, on `count` new voters in batches of
    VALIDATE_BATCH_SIZE: the pool's share of a vote without the broker, Celery or other
    processes, so its CPU time is far less at the mercy of a busy machine than the
    pipeline's figures."""
    batch_size = get_settings().validate_batch_size
    namespace.reset()
    hashes = [hashlib.sha256(f"bench-validate|{n}".encode()).hexdigest() for n in range(count)]
    election.open_laws([ROLL_LAW])
    election.load_roll((ROLL_LAW, h) for h in hashes)
    stamp = datetime.now(UTC).isoformat()
    submissions = [
        Submission(
            task_id=f"bench-validate-{n}",
            args=[],
            kwargs={"vote_hash": h, "law_id": ROLL_LAW, "choice": "oui", "timestamp": stamp},
        )
        for n, h in enumerate(hashes)
    ]
    recorded = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, count, batch_size):
        outcome = validate(
            submissions[start : start + batch_size],
            ballot_box=get_ballot_box(),
            session_scope=session_scope,
            now=datetime.now(UTC),
            max_clock_skew=timedelta(minutes=5),
        )
        recorded += len(outcome.recorded)
        display.show("validate alone", start + batch_size, count)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    namespace.reset()
    if recorded != count:
        raise RuntimeError(f"validate alone recorded {recorded:,} of {count:,} votes")
    return {
        "votes": count,
        "batch_size": batch_size,
        "cpu_ms_per_vote": 1000 * cpu / count,
        "wall_ms_per_vote": 1000 * wall / count,
    }


def ballot_sizes(rows: int) -> dict[str, float]:
    """Bytes per ballot of each partition of `ballots` and of each of their indexes."""
    query = sa.text(
        "SELECT relid::regclass::text, pg_table_size(relid)"
        " FROM pg_partition_tree('ballots') WHERE isleaf UNION ALL "
        "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index"
        " WHERE indrelid IN (SELECT relid FROM pg_partition_tree('ballots') WHERE isleaf)"
    )
    with get_engine().connect() as connection:
        return {name: size / rows for name, size in connection.execute(query)}


def measure_flush(count: int, laws: int, display: Display) -> dict[str, Any]:
    """One `tallies.flush` of `count` waiting ballots over `laws` laws, as after an outage
    of beat: voters and ballots filled by SQL, then one flush."""
    namespace.reset()
    election.open_laws(f"law-{n:03d}" for n in range(1, laws + 1))
    display.show("flush: filling voters and ballots", 0, count)
    with get_engine().begin() as connection:
        for fill in (FILL_VOTERS, FILL_BALLOTS):
            connection.execute(sa.text(fill), {"laws": laws, "count": count})
    # Autovacuum analyzes tables that grew this much within a minute; do it now.
    with (
        get_owner_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection
    ):  # VACUUM: the tables' owner
        connection.execute(sa.text("VACUUM ANALYZE vote_audit, ballots"))
    display.show("flush: filling voters and ballots", count, count)
    before = ballot_sizes(count)
    started = time.monotonic()
    result = flush(session_scope=session_scope)
    seconds = time.monotonic() - started
    counted = result.vote_count if result else 0
    display.show("flush: one flush", counted, count)
    reconciling = time.monotonic()
    with session_scope() as session:
        found = reconcile.reconcile(session=session)
    reconcile_seconds = time.monotonic() - reconciling
    if counted != count or not found.ok:
        raise RuntimeError(f"flush counted {counted:,} of {count:,}; drift: {found.drifting}")
    return {
        "votes": count,
        "laws": laws,
        "seconds": seconds,
        "votes_per_second": rate(count, seconds),
        # `votes reconcile` reads every voter and ballot: how long that takes at this size.
        "reconcile_seconds": reconcile_seconds,
        # Each counted ballot leaves a dead row version behind until (auto)vacuum.
        "ballot_bytes_per_row_before_flush": before,
        "ballot_bytes_per_row_after_flush": ballot_sizes(count),
    }
