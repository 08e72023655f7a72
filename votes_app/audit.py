"""The record of accepted votes in PostgreSQL, in two tables that nothing links: who has voted
on which law (`vote_audit`, UNIQUE on the hash) and what was voted (`ballots`).

Both are written in one transaction, so that a vote is recorded whole or not at all. The
ballots of a transaction get random ids and go in an order of their own: neither an id nor a
position pairs a ballot with its voter; only the law and the transaction are shared.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from votes_app import metrics
from votes_app.models import Ballot, Base, VoteAudit
from votes_app.schemas import CastVote

# One statement for every batch, so SQLAlchemy compiles it once; executed with a list of
# rows, its "insertmanyvalues" mode sends them as one multi-row INSERT ... RETURNING.
_RECORD_VOTERS = (
    pg_insert(Base.metadata.tables[VoteAudit.__tablename__])
    .on_conflict_do_nothing(index_elements=[VoteAudit.vote_hash])
    .returning(VoteAudit.vote_hash)
)
_RECORD_BALLOTS = sa.insert(Base.metadata.tables[Ballot.__tablename__])
# The order ballots are written in comes from the operating system's randomness, not from a
# generator whose state a seed or an earlier draw could give away.
_shuffle = random.SystemRandom().shuffle


@metrics.database_operation("record_votes")
def record_votes(*, session: Session, votes: Sequence[CastVote]) -> set[str]:
    """Record each vote whose voter has not voted yet: the voter in `vote_audit`, the ballot
    in `ballots`. Returns the hashes recorded now.

    A hash already present is left alone (ON CONFLICT DO NOTHING), and so is its ballot: the
    UNIQUE hash, not Redis, has the last word on whether a voter has voted.
    """
    if not votes:
        return set()
    voters = [
        {
            "vote_hash": cast.vote.vote_hash,
            "law_id": cast.vote.law_id,
            "voted_at": cast.vote.timestamp,
            "task_id": cast.task_id,
        }
        for cast in votes
    ]
    recorded = set(session.scalars(_RECORD_VOTERS, voters))
    # One ballot per voter recorded now, whatever the messages that repeat it in `votes`.
    new = {cast.vote.vote_hash: cast for cast in votes if cast.vote.vote_hash in recorded}
    ballots = [{"law_id": cast.vote.law_id, "choice": cast.vote.choice} for cast in new.values()]
    _shuffle(ballots)
    if ballots:
        session.execute(_RECORD_BALLOTS, ballots)
    return recorded


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
    """Ballots that no flush has counted yet (in flight, normally for a second)."""
    return int(
        session.scalar(
            sa.select(sa.func.count()).select_from(Ballot).where(Ballot.tally_batch.is_(None))
        )
        or 0
    )


def voters_by_law(*, session: Session) -> dict[str, int]:
    """Voters recorded per law, from the audit log."""
    query = sa.select(VoteAudit.law_id, sa.func.count()).group_by(VoteAudit.law_id)
    return {law_id: int(count) for law_id, count in session.execute(query)}


def ballots_by_law(*, session: Session) -> dict[tuple[str, str], int]:
    """Ballots per `(law_id, choice)`, counted or not."""
    rows = session.execute(
        sa.select(Ballot.law_id, Ballot.choice, sa.func.count()).group_by(
            Ballot.law_id, Ballot.choice
        )
    )
    return {(law_id, choice): count for law_id, choice, count in rows}
