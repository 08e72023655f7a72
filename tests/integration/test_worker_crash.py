"""SIGKILL a worker in the middle of 5,000 votes: after a restart every vote counts once."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from tests.support import (
    Beat,
    Worker,
    count_rows,
    load_roll,
    publish,
    results,
    run_votes,
    vote,
    voter_hash,
    wait_for,
    wait_until_drained,
)
from votes_app.producer import VotePublisher

LAWS = ("loi-21", "C.96", "projet_3")
CHOICES = ("oui", "non")
VOTERS = 4_700  # on the roll, one first vote each
SECOND_VOTES = 200
UNKNOWN = 100  # hashes not on the roll
KILL_AFTER = 1_000  # audit rows before the kill

# Generous deadlines: on a busy two-core machine the pipeline runs several times slower.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]


def fetch(engine: sa.Engine, query: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(query))]


def kill_one_pool_process(worker: Worker) -> Worker:
    [victim, *_] = worker.children()
    os.kill(victim, signal.SIGKILL)
    # The main process notices the loss, requeues the task and forks a replacement.
    wait_for(
        lambda: f"pid:{victim} exited with 'signal 9 (SIGKILL)'" in worker.log.read_text(),
        timeout=30,
        what=f"the worker to report the loss of pool process {victim}",
    )
    return worker


def kill_whole_worker(worker: Worker) -> Worker:
    worker.kill()
    assert worker.process is not None
    assert worker.process.returncode == -signal.SIGKILL
    return Worker(worker.log.with_name("worker-restarted.log")).start()


def publish_in_bulk(votes: list[dict[str, Any]]) -> None:
    """As a grouping producer sends them: `validate_votes` messages of 100 votes."""
    with VotePublisher(window=10, max_batch=100, linger_ms=1_000) as publisher:
        for ballot in votes:
            publisher.publish(ballot)


@pytest.mark.parametrize(
    ("crash", "send"),
    [
        pytest.param(kill_one_pool_process, publish, id="pool-process"),
        pytest.param(kill_whole_worker, publish, id="whole-worker"),
        pytest.param(kill_whole_worker, publish_in_bulk, id="whole-worker-mid-bulk"),
    ],
)
def test_every_vote_counted_once_after_sigkill(
    crash: Callable[[Worker], Worker],
    send: Callable[[list[dict[str, Any]]], object],
    beat: Beat,
    engine: sa.Engine,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    rng = random.Random(5_000)
    electorate = [(voter, rng.choice(LAWS)) for voter in range(VOTERS)]
    first = [vote(voter_hash(v, law), law, rng.choice(CHOICES)) for v, law in electorate]
    second = [
        vote(ballot["vote_hash"], ballot["law_id"], rng.choice(CHOICES))
        for ballot in rng.sample(first, SECOND_VOTES)
    ]
    strangers = [(1_000_000 + n, rng.choice(LAWS)) for n in range(UNKNOWN)]
    unknown = [vote(voter_hash(v, law), law, rng.choice(CHOICES)) for v, law in strangers]
    stream = first + second + unknown
    assert len(stream) == 5_000
    # Second votes anywhere in the stream: which of a voter's two votes wins is a race.
    rng.shuffle(stream)
    load_roll(voter_hash(v, law) for v, law in electorate)
    send(stream)

    choices_of: defaultdict[str, set[str]] = defaultdict(set)
    for ballot in first + second:
        choices_of[ballot["vote_hash"]].add(ballot["choice"])
    law_of = {ballot["vote_hash"]: ballot["law_id"] for ballot in first}
    per_law = Counter(law_of.values())

    # Not waiting for it to answer a ping: by then a fast machine may have done them all.
    worker = Worker(tmp_path / "worker.log").launch()
    try:
        wait_for(lambda: count_rows("vote_audit") > KILL_AFTER, timeout=120, what="1,000 votes in")
        # Counted before the kill: once the loss is reported, a fast machine may be done.
        audited_at_crash = count_rows("vote_audit")
        worker = crash(worker)
        assert audited_at_crash < VOTERS, "the crash came too late to be mid-stream"

        def observe() -> dict[str, Any]:
            tallied: Counter[str] = Counter()
            for (law_id, _), count in results().items():
                tallied[law_id] += count
            return {
                "audit rows": count_rows("vote_audit"),
                "votes per law": tallied,
                "duplicate rows": count_rows("duplicate_attempts"),
                "invalid reviews": count_rows("vote_review", "WHERE kind = 'invalid'"),
            }

        wait_until_drained(
            observe,
            {
                "audit rows": VOTERS,
                "votes per law": per_law,
                "duplicate rows": SECOND_VOTES,
                "invalid reviews": UNKNOWN,
            },
            timeout=240,
        )
    finally:
        worker.stop()

    audit = fetch(engine, "SELECT vote_hash, law_id FROM vote_audit")
    assert {vote_hash for vote_hash, _ in audit} == set(law_of)
    assert [row for row in audit if row[1] != law_of[row[0]]] == []
    # Which ballot is whose is known nowhere; per law, each choice counted is one that
    # the law's voters sent, as many times as at most they sent it.
    ballots = Counter(fetch(engine, "SELECT law_id, choice FROM ballots"))
    sent: Counter[tuple[str, str]] = Counter()
    for vote_hash, law_id in law_of.items():
        for choice in choices_of[vote_hash]:
            sent[(law_id, choice)] += 1
    assert ballots <= sent
    assert sum(ballots.values()) == VOTERS
    assert results() == ballots
    reconciled = run_votes("reconcile")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr

    # Only a hash sent twice is a duplicate, and only once, however often it was delivered.
    sent_twice = {ballot["vote_hash"]: ballot["law_id"] for ballot in second}
    assert set(
        fetch(engine, "SELECT vote_hash, law_id, attempt_count FROM duplicate_attempts")
    ) == {(vote_hash, law_id, 1) for vote_hash, law_id in sent_twice.items()}
    counters = {
        key: int(redis_client.get(key) or 0) for key in redis_client.scan_iter("duplicate_count:*")
    }
    assert counters == {f"duplicate_count:{vote_hash}": 1 for vote_hash in sent_twice}
    assert set(fetch(engine, "SELECT vote_hash, law_id FROM vote_review")) == {
        (ballot["vote_hash"], ballot["law_id"]) for ballot in unknown
    }
