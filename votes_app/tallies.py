"""Live tallies: pending counters in Redis, flushed in batches into `vote_results`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import cast

import redis
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from votes_app.ballot_box import vote_state_key
from votes_app.models import TallyBatch, VoteResult
from votes_app.schemas import Choice

PENDING = "tallies:pending"
FLUSHING = "tallies:flushing"
FLUSHING_BATCH_ID = "tallies:flushing:batch_id"

CHOICES = ("oui", "non")

# Add a vote to the pending counters at most once, however often its message comes back.
_ADD = """
-- KEYS: vote_state:{hash}, tallies:pending; ARGV: field, state ttl
if redis.call('GET', KEYS[1]) == 'tallied' then return 0 end
redis.call('SET', KEYS[1], 'tallied', 'EX', ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 1
"""

# Move the pending counters aside under a batch id. A batch left by a crashed flush is
# handed out again, with its old id, before anything new.
_TAKE = """
-- KEYS: tallies:pending, tallies:flushing, tallies:flushing:batch_id; ARGV: new batch id
if redis.call('EXISTS', KEYS[2]) == 0 then
    if redis.call('EXISTS', KEYS[1]) == 0 then return false end
    redis.call('RENAME', KEYS[1], KEYS[2])
    redis.call('SET', KEYS[3], ARGV[1])
end
return {redis.call('GET', KEYS[3]), redis.call('HGETALL', KEYS[2])}
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
    counts: dict[tuple[str, str], int]  # (law_id, choice) -> votes

    @property
    def vote_count(self) -> int:
        return sum(self.counts.values())

    def rows(self) -> list[dict[str, object]]:
        """One `vote_results` increment per law, in law order (a fixed lock order)."""
        laws = sorted({law_id for law_id, _ in self.counts})
        return [
            {
                "law_id": law_id,
                "oui_count": self.counts.get((law_id, "oui"), 0),
                "non_count": self.counts.get((law_id, "non"), 0),
            }
            for law_id in laws
        ]


@dataclass(frozen=True, slots=True)
class FlushResult:
    batch_id: str
    vote_count: int
    law_count: int
    applied: bool  # False when PostgreSQL already had this batch


class Tallies:
    """The pending counters in Redis and their scripts."""

    def __init__(self, client: redis.Redis, *, state_ttl_seconds: int) -> None:
        self.redis = client
        self.state_ttl = state_ttl_seconds
        self._add = client.register_script(_ADD)
        self._take = client.register_script(_TAKE)
        self._finish = client.register_script(_FINISH)

    def add_pending(self, votes: Sequence[TallyVote]) -> int:
        """Count each vote once in the pending tallies; how many were new."""
        pipe = self.redis.pipeline(transaction=False)
        for vote in votes:
            self._add(
                keys=[vote_state_key(vote.vote_hash), PENDING],
                args=[f"{vote.law_id}:{vote.choice}", self.state_ttl],
                client=pipe,
            )
        return sum(int(added) for added in pipe.execute())

    def take_pending(self) -> PendingBatch | None:
        answer = self._take(keys=[PENDING, FLUSHING, FLUSHING_BATCH_ID], args=[uuid.uuid4().hex])
        if not answer:
            return None
        batch_id, flat = answer
        return PendingBatch(batch_id=batch_id, counts=_parse_counts(flat))

    def finish(self, batch: PendingBatch) -> None:
        self._finish(keys=[FLUSHING, FLUSHING_BATCH_ID], args=[batch.batch_id])

    def pending_counts(self) -> dict[tuple[str, str], int]:
        """What waits for the next flush (both pending and a batch being flushed)."""
        counts = _parse_counts(cast(dict[str, str], self.redis.hgetall(PENDING)))
        flushing = cast(dict[str, str], self.redis.hgetall(FLUSHING))
        for key, value in _parse_counts(flushing).items():
            counts[key] = counts.get(key, 0) + value
        return counts


def _parse_counts(flat: Iterable[str] | dict[str, str]) -> dict[tuple[str, str], int]:
    items = flat.items() if isinstance(flat, dict) else zip(*[iter(flat)] * 2, strict=True)
    counts: dict[tuple[str, str], int] = {}
    for field, value in items:
        law_id, _, choice = field.rpartition(":")
        counts[(law_id, choice)] = int(value)
    return counts


def apply_batch(*, session: Session, batch: PendingBatch) -> bool:
    """Add a batch to `vote_results` unless it was added before; True if it was applied now.

    The batch id goes into `tally_batches` in the same transaction as the upsert: a flush
    that crashed after its commit, or a second beat flushing the same batch, finds the id
    there and adds nothing.
    """
    first_time = session.scalar(
        pg_insert(TallyBatch)
        .values(batch_id=batch.batch_id, vote_count=batch.vote_count)
        .on_conflict_do_nothing()
        .returning(TallyBatch.batch_id)
    )
    if first_time is None:
        return False
    rows = batch.rows()
    if rows:
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
    return True


def flush(
    *, tallies: Tallies, session_scope: Callable[[], AbstractContextManager[Session]]
) -> FlushResult | None:
    """Take the pending tallies, apply them once, then forget them; None if nothing pends."""
    batch = tallies.take_pending()
    if batch is None:
        return None
    with session_scope() as session:
        applied = apply_batch(session=session, batch=batch)
    tallies.finish(batch)
    return FlushResult(
        batch_id=batch.batch_id,
        vote_count=batch.vote_count,
        law_count=len(batch.rows()),
        applied=applied,
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
