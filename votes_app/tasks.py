"""The Celery tasks of the contract: thin wrappers that call the domain steps and hand on."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.utils.log import get_task_logger
from celery.utils.time import get_exponential_backoff_interval
from celery_batches import SimpleRequest
from kombu.exceptions import OperationalError as BrokerError
from pydantic import TypeAdapter, ValidationError
from redis import exceptions as redis_exc
from sqlalchemy import exc as sa_exc

from votes_app import dead_letters, health, metrics, review, status, tallies, validation
from votes_app.ballot_box import VoterRollMissing, voter_roll_size
from votes_app.batching import SettledBatches
from votes_app.celery import VALIDATION, app
from votes_app.config import get_settings
from votes_app.resources import get_ballot_box, get_redis, get_tallies, session_scope
from votes_app.schemas import Submission, describe_errors, utcnow

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


def describe(exc: Exception) -> str:
    """One line on why something failed, without the offending values."""
    if isinstance(exc, ValidationError):
        return "invalid message: " + describe_errors(exc)
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first_line}"


def send_to_dead(task_id: str, reason: str, *, kind: str) -> str:
    """Note why a message goes to votes.dead (best effort: Redis may be the problem).

    `kind` is the metric label: a few fixed words, unlike `reason`.
    """
    logger.error("task %s to votes.dead: %s", task_id, reason)
    metrics.get().dead_letters.labels(reason=kind).inc()
    with contextlib.suppress(redis_exc.RedisError):
        dead_letters.remember_reason(
            get_redis(), task_id, reason, ttl_seconds=settings.claim_ttl_seconds
        )
    return task_id


def too_often_redelivered(task_id: str, delivery_info: Mapping[str, Any] | None) -> bool:
    """True for a message that came back more than MAX_REDELIVERIES times.

    A message that kills its worker process is requeued by task_reject_on_worker_lost and
    would kill the next one too, forever; past the bound it goes to votes.dead instead.
    """
    if not (delivery_info or {}).get("redelivered"):
        return False
    try:
        count = dead_letters.count_redelivery(
            get_redis(), task_id, ttl_seconds=settings.claim_ttl_seconds
        )
    except redis_exc.RedisError:
        return False  # Redis down: the vote itself will wait for it anyway
    return count > settings.max_redeliveries


class VotesTask(Task):  # type: ignore[type-arg]
    """A task whose message goes to votes.dead, with its reason noted, when it cannot succeed."""

    Request = "votes_app.consumer:VotesRequest"

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        if too_often_redelivered(task_id, self.request.delivery_info):
            send_to_dead(
                task_id,
                f"redelivered more than {settings.max_redeliveries} times",
                kind="redelivered",
            )
            raise Reject("too many redeliveries", requeue=False)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # task_acks_on_failure_or_timeout=False: Celery rejects the message, RabbitMQ
        # dead-letters it.
        send_to_dead(task_id, describe(exc), kind="failed")


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
    dead = [
        send_to_dead(
            r.id, f"redelivered more than {settings.max_redeliveries} times", kind="redelivered"
        )
        for r in requests
        if too_often_redelivered(r.id, r.delivery_info)
    ]
    if dead:
        requests = [r for r in requests if r.id not in dead]
    return dead + _settle(task, requests) if requests else dead


def _settle(task: SettledBatches, requests: list[SimpleRequest]) -> list[str]:
    submissions = [Submission(task_id=r.id, args=r.args, kwargs=r.kwargs) for r in requests]
    measure = metrics.get()
    started = time.perf_counter()
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
        measure.validation_errors.labels(error_type="voter_roll_missing").inc()
        measure.voter_roll_missing.set(1)
        measure.votes_held.inc(len(requests))
        return retry_later(task, requests, hold=True)
    except TRANSIENT_ERRORS as exc:
        logger.warning("retrying %d votes after %s", len(requests), type(exc).__name__)
        measure.validation_errors.labels(error_type=type(exc).__name__).inc()
        return retry_later(task, requests)
    except Exception as exc:
        measure.validation_errors.labels(error_type=type(exc).__name__).inc()
        if len(requests) == 1:
            logger.exception("vote task %s failed", requests[0].id)
            return [send_to_dead(requests[0].id, describe(exc), kind="failed")]
        # One bad message must not take its batch with it: settle them one by one.
        logger.exception("batch of %d failed: settling its votes one by one", len(requests))
        return [dead for request in requests for dead in _settle(task, [request])]
    observe(outcome, seconds=time.perf_counter() - started)
    return []


def observe(outcome: validation.Outcome, *, seconds: float) -> None:
    measure = metrics.get()
    measure.voter_roll_missing.set(0)
    measure.batch_duration.set(seconds)
    votes = len(outcome.recorded) + len(outcome.rejections)
    measure.batch_size_processed.inc(votes)
    for _ in range(votes):
        measure.processing_latency.observe(seconds)
    if outcome.recorded:
        measure.votes_processed.labels(status="accepted").inc(len(outcome.recorded))
    for verdict, count in Counter(r.verdict.value for r in outcome.rejections).items():
        measure.votes_processed.labels(status=verdict).inc(count)


def retry_later(
    task: SettledBatches, requests: list[SimpleRequest], *, hold: bool = False
) -> list[str]:
    """Publish each message again with a delay (Celery's retry, per message); the ids that
    are out of retries, or could not be published, go to votes.dead.

    A vote held for the voter roll keeps its retry count: waiting for an operator is not a
    failure, and must not leave it one infrastructure error away from votes.dead.
    """
    dead = []
    for request in requests:
        retries = int((request.request_dict or {}).get("retries") or 0)
        if hold:
            countdown = settings.roll_missing_retry_seconds
        elif (retries := retries + 1) > settings.max_retries:
            dead.append(
                send_to_dead(
                    request.id, f"out of retries ({settings.max_retries})", kind="out_of_retries"
                )
            )
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
        except Exception as exc:
            dead.append(
                send_to_dead(request.id, f"retry not published: {exc}", kind="retry_unpublished")
            )
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
            "vote recorded task=%s hash=%s law=%s",
            ballot.task_id,
            short(ballot.vote.vote_hash),
            ballot.vote.law_id,
        )
    for rejection in outcome.rejections:
        logger.info(
            "vote refused task=%s verdict=%s hash=%s reason=%s",
            rejection.task_id,
            rejection.verdict,
            short(rejection.vote_hash or "-"),
            rejection.reason,
        )


@app.task(base=VotesTask, bind=True, name="votes_app.aggregate_vote", **RETRY_POLICY)
def aggregate_vote(self: Task[..., None], votes: list[dict[str, Any]]) -> None:
    """Add recorded votes to the pending tallies, each at most once."""
    measure = metrics.get()
    with metrics.counting_errors(measure.aggregation_errors):
        parsed = _tally_votes.validate_python(votes)
        added = get_tallies().add_pending(parsed)
    for (law_id, choice), count in Counter((v.law_id, v.choice) for v in parsed).items():
        measure.votes_aggregated.labels(law_id=law_id, choice=choice).inc(count)
    logger.info("tallies pending +%d of %d", added, len(votes))


@app.task(base=VotesTask, bind=True, name="votes_app.flush_tallies", **RETRY_POLICY)
def flush_tallies(self: Task[..., None]) -> None:
    """Apply the pending tallies to `vote_results`, exactly once per batch."""
    measure = metrics.get()
    started = time.perf_counter()
    with metrics.counting_errors(measure.aggregation_errors):
        result = tallies.flush(
            tallies=get_tallies(),
            session_scope=session_scope,
            straggler_age=timedelta(seconds=settings.tally_straggler_seconds),
        )
    health.record_flush_heartbeat(get_redis())
    measure.flush_duration.set(time.perf_counter() - started)
    measure.last_flush.set(time.time())
    try:
        refresh_gauges()
    except TRANSIENT_ERRORS as exc:
        # The flush itself is done; stale gauges must not make it run again.
        logger.warning("gauges not refreshed: %s", describe(exc))
    if result is not None:
        measure.flush_votes.inc(result.vote_count)
        logger.info(
            "tallies flushed batch=%s offered=%d counted=%d applied=%s",
            result.batch_id,
            result.offered,
            result.vote_count,
            result.applied,
        )


def refresh_gauges() -> None:
    """Gauges that describe the whole system, refreshed by each flush (once a second)."""
    measure = metrics.get()
    with session_scope() as session:
        measure.flush_lag.set(status.flush_lag_seconds(session=session))
        for (law_id, choice), count in tallies.results_by_law(session=session).items():
            measure.current_vote_totals.labels(law_id=law_id, choice=choice).set(count)
    roll = voter_roll_size(get_redis())
    measure.voter_roll_size.set(roll)
    measure.voter_roll_missing.set(0 if roll else 1)
    depths = status.queue_depths()
    for queue, depth in depths.items():
        measure.queue_depth.labels(queue=queue).set(depth)
    measure.validation_queue_size.set(depths[VALIDATION])


@app.task(base=VotesTask, bind=True, name="votes_app.record_review", **RETRY_POLICY)
def record_review(self: Task[..., None], rejections: list[dict[str, Any]]) -> None:
    """Store refused submissions for review, each message once."""
    client = get_redis()
    fresh = review.not_yet_reviewed(client, _rejections.validate_python(rejections))
    if not fresh:
        return
    with session_scope() as session:
        review.record_rejections(session=session, rejections=fresh)
    # A crash right here counts these again on redelivery: at least once, not exactly.
    review.mark_reviewed(client, fresh, ttl_seconds=settings.claim_ttl_seconds)
