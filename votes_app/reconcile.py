"""Reconciliation: per law, as many ballots as voters, and the published tallies equal to the
ballots, choice by choice."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from votes_app import audit, tallies


@dataclass(frozen=True, slots=True)
class Line:
    law_id: str
    choice: str
    tallied: int  # in vote_results
    ballots: int  # rows in ballots, counted or not

    @property
    def drift(self) -> int:
        return self.tallied - self.ballots


@dataclass(frozen=True, slots=True)
class Turnout:
    law_id: str
    voters: int  # rows in vote_audit
    ballots: int

    @property
    def gap(self) -> int:
        return self.ballots - self.voters


@dataclass(frozen=True, slots=True)
class Reconciliation:
    lines: list[Line]
    turnout: list[Turnout]
    uncounted: int  # ballots a flush has yet to count: drift they explain is transient

    @property
    def drifting(self) -> list[Line]:
        return [line for line in self.lines if line.drift]

    @property
    def unmatched(self) -> list[Turnout]:
        return [law for law in self.turnout if law.gap]

    @property
    def ok(self) -> bool:
        return not self.drifting and not self.unmatched

    @property
    def ballots(self) -> int:
        return sum(line.ballots for line in self.lines)


def compare(*, session: Session) -> list[Line]:
    """One line per law and choice present on either side, sorted; read in one snapshot."""
    # Both sides from one snapshot, or a flush between the two reads would show as drift.
    session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    tallied = tallies.results_by_law(session=session)
    cast = audit.ballots_by_law(session=session)
    return [
        Line(law_id, choice, tallied.get((law_id, choice), 0), cast.get((law_id, choice), 0))
        for law_id, choice in sorted(tallied.keys() | cast.keys())
    ]


def reconcile(*, session: Session) -> Reconciliation:
    """`compare`, voters against ballots per law, and the ballots still awaiting their
    flush, all from the same snapshot."""
    lines = compare(session=session)
    voters = audit.voters_by_law(session=session)
    ballots: dict[str, int] = {}
    for line in lines:
        ballots[line.law_id] = ballots.get(line.law_id, 0) + line.ballots
    turnout = [
        Turnout(law_id, voters.get(law_id, 0), ballots.get(law_id, 0))
        for law_id in sorted(voters.keys() | ballots.keys())
    ]
    return Reconciliation(lines, turnout, audit.uncounted(session=session))
