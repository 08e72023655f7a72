"""The laws on the ballot: their registration, voting windows and lifecycle.

A law is `scheduled` until its window opens, then `open` until an operator closes it
(`votes close`), then `closed`, then `certified`: its final counts and digests are recorded and
PostgreSQL refuses any change to its votes or tallies (migration 0003). Only `scheduled`,
`closed` and `certified` are stored; `open` is a scheduled law whose window has begun.

A vote counts only if its law is registered and open and it was cast (its timestamp) within
the window; refused otherwise, as `unknown_law` or `outside_window`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from votes_app import chain
from votes_app.models import Ballot, Certification, Law, VoteAudit, VoteResult


class LawError(ValueError):
    """An operation the law's registration or state does not allow; the message says why."""


@dataclass(frozen=True, slots=True)
class Registered:
    law_id: str
    title: str
    opens_at: datetime
    closes_at: datetime
    state: str  # as stored: scheduled, closed or certified
    closed_at: datetime | None

    @classmethod
    def of(cls, law: Law) -> Registered:
        return cls(law.law_id, law.title, law.opens_at, law.closes_at, law.state, law.closed_at)

    def state_at(self, now: datetime) -> str:
        """scheduled, open, closed or certified."""
        if self.state == "scheduled" and now >= self.opens_at:
            return "open"
        return self.state

    def accepts(self, cast_at: datetime) -> bool:
        """Whether a vote cast at `cast_at` counts: the law is not closed, the time is within
        its window."""
        return self.state == "scheduled" and self.opens_at <= cast_at <= self.closes_at

    @property
    def final(self) -> bool:
        """Closed or certified: its per-choice figures may be published."""
        return self.state in ("closed", "certified")


def open_at(registered: Iterable[Registered], now: datetime) -> list[str]:
    """The ids of the laws open at `now`: the ones whose votes need a roll."""
    return [law.law_id for law in registered if law.state_at(now) == "open"]


def lookup(*, session: Session, law_ids: Collection[str]) -> dict[str, Registered]:
    """The registered laws among `law_ids`."""
    if not law_ids:
        return {}
    rows = session.scalars(sa.select(Law).where(Law.law_id.in_(law_ids)))
    return {law.law_id: Registered.of(law) for law in rows}


def all_laws(*, session: Session) -> list[Registered]:
    return [Registered.of(law) for law in session.scalars(sa.select(Law).order_by(Law.law_id))]


def get(*, session: Session, law_id: str, lock: bool = False) -> Registered:
    query = sa.select(Law).where(Law.law_id == law_id)
    law = session.scalar(query.with_for_update() if lock else query)
    if law is None:
        raise LawError(f"law {law_id!r} is not registered (votes laws add)")
    return Registered.of(law)


def register(
    *, session: Session, law_id: str, title: str, opens_at: datetime, closes_at: datetime
) -> Registered:
    if closes_at <= opens_at:
        raise LawError("the window closes before it opens")
    if session.get(Law, law_id) is not None:
        raise LawError(f"law {law_id!r} is registered already")
    law = Law(law_id=law_id, title=title, opens_at=opens_at, closes_at=closes_at)
    session.add(law)
    session.flush()
    session.refresh(law)
    return Registered.of(law)


def waiting(*, session: Session, law_id: str) -> int:
    """The law's ballots that no flush has counted yet."""
    query = sa.select(sa.func.count()).where(Ballot.law_id == law_id, Ballot.tally_batch.is_(None))
    return int(session.scalar(query) or 0)


def close(*, session: Session, law_id: str, now: datetime, early: bool = False) -> Registered:
    """Close an open law: from its commit, no vote is recorded for it any more. Before
    `closes_at` only when `early`, and the window then ends now.

    A vote recorded concurrently holds the law's row (migration 0003's trigger): the close
    waits for it, so every vote is recorded before the close or refused after it.
    """
    law = get(session=session, law_id=law_id, lock=True)
    if law.state != "scheduled":
        raise LawError(f"law {law_id} is {law.state} already")
    if now < law.opens_at:
        raise LawError(f"law {law_id} has not opened yet (it opens {law.opens_at:%Y-%m-%d %H:%M})")
    if now < law.closes_at and not early:
        raise LawError(
            f"law {law_id} closes at {law.closes_at.isoformat()}: close it earlier with --now"
        )
    closes_at = min(law.closes_at, now)
    session.execute(
        sa.update(Law)
        .where(Law.law_id == law_id)
        .values(state="closed", closed_at=sa.func.now(), closes_at=closes_at)
    )
    return get(session=session, law_id=law_id)


@dataclass(frozen=True, slots=True)
class Final:
    """A law's final figures, from its recorded votes."""

    oui: int
    non: int
    voters: int
    ballots_digest: str
    voters_digest: str
    chain_head: str


def final_figures(*, session: Session, law_id: str) -> Final:
    oui, non, ballots_digest = session.execute(
        sa.text(
            "SELECT count(*) FILTER (WHERE choice = 'oui'), count(*) FILTER (WHERE choice = 'non'),"
            f" {chain.BALLOTS_DIGEST_SQL} FROM ballots WHERE law_id = :law_id"
        ),
        {"law_id": law_id},
    ).one()
    voters, voters_digest = session.execute(
        sa.text(
            f"SELECT count(*), {chain.VOTERS_DIGEST_SQL} FROM vote_audit WHERE law_id = :law_id"
        ),
        {"law_id": law_id},
    ).one()
    return Final(
        int(oui),
        int(non),
        int(voters),
        ballots_digest,
        voters_digest,
        chain.head(session, law_id),
    )


def certify(*, session: Session, law_id: str) -> Final:
    """Record a closed law's final figures and certify it: from the commit, PostgreSQL
    refuses any change to its votes and tallies. The caller has verified the law."""
    law = get(session=session, law_id=law_id, lock=True)
    if law.state != "closed":
        raise LawError(f"law {law_id} is {law.state}: only a closed law is certified")
    if left := waiting(session=session, law_id=law_id):
        raise LawError(f"law {law_id} has {left:,} ballots not counted yet: wait for the flush")
    final = final_figures(session=session, law_id=law_id)
    tallied = session.get(VoteResult, law_id)
    counts = (tallied.oui_count, tallied.non_count) if tallied else (0, 0)
    if counts != (final.oui, final.non):
        raise LawError(f"law {law_id}: vote_results {counts} differ from its ballots")
    session.add(
        Certification(
            law_id=law_id,
            oui_count=final.oui,
            non_count=final.non,
            voters=final.voters,
            ballots_digest=final.ballots_digest,
            voters_digest=final.voters_digest,
            chain_head=final.chain_head,
        )
    )
    session.execute(sa.update(Law).where(Law.law_id == law_id).values(state="certified"))
    return final


@dataclass(frozen=True, slots=True)
class Standing:
    """Where a law stands: its voters, its roll, its counts."""

    law: Registered
    voters: int  # recorded for the law
    roll: int  # hashes on its roll
    oui: int  # counted in vote_results
    non: int

    @property
    def turnout(self) -> float | None:
        """Voters as a share of the roll; None without a roll."""
        return self.voters / self.roll if self.roll else None


def standings(*, session: Session, rolls: Mapping[str, int]) -> list[Standing]:
    """Every registered law, with `rolls` (law -> hashes on its roll)."""
    voters = dict(
        session.execute(sa.select(VoteAudit.law_id, sa.func.count()).group_by(VoteAudit.law_id))
        .tuples()
        .all()
    )
    counts = {
        row.law_id: (row.oui_count, row.non_count) for row in session.scalars(sa.select(VoteResult))
    }
    return [
        Standing(
            law,
            voters.get(law.law_id, 0),
            rolls.get(law.law_id, 0),
            *counts.get(law.law_id, (0, 0)),
        )  # fmt: skip
        for law in all_laws(session=session)
    ]
