"""Validation of a list of submissions: judge, claim, record, and sort out the rest."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from votes_app import audit, laws
from votes_app.ballot_box import BallotBox, Claim
from votes_app.redaction import escape, sample_of
from votes_app.review import Rejection, Verdict, clip
from votes_app.schemas import CastVote, MalformedVote, Submission, parse_vote

logger = logging.getLogger(__name__)

# object_not_in_prerequisite_state: PostgreSQL refused a vote because its law is not open
# (migration 0003's trigger), which validation's lookup did not know yet.
LAW_NOT_OPEN = "55000"


@dataclass(slots=True)
class Outcome:
    """What became of a list of submissions."""

    recorded: list[CastVote] = field(default_factory=list)  # voter and ballot recorded
    rejections: list[Rejection] = field(default_factory=list)  # to be reviewed

    def verdict_counts(self) -> dict[str, int]:
        """Refusals per verdict (`duplicate`, `invalid`, `malformed`)."""
        return dict(Counter(r.verdict.value for r in self.rejections))

    def recorded_per_law(self) -> dict[str, dict[str, int]]:
        """How many votes were recorded, per law and choice: all that the tallies need to
        hear of this batch, and nothing that names a voter."""
        counted: dict[str, dict[str, int]] = {}
        for cast in self.recorded:
            choices = counted.setdefault(cast.vote.law_id, {})
            choices[cast.vote.choice] = choices.get(cast.vote.choice, 0) + 1
        return counted


def judge(
    submissions: Sequence[Submission], *, now: datetime, max_clock_skew: timedelta
) -> tuple[list[CastVote], list[Rejection]]:
    """Split submissions into well-formed votes and malformed rejections.

    A task id is the producer's too: from here on it is escaped (`redaction.escape`), so that
    a NUL or a lone surrogate in it reaches neither PostgreSQL nor a Redis key.
    """
    votes: list[CastVote] = []
    rejections: list[Rejection] = []
    for submission in submissions:
        submission = replace(submission, task_id=escape(submission.task_id))
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
            votes.append(CastVote(task_id=submission.task_id, vote=vote))
    return votes, rejections


# A producer's id for a vote of a bulk message: where a single vote's message has its task id.
VOTE_ID_MAX_LENGTH = 200


class MalformedBulk(Exception):
    """A `validate_votes` message that is not a list of votes at all: it goes to votes.dead."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def unpack(
    message_id: str, votes: object, *, max_votes: int, now: datetime
) -> tuple[list[Submission], list[Rejection]]:
    """The votes of a bulk message, each a submission identified by its `vote_id`, and the
    entries refused as malformed before they are votes (no object, no usable or a repeated
    `vote_id`), each identified by the message's id and its place in it.

    Raises `MalformedBulk` when `votes` is not a list of at most `max_votes` entries.
    """
    if not isinstance(votes, list):
        raise MalformedBulk(f"votes: must be a list, not {type(votes).__name__}")
    if len(votes) > max_votes:
        raise MalformedBulk(f"votes: {len(votes)} in one message, over VALIDATE_BULK_MAX")
    submissions: list[Submission] = []
    refused: list[Rejection] = []
    seen: set[str] = set()

    def malformed(index: int, reason: str, sample: str) -> Rejection:
        return Rejection(
            verdict=Verdict.MALFORMED,
            task_id=f"{message_id}#{index}",
            reason=clip(f"vote {index}: {reason}"),
            seen_at=now,
            sample=sample,
        )

    for index, entry in enumerate(votes):
        if not isinstance(entry, Mapping):
            refused.append(malformed(index, "must be an object", sample_of([], {"entry": entry})))
            continue
        fields = {name: value for name, value in entry.items() if name != "vote_id"}
        vote_id = entry.get("vote_id")
        if not isinstance(vote_id, str) or not 1 <= len(vote_id) <= VOTE_ID_MAX_LENGTH:
            reason = f"vote_id: must be a string of 1-{VOTE_ID_MAX_LENGTH} characters"
            refused.append(malformed(index, reason, sample_of([], fields)))
        elif vote_id in seen:
            refused.append(
                malformed(index, "vote_id: repeated in this message", sample_of([], fields))
            )
        else:
            seen.add(vote_id)
            submissions.append(Submission(task_id=vote_id, args=(), kwargs=fields))
    return submissions, refused


def refusal(
    cast: CastVote, verdict: Verdict, reason: str, *, seen_at: datetime, attempt: int | None = None
) -> Rejection:
    """A well-formed vote refused for review: who (hash), where (law), why, not what."""
    return Rejection(
        verdict=verdict,
        task_id=cast.task_id,
        reason=reason,
        seen_at=seen_at,
        vote_hash=cast.vote.vote_hash,
        law_id=cast.vote.law_id,
        attempt=attempt,
    )


def on_the_ballot(
    votes: Sequence[CastVote], registered: Mapping[str, laws.Registered], *, now: datetime
) -> tuple[list[CastVote], list[Rejection]]:
    """Split votes into those whose law is registered and open and that were cast within
    its window, and the others, refused before anything marks their voter."""
    kept: list[CastVote] = []
    refused: list[Rejection] = []
    for cast in votes:
        law = registered.get(cast.vote.law_id)
        if law is None:
            refused.append(
                refusal(cast, Verdict.UNKNOWN_LAW, "no such law is registered", seen_at=now)
            )
        elif not law.accepts(cast.vote.timestamp):
            reason = (
                f"law is {law.state}"
                if law.state != "scheduled"
                else "cast outside the law's voting window"
            )
            refused.append(refusal(cast, Verdict.OUTSIDE_WINDOW, reason, seen_at=now))
        else:
            kept.append(cast)
    return kept, refused


def adopt_orphans(
    taken: Sequence[CastVote],
    *,
    ballot_box: BallotBox,
    session_scope: Callable[[], AbstractContextManager[Session]],
) -> list[CastVote]:
    """The taken votes whose voter has no vote in the audit log and no live claim.

    Such a voter was claimed by a worker that died before committing, and its claim
    expired (CLAIM_TTL_SECONDS) before the message came back, say from votes.dead. Refusing
    it as a duplicate would lose the vote; PostgreSQL still decides any real contest.
    """
    with session_scope() as session:
        recorded = audit.recorders(session=session, vote_hashes={v.vote.vote_hash for v in taken})
    candidates = [v for v in taken if v.vote.vote_hash not in recorded]
    if not candidates:
        return []
    adopted = ballot_box.adopt([v.key for v in candidates])
    return [v for v, ours in zip(candidates, adopted, strict=True) if ours]


def validate(
    submissions: Sequence[Submission],
    *,
    ballot_box: BallotBox,
    session_scope: Callable[[], AbstractContextManager[Session]],
    now: datetime,
    max_clock_skew: timedelta,
) -> Outcome:
    """Decide every submission: recorded (voter and ballot), or rejected with a reason.

    Safe to run again on the same submissions (same task ids): a vote this task already
    claimed or recorded is finished, not called a duplicate. Raises `VoterRollMissing`
    (nothing claimed) or a database error (claims undone) for the caller to retry.
    """
    votes, rejections = judge(submissions, now=now, max_clock_skew=max_clock_skew)
    outcome = Outcome(rejections=rejections)
    if votes:
        with session_scope() as session:
            registered = laws.lookup(session=session, law_ids={v.vote.law_id for v in votes})
        votes, refused = on_the_ballot(votes, registered, now=now)
        outcome.rejections += refused
    if not votes:
        return outcome

    claims = ballot_box.claim([(v.vote.vote_hash, v.task_id, v.vote.law_id) for v in votes])
    claimed = [v for v, c in zip(votes, claims, strict=True) if c is Claim.CLAIMED]
    taken = [v for v, c in zip(votes, claims, strict=True) if c is Claim.TAKEN]
    outcome.rejections += [
        refusal(v, Verdict.INVALID, "voter hash is not on the voter roll", seen_at=now)
        for v, c in zip(votes, claims, strict=True)
        if c is Claim.INVALID
    ]

    if taken:
        adopted = adopt_orphans(taken, ballot_box=ballot_box, session_scope=session_scope)
        claimed += adopted
        taken = [v for v in taken if v not in adopted]

    try:
        with session_scope() as session:
            inserted = audit.record_votes(session=session, votes=claimed)
            # Whoever recorded the hashes we did not insert: us (a redelivery) or another.
            contested = taken + [v for v in claimed if v.vote.vote_hash not in inserted]
            recorders = audit.recorders(
                session=session, vote_hashes={v.vote.vote_hash for v in contested}
            )
    except SQLAlchemyError as exc:
        ballot_box.release([v.key for v in claimed])
        if getattr(getattr(exc, "orig", None), "pgcode", None) == LAW_NOT_OPEN:
            # A law closed between the lookup and the INSERT: judged again, its votes are
            # refused. Laws only move forward, so this happens once per law at most.
            return validate(
                submissions,
                ballot_box=ballot_box,
                session_scope=session_scope,
                now=now,
                max_clock_skew=max_clock_skew,
            )
        raise

    recorded = [v for v in claimed if v.vote.vote_hash in inserted]
    recorded += [v for v in contested if recorders.get(v.vote.vote_hash) == v.task_id]
    # A message delivered twice in one list records its vote once.
    outcome.recorded = list({v.vote.vote_hash: v for v in recorded}.values())
    if claimed:
        ballot_box.forget_claims([v.key for v in claimed])
    duplicates = [v for v in contested if recorders.get(v.vote.vote_hash) != v.task_id]
    if duplicates:
        attempts = ballot_box.count_duplicates([v.key for v in duplicates])
        outcome.rejections += [
            refusal(v, Verdict.DUPLICATE, "voter hash has already voted", seen_at=now, attempt=n)
            for v, n in zip(duplicates, attempts, strict=True)
        ]
    return outcome
