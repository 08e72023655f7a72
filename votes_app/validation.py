"""Validation of a list of submissions: judge, claim, record, and sort out the rest."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from votes_app import audit
from votes_app.ballot_box import BallotBox, Claim
from votes_app.review import Rejection, Verdict, clip, sample_of
from votes_app.schemas import Ballot, MalformedVote, Submission, parse_vote
from votes_app.tallies import TallyVote

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Outcome:
    """What became of a list of submissions."""

    recorded: list[Ballot] = field(default_factory=list)  # in the audit log: to be tallied
    rejections: list[Rejection] = field(default_factory=list)  # to be reviewed

    def verdict_counts(self) -> dict[str, int]:
        """Refusals per verdict (`duplicate`, `invalid`, `malformed`)."""
        return dict(Counter(r.verdict.value for r in self.rejections))

    def tally_votes(self) -> list[TallyVote]:
        return [
            TallyVote(vote_hash=b.vote.vote_hash, law_id=b.vote.law_id, choice=b.vote.choice)
            for b in self.recorded
        ]


def judge(
    submissions: Sequence[Submission], *, now: datetime, max_clock_skew: timedelta
) -> tuple[list[Ballot], list[Rejection]]:
    """Split submissions into well-formed ballots and malformed rejections."""
    ballots: list[Ballot] = []
    rejections: list[Rejection] = []
    for submission in submissions:
        try:
            vote = parse_vote(submission, now=now, max_clock_skew=max_clock_skew)
        except MalformedVote as exc:
            rejections.append(
                Rejection(
                    verdict=Verdict.MALFORMED,
                    task_id=submission.task_id,
                    reason=clip(exc.reason),
                    seen_at=now,
                    sample=sample_of(submission.args, submission.kwargs),
                )
            )
        else:
            ballots.append(Ballot(task_id=submission.task_id, vote=vote))
    return ballots, rejections


def refusal(
    ballot: Ballot, verdict: Verdict, reason: str, *, seen_at: datetime, attempt: int | None = None
) -> Rejection:
    """A well-formed ballot refused for review: who (hash), where (law), why, not what."""
    return Rejection(
        verdict=verdict,
        task_id=ballot.task_id,
        reason=reason,
        seen_at=seen_at,
        vote_hash=ballot.vote.vote_hash,
        law_id=ballot.vote.law_id,
        attempt=attempt,
    )


def adopt_orphans(
    taken: Sequence[Ballot],
    *,
    ballot_box: BallotBox,
    session_scope: Callable[[], AbstractContextManager[Session]],
) -> list[Ballot]:
    """The taken ballots whose voter has no vote in the audit log and no live claim.

    Such a voter was claimed by a worker that died before committing, and its claim
    expired (CLAIM_TTL_SECONDS) before the message came back, say from votes.dead. Refusing
    it as a duplicate would lose the vote; PostgreSQL still decides any real contest.
    """
    with session_scope() as session:
        recorded = audit.recorders(session=session, vote_hashes={b.vote.vote_hash for b in taken})
    candidates = [b for b in taken if b.vote.vote_hash not in recorded]
    if not candidates:
        return []
    adopted = ballot_box.adopt([b.key for b in candidates])
    return [b for b, ours in zip(candidates, adopted, strict=True) if ours]


def validate(
    submissions: Sequence[Submission],
    *,
    ballot_box: BallotBox,
    session_scope: Callable[[], AbstractContextManager[Session]],
    now: datetime,
    max_clock_skew: timedelta,
) -> Outcome:
    """Decide every submission: recorded in the audit log, or rejected with a reason.

    Safe to run again on the same submissions (same task ids): a vote this task already
    claimed or recorded is finished, not called a duplicate. Raises `VoterRollMissing`
    (nothing claimed) or a database error (claims undone) for the caller to retry.
    """
    ballots, rejections = judge(submissions, now=now, max_clock_skew=max_clock_skew)
    outcome = Outcome(rejections=rejections)
    if not ballots:
        return outcome

    claims = ballot_box.claim([ballot.key for ballot in ballots])
    claimed = [b for b, c in zip(ballots, claims, strict=True) if c is Claim.CLAIMED]
    taken = [b for b, c in zip(ballots, claims, strict=True) if c is Claim.TAKEN]
    outcome.rejections += [
        refusal(b, Verdict.INVALID, "voter hash is not on the voter roll", seen_at=now)
        for b, c in zip(ballots, claims, strict=True)
        if c is Claim.INVALID
    ]

    if taken:
        adopted = adopt_orphans(taken, ballot_box=ballot_box, session_scope=session_scope)
        claimed += adopted
        taken = [b for b in taken if b not in adopted]

    try:
        with session_scope() as session:
            inserted = audit.record_votes(session=session, ballots=claimed)
            # Whoever recorded the hashes we did not insert: us (a redelivery) or another.
            contested = taken + [b for b in claimed if b.vote.vote_hash not in inserted]
            recorders = audit.recorders(
                session=session, vote_hashes={b.vote.vote_hash for b in contested}
            )
    except SQLAlchemyError:
        ballot_box.release([b.key for b in claimed])
        raise

    recorded = [b for b in claimed if b.vote.vote_hash in inserted]
    recorded += [b for b in contested if recorders.get(b.vote.vote_hash) == b.task_id]
    # A message delivered twice in one list records its vote once.
    outcome.recorded = list({b.vote.vote_hash: b for b in recorded}.values())
    if claimed:
        ballot_box.forget_claims([b.key for b in claimed])
    duplicates = [b for b in contested if recorders.get(b.vote.vote_hash) != b.task_id]
    if duplicates:
        attempts = ballot_box.count_duplicates([b.key for b in duplicates])
        outcome.rejections += [
            refusal(b, Verdict.DUPLICATE, "voter hash has already voted", seen_at=now, attempt=n)
            for b, n in zip(duplicates, attempts, strict=True)
        ]
    return outcome
