"""Reconciliation: do the published tallies equal the audit log, per law and choice?"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from votes_app import audit, tallies


@dataclass(frozen=True, slots=True)
class Line:
    law_id: str
    choice: str
    tallied: int  # in vote_results
    audited: int  # rows in vote_audit

    @property
    def drift(self) -> int:
        return self.tallied - self.audited


@dataclass(frozen=True, slots=True)
class Reconciliation:
    lines: list[Line]
    uncounted: int  # recorded votes a flush has yet to count: drift they explain is transient

    @property
    def drifting(self) -> list[Line]:
        return [line for line in self.lines if line.drift]

    @property
    def audited(self) -> int:
        return sum(line.audited for line in self.lines)


def compare(*, session: Session) -> list[Line]:
    """One line per law and choice present on either side, sorted; read in one snapshot."""
    # Both sides from one snapshot, or a flush between the two reads would show as drift.
    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    tallied = tallies.results_by_law(session=session)
    audited = audit.counts_by_law(session=session)
    return [
        Line(law_id, choice, tallied.get((law_id, choice), 0), audited.get((law_id, choice), 0))
        for law_id, choice in sorted(tallied.keys() | audited.keys())
    ]


def reconcile(*, session: Session) -> Reconciliation:
    """`compare`, and the votes still awaiting their flush, from the same snapshot."""
    lines = compare(session=session)
    return Reconciliation(lines, audit.uncounted(session=session))
