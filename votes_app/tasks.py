"""The Celery tasks of the contract: thin wrappers that call the domain steps and hand on."""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.utils.log import get_task_logger
from celery_batches import SimpleRequest

from votes_app import dead_letters, metrics, review, status, tallies, validation
from votes_app.batching import SettledBatches, settle, votes_of_bulk
from votes_app.celery import app
from votes_app.config import get_settings
from votes_app.resources import TRANSIENT_ERRORS, get_redis, session_scope
from votes_app.schemas import Submission, utcnow

logger = get_task_logger(__name__)
settings = get_settings()
BULK_MESSAGES_PER_BATCH = 10

# Infrastructure that may come back: retried with exponential backoff and jitter. After
# `max_retries` the task fails, is rejected, and lands in votes.dead for a later replay.
RETRY_POLICY: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": settings.retry_backoff_max_seconds,
    "retry_jitter": True,
    "max_retries": settings.max_retries,
}


def short(vote_hash: str) -> str:
    """A hash prefix for logs: enough to grep, not enough to identify a voter."""
    return vote_hash[:8]


class VotesTask(Task):  # type: ignore[type-arg]
    """A task whose message goes to votes.dead, with its reason noted, when it cannot succeed."""

    Request = "votes_app.consumer:VotesRequest"

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        if dead_letters.too_often_redelivered(task_id, self.request.delivery_info):
            dead_letters.send_to_dead(
                task_id,
                f"redelivered more than {settings.max_redeliveries} times",
                kind="redelivered",
            )
            raise Reject("too many redeliveries", requeue=False)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # task_acks_on_failure_or_timeout=False: Celery rejects the message, RabbitMQ
        # dead-letters it.
        dead_letters.send_to_dead(task_id, dead_letters.describe(exc), kind="failed")


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
    return settle(self, requests, hand_on=hand_on)


@app.task(
    base=SettledBatches,
    bind=True,
    name="votes_app.validate_votes",
    # Messages, not votes: a batch of bulk messages holds up to this many times
    # VALIDATE_BULK_MAX votes, and small ones (a producer's short linger) are judged together.
    flush_every=BULK_MESSAGES_PER_BATCH,
    flush_interval=settings.validate_batch_ms / 1000,
)
def validate_votes(self: SettledBatches, requests: list[SimpleRequest]) -> list[str]:
    """Judge the votes of a batch of bulk messages as one batch; record them and hand them
    on, or send them to review.

    Producers call it as `validate_votes(votes=[{vote_hash, law_id, choice, timestamp,
    citizen_id=None, vote_id}, ...])`, up to VALIDATE_BULK_MAX votes per message, each with
    an id of the producer's choosing (`votes_app.producer.VotePublisher(max_batch=...)` does).
    The worker buffers messages as it does `validate_vote`'s. Returns the ids of the messages
    that can never be processed, which go to votes.dead; the others are acknowledged.
    """
    return settle(
        self, requests, hand_on=hand_on, unpack_votes=votes_of_bulk, send_alone=send_alone
    )


def send_alone(submission: Submission) -> None:
    """A vote of a bulk message that failed for no reason of the infrastructure's: on its
    own, under its vote id, so that it alone reaches votes.dead if it fails again."""
    validate_vote.apply_async(kwargs=dict(submission.kwargs), task_id=submission.task_id)


def hand_on(outcome: validation.Outcome) -> None:
    """Send the next steps; called only after the votes are committed.

    Neither message names a voter next to a choice: aggregation hears how many votes each
    law got, review hears who was refused and why.
    """
    if outcome.recorded:
        aggregate_vote.apply_async(kwargs={"recorded": outcome.recorded_per_law()})
    if outcome.rejections:
        record_review.apply_async(
            kwargs={"rejections": [r.model_dump(mode="json") for r in outcome.rejections]}
        )
    for cast in outcome.recorded:
        logger.info(
            "vote recorded task=%s hash=%s law=%s",
            cast.task_id,
            short(cast.vote.vote_hash),
            cast.vote.law_id,
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
def aggregate_vote(self: Task[..., None], recorded: dict[str, dict[str, int]]) -> None:
    """Count a validation batch's recorded votes in the metrics: per law, and per choice
    where EXPORT_CHOICE_METRICS allows. The ballots are in PostgreSQL already; the flush
    counts them in `vote_results`."""
    measure = metrics.get()
    with metrics.counting_errors(measure.aggregation_errors):
        per_law = tallies.RECORDED.validate_python(recorded)
    for law_id, choices in per_law.items():
        measure.votes_recorded.labels(law_id=law_id).inc(sum(choices.values()))
        if measure.votes_aggregated is not None:
            for choice, count in choices.items():
                measure.votes_aggregated.labels(law_id=law_id, choice=choice).inc(count)
    logger.info("votes recorded +%d", sum(sum(choices.values()) for choices in per_law.values()))


# send_events=False: no task events for the flush, which beat sends every second; Flower's
# history (its last max_tasks tasks) keeps the vote batches instead. Celery's worker checks
# `task.send_events` before each task-received/started/succeeded/failed/retried event
# (celery/worker/strategy.py, request.py; Celery docs: Task.send_events). The metrics
# (batch_*, last_flush_timestamp_seconds, aggregation_errors_total) and the log show flushes.
@app.task(
    base=VotesTask,
    bind=True,
    name="votes_app.flush_tallies",
    send_events=False,
    **RETRY_POLICY,
)
def flush_tallies(self: Task[..., None]) -> None:
    """Count the ballots waiting in `vote_results`, each exactly once.

    A flush that counted ballots is what the old aggregation service called a batch:
    batch_processing_duration_seconds and batch_size_processed_total describe it.
    """
    measure = metrics.get()
    began, started = time.time(), time.perf_counter()
    with metrics.counting_errors(measure.aggregation_errors):
        result = tallies.flush(session_scope=session_scope)
    status.record_flush_heartbeat(get_redis(), began)
    if result is not None:
        measure.batch_duration.set(time.perf_counter() - started)
        measure.batch_size_processed.inc(result.vote_count)
    measure.last_flush.set(time.time())
    try:
        status.refresh_gauges()
    except TRANSIENT_ERRORS as exc:
        # The flush itself is done; stale gauges must not make it run again.
        logger.warning("gauges not refreshed: %s", dead_letters.describe(exc))
    if result is not None:
        logger.info(
            "tallies flushed batches=%s counted=%d", ",".join(result.batch_ids), result.vote_count
        )


@app.task(base=VotesTask, bind=True, name="votes_app.record_review", **RETRY_POLICY)
def record_review(self: Task[..., None], rejections: list[Any]) -> None:
    """Store refused submissions for review, each message once.

    A record that cannot be read or stored keeps none of the others out: they are stored,
    and it goes on alone, in a message of its own, which goes to votes.dead with its reason
    (as does any message none of whose records can be read or stored).
    """
    client, now = get_redis(), utcnow()
    readable, unreadable = review.read_rejections(rejections)
    fresh = review.within_quota(
        client,
        review.not_yet_reviewed(client, readable),
        per_hour=settings.review_quota_per_hour,
        now=now,
    )
    failed = review.record_apart(
        session_scope=session_scope, rejections=fresh, transient=TRANSIENT_ERRORS
    )
    try:
        # A crash before this counts them again on redelivery: at least once, not exactly.
        review.mark_reviewed(
            client,
            [r for r in fresh if all(r is not bad for bad, _ in failed)],
            ttl_seconds=settings.claim_ttl_seconds,
        )
    except TRANSIENT_ERRORS as exc:
        # The rows are committed: a retry would count them again, where only a redelivery
        # of this message can now.
        logger.warning("review marks not kept: %s", dead_letters.describe(exc))
    bad = unreadable + [(r.model_dump(mode="json"), exc) for r, exc in failed]
    if not bad:
        return
    if len(bad) == len(rejections):
        raise bad[0][1]
    logger.error(
        "%d of %d review records sent on alone: %s",
        len(bad),
        len(rejections),
        dead_letters.describe(bad[0][1]),
    )
    record_review.apply_async(kwargs={"rejections": [item for item, _ in bad]})
