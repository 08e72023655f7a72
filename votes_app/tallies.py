"""Tallies: the ballots not yet counted, added to `vote_results` by a flush, each exactly once.

PostgreSQL alone decides whether a ballot has been counted. A flush marks every uncounted
ballot it can lock with its batch id and adds the marked ballots to `vote_results`, in one
transaction: a ballot is counted once however many flushes run, whatever crashes, and a
ballot no flush has seen yet waits for the next one, never longer.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import Field, StringConstraints, TypeAdapter
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from votes_app import metrics
from votes_app.models import Ballot, TallyBatch, VoteResult, vote_statistics
from votes_app.schemas import LAW_ID_PATTERN, Choice

CHOICES = ("oui", "non")
LawId = Annotated[str, StringConstraints(pattern=f"^{LAW_ID_PATTERN.pattern}$")]
# What aggregation hears of a validation batch: how many votes were recorded per law and
# choice, no voter. Bounded: a forged message must not create a metric series per invented law.
RECORDED: TypeAdapter[dict[str, dict[str, int]]] = TypeAdapter(
    Annotated[dict[LawId, dict[Choice, Annotated[int, Field(ge=1)]]], Field(max_length=10_000)]
)
# Ballots marked per statement: bounds one statement, not a flush, which marks until none
# is left (a backlog of a million after an outage of beat goes in a few statements).
MARK_CHUNK = 200_000


@dataclass(frozen=True, slots=True)
class FlushResult:
    batch_id: str
    counted: dict[tuple[str, str], int]  # (law_id, choice) -> ballots added to vote_results

    @property
    def vote_count(self) -> int:
        return sum(self.counted.values())


def _mark(session: Session, batch_id: str, limit: int) -> Counter[tuple[str, str]]:
    """Mark up to `limit` uncounted ballots as counted by this batch; how many per law and
    choice. Locks ballot rows only: vote_results is touched once, afterwards."""
    # Another flush marking at the same moment takes other rows instead of waiting.
    uncounted = (
        sa.select(Ballot.ballot_id)
        .where(Ballot.tally_batch.is_(None))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    marked = (
        sa.update(Ballot)
        .values(tally_batch=batch_id)
        .where(Ballot.tally_batch.is_(None), Ballot.ballot_id.in_(uncounted.scalar_subquery()))
        .returning(Ballot.law_id, Ballot.choice)
        .cte("marked")
    )
    per_choice = sa.select(marked.c.law_id, marked.c.choice, sa.func.count()).group_by(
        marked.c.law_id, marked.c.choice
    )
    return Counter({(law_id, choice): n for law_id, choice, n in session.execute(per_choice)})


def _add_to_results(session: Session, counted: Counter[tuple[str, str]]) -> None:
    """One upsert (INSERT ... ON CONFLICT DO UPDATE) of the increments per law."""
    laws = sorted({law_id for law_id, _ in counted})
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
    *, session: Session, batch_id: str, chunk: int = MARK_CHUNK
) -> Counter[tuple[str, str]]:
    """Count every uncounted ballot this transaction can lock in `vote_results`, under
    `batch_id`; what was added per law and choice (nothing: no batch is recorded).

    Every ballot committed before this runs and not locked by another flush is counted;
    one committed meanwhile waits for the next flush.
    """
    counted: Counter[tuple[str, str]] = Counter()
    while True:
        marked = _mark(session, batch_id, chunk)
        counted += marked
        if sum(marked.values()) < chunk:
            break
    if counted:
        _add_to_results(session, counted)
        session.execute(
            sa.insert(TallyBatch).values(batch_id=batch_id, vote_count=sum(counted.values()))
        )
    return counted


def flush(*, session_scope: Callable[[], AbstractContextManager[Session]]) -> FlushResult | None:
    """Count the ballots waiting, once; None when there were none."""
    batch_id = uuid.uuid4().hex
    with session_scope() as session:
        counted = apply_batch(session=session, batch_id=batch_id)
    return FlushResult(batch_id, dict(counted)) if counted else None


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
