"""The Celery tasks of the contract: thin wrappers that call the domain steps and hand on."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Task
from celery.utils.log import get_task_logger
from celery.utils.time import get_exponential_backoff_interval
from celery_batches import SimpleRequest
from kombu.exceptions import OperationalError as BrokerError
from pydantic import TypeAdapter
from redis import exceptions as redis_exc
from sqlalchemy import exc as sa_exc

from votes_app import review, tallies, validation
from votes_app.ballot_box import VoterRollMissing
from votes_app.batching import SettledBatches
from votes_app.celery import app
from votes_app.config import get_settings
from votes_app.resources import get_ballot_box, get_tallies, session_scope
from votes_app.schemas import Submission, utcnow

logger = get_task_logger(__name__)
settings = get_settings()

# Infrastructure that may come back: retried with exponential backoff and jitter. After
# `max_retries` the task fails, is rejected, and lands in votes.dead for a later replay.
TRANSIENT_ERRORS = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    redis_exc.ConnectionError,
    redis_exc.TimeoutError,
    redis_exc.BusyLoadingError,
    BrokerError,
    ConnectionError,
)
RETRY_POLICY: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
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


@app.task(
    base=SettledBatches,
    bind=True,
    name="votes_app.validate_vote",
    flush_every=settings.validate_batch_size,
    flush_interval=settings.validate_batch_ms / 1000,
)
def validate_vote(self: SettledBatches, requests: list[SimpleRequest]) -> list[str]:
    """Judge a batch of vote messages; record them and hand them on, or send them to review.

    Producers call it as `validate_vote(vote_hash, law_id, choice, timestamp, citizen_id=None)`,
    one message per vote; the worker buffers up to VALIDATE_BATCH_SIZE messages (or
    VALIDATE_BATCH_MS) and calls this once for all of them. Returns the ids of the messages
    that can never be processed, which go to votes.dead; the others are acknowledged.
    """
    return settle(self, requests)


def settle(task: SettledBatches, requests: list[SimpleRequest]) -> list[str]:
    submissions = [Submission(task_id=r.id, args=r.args, kwargs=r.kwargs) for r in requests]
    try:
        outcome = validation.validate(
            submissions,
            ballot_box=get_ballot_box(),
            session_scope=session_scope,
            now=utcnow(),
            max_clock_skew=timedelta(seconds=settings.max_clock_skew_seconds),
        )
        hand_on(outcome)
    except VoterRollMissing:
        # Hold the votes until the roll is loaded again: refusing them would be wrong.
        logger.warning("voter roll missing: holding %d votes", len(requests))
        return retry_later(task, requests, hold=True)
    except TRANSIENT_ERRORS as exc:
        logger.warning("retrying %d votes after %s", len(requests), type(exc).__name__)
        return retry_later(task, requests)
    except Exception:
        if len(requests) == 1:
            logger.exception("vote task %s failed: to votes.dead", requests[0].id)
            return [requests[0].id]
        # One bad message must not take its batch with it: settle them one by one.
        logger.exception("batch of %d failed: settling its votes one by one", len(requests))
        return [dead for request in requests for dead in settle(task, [request])]
    return []


def retry_later(
    task: SettledBatches, requests: list[SimpleRequest], *, hold: bool = False
) -> list[str]:
    """Publish each message again with a delay (Celery's retry, per message); the ids that
    are out of retries, or could not be published, go to votes.dead."""
    dead = []
    for request in requests:
        retries = int((request.request_dict or {}).get("retries") or 0) + 1
        if hold:
            countdown = settings.roll_missing_retry_seconds
        elif retries > settings.max_retries:
            logger.error("vote task %s out of retries: to votes.dead", request.id)
            dead.append(request.id)
            continue
        else:
            countdown = get_exponential_backoff_interval(
                factor=1,
                retries=retries - 1,
                maximum=settings.retry_backoff_max_seconds,
                full_jitter=True,
            )
        try:
            task.apply_async(
                args=request.args,
                kwargs=request.kwargs,
                task_id=request.id,
                countdown=countdown,
                retries=retries,
            )
        except Exception:
            logger.exception("could not publish the retry of %s: to votes.dead", request.id)
            dead.append(request.id)
    return dead


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
    result = tallies.flush(
        tallies=get_tallies(),
        session_scope=session_scope,
        straggler_age=timedelta(seconds=settings.tally_straggler_seconds),
    )
    if result is not None:
        logger.info(
            "tallies flushed batch=%s offered=%d counted=%d applied=%s",
            result.batch_id,
            result.offered,
            result.vote_count,
            result.applied,
        )


@app.task(bind=True, name="votes_app.record_review", **RETRY_POLICY)
def record_review(self: Task[..., None], rejections: list[dict[str, Any]]) -> None:
    """Store refused submissions for review."""
    with session_scope() as session:
        review.record_rejections(
            session=session, rejections=_rejections.validate_python(rejections)
        )
