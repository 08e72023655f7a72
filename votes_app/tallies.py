"""Tallies: the ballots not yet counted, added to `vote_results` by a flush, each exactly once.

PostgreSQL alone decides whether a ballot has been counted. A ballot waits in the partition
`ballots_uncounted` until a flush moves it, marked with a batch id, into `ballots_counted`
(`count_ballots`, migration 0005); the same transaction adds the moved ballots to
`vote_results` and extends each law's hash chain (`votes_app.chain`). A ballot is moved once
however many flushes run, whatever crashes, and one committed while a flush runs waits for
the next one, never longer: a flush moves what its statement sees committed, and nothing
else deletes a waiting ballot.
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

from votes_app import chain, laws, metrics
from votes_app.models import Ballot, TallyBatch, VoteResult, vote_statistics
from votes_app.schemas import LAW_ID_PATTERN, Choice

CHOICES = ("oui", "non")
LawId = Annotated[str, StringConstraints(pattern=f"^{LAW_ID_PATTERN.pattern}$")]
# What aggregation hears of a validation batch: how many votes were recorded per law and
# choice, no voter. Bounded: a forged message must not create a metric series per invented law.
RECORDED: TypeAdapter[dict[str, dict[str, int]]] = TypeAdapter(
    Annotated[dict[LawId, dict[Choice, Annotated[int, Field(ge=1)]]], Field(max_length=10_000)]
)
# Ballots moved per statement: bounds one statement (and the text a digest is made of), not
# a flush, which moves batches until none is left (a backlog of a million after an outage of
# beat goes in a few statements).
MARK_CHUNK = 200_000


# One flush at a time (a transaction-level advisory lock, which count_ballots takes too):
# each extends the laws' chains from the link the last one left.
FLUSH_LOCK = 0x766F746573  # "votes"

# The SECURITY DEFINER function of migration 0005: the application's role moves ballots
# through it and may not update or delete one itself.
_MARK = sa.text(
    "SELECT law_id, oui, non, ballots_digest AS digest FROM count_ballots(:batch_id, :limit)"
)


@dataclass(frozen=True, slots=True)
class FlushResult:
    batch_ids: list[str]  # one batch per statement's worth of ballots
    counted: dict[tuple[str, str], int]  # (law_id, choice) -> ballots added to vote_results

    @property
    def vote_count(self) -> int:
        return sum(self.counted.values())


def _mark(session: Session, batch_id: str, limit: int) -> dict[str, chain.Counted]:
    """Move up to `limit` waiting ballots into `ballots_counted`, marked with this batch;
    per law, how many of each choice and their digest. Touches ballots only: vote_results
    is updated after."""
    rows = session.execute(_MARK, {"batch_id": batch_id, "limit": limit})
    return {row.law_id: chain.Counted(row.oui, row.non, row.digest) for row in rows}


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
def count_waiting(*, session: Session, chunk: int = MARK_CHUNK) -> FlushResult | None:
    """Count every ballot waiting, in this transaction: move each into `ballots_counted`
    under a batch id, add it to `vote_results`, record the batch and extend each law's chain.
    None when none waits.

    Every ballot committed before a batch's statement starts is counted; one committed
    meanwhile waits for the next batch or the next flush.
    """
    session.execute(sa.select(sa.func.pg_advisory_xact_lock(FLUSH_LOCK)))
    batch_ids: list[str] = []
    counted: Counter[tuple[str, str]] = Counter()
    while True:
        batch_id = uuid.uuid4().hex
        per_law = _mark(session, batch_id, chunk)
        if not per_law:
            break
        batch: Counter[tuple[str, str]] = Counter()
        for law_id, law_counted in per_law.items():
            batch[(law_id, "oui")] += law_counted.oui
            batch[(law_id, "non")] += law_counted.non
        _add_to_results(session, batch)
        session.execute(
            sa.insert(TallyBatch).values(batch_id=batch_id, vote_count=sum(batch.values()))
        )
        chain.extend(session, batch_id=batch_id, per_law=per_law)
        batch_ids.append(batch_id)
        counted += batch
        if sum(batch.values()) < chunk:
            break
    return FlushResult(batch_ids, dict(+counted)) if batch_ids else None


def flush(
    *, session_scope: Callable[[], AbstractContextManager[Session]], chunk: int = MARK_CHUNK
) -> FlushResult | None:
    """Count the ballots waiting, once; None when there were none."""
    with session_scope() as session:
        return count_waiting(session=session, chunk=chunk)


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


def recount(*, session: Session, law_id: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Set the law's `vote_results` to what its counted ballots say; `(before, after)` as
    `(oui, non)`. Refused on a certified law (PostgreSQL refuses it too)."""
    law = laws.get(session=session, law_id=law_id, lock=True)
    if law.state == "certified":
        raise laws.LawError(f"law {law_id} is certified: its tallies are final")
    oui, non = session.execute(
        sa.select(
            sa.func.count().filter(Ballot.choice == "oui"),
            sa.func.count().filter(Ballot.choice == "non"),
        ).where(Ballot.law_id == law_id, Ballot.tally_batch.is_not(None))
    ).one()
    tallied = session.get(VoteResult, law_id)
    before = (tallied.oui_count, tallied.non_count) if tallied else (0, 0)
    upsert = pg_insert(VoteResult).values(law_id=law_id, oui_count=oui, non_count=non)
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=[VoteResult.law_id],
            set_={"oui_count": oui, "non_count": non, "updated_at": sa.func.now()},
        )
    )
    return before, (int(oui), int(non))
