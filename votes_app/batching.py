"""Batched validation: the worker buffers `validate_vote` messages and settles them together."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from celery.utils.log import get_logger
from celery.utils.time import get_exponential_backoff_interval
from celery.worker.request import Request as CeleryRequest
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from votes_app import dead_letters, metrics
from votes_app.ballot_box import VoterRollMissing
from votes_app.config import get_settings
from votes_app.resources import TRANSIENT_ERRORS, get_ballot_box, session_scope
from votes_app.review import Rejection
from votes_app.schemas import Submission, utcnow
from votes_app.validation import MalformedBulk, Outcome, unpack, validate

logger = get_logger(__name__)

# A message this large is a bulk message of some size (about 70 votes and more).
LARGE_MESSAGE_BYTES = 16 * 1024


class NarrowedWindow:
    """A consumer's prefetch window, narrowed to `narrow` messages while large ones are held.

    RabbitMQ's prefetch counts messages, and the window that keeps the pool fed with one vote
    per message (hundreds) would, full of 500-vote messages decoded in the worker's main
    process, hold hundreds of megabytes. From the first large message buffered until the last
    one held is settled, the window is `narrow` (still enough to feed the pool), then whole
    again. The change reaches RabbitMQ at the event loop's next turn (`QoS.update`, Celery's
    loop): what it delivered meanwhile is held too, and the window gives it no more room.
    """

    def __init__(self, consumer: Any, narrow: int) -> None:
        self._consumer, self._narrow = consumer, narrow
        self._held: set[int] = set()  # ids of the large messages buffered or running
        self._taken = 0
        self._qos: Any = None  # the window narrowed: a reconnect makes a new one

    def hold(self, message: Any) -> None:
        if len(message.body or b"") < LARGE_MESSAGE_BYTES:
            return
        if not self._held:
            qos = self._qos = self._consumer.qos
            self._taken = max(qos.value - self._narrow, 0)
            qos.decrement_eventually(self._taken)
        self._held.add(id(message))

    def release(self, messages: Iterable[Any]) -> None:
        if not self._held:
            return
        self._held.difference_update(id(message) for message in messages)
        if not self._held:
            self._qos.increment_eventually(self._taken)
            self._taken = 0


class SettledBatches(Batches):  # type: ignore[misc]
    """celery-batches' `Batches`, with each message acknowledged according to its fate.

    `Batches.flush` acknowledges every message of a batch when the batch function returns,
    even when it raised, and none when the pool process running it dies, which would leave
    them unacknowledged until the connection closes. Here the batch function returns the ids
    of the messages to dead-letter, the others are acknowledged, and a batch whose process
    was lost goes back to the queue, as `task_reject_on_worker_lost` does for single tasks.

    Each batch is also announced as one task to event consumers (Flower, exporters), which
    `Batches` leaves silent: one event per batch, not two per vote.

    A message with an ETA (a retry the worker sent itself, due within MAX_ETA_SECONDS: the
    intake refuses later ones) waits in the worker until it is due, as Celery's default
    strategy makes it wait: with the prefetch window raised by one meanwhile, so that
    waiting messages never take the place of votes that are due. While bulk messages are
    held, the window is narrowed (`NarrowedWindow`) to two batches per pool process (one
    running, one waiting for it), one ready and one filling.

    `flush` is celery-batches' name for running a buffered batch; in the rest of votes_app a
    flush is the tally flush (`flush_tallies`) alone.
    """

    Request = "votes_app.consumer:VotesRequest"
    _events: Any = None
    _consumer: Any = None
    _waiting: set[str] = set()
    _window: NarrowedWindow | None = None

    def Strategy(self, task: Batches, app: Celery, consumer: Any) -> Callable[..., None]:
        # Celery's hook for a task's own message handling, called again after every broker
        # reconnect. The reconnect cleared the worker's timer, the batch timer included:
        # forget it, or no partial batch would run again until the worker restarts. The
        # prefetch window is the new connection's too: what waited on the old one is gone.
        self._tref = None
        self._events = consumer.event_dispatcher
        # consumer.qos is made after the strategies (celery/worker/consumer/tasks.py):
        # read when used, not now, when it is None (or the previous connection's).
        self._consumer, self._waiting = consumer, set()
        window = self._window = NarrowedWindow(
            consumer, narrow=self.flush_every * (2 * consumer.pool.num_processes + 2)
        )
        buffer: Callable[..., None] = super().Strategy(task, app, consumer)

        def task_message_handler(message: Any, *args: Any, **kwargs: Any) -> None:
            headers = message.headers or {}
            if headers.get("eta"):
                # Celery's default strategy does the same for its ETA tasks.
                self._waiting.add(str(headers.get("id")))
                self._consumer.qos.increment_eventually()
            buffer(message, *args, **kwargs)
            # Once buffered: a message refused as invalid is never settled.
            window.hold(message)

        return task_message_handler

    def _announce(self, kind: str, **fields: Any) -> None:
        if self._events is not None and self._events.enabled:
            self._events.send(kind, **fields)

    def flush(self, requests: Collection[CeleryRequest]) -> Any:
        """Run one batch in the pool; settle each of its messages when it returns."""
        requests = list(requests)
        for request in requests:
            if request.id in self._waiting:
                self._waiting.discard(request.id)
                self._consumer.qos.decrement_eventually()
        window = self._window
        batch = ([SimpleRequest.from_request(request) for request in requests],)
        batch_id = uuid.uuid4().hex
        started = time.monotonic()
        self._announce(
            "task-received",
            uuid=batch_id,
            name=self.name,
            args=f"[{len(requests)} votes]",
            kwargs="{}",
            retries=0,
            eta=None,
            root_id=batch_id,
            parent_id=None,
        )

        def on_return(dead_ids: Iterable[str] | None) -> None:
            # None: the batch function itself raised, which it never means to do. Keeping
            # the messages in votes.dead beats both losing them and redelivering in a loop.
            dead = {request.id for request in requests} if dead_ids is None else set(dead_ids)
            for request in requests:
                if request.id in dead:
                    request.reject(requeue=False)
                else:
                    request.acknowledge()
            if window is not None:
                window.release(request.message for request in requests)
            self._announce(
                "task-succeeded",
                uuid=batch_id,
                result=f"{len(requests) - len(dead)} settled, {len(dead)} to votes.dead",
                runtime=time.monotonic() - started,
            )

        def on_process_lost(*_: Any) -> None:
            for request in requests:
                request.reject(requeue=True)
            if window is not None:
                window.release(request.message for request in requests)
            self._announce("task-failed", uuid=batch_id, exception="WorkerLostError: requeued")

        return self._pool.apply_async(
            apply_batches_task,
            (self, batch, 0, None),
            callback=on_return,
            error_callback=on_process_lost,
        )


# What a batch's messages hold: the votes to judge, the entries refused before they are
# votes (review), and the ids of messages that hold no votes at all (votes.dead).
Unpacked = tuple[list[Submission], list[Rejection], list[str]]
Unpack = Callable[[list[SimpleRequest]], Unpacked]


def one_vote_each(requests: list[SimpleRequest]) -> Unpacked:
    """`validate_vote` messages: each is one vote, identified by its task id."""
    return [Submission(task_id=r.id, args=r.args, kwargs=r.kwargs) for r in requests], [], []


def votes_of_bulk(requests: list[SimpleRequest]) -> Unpacked:
    """`validate_votes` messages: each holds many votes, identified by their vote ids. A vote
    id met again in the same batch is the same vote sent twice (a producer's resend queued
    beside the first copy): judged once."""
    submissions: list[Submission] = []
    refused: list[Rejection] = []
    dead: list[str] = []
    seen: set[str] = set()
    now = utcnow()
    for request in requests:
        try:
            judged, malformed = unpack(
                request.id,
                _the_votes(request),
                max_votes=get_settings().validate_bulk_max,
                now=now,
            )
        except MalformedBulk as exc:
            metrics.get().validation_errors.labels(error_type="MalformedBulk").inc()
            dead.append(dead_letters.send_to_dead(request.id, exc.reason, kind="failed"))
            continue
        submissions += [vote for vote in judged if vote.task_id not in seen]
        seen |= {vote.task_id for vote in judged}
        refused += malformed
    return submissions, refused, dead


def _the_votes(request: SimpleRequest) -> object:
    """`votes`, given by keyword or as the one positional argument, and nothing else."""
    args, kwargs = list(request.args or ()), dict(request.kwargs or {})
    if len(args) == 1 and not kwargs:
        return args[0]
    if args or set(kwargs) != {"votes"}:
        raise MalformedBulk("a validate_votes message takes one argument, votes")
    return kwargs["votes"]


def settle(
    task: SettledBatches,
    requests: list[SimpleRequest],
    *,
    hand_on: Callable[[Outcome], None],
    unpack_votes: Unpack = one_vote_each,
    send_alone: Callable[[Submission], None] | None = None,
) -> list[str]:
    """Validate a batch of messages and hand its outcome on; the ids of the messages for
    votes.dead.

    Infrastructure errors send each message back with a delay (Celery's retry, message by
    message); a missing voter roll holds them; anything else is the messages' doing, and
    is narrowed down to the message responsible by settling them one by one, and within a
    bulk message to the vote responsible, which `send_alone` sends on by itself.
    """
    dead = [
        dead_letters.send_to_dead(
            r.id,
            f"redelivered more than {get_settings().max_redeliveries} times",
            kind="redelivered",
        )
        for r in requests
        if dead_letters.too_often_redelivered(r.id, r.delivery_info)
    ]
    if dead:
        requests = [r for r in requests if r.id not in dead]
    if not requests:
        return dead
    return dead + _settle(task, requests, hand_on, unpack_votes, send_alone)


def _settle(
    task: SettledBatches,
    requests: list[SimpleRequest],
    hand_on: Callable[[Outcome], None],
    unpack_votes: Unpack,
    send_alone: Callable[[Submission], None] | None,
) -> list[str]:
    submissions, refused, dead = unpack_votes(requests)
    requests = [r for r in requests if r.id not in dead]
    measure = metrics.get()
    started = time.perf_counter()
    try:
        outcome = _validate(submissions, utcnow())
        outcome.rejections += refused
        hand_on(outcome)
    except VoterRollMissing:
        # Hold the votes until the roll is loaded again: refusing them would be wrong.
        logger.warning("voter roll missing: holding %d votes", len(submissions))
        measure.validation_errors.labels(error_type="voter_roll_missing").inc()
        measure.voter_roll_missing.set(1)
        measure.votes_held.inc(len(submissions))
        return dead + retry_later(task, requests, hold=True)
    except TRANSIENT_ERRORS as exc:
        logger.warning("retrying %d votes after %s", len(submissions), type(exc).__name__)
        measure.validation_errors.labels(error_type=type(exc).__name__).inc()
        return dead + retry_later(task, requests)
    except Exception as exc:
        measure.validation_errors.labels(error_type=type(exc).__name__).inc()
        if len(requests) > 1:
            # One bad message must not take its batch with it: settle them one by one.
            logger.exception("batch of %d failed: settling its messages one by one", len(requests))
            return dead + [
                lost
                for request in requests
                for lost in _settle(task, [request], hand_on, unpack_votes, send_alone)
            ]
        if send_alone is None or len(submissions) < 2:
            logger.exception("vote task %s failed", requests[0].id)
            return dead + [
                dead_letters.send_to_dead(requests[0].id, dead_letters.describe(exc), kind="failed")
            ]
        logger.exception("bulk message %s failed: its votes one by one", requests[0].id)
        return dead + _settle_one_by_one(task, requests, submissions, refused, hand_on, send_alone)
    observe(outcome, seconds=time.perf_counter() - started)
    return dead


def _settle_one_by_one(
    task: SettledBatches,
    requests: list[SimpleRequest],
    submissions: list[Submission],
    refused: list[Rejection],
    hand_on: Callable[[Outcome], None],
    send_alone: Callable[[Submission], None],
) -> list[str]:
    """A bulk message that failed as a whole: each vote alone; one that fails again goes on
    alone, as a `validate_vote` message under its vote id, to reach votes.dead by itself."""
    outcome = Outcome(rejections=list(refused))
    started = time.perf_counter()
    try:
        for submission in submissions:
            try:
                alone = _validate([submission], utcnow())
            except TRANSIENT_ERRORS:
                raise
            except Exception:
                send_alone(submission)
                continue
            outcome.recorded += alone.recorded
            outcome.rejections += alone.rejections
        hand_on(outcome)
    except TRANSIENT_ERRORS:
        # What was recorded stays recorded; the message, sent again, finishes the rest.
        return retry_later(task, requests)
    observe(outcome, seconds=time.perf_counter() - started)
    return []


def _validate(submissions: list[Submission], now: datetime) -> Outcome:
    return validate(
        submissions,
        ballot_box=get_ballot_box(),
        session_scope=session_scope,
        now=now,
        max_clock_skew=timedelta(seconds=get_settings().max_clock_skew_seconds),
    )


def observe(outcome: Outcome, *, seconds: float) -> None:
    """Count a settled validation batch: each vote by status (`valid` for a recorded one, as
    the old validation worker said, else its verdict), the time it took per vote and per batch."""
    measure = metrics.get()
    measure.voter_roll_missing.set(0)
    measure.validation_batch_duration.observe(seconds)
    votes = len(outcome.recorded) + len(outcome.rejections)
    for _ in range(votes):
        measure.processing_latency.observe(seconds)
    if outcome.recorded:
        measure.votes_processed.labels(status=metrics.VALID).inc(len(outcome.recorded))
    for verdict, count in outcome.verdict_counts().items():
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
            countdown = get_settings().roll_missing_retry_seconds
        elif (retries := retries + 1) > get_settings().max_retries:
            dead.append(
                dead_letters.send_to_dead(
                    request.id,
                    f"out of retries ({get_settings().max_retries})",
                    kind="out_of_retries",
                )
            )
            continue
        else:
            countdown = get_exponential_backoff_interval(
                factor=1,
                retries=retries - 1,
                maximum=get_settings().retry_backoff_max_seconds,
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
                dead_letters.send_to_dead(
                    request.id, f"retry not published: {exc}", kind="retry_unpublished"
                )
            )
    return dead
