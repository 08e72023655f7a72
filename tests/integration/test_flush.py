"""Recording votes apart from their voters, and flushing ballots into vote_results once each:
redelivery, crashes, races, a real worker.

PostgreSQL decides: a flush moves every ballot it counts into `ballots_counted`, marked with
its batch, in the transaction that counts it.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests.support import (
    Worker,
    count_rows,
    load_roll,
    register_laws,
    results,
    vote,
    voter_hash,
    wait_for,
)
from votes_app import audit, reconcile, validation
from votes_app.ballot_box import BallotBox, claim_key
from votes_app.models import Ballot, VoteAudit
from votes_app.resources import session_scope
from votes_app.schemas import CastVote, Submission, Vote
from votes_app.tallies import FlushResult, count_waiting, flush

LAWS = ("law-001", "law-002", "law-003")
CAST_AT = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def laws_on_the_ballot() -> None:
    register_laws(*LAWS)


@pytest.fixture
def voters() -> Iterator[int]:
    """Voter numbers never used before in the test, so each vote is a new one."""
    return count(1)


def cast_votes(voters: Iterator[int], how_many: int, law: str | None = None) -> list[CastVote]:
    votes = []
    for _ in range(how_many):
        n = next(voters)
        law_id = law or LAWS[n % len(LAWS)]
        choice = "non" if n % 3 == 0 else "oui"
        cast = Vote(
            vote_hash=voter_hash(n, law_id), law_id=law_id, choice=choice, timestamp=CAST_AT
        )
        votes.append(CastVote(task_id=f"task-{n}", vote=cast))
    return votes


def record(voters: Iterator[int], how_many: int, law: str | None = None) -> list[CastVote]:
    """Record `how_many` new votes, voters and ballots, as validation does."""
    votes = cast_votes(voters, how_many, law)
    with session_scope() as session:
        assert len(audit.record_votes(session=session, votes=votes)) == how_many
    return votes


def tally(votes: Sequence[CastVote]) -> dict[tuple[str, str], int]:
    return dict(Counter((v.vote.law_id, v.vote.choice) for v in votes))


def marks() -> list[str | None]:
    """The batch that counted each ballot (None: not counted yet)."""
    with session_scope() as session:
        return list(session.scalars(sa.select(Ballot.tally_batch)))


def marked_by_batch() -> dict[str, dict[tuple[str, str], int]]:
    """Per batch id, the ballots it marked per law and choice."""
    with session_scope() as session:
        rows = session.execute(
            sa.select(Ballot.tally_batch, Ballot.law_id, Ballot.choice).where(
                Ballot.tally_batch.is_not(None)
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


def assert_each_ballot_counted_once() -> None:
    """Reconcile finds nothing: as many ballots as voters per law, vote_results equal to the
    ballots, every ballot marked by exactly one batch, and each batch's vote_count the
    number of ballots it marked."""
    with session_scope() as session:
        found = reconcile.reconcile(session=session)
    assert (found.uncounted, found.drifting, found.unmatched) == (0, [], [])
    per_batch = {b: sum(c.values()) for b, c in marked_by_batch().items()}
    assert batches() == per_batch


def flush_all(*, rounds: int = 50) -> list[FlushResult]:
    """Flush until there is nothing left to do; fail if that never happens."""
    done: list[FlushResult] = []
    for _ in range(rounds):
        result = flush(session_scope=session_scope)
        if result is None:
            return done
        done.append(result)
    raise AssertionError(f"still flushing after {rounds} rounds; the last: {done[-3:]}")


# --- recording ----------------------------------------------------------------------------


def test_a_vote_is_recorded_as_a_voter_and_a_ballot_that_share_only_the_law(
    voters: Iterator[int],
) -> None:
    votes = record(voters, 12)

    with session_scope() as session:
        voter_rows = session.execute(sa.select(VoteAudit)).scalars().all()
        ballot_rows = session.execute(sa.select(Ballot)).scalars().all()
    assert sorted(v.vote_hash for v in voter_rows) == sorted(v.vote.vote_hash for v in votes)
    assert Counter((b.law_id, b.choice) for b in ballot_rows) == Counter(tally(votes))
    assert {column.name for column in Ballot.__table__.columns} == {
        "ballot_id",
        "law_id",
        "choice",
        "tally_batch",
    }
    assert "choice" not in {column.name for column in VoteAudit.__table__.columns}
    assert all(b.ballot_id.version == 4 for b in ballot_rows)  # random, not a sequence
    assert {b.tally_batch for b in ballot_rows} == {None}


def test_ballots_are_written_in_an_order_of_their_own(engine: sa.Engine) -> None:
    # One transaction of 60 votes whose choices follow the voters' order exactly.
    votes = [
        CastVote(
            task_id=f"task-{n}",
            vote=Vote(
                vote_hash=voter_hash(n, "law-001"),
                law_id="law-001",
                choice="oui" if n % 2 else "non",
                timestamp=CAST_AT,
            ),
        )
        for n in range(60)
    ]
    with session_scope() as session:
        audit.record_votes(session=session, votes=votes)

    with engine.connect() as connection:
        on_disk = connection.scalars(sa.text("SELECT choice FROM ballots ORDER BY ctid")).all()
    assert sorted(on_disk) == sorted(v.vote.choice for v in votes)
    # In the voters' order, the choices alternate; on disk they must not follow that order.
    assert on_disk != [v.vote.choice for v in votes]


def test_a_voter_and_its_ballot_are_recorded_together_or_not_at_all(
    voters: Iterator[int],
) -> None:
    votes = cast_votes(voters, 5)

    with pytest.raises(RuntimeError, match="after the INSERTs"), session_scope() as session:
        audit.record_votes(session=session, votes=votes)
        raise RuntimeError("after the INSERTs, before the commit")

    assert (count_rows("vote_audit"), count_rows("ballots")) == (0, 0)


def test_a_message_twice_in_one_batch_records_one_ballot(voters: Iterator[int]) -> None:
    [once] = cast_votes(voters, 1)

    with session_scope() as session:
        recorded = audit.record_votes(session=session, votes=[once, once])

    assert recorded == {once.vote.vote_hash}
    assert (count_rows("vote_audit"), count_rows("ballots")) == (1, 1)


# --- one flush ----------------------------------------------------------------------------


def test_waiting_ballots_become_vote_results(voters: Iterator[int]) -> None:
    votes = record(voters, 30)

    result = flush(session_scope=session_scope)

    assert result is not None
    assert (result.counted, result.vote_count) == (tally(votes), 30)
    assert results() == tally(votes)
    [batch_id] = result.batch_ids
    assert batches() == {batch_id: 30}
    assert set(marks()) == {batch_id}
    assert flush(session_scope=session_scope) is None
    assert_each_ballot_counted_once()


def test_a_counted_ballot_shares_neither_transaction_nor_place_with_its_voter(
    engine: sa.Engine, voters: Iterator[int]
) -> None:
    record(voters, 30)  # voters and ballots in one transaction: the same xmin

    flush(session_scope=session_scope)

    with engine.connect() as connection:
        voters_xmin = set(connection.scalars(sa.text("SELECT xmin::text FROM vote_audit")))
        counted = connection.execute(
            sa.text("SELECT xmin::text, ballot_id FROM ballots_counted ORDER BY ctid")
        ).all()
    assert len(counted) == 30
    assert voters_xmin.isdisjoint(xmin for xmin, _ in counted)  # the flush's, not the vote's
    assert [b for _, b in counted] == sorted(b for _, b in counted)  # random ids, in order


def test_later_flushes_add_to_the_results(voters: Iterator[int]) -> None:
    first = record(voters, 12)
    flush(session_scope=session_scope)
    second = record(voters, 7)

    flush(session_scope=session_scope)

    assert results() == tally(first + second)
    assert sorted(batches().values()) == [7, 12]
    assert_each_ballot_counted_once()


def test_a_backlog_larger_than_a_statement_is_counted_in_one_flush(
    voters: Iterator[int],
) -> None:
    votes = record(voters, 50)

    with session_scope() as session:
        result = count_waiting(session=session, chunk=7)

    assert result is not None and result.counted == tally(votes)
    # A batch per statement: seven full ones and the last one.
    assert sorted(batches().values()) == [1] + [7] * 7
    assert set(batches()) == set(result.batch_ids)
    assert_each_ballot_counted_once()


def test_a_flush_with_nothing_to_do_writes_nothing(voters: Iterator[int]) -> None:
    assert flush(session_scope=session_scope) is None

    record(voters, 3)
    flush(session_scope=session_scope)
    assert flush(session_scope=session_scope) is None

    assert count_rows("tally_batches") == 1


def test_a_redelivered_validation_is_tallied_once(redis_client: redis.Redis) -> None:
    box = BallotBox(redis_client, claim_ttl_seconds=3600)
    cast = [(voter_hash(n, LAWS[n % 3]), LAWS[n % 3], ("oui", "non")[n % 2]) for n in range(12)]
    load_roll(h for h, _, _ in cast)
    submissions = [
        Submission(task_id=f"task-{n}", args=(), kwargs=vote(*c)) for n, c in enumerate(cast)
    ]

    def validate() -> validation.Outcome:
        outcome = validation.validate(
            submissions,
            ballot_box=box,
            session_scope=session_scope,
            now=CAST_AT + timedelta(minutes=5),
            max_clock_skew=timedelta(minutes=5),
        )
        assert outcome.rejections == []
        return outcome

    first = validate()
    flush(session_scope=session_scope)
    # The claims were dropped after the commit: only PostgreSQL remembers whose votes these are.
    assert not redis_client.exists(*(claim_key(h) for h, _, _ in cast))

    # The whole batch of validate_vote messages comes back (same task ids).
    second = validate()

    assert second.recorded == first.recorded  # each recognised as its own, not a duplicate
    assert flush(session_scope=session_scope) is None
    assert count_rows("ballots") == len(cast)
    assert results() == dict(Counter((law, choice) for _, law, choice in cast))
    assert_each_ballot_counted_once()


# --- crashes and races --------------------------------------------------------------------


def test_a_flush_that_dies_before_its_commit_leaves_every_ballot_to_the_next(
    voters: Iterator[int],
) -> None:
    votes = record(voters, 20)

    with pytest.raises(RuntimeError, match="killed"), session_scope() as session:
        lost = count_waiting(session=session)
        assert lost is not None and lost.counted == tally(votes)
        raise RuntimeError("killed between the marks and the commit")

    assert (results(), batches(), set(marks())) == ({}, {}, {None})
    flush_all()
    assert results() == tally(votes)
    assert_each_ballot_counted_once()


FLUSHERS = 3
ROUNDS = 8


def test_concurrent_flushes_count_each_ballot_once(voters: Iterator[int]) -> None:
    start = threading.Barrier(FLUSHERS + 1, timeout=30)
    recorded: list[CastVote] = []

    def flush_in_step() -> list[FlushResult]:
        done = []
        for _ in range(ROUNDS):
            start.wait()
            for _ in range(2):
                result = flush(session_scope=session_scope)
                if result is not None:
                    done.append(result)
        return done

    with ThreadPoolExecutor(max_workers=FLUSHERS) as pool:
        futures = [pool.submit(flush_in_step) for _ in range(FLUSHERS)]
        for n in range(ROUNDS):
            recorded += record(voters, 20 + n)
            start.wait()
            # More votes while they flush: this flush or a later one counts them.
            recorded += record(voters, 5)
        flushed = [result for future in futures for result in future.result()]
    flushed += flush_all()

    assert results() == tally(recorded)
    assert_each_ballot_counted_once()
    assert sum(result.vote_count for result in flushed) == len(recorded)
    # Every flush reported exactly what it marked.
    assert {b for r in flushed for b in r.batch_ids} == set(marked_by_batch())
    assert sum((Counter(r.counted) for r in flushed), Counter()) == Counter(tally(recorded))


def test_a_ballot_committed_while_a_flush_runs_is_counted_by_the_next_flush(
    engine: sa.Engine, voters: Iterator[int]
) -> None:
    waiting = record(voters, 10)
    late = cast_votes(voters, 3)
    with engine.connect() as recording:
        # A validation transaction under way when the flush starts, committed before the
        # flush commits: its ballots were written before the flush's statement, and are
        # visible to nobody until after it.
        audit.record_votes(session=Session(bind=recording), votes=late)
        with session_scope() as flushing:
            first = count_waiting(session=flushing)
            recording.commit()

    assert first is not None and first.counted == tally(waiting)
    assert Counter(marks())[None] == len(late)
    assert results() == tally(waiting)
    [second] = flush_all()
    assert second.counted == tally(late)
    assert results() == tally(waiting + late)
    assert_each_ballot_counted_once()


# --- a real worker ------------------------------------------------------------------------


def test_flush_tallies_task_on_a_real_worker(worker: Worker, voters: Iterator[int]) -> None:
    from votes_app.celery import app

    votes = record(voters, 40)

    app.send_task("votes_app.flush_tallies", task_id=str(uuid.uuid4()))

    wait_for(lambda: results() == tally(votes), timeout=30, what="the worker to flush")
    assert count_rows("tally_batches") == 1
    assert_each_ballot_counted_once()
