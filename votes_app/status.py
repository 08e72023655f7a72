"""The system as it is now: queue depths, voter roll, flush lag, beat's heartbeat, Redis memory;
and the worker step that keeps a worker's own gauges current."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import redis
import sqlalchemy as sa
from celery import bootsteps
from celery.utils.log import get_logger
from kombu import Connection
from sqlalchemy.orm import Session

from votes_app import laws, metrics, tallies
from votes_app.ballot_box import roll_sizes
from votes_app.celery import ALL_QUEUES, VALIDATION, app
from votes_app.config import get_settings
from votes_app.models import Ballot
from votes_app.resources import TRANSIENT_ERRORS, get_redis, session_scope

logger = get_logger(__name__)

FLUSH_HEARTBEAT = "tallies:last_flush"
# A broker that accepts the connection and then says nothing must not hold the worker's loop.
BROKER_TIMEOUT_SECONDS = 2.0


def record_flush_heartbeat(client: redis.Redis, began: float) -> None:
    """Each flush says when it began (unix time), once it has committed: beat is alive while
    this stays fresh, and no ballot waiting now is older than it."""
    client.set(FLUSH_HEARTBEAT, f"{began:.3f}")


def seconds_since_flush(client: redis.Redis) -> float | None:
    """How long ago the last successful flush began; None when none has run."""
    last = client.get(FLUSH_HEARTBEAT)
    return None if last is None else time.time() - float(str(last))


def queue_depths() -> dict[str, int]:
    """Ready messages per queue (declared passively; a missing queue counts as empty)."""
    from amqp.exceptions import NotFound

    depths = {}
    with app.connection_for_write() as connection:
        for name in ALL_QUEUES:
            channel: Any = connection.channel()
            try:
                _, depths[name], _ = channel.queue_declare(name, passive=True)
            except NotFound:
                depths[name] = 0
            finally:
                if channel.is_open:
                    channel.close()
    return depths


def flush_lag_seconds(*, session: Session, client: redis.Redis) -> float:
    """How old the oldest ballot waiting for a flush can be: 0 when none waits, else the
    time since the last flush began, which counted every ballot it found (ballots carry no
    time of their own: it would match their voter's). Infinite when no flush has run."""
    waiting = session.scalar(
        sa.select(sa.literal(True)).where(Ballot.tally_batch.is_(None)).limit(1)
    )
    if not waiting:
        return 0.0
    since = seconds_since_flush(client)
    return math.inf if since is None else since


def refresh_gauges() -> None:
    """Gauges that describe the whole system, refreshed by each flush (once a second)."""
    measure = metrics.get()
    client = get_redis()
    with session_scope() as session:
        measure.flush_lag.set(flush_lag_seconds(session=session, client=client))
        per_choice = tallies.results_by_law(session=session)
        registered = laws.all_laws(session=session)
    final = {law.law_id for law in registered if law.final}
    per_law: dict[str, int] = {}
    for (law_id, choice), count in per_choice.items():
        per_law[law_id] = per_law.get(law_id, 0) + count
        # Per choice while voting is open only where EXPORT_CHOICE_METRICS says so.
        if measure.per_choice or law_id in final:
            measure.choice_totals().labels(law_id=law_id, choice=choice).set(count)
    for law_id, count in per_law.items():
        measure.current_law_totals.labels(law_id=law_id).set(count)
    rolls = roll_sizes(client, laws.open_at(registered, datetime.now(UTC)))
    measure.voter_roll_size.set(sum(rolls.values()))
    measure.voter_roll_missing.set(1 if not all(rolls.values()) else 0)
    # INFO is a read: it answers when a full Redis (noeviction) refuses every write.
    memory = client.info("memory")
    measure.redis_memory_used.set(memory["used_memory"])
    measure.redis_memory_max.set(memory["maxmemory"])
    depths = queue_depths()
    for queue, depth in depths.items():
        measure.queue_depth.labels(queue=queue).set(depth)
    measure.validation_queue_size.set(depths[VALIDATION])


class QueueDepth:
    """Reads one queue's ready messages with a passive declare, on a connection of its own
    kept open between reads: one round trip each time."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self._connection: Connection | None = None
        self._channel: Any = None

    def read(self) -> int:
        """The queue's ready messages (0 if it does not exist); broker errors are raised."""
        from amqp.exceptions import NotFound

        if self._channel is None:
            if self._connection is None:
                timeouts = dict.fromkeys(("read_timeout", "write_timeout"), BROKER_TIMEOUT_SECONDS)
                self._connection = app.connection_for_read(
                    heartbeat=0,
                    connect_timeout=BROKER_TIMEOUT_SECONDS,
                    transport_options=timeouts,
                )
                self._connection.connect()
            self._channel = self._connection.channel()
        try:
            _, depth, _ = self._channel.queue_declare(self.queue, passive=True)
        except NotFound:
            self._channel = None  # the broker closed the channel; the connection lives on
            return 0
        return int(depth)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.collect()
        self._connection = self._channel = None


class WorkerGauges(bootsteps.StartStopStep):
    """A step of the worker's consumer, in its main process: the series known in advance exist
    from the worker's start, at zero; on a worker that consumes votes.validation,
    validation_queue_size is read every FLUSH_INTERVAL_SECONDS.

    A worker on votes.validation alone runs no flush, which refreshes the other gauges. The
    read runs on the consumer's timer (Celery's own Heart step sends heartbeats that way), one
    passive declare per interval on a connection of its own, whatever the number of votes.
    The consumer stops and starts its steps again when it reconnects to the broker.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        # Once per worker, before its pool runs a task (the consumer's steps are created
        # once; they start again on each reconnect).
        super().__init__(c, **kwargs)
        self._depth = QueueDepth(VALIDATION)
        self._tref: Any = None
        measure = metrics.get()
        measure.show_seed_gauges()
        known = [error.__name__ for error in TRANSIENT_ERRORS]
        # ValidationError: an aggregate_vote message of the wrong shape.
        measure.expect_errors(validation=known, aggregation=[*known, "ValidationError"])

    def start(self, c: Any) -> None:
        if VALIDATION in c.app.amqp.queues.consume_from:
            self._tref = c.timer.call_repeatedly(
                get_settings().flush_interval_seconds, self.refresh
            )

    def refresh(self) -> None:
        try:
            metrics.get().validation_queue_size.set(self._depth.read())
        except Exception as exc:
            # The consumer notices a lost broker itself and restarts this step.
            logger.warning("validation_queue_size not refreshed: %s", type(exc).__name__)
            self._depth.close()

    def stop(self, c: Any) -> None:
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        self._depth.close()

    shutdown = stop


# Registered on the app's consumer blueprint (Celery: "Extensions and Bootsteps"); the worker
# imports this module (through votes_app.tasks) before it builds its consumer.
app.steps["consumer"].add(WorkerGauges)
