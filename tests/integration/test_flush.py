"""Flushing pending tallies into vote_results exactly once: crashes, races, and a real worker."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import count

import pytest
import redis
import sqlalchemy as sa

from tests.conftest import TEST_REDIS_URL
from tests.support import Worker, count_rows, results, voter_hash, wait_for
from votes_app.resources import session_scope
from votes_app.tallies import (
    FLUSHING,
    FLUSHING_BATCH_ID,
    PENDING,
    FlushResult,
    Tallies,
    TallyVote,
    apply_batch,
    flush,
)

LAWS = ("law-001", "law-002", "law-003")
TTL = 3600


@pytest.fixture
def tallies(redis_client: redis.Redis) -> Tallies:
    return Tallies(redis_client, state_ttl_seconds=TTL)


@pytest.fixture
def voters() -> Iterator[int]:
    """Voter numbers never used before in the test, so each vote is a new one."""
    return count(1)


def add_votes(tallies: Tallies, voters: Iterator[int], how_many: int) -> Counter[tuple[str, str]]:
    """Add `how_many` new votes to the pending tallies; their counts per law and choice."""
    votes = []
    for _ in range(how_many):
        n = next(voters)
        law = LAWS[n % len(LAWS)]
        choice = "non" if n % 3 == 0 else "oui"
        votes.append(TallyVote(vote_hash=voter_hash(n, law), law_id=law, choice=choice))
    assert tallies.add_pending(votes) == how_many
    return Counter((vote.law_id, vote.choice) for vote in votes)


def batches() -> dict[str, int]:
    from votes_app.resources import get_engine

    with get_engine().connect() as connection:
        rows = connection.execute(sa.text("SELECT batch_id, vote_count FROM tally_batches"))
        return {row.batch_id: row.vote_count for row in rows}


def nothing_in_flight(client: redis.Redis) -> bool:
    return client.exists(PENDING, FLUSHING, FLUSHING_BATCH_ID) == 0


def flush_all(tallies: Tallies) -> list[FlushResult]:
    done = []
    while (result := flush(tallies=tallies, session_scope=session_scope)) is not None:
        done.append(result)
    return done


def test_pending_counts_become_vote_results(
    tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    cast = add_votes(tallies, voters, 30)

    result = flush(tallies=tallies, session_scope=session_scope)

    assert result is not None and result.applied
    assert (result.vote_count, result.law_count) == (30, len(LAWS))
    assert results() == dict(cast)
    assert batches() == {result.batch_id: 30}
    assert nothing_in_flight(redis_client)
    assert flush(tallies=tallies, session_scope=session_scope) is None


def test_later_flushes_add_to_the_results(tallies: Tallies, voters: Iterator[int]) -> None:
    cast = add_votes(tallies, voters, 12)
    flush(tallies=tallies, session_scope=session_scope)
    cast += add_votes(tallies, voters, 7)

    flush(tallies=tallies, session_scope=session_scope)

    assert results() == dict(cast)
    assert sorted(batches().values()) == [7, 12]


def test_crash_after_commit_before_redis_cleanup(
    tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    cast = add_votes(tallies, voters, 20)
    batch = tallies.take_pending()
    assert batch is not None
    with session_scope() as session:
        assert apply_batch(session=session, batch=batch)
    # The crash: `tallies.finish(batch)` never runs. Votes keep arriving meanwhile.
    arrived_later = add_votes(tallies, voters, 9)

    recovery = flush(tallies=tallies, session_scope=session_scope)

    assert recovery is not None
    assert (recovery.batch_id, recovery.applied) == (batch.batch_id, False)
    assert results() == dict(cast)
    assert batches() == {batch.batch_id: 20}
    assert not redis_client.exists(FLUSHING, FLUSHING_BATCH_ID)
    assert tallies.pending_counts() == dict(arrived_later)

    flush(tallies=tallies, session_scope=session_scope)

    assert results() == dict(cast + arrived_later)
    assert nothing_in_flight(redis_client)


def test_crash_before_commit_applies_the_batch_later(
    tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    cast = add_votes(tallies, voters, 15)
    batch = tallies.take_pending()
    assert batch is not None
    with pytest.raises(ConnectionResetError), session_scope() as session:
        apply_batch(session=session, batch=batch)
        raise ConnectionResetError("PostgreSQL went away before the commit")
    assert results() == {}

    retry = flush(tallies=tallies, session_scope=session_scope)

    assert retry is not None
    assert (retry.batch_id, retry.applied) == (batch.batch_id, True)
    assert results() == dict(cast)
    assert batches() == {batch.batch_id: 15}
    assert nothing_in_flight(redis_client)


def test_a_second_flusher_is_handed_the_batch_in_flight(
    tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    other = Tallies(
        redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True), state_ttl_seconds=TTL
    )
    cast = add_votes(tallies, voters, 10)
    first = tallies.take_pending()
    add_votes(tallies, voters, 4)

    second = other.take_pending()

    assert first is not None and second is not None
    assert (second.batch_id, second.counts) == (first.batch_id, dict(cast))
    with session_scope() as session:
        applied = [apply_batch(session=session, batch=b) for b in (first, second)]
    assert applied == [True, False]
    assert results() == dict(cast)


def test_two_flushes_at_once_count_each_vote_once(
    redis_client: redis.Redis, voters: Iterator[int]
) -> None:
    # Each flusher has its own client, as two worker processes would.
    flushers = [
        Tallies(redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True), state_ttl_seconds=TTL)
        for _ in range(2)
    ]
    adder = Tallies(redis_client, state_ttl_seconds=TTL)
    rounds = 8
    start = threading.Barrier(len(flushers) + 1, timeout=30)
    cast: Counter[tuple[str, str]] = Counter()

    def flush_in_step(tallies: Tallies) -> list[FlushResult]:
        done = []
        for _ in range(rounds):
            start.wait()
            result = flush(tallies=tallies, session_scope=session_scope)
            if result is not None:
                done.append(result)
        return done

    with ThreadPoolExecutor(max_workers=len(flushers)) as pool:
        futures = [pool.submit(flush_in_step, tallies) for tallies in flushers]
        for n in range(rounds):
            cast += add_votes(adder, voters, 25 + n)
            start.wait()
            # More votes while both flush: they must land in this batch or a later one.
            cast += add_votes(adder, voters, 5)
        flushed = [result for future in futures for result in future.result()]
    flushed += flush_all(adder)

    applied = [result for result in flushed if result.applied]
    assert results() == dict(cast)
    assert sorted(batches()) == sorted(result.batch_id for result in applied)
    assert sum(batches().values()) == sum(cast.values())
    assert nothing_in_flight(redis_client)


def test_flush_tallies_task_on_a_real_worker(
    worker: Worker, tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    from votes_app.celery import app

    cast = add_votes(tallies, voters, 40)

    app.send_task("votes_app.flush_tallies")

    wait_for(lambda: results() == dict(cast), timeout=30, what="the worker to flush the tallies")
    wait_for(lambda: nothing_in_flight(redis_client), timeout=10, what="Redis to forget the batch")
    assert count_rows("tally_batches") == 1
