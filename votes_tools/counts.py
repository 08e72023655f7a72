"""What the pipeline has done so far, read from PostgreSQL: `Snapshot` in full, `Totals` in
three cheap sums for polling often."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from votes_app.models import Ballot, DuplicateAttempt, ReviewRecord, VoteAudit, VoteResult
from votes_app.resources import get_engine


def _sum(column: Any) -> Any:
    return sa.func.coalesce(sa.func.sum(column), 0)


TALLIED = sa.select(_sum(VoteResult.oui_count + VoteResult.non_count)).scalar_subquery()
DUPLICATES = sa.select(_sum(DuplicateAttempt.attempt_count)).scalar_subquery()


def reviewed(kind: str) -> Any:
    """Occurrences of refused submissions of one kind (`invalid`, `malformed`, ...)."""
    return (
        sa.select(_sum(ReviewRecord.occurrences)).where(ReviewRecord.kind == kind).scalar_subquery()
    )


@dataclass(frozen=True, slots=True)
class Totals:
    """The sums a finished run must reach: polled often, so cheap (small tables only)."""

    tallied: int  # votes in vote_results
    duplicates: int  # sum of duplicate_attempts.attempt_count
    invalid: int  # occurrences of submissions from hashes not on the roll

    @classmethod
    def read(cls) -> Totals:
        query = sa.select(TALLIED, DUPLICATES, reviewed("invalid"))
        with get_engine().connect() as connection:
            tallied, duplicates, invalid = connection.execute(query).one()
        return cls(int(tallied), int(duplicates), int(invalid))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Where the votes are, read in one statement; counts the audit log, so not cheap."""

    audited: int  # voters in vote_audit
    tallied: int
    uncounted: int  # ballots no flush has counted yet
    duplicates: int
    invalid: int
    malformed: int
    unknown_law: int
    outside_window: int

    @classmethod
    def take(cls) -> Snapshot:
        count = sa.func.count
        query = sa.select(
            sa.select(count()).select_from(VoteAudit).scalar_subquery(),
            TALLIED,
            sa.select(count())
            .select_from(Ballot)
            .where(Ballot.tally_batch.is_(None))
            .scalar_subquery(),
            DUPLICATES,
            reviewed("invalid"),
            reviewed("malformed"),
            reviewed("unknown_law"),
            reviewed("outside_window"),
        )
        with get_engine().connect() as connection:
            row = connection.execute(query).one()
        return cls(*(int(value) for value in row))
