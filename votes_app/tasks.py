"""The Celery tasks of the contract: thin wrappers that call the domain steps and hand on."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Task
from celery.utils.log import get_task_logger
from kombu.exceptions import OperationalError as BrokerError
from pydantic import TypeAdapter
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from votes_app import review, tallies, validation
from votes_app.ballot_box import VoterRollMissing
from votes_app.celery import app
from votes_app.config import get_settings
from votes_app.resources import get_ballot_box, get_tallies, session_scope
from votes_app.schemas import Submission, utcnow

logger = get_task_logger(__name__)
settings = get_settings()

# Infrastructure that may come back: retried with exponential backoff and jitter. After
# `max_retries` the task fails, is rejected, and lands in votes.dead for a later replay.
RETRY_POLICY: dict[str, Any] = {
    "autoretry_for": (SQLAlchemyError, RedisError, BrokerError, ConnectionError),
    "retry_backoff": True,
    "retry_backoff_max": settings.retry_backoff_max_seconds,
    "retry_jitter": True,
    "max_retries": settings.max_retries,
}

_tally_votes = TypeAdapter(list[tallies.TallyVote])
_rejections = TypeAdapter(list[review.Rejection])


def short(vote_hash: str) -> str:
    """A hash prefix for logs: enough to grep, not enough to identify a voter."""
    return vote_hash[:8]


@app.task(bind=True, name="votes_app.validate_vote", **RETRY_POLICY)
def validate_vote(self: Task[..., None], *args: Any, **kwargs: Any) -> None:
    """Judge one vote message; record it and hand it to aggregation, or to review.

    Takes `*args, **kwargs` so that a message with missing, extra or positional fields
    reaches the validator and is reviewed, instead of failing on the call itself.
    """
    submission = Submission(task_id=str(self.request.id), args=args, kwargs=kwargs)
    try:
        outcome = validation.validate(
            [submission],
            ballot_box=get_ballot_box(),
            session_scope=session_scope,
            now=utcnow(),
            max_clock_skew=timedelta(seconds=settings.max_clock_skew_seconds),
        )
    except VoterRollMissing as exc:
        # Hold the vote until the roll is loaded again: refusing it would be wrong.
        logger.warning("voter roll missing: holding vote")
        raise self.retry(
            exc=exc, countdown=settings.roll_missing_retry_seconds, max_retries=None
        ) from exc
    hand_on(outcome)


def hand_on(outcome: validation.Outcome) -> None:
    """Send the next steps; called only after the audit rows are committed."""
    if outcome.recorded:
        aggregate_vote.apply_async(
            kwargs={"votes": [vote.model_dump() for vote in outcome.tally_votes()]}
        )
    if outcome.rejections:
        record_review.apply_async(
            kwargs={"rejections": [r.model_dump(mode="json") for r in outcome.rejections]}
        )
    for ballot in outcome.recorded:
        logger.info(
            "vote recorded hash=%s law=%s", short(ballot.vote.vote_hash), ballot.vote.law_id
        )
    for rejection in outcome.rejections:
        logger.info(
            "vote refused verdict=%s hash=%s reason=%s",
            rejection.verdict,
            short(rejection.vote_hash or "-"),
            rejection.reason,
        )


@app.task(bind=True, name="votes_app.aggregate_vote", **RETRY_POLICY)
def aggregate_vote(self: Task[..., None], votes: list[dict[str, Any]]) -> None:
    """Add recorded votes to the pending tallies, each at most once."""
    added = get_tallies().add_pending(_tally_votes.validate_python(votes))
    logger.info("tallies pending +%d of %d", added, len(votes))


@app.task(bind=True, name="votes_app.flush_tallies", **RETRY_POLICY)
def flush_tallies(self: Task[..., None]) -> None:
    """Apply the pending tallies to `vote_results`, exactly once per batch."""
    result = tallies.flush(tallies=get_tallies(), session_scope=session_scope)
    if result is not None:
        logger.info(
            "tallies flushed batch=%s votes=%d laws=%d applied=%s",
            result.batch_id,
            result.vote_count,
            result.law_count,
            result.applied,
        )


@app.task(bind=True, name="votes_app.record_review", **RETRY_POLICY)
def record_review(self: Task[..., None], rejections: list[dict[str, Any]]) -> None:
    """Store refused submissions for review."""
    with session_scope() as session:
        review.record_rejections(
            session=session, rejections=_rejections.validate_python(rejections)
        )
