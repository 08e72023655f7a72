"""Live tallies: votes pending in Redis, flushed in batches into `vote_results`.

Redis only says which recorded votes to count next; PostgreSQL decides whether a vote has
been counted. A flush marks each vote's audit row with its batch id and adds the marked
rows to `vote_results` in one transaction, so a vote is counted once however often its
aggregation message comes back, whatever Redis forgets, and however many flushes run.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from votes_app import metrics
from votes_app.models import TallyBatch, VoteAudit, VoteResult, vote_statistics
from votes_app.schemas import Choice

PENDING = "tallies:pending"  # SET of vote hashes recorded but not yet flushed
FLUSHING = "tallies:flushing"  # the same, taken aside by a flush
FLUSHING_BATCH_ID = "tallies:flushing:batch_id"

CHOICES = ("oui", "non")
# Votes marked per statement: bounds the size of one statement, not of a batch. The hashes
# travel as one array parameter (`= ANY(...)`), not one bound value each, which PostgreSQL
# and psycopg2 take in far less time.
MARK_CHUNK = 200_000
# Stragglers swept per flush: they are rare, and each is a row locked until the commit.
STRAGGLER_CHUNK = 20_000

# Move the pending votes aside under a batch id. A batch left by a crashed flush is handed
# out again, with its old id, before anything new.
_TAKE = """
-- KEYS: tallies:pending, tallies:flushing, tallies:flushing:batch_id; ARGV: new batch id
if redis.call('EXISTS', KEYS[2]) == 0 then
    if redis.call('EXISTS', KEYS[1]) == 0 then return false end
    redis.call('RENAME', KEYS[1], KEYS[2])
    redis.call('SET', KEYS[3], ARGV[1])
end
return {redis.call('GET', KEYS[3]), redis.call('SMEMBERS', KEYS[2])}
"""

# Forget a batch once PostgreSQL has it, unless another flush already did.
_FINISH = """
-- KEYS: tallies:flushing, tallies:flushing:batch_id; ARGV: batch id
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


class TallyVote(BaseModel):
    """One recorded vote as `aggregate_vote` receives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vote_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    law_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,50}$")
    choice: Choice


@dataclass(frozen=True, slots=True)
class PendingBatch:
    batch_id: str
    vote_hashes: list[str]


@dataclass(frozen=True, slots=True)
class FlushResult:
    batch_id: str
    offered: int  # votes taken from Redis
    counted: dict[tuple[str, str], int]  # (law_id, choice) -> votes added to vote_results
    applied: bool  # False when PostgreSQL already had this batch

    @property
    def vote_count(self) -> int:
        return sum(self.counted.values())


class Tallies:
    """The pending votes in Redis and their scripts."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._take = client.register_script(_TAKE)
        self._finish = client.register_script(_FINISH)

    @metrics.redis_operation("add_pending")
    def add_pending(self, votes: Sequence[TallyVote]) -> int:
        """Queue votes for the next flush; a vote already pending is not added twice."""
        if not votes:
            return 0
        return int(self.redis.sadd(PENDING, *(vote.vote_hash for vote in votes)))

    @metrics.redis_operation("take_pending")
    def take_pending(self) -> PendingBatch | None:
        answer = self._take(keys=[PENDING, FLUSHING, FLUSHING_BATCH_ID], args=[uuid.uuid4().hex])
        if not answer:
            return None
        batch_id, vote_hashes = answer
        return PendingBatch(batch_id=batch_id, vote_hashes=list(vote_hashes))

    @metrics.redis_operation("finish")
    def finish(self, batch: PendingBatch) -> None:
        self._finish(keys=[FLUSHING, FLUSHING_BATCH_ID], args=[batch.batch_id])

    def pending_count(self) -> int:
        """Votes waiting for a flush (pending, or in a batch being flushed)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.scard(PENDING)
        pipe.scard(FLUSHING)
        return sum(int(n) for n in pipe.execute())


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _mark(
    session: Session, batch_id: str, which: sa.ColumnElement[bool]
) -> Counter[tuple[str, str]]:
    """Mark the uncounted votes `which` selects as counted by this batch; how many per
    law and choice. Locks audit rows only: vote_results is touched once, afterwards."""
    marked = (
        sa.update(VoteAudit)
        .values(tally_batch=batch_id)
        .where(VoteAudit.tally_batch.is_(None), which)
        .returning(VoteAudit.law_id, VoteAudit.choice)
        .cte("marked")
    )
    per_choice = sa.select(marked.c.law_id, marked.c.choice, sa.func.count()).group_by(
        marked.c.law_id, marked.c.choice
    )
    return Counter({(law_id, choice): n for law_id, choice, n in session.execute(per_choice)})


def _add_to_results(session: Session, counted: Counter[tuple[str, str]]) -> None:
    """One upsert (INSERT ... ON CONFLICT DO UPDATE) of the increments per law."""
    laws = sorted({law_id for law_id, _ in counted})
    if not laws:
        return
    rows = [
        {"law_id": law, "oui_count": counted[(law, "oui")], "non_count": counted[(law, "non")]}
        # Law order: concurrent flushes lock vote_results rows in the same order, so they
        # wait for each other instead of deadlocking.
        for law in laws
    ]
    upsert = pg_insert(VoteResult).values(rows)
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=[VoteResult.law_id],
            set_={
                "oui_count": VoteResult.oui_count + upsert.excluded.oui_count,
                "non_count": VoteResult.non_count + upsert.excluded.non_count,
                "updated_at": sa.func.now(),
            },
        )
    )


@metrics.database_operation("apply_tallies")
def apply_batch(
    *, session: Session, batch: PendingBatch, straggler_age: timedelta | None = None
) -> Counter[tuple[str, str]] | None:
    """Count the batch's votes in `vote_results`, each vote at most once ever.

    Returns what was added per law and choice, or None when this batch id was applied
    before (a flush that crashed after its commit, or a second beat flushing the same
    batch). The batch id is recorded in `tally_batches` in the same transaction.

    With `straggler_age`, votes recorded longer ago than that and still uncounted are
    counted too, whether or not Redis still lists them: an aggregation message that never
    came, or a Redis that restarted empty, delays a vote but cannot drop it.
    """
    first_time = session.scalar(
        pg_insert(TallyBatch)
        .values(batch_id=batch.batch_id, vote_count=0)
        .on_conflict_do_nothing()
        .returning(TallyBatch.batch_id)
    )
    if first_time is None:
        return None
    counted: Counter[tuple[str, str]] = Counter()
    for hashes in _chunks(sorted(batch.vote_hashes), MARK_CHUNK):
        listed = sa.literal(list(hashes), ARRAY(sa.String))
        counted += _mark(session, batch.batch_id, VoteAudit.vote_hash == sa.any_(listed))
    if straggler_age is not None:
        stragglers = (
            sa.select(VoteAudit.id)
            .where(
                VoteAudit.tally_batch.is_(None),
                VoteAudit.recorded_at < sa.func.now() - straggler_age,
            )
            .limit(STRAGGLER_CHUNK)
            # Another flush sweeping at the same moment takes other rows instead of waiting.
            .with_for_update(skip_locked=True)
        )
        counted += _mark(session, batch.batch_id, VoteAudit.id.in_(stragglers))
    _add_to_results(session, counted)
    session.execute(
        sa.update(TallyBatch)
        .where(TallyBatch.batch_id == batch.batch_id)
        .values(vote_count=sum(counted.values()))
    )
    return counted


def has_stragglers(
    session_scope: Callable[[], AbstractContextManager[Session]], straggler_age: timedelta
) -> bool:
    with session_scope() as session:
        return bool(
            session.scalar(
                sa.select(sa.literal(True))
                .where(
                    VoteAudit.tally_batch.is_(None),
                    VoteAudit.recorded_at < sa.func.now() - straggler_age,
                )
                .limit(1)
            )
        )


def flush(
    *,
    tallies: Tallies,
    session_scope: Callable[[], AbstractContextManager[Session]],
    straggler_age: timedelta | None = None,
) -> FlushResult | None:
    """Take the pending votes, count them once, then forget them.

    None when there was nothing to do: no votes pending and, if `straggler_age` is given,
    no straggler found either.
    """
    batch = tallies.take_pending()
    if batch is None:
        if straggler_age is None or not has_stragglers(session_scope, straggler_age):
            return None
        batch = PendingBatch(batch_id=uuid.uuid4().hex, vote_hashes=[])
    with session_scope() as session:
        counted = apply_batch(session=session, batch=batch, straggler_age=straggler_age)
    if batch.vote_hashes:
        tallies.finish(batch)
    return FlushResult(
        batch_id=batch.batch_id,
        offered=len(batch.vote_hashes),
        counted=dict(counted or {}),
        applied=counted is not None,
    )


def results_by_law(*, session: Session) -> dict[tuple[str, str], int]:
    """`vote_results` as `(law_id, choice) -> count`, the shape of the audit counts."""
    counts: dict[tuple[str, str], int] = {}
    for law_id, oui, non in session.execute(
        sa.select(VoteResult.law_id, VoteResult.oui_count, VoteResult.non_count)
    ):
        counts[(law_id, "oui")] = oui
        counts[(law_id, "non")] = non
    return counts


def statistics(*, session: Session, law_id: str | None = None) -> list[sa.Row[Any]]:
    """The `vote_statistics` view (counts, percentages, last update) per law, in law order."""
    query = sa.select(vote_statistics).order_by(vote_statistics.c.law_id)
    if law_id:
        query = query.where(vote_statistics.c.law_id == law_id)
    return list(session.execute(query))
