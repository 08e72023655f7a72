"""Flushing votes into vote_results once each: redelivery, Redis losses, crashes, races, worker.

PostgreSQL decides: a flush marks every audit row it counts, in the transaction that counts it.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests.conftest import TEST_REDIS_URL
from tests.support import Worker, count_rows, load_roll, results, vote, voter_hash, wait_for
from votes_app import audit, validation
from votes_app.ballot_box import BallotBox, claim_key
from votes_app.config import get_settings
from votes_app.models import VoteAudit
from votes_app.resources import session_scope
from votes_app.schemas import Ballot, Submission, Vote
from votes_app.tallies import (
    FLUSHING,
    FLUSHING_BATCH_ID,
    PENDING,
    FlushResult,
    PendingBatch,
    Tallies,
    TallyVote,
    apply_batch,
    flush,
)

LAWS = ("law-001", "law-002", "law-003")
CAST_AT = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
# What flush_tallies sweeps with (TALLY_STRAGGLER_SECONDS, not overridden by the suite).
STRAGGLER_AGE = timedelta(seconds=get_settings().tally_straggler_seconds)
SWEEP_ALL = timedelta(0)  # every recorded vote is a straggler at once


@pytest.fixture
def tallies(redis_client: redis.Redis) -> Tallies:
    return Tallies(redis_client)


@pytest.fixture
def voters() -> Iterator[int]:
    """Voter numbers never used before in the test, so each vote is a new one."""
    return count(1)


def record(voters: Iterator[int], how_many: int, law: str | None = None) -> list[TallyVote]:
    """Record `how_many` new votes in the audit log, as validation does; their tally messages."""
    ballots = []
    for _ in range(how_many):
        n = next(voters)
        law_id = law or LAWS[n % len(LAWS)]
        choice = "non" if n % 3 == 0 else "oui"
        cast = Vote(
            vote_hash=voter_hash(n, law_id), law_id=law_id, choice=choice, timestamp=CAST_AT
        )
        ballots.append(Ballot(task_id=f"task-{n}", vote=cast))
    with session_scope() as session:
        assert len(audit.record_votes(session=session, ballots=ballots)) == how_many
    return validation.Outcome(recorded=ballots).tally_votes()


def tally(votes: Sequence[TallyVote]) -> dict[tuple[str, str], int]:
    return dict(Counter((v.law_id, v.choice) for v in votes))


def age(votes: Sequence[TallyVote], by: timedelta) -> None:
    """Make votes look recorded `by` earlier: time passing, without waiting for it."""
    with session_scope() as session:
        session.execute(
            sa.update(VoteAudit)
            .where(VoteAudit.vote_hash.in_([v.vote_hash for v in votes]))
            .values(recorded_at=VoteAudit.recorded_at - by)
        )


def marks() -> dict[str, str | None]:
    """Each audited vote hash and the batch that counted it (None: not counted yet)."""
    with session_scope() as session:
        return dict(session.execute(sa.select(VoteAudit.vote_hash, VoteAudit.tally_batch)).all())


def marked_by_batch() -> dict[str, dict[tuple[str, str], int]]:
    """Per batch id, the votes it marked per law and choice."""
    with session_scope() as session:
        rows = session.execute(
            sa.select(VoteAudit.tally_batch, VoteAudit.law_id, VoteAudit.choice).where(
                VoteAudit.tally_batch.is_not(None)
            )
        )
        counted: dict[str, Counter[tuple[str, str]]] = {}
        for batch_id, law_id, choice in rows:
            counted.setdefault(str(batch_id), Counter())[(law_id, choice)] += 1
    return {batch_id: dict(c) for batch_id, c in counted.items()}


def batches() -> dict[str, int]:
    from votes_app.resources import get_engine

    with get_engine().connect() as connection:
        rows = connection.execute(sa.text("SELECT batch_id, vote_count FROM tally_batches"))
        return {row.batch_id: row.vote_count for row in rows}


def nothing_in_flight(client: redis.Redis) -> bool:
    return client.exists(PENDING, FLUSHING, FLUSHING_BATCH_ID) == 0


def assert_each_vote_counted_once() -> None:
    """vote_results equals the audit log, every audit row is marked by exactly one batch,
    and each batch's vote_count is the number of rows it marked."""
    with session_scope() as session:
        audited = audit.counts_by_law(session=session)
        uncounted = audit.uncounted(session=session)
    assert uncounted == 0
    assert results() == audited
    per_batch = {b: sum(c.values()) for b, c in marked_by_batch().items()}
    assert {b: n for b, n in batches().items() if n} == per_batch
    assert sum(batches().values()) == sum(audited.values())


def flush_all(
    tallies: Tallies, straggler_age: timedelta | None = None, *, rounds: int = 50
) -> list[FlushResult]:
    """Flush until there is nothing left to do; fail if that never happens."""
    done: list[FlushResult] = []
    for _ in range(rounds):
        result = flush(tallies=tallies, session_scope=session_scope, straggler_age=straggler_age)
        if result is None:
            return done
        done.append(result)
    raise AssertionError(f"still flushing after {rounds} rounds; the last: {done[-3:]}")


# --- one flush ----------------------------------------------------------------------------


def test_pending_votes_become_vote_results(
    tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    votes = record(voters, 30)
    assert tallies.add_pending(votes) == 30

    result = flush(tallies=tallies, session_scope=session_scope)

    assert result is not None and result.applied
    assert (result.offered, result.counted, result.vote_count) == (30, tally(votes), 30)
    assert results() == tally(votes)
    assert batches() == {result.batch_id: 30}
    assert set(marks().values()) == {result.batch_id}
    assert nothing_in_flight(redis_client)
    assert flush(tallies=tallies, session_scope=session_scope) is None
    assert_each_vote_counted_once()


def test_later_flushes_add_to_the_results(tallies: Tallies, voters: Iterator[int]) -> None:
    first = record(voters, 12)
    tallies.add_pending(first)
    flush(tallies=tallies, session_scope=session_scope)
    second = record(voters, 7)
    tallies.add_pending(second)

    flush(tallies=tallies, session_scope=session_scope)

    assert results() == tally(first + second)
    assert sorted(batches().values()) == [7, 12]
    assert_each_vote_counted_once()


def test_a_pending_vote_without_an_audit_row_is_not_counted(
    tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    recorded = record(voters, 10)
    never_recorded = [
        TallyVote(vote_hash=voter_hash(n, "law-001"), law_id="law-001", choice="oui")
        for n in range(10_000, 10_005)
    ]
    tallies.add_pending(recorded + never_recorded)

    result = flush(tallies=tallies, session_scope=session_scope)

    assert result is not None
    assert (result.offered, result.counted) == (15, tally(recorded))
    assert results() == tally(recorded)
    assert batches() == {result.batch_id: 10}
    assert nothing_in_flight(redis_client)
    assert_each_vote_counted_once()


# --- redelivered aggregation messages -----------------------------------------------------


def test_a_vote_added_to_pending_again_after_its_flush_is_not_counted_again(
    tallies: Tallies, voters: Iterator[int]
) -> None:
    first = record(voters, 10)
    tallies.add_pending(first)
    counted = flush(tallies=tallies, session_scope=session_scope)
    assert counted is not None
    marked_first = marks()
    later = record(voters, 3)

    # aggregate_vote's message comes back: Redis no longer knows these votes were counted.
    assert tallies.add_pending(first + later) == 13
    again = flush(tallies=tallies, session_scope=session_scope)

    assert again is not None and again.applied
    assert (again.offered, again.counted) == (13, tally(later))
    assert results() == tally(first + later)
    # The votes keep the batch that counted them first.
    assert (
        {h: marks()[h] for h in marked_first}
        == marked_first
        == dict.fromkeys(marked_first, counted.batch_id)
    )
    assert_each_vote_counted_once()


def test_a_vote_pending_again_while_its_batch_flushes_is_counted_once(
    tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    votes = record(voters, 8)
    tallies.add_pending(votes)
    batch = tallies.take_pending()
    assert batch is not None

    # The redelivery lands while the batch is set aside: the vote is in both sets.
    assert tallies.add_pending(votes[:3]) == 3
    flushed = flush_all(tallies)

    assert [(r.batch_id, r.offered, r.vote_count) for r in flushed][0] == (batch.batch_id, 8, 8)
    assert [(r.offered, r.counted) for r in flushed[1:]] == [(3, {})]
    assert results() == tally(votes)
    assert nothing_in_flight(redis_client)
    assert_each_vote_counted_once()


def test_a_redelivered_validation_is_tallied_once(
    tallies: Tallies, redis_client: redis.Redis
) -> None:
    box = BallotBox(redis_client, claim_ttl_seconds=3600)
    cast = [(voter_hash(n, LAWS[n % 3]), LAWS[n % 3], ("oui", "non")[n % 2]) for n in range(12)]
    load_roll(h for h, _, _ in cast)
    submissions = [
        Submission(task_id=f"task-{n}", args=(), kwargs=vote(*c)) for n, c in enumerate(cast)
    ]

    def validate_then_aggregate() -> list[TallyVote]:
        outcome = validation.validate(
            submissions,
            ballot_box=box,
            session_scope=session_scope,
            now=CAST_AT + timedelta(minutes=5),
            max_clock_skew=timedelta(minutes=5),
        )
        assert outcome.rejections == []
        tallies.add_pending(outcome.tally_votes())
        return outcome.tally_votes()

    first = validate_then_aggregate()
    flush(tallies=tallies, session_scope=session_scope)
    # The claims were dropped after the commit: only PostgreSQL remembers whose votes these are.
    assert not redis_client.exists(*(claim_key(h) for h, _, _ in cast))

    # The whole batch of validate_vote messages comes back (same task ids).
    second = validate_then_aggregate()
    again = flush(tallies=tallies, session_scope=session_scope)

    assert second == first
    assert again is not None and (again.offered, again.counted) == (len(cast), {})
    assert results() == dict(Counter((law, choice) for _, law, choice in cast))
    assert_each_vote_counted_once()


# --- Redis forgets: the straggler sweep ---------------------------------------------------


@pytest.mark.parametrize("loss", ["del-pending", "flushdb", "flushdb-during-flush"])
def test_votes_redis_lost_are_counted_once_they_are_stragglers(
    loss: str, tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    lost = record(voters, 25)
    tallies.add_pending(lost)
    if loss == "del-pending":
        redis_client.delete(PENDING)
    elif loss == "flushdb":
        redis_client.flushdb()
    else:
        # A flush set the batch aside, then its worker died and Redis restarted empty.
        assert tallies.take_pending() is not None
        redis_client.flushdb()
    assert tallies.pending_count() == 0

    # Younger than the straggler age: not counted yet, and nothing written.
    assert flush(tallies=tallies, session_scope=session_scope, straggler_age=STRAGGLER_AGE) is None
    assert (results(), batches(), set(marks().values())) == ({}, {}, {None})

    age(lost, STRAGGLER_AGE + timedelta(seconds=1))
    swept = flush(tallies=tallies, session_scope=session_scope, straggler_age=STRAGGLER_AGE)

    assert swept is not None and swept.applied
    assert (swept.offered, swept.counted) == (0, tally(lost))
    assert results() == tally(lost)
    assert batches() == {swept.batch_id: 25}
    # Exactly once: neither the next sweep nor the aggregation message coming late adds them.
    assert flush(tallies=tallies, session_scope=session_scope, straggler_age=STRAGGLER_AGE) is None
    tallies.add_pending(lost)
    late = flush(tallies=tallies, session_scope=session_scope, straggler_age=STRAGGLER_AGE)
    assert late is not None and (late.offered, late.counted) == (25, {})
    assert results() == tally(lost)
    assert_each_vote_counted_once()


def test_stragglers_are_counted_only_past_their_age(
    tallies: Tallies, voters: Iterator[int]
) -> None:
    old = record(voters, 9)
    age(old, STRAGGLER_AGE + timedelta(seconds=1))
    young = record(voters, 7)
    age(young, STRAGGLER_AGE - timedelta(seconds=10))
    listed = record(voters, 5)
    tallies.add_pending(listed)

    result = flush(tallies=tallies, session_scope=session_scope, straggler_age=STRAGGLER_AGE)

    assert result is not None
    assert (result.offered, result.counted) == (5, tally(old + listed))
    assert {h for h, batch in marks().items() if batch is None} == {v.vote_hash for v in young}

    age(young, timedelta(seconds=11))
    later = flush(tallies=tallies, session_scope=session_scope, straggler_age=STRAGGLER_AGE)

    assert later is not None and (later.offered, later.counted) == (0, tally(young))
    assert results() == tally(old + young + listed)
    assert_each_vote_counted_once()


def test_without_a_straggler_age_only_listed_votes_are_counted(
    tallies: Tallies, voters: Iterator[int]
) -> None:
    unlisted = record(voters, 6)
    age(unlisted, timedelta(days=1))
    listed = record(voters, 4)
    tallies.add_pending(listed)

    result = flush(tallies=tallies, session_scope=session_scope)

    assert result is not None and result.counted == tally(listed)
    assert flush(tallies=tallies, session_scope=session_scope) is None
    assert results() == tally(listed)


def test_a_flush_with_nothing_to_do_writes_nothing(tallies: Tallies, voters: Iterator[int]) -> None:
    for straggler_age in (None, SWEEP_ALL, STRAGGLER_AGE):
        assert (
            flush(tallies=tallies, session_scope=session_scope, straggler_age=straggler_age) is None
        )
    assert count_rows("tally_batches") == count_rows("vote_results") == 0

    counted = record(voters, 4)
    tallies.add_pending(counted)
    assert flush(tallies=tallies, session_scope=session_scope) is not None
    record(voters, 3)  # recorded, not listed, not yet stragglers

    assert flush(tallies=tallies, session_scope=session_scope) is None
    assert flush(tallies=tallies, session_scope=session_scope, straggler_age=STRAGGLER_AGE) is None
    assert count_rows("tally_batches") == 1
    assert results() == tally(counted)


# --- crashes ------------------------------------------------------------------------------


def test_crash_after_commit_before_redis_cleanup(
    tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    cast = record(voters, 20)
    tallies.add_pending(cast)
    batch = tallies.take_pending()
    assert batch is not None
    with session_scope() as session:
        assert apply_batch(session=session, batch=batch) == tally(cast)
    # The crash: `tallies.finish(batch)` never runs. Votes keep arriving meanwhile.
    arrived_later = record(voters, 9)
    tallies.add_pending(arrived_later)

    recovery = flush(tallies=tallies, session_scope=session_scope)

    assert recovery is not None
    assert (recovery.batch_id, recovery.applied) == (batch.batch_id, False)
    assert (recovery.offered, recovery.counted) == (20, {})
    assert results() == tally(cast)
    assert batches() == {batch.batch_id: 20}
    assert not redis_client.exists(FLUSHING, FLUSHING_BATCH_ID)
    assert tallies.pending_count() == 9

    flush(tallies=tallies, session_scope=session_scope)

    assert results() == tally(cast + arrived_later)
    assert nothing_in_flight(redis_client)
    assert_each_vote_counted_once()


def test_crash_after_commit_then_redelivery_and_sweeps_count_nothing_twice(
    tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    cast = record(voters, 20)
    tallies.add_pending(cast)
    batch = tallies.take_pending()
    assert batch is not None
    with session_scope() as session:
        apply_batch(session=session, batch=batch, straggler_age=SWEEP_ALL)
    # No finish; the aggregation messages come back; more votes, some never listed.
    tallies.add_pending(cast)
    listed = record(voters, 6)
    tallies.add_pending(listed)
    unlisted = record(voters, 4)

    flushed = flush_all(tallies, straggler_age=SWEEP_ALL)

    assert flushed[0].batch_id == batch.batch_id and not flushed[0].applied
    assert sum(result.vote_count for result in flushed) == len(listed + unlisted)
    assert results() == tally(cast + listed + unlisted)
    assert nothing_in_flight(redis_client)
    assert_each_vote_counted_once()


def test_crash_before_commit_applies_the_batch_later(
    tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    cast = record(voters, 15)
    tallies.add_pending(cast)
    batch = tallies.take_pending()
    assert batch is not None
    with pytest.raises(ConnectionResetError), session_scope() as session:
        apply_batch(session=session, batch=batch, straggler_age=SWEEP_ALL)
        raise ConnectionResetError("PostgreSQL went away before the commit")
    assert (results(), batches(), set(marks().values())) == ({}, {}, {None})

    retry = flush(tallies=tallies, session_scope=session_scope)

    assert retry is not None
    assert (retry.batch_id, retry.applied, retry.counted) == (batch.batch_id, True, tally(cast))
    assert results() == tally(cast)
    assert batches() == {batch.batch_id: 15}
    assert nothing_in_flight(redis_client)
    assert_each_vote_counted_once()


# --- concurrent flushes -------------------------------------------------------------------


def test_a_second_flusher_is_handed_the_batch_in_flight(
    tallies: Tallies, voters: Iterator[int]
) -> None:
    other = Tallies(redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True))
    cast = record(voters, 10)
    tallies.add_pending(cast)
    first = tallies.take_pending()
    tallies.add_pending(record(voters, 4))

    second = other.take_pending()

    assert first is not None and second is not None
    assert second.batch_id == first.batch_id
    assert (
        sorted(second.vote_hashes) == sorted(first.vote_hashes) == sorted(v.vote_hash for v in cast)
    )
    with session_scope() as session:
        applied = [apply_batch(session=session, batch=b) for b in (first, second)]
    assert applied == [tally(cast), None]
    assert results() == tally(cast)


FLUSHERS = 3
ROUNDS = 8


def test_concurrent_flushes_and_sweeps_count_each_vote_once(
    redis_client: redis.Redis, voters: Iterator[int]
) -> None:
    # Each flusher has its own Redis client, as worker processes would, and sweeps every
    # uncounted vote it finds while the others flush the pending ones.
    flushers = [
        Tallies(redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True))
        for _ in range(FLUSHERS)
    ]
    adder = Tallies(redis_client)
    start = threading.Barrier(FLUSHERS + 1, timeout=30)
    recorded: list[TallyVote] = []

    def flush_in_step(tallies: Tallies) -> list[FlushResult]:
        done = []
        for _ in range(ROUNDS):
            start.wait()
            for _ in range(2):
                result = flush(
                    tallies=tallies, session_scope=session_scope, straggler_age=SWEEP_ALL
                )
                if result is not None:
                    done.append(result)
        return done

    with ThreadPoolExecutor(max_workers=FLUSHERS) as pool:
        futures = [pool.submit(flush_in_step, tallies) for tallies in flushers]
        for n in range(ROUNDS):
            listed = record(voters, 20 + n)
            unlisted = record(voters, 5)  # their aggregation messages never come
            # Redelivered aggregation messages of votes that earlier rounds flushed.
            adder.add_pending(listed + recorded[-10:])
            recorded += listed + unlisted
            start.wait()
            # More votes while they flush: this flush or a later one counts them.
            more = record(voters, 5)
            adder.add_pending(more)
            recorded += more
        flushed = [result for future in futures for result in future.result()]
    flushed += flush_all(adder, straggler_age=SWEEP_ALL)

    assert results() == tally(recorded)
    assert_each_vote_counted_once()
    assert sum(result.vote_count for result in flushed) == len(recorded)
    # Every flush reported exactly what it marked, and only applied flushes marked anything.
    marked = marked_by_batch()
    assert {r.batch_id: r.counted for r in flushed if r.vote_count} == marked
    assert all(r.applied for r in flushed if r.vote_count)
    assert nothing_in_flight(redis_client)


# --- a real worker ------------------------------------------------------------------------


def test_flush_tallies_task_on_a_real_worker(
    worker: Worker, tallies: Tallies, voters: Iterator[int], redis_client: redis.Redis
) -> None:
    from votes_app.celery import app

    listed = record(voters, 40)
    tallies.add_pending(listed)
    forgotten = record(voters, 6)  # Redis never listed them, long ago
    age(forgotten, STRAGGLER_AGE + timedelta(seconds=1))
    young = record(voters, 5)  # not listed, and not yet stragglers

    app.send_task("votes_app.flush_tallies")

    wait_for(
        lambda: results() == tally(listed + forgotten),
        timeout=30,
        what="the worker to flush the pending votes and the stragglers",
    )
    wait_for(lambda: nothing_in_flight(redis_client), timeout=10, what="Redis to forget the batch")
    assert count_rows("tally_batches") == 1
    assert {h for h, batch in marks().items() if batch is None} == {v.vote_hash for v in young}


# --- found while testing ------------------------------------------------------------------


def test_a_listed_flush_and_a_sweep_at_once_do_not_deadlock(
    engine: sa.Engine, tallies: Tallies, voters: Iterator[int]
) -> None:
    # Two flushes with different batches overlap when one found nothing pending and only
    # sweeps while the other takes the votes that arrived just after. The sweeps share the
    # stragglers: each skips the rows another transaction holds (here a third one, as a
    # third flush or the sweep's LIMIT under a backlog would). An event hook holds the
    # listed flush between its two statements; everything else is the real thing.
    listed = record(voters, 1, "law-b")
    swept_by_the_sweeper = record(voters, 1, "law-a") + record(voters, 1, "law-b")
    held_elsewhere = record(voters, 1, "law-a")
    between_statements, go_on = threading.Event(), threading.Event()
    sweeper_pid: list[int] = []

    def hold_before_the_sweep(conn: sa.Connection, cursor: Any, statement: str, *rest: Any) -> None:
        if "SKIP LOCKED" in statement and not between_statements.is_set():
            between_statements.set()
            assert go_on.wait(timeout=30)

    def apply(batch: PendingBatch, *, hold: bool) -> object:
        with engine.connect() as connection:
            if hold:
                sa.event.listen(connection, "before_cursor_execute", hold_before_the_sweep)
            else:
                sweeper_pid.append(int(connection.scalar(sa.text("SELECT pg_backend_pid()")) or 0))
                connection.commit()
            with Session(connection) as session:
                counted = apply_batch(session=session, batch=batch, straggler_age=SWEEP_ALL)
                session.commit()
                return counted

    def sweeper_waits_for_a_lock() -> bool:
        with engine.connect() as connection:
            return bool(
                connection.scalar(
                    sa.text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"),
                    {"p": sweeper_pid[0]},
                )
            )

    with engine.connect() as third, ThreadPoolExecutor(max_workers=2) as pool:
        third.execute(
            sa.select(VoteAudit.id)
            .where(VoteAudit.vote_hash == held_elsewhere[0].vote_hash)
            .with_for_update()
        )
        try:
            lister = pool.submit(
                apply, PendingBatch("listed", [v.vote_hash for v in listed]), hold=True
            )
            wait_for(between_statements.is_set, timeout=10, what="the listed flush to hold law-b")
            sweeper = pool.submit(apply, PendingBatch("sweep", []), hold=False)
            wait_for(lambda: sweeper_pid, timeout=10, what="the sweep to connect")
            # Today it holds law-a and waits for law-b; a flush that locks in one order finishes.
            wait_for(
                lambda: sweeper.done() or sweeper_waits_for_a_lock(),
                timeout=10,
                what="the sweep to finish, or to hold law-a and wait for law-b",
            )
            third.rollback()
        finally:
            go_on.set()
        outcomes = []
        for future in (lister, sweeper):
            try:
                outcomes.append(future.result(timeout=60))
            except sa.exc.OperationalError as exc:
                outcomes.append(exc)

    # Whatever happened, vote_results holds exactly the marked votes: none half-counted,
    # and the next flushes count what is left.
    marked: Counter[tuple[str, str]] = Counter()
    for counted in marked_by_batch().values():
        marked.update(counted)
    assert results() == dict(marked)
    flush_all(tallies, straggler_age=SWEEP_ALL)
    assert results() == tally(listed + swept_by_the_sweeper + held_elsewhere)
    assert_each_vote_counted_once()
    # But neither flush should have failed.
    for outcome in outcomes:
        if isinstance(outcome, sa.exc.OperationalError):
            raise outcome
