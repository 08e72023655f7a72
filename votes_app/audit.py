"""The audit log in PostgreSQL: one row per accepted vote, UNIQUE on its hash."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from votes_app import metrics
from votes_app.models import Base, VoteAudit
from votes_app.schemas import Ballot

# One statement for every batch, so SQLAlchemy compiles it once; executed with a list of
# rows, its "insertmanyvalues" mode sends them as one multi-row INSERT ... RETURNING.
_RECORD = (
    pg_insert(Base.metadata.tables[VoteAudit.__tablename__])
    .on_conflict_do_nothing(index_elements=[VoteAudit.vote_hash])
    .returning(VoteAudit.vote_hash)
)


@metrics.database_operation("record_votes")
def record_votes(*, session: Session, ballots: Sequence[Ballot]) -> set[str]:
    """Insert the ballots in one round trip; the hashes that were new.

    A hash already present is left alone (ON CONFLICT DO NOTHING): the UNIQUE constraint,
    not Redis, has the last word on whether a voter has voted.
    """
    if not ballots:
        return set()
    rows = [
        {
            "vote_hash": ballot.vote.vote_hash,
            "law_id": ballot.vote.law_id,
            "choice": ballot.vote.choice,
            "voted_at": ballot.vote.timestamp,
            "task_id": ballot.task_id,
        }
        for ballot in ballots
    ]
    return set(session.scalars(_RECORD, rows))


@metrics.database_operation("lookup_recorders")
def recorders(*, session: Session, vote_hashes: Collection[str]) -> dict[str, str]:
    """For each hash already in the audit log, the task id that recorded it."""
    if not vote_hashes:
        return {}
    rows = session.execute(
        sa.select(VoteAudit.vote_hash, VoteAudit.task_id).where(
            VoteAudit.vote_hash.in_(vote_hashes)
        )
    )
    return {row.vote_hash: row.task_id for row in rows}


def recorded_hashes(*, session: Session, chunk_size: int = 10_000) -> Iterator[str]:
    """Every hash in the audit log, streamed with a server-side cursor."""
    yield from session.scalars(
        sa.select(VoteAudit.vote_hash).execution_options(yield_per=chunk_size)
    )


def uncounted(*, session: Session) -> int:
    """Recorded votes that no flush has counted yet (in flight, normally for a second)."""
    return int(
        session.scalar(
            sa.select(sa.func.count()).select_from(VoteAudit).where(VoteAudit.tally_batch.is_(None))
        )
        or 0
    )


def counts_by_law(*, session: Session) -> dict[tuple[str, str], int]:
    """Accepted votes per `(law_id, choice)`, straight from the audit log."""
    rows = session.execute(
        sa.select(VoteAudit.law_id, VoteAudit.choice, sa.func.count()).group_by(
            VoteAudit.law_id, VoteAudit.choice
        )
    )
    return {(law_id, choice): count for law_id, choice, count in rows}
