"""The Celery app: broker settings, queues and routes, the beat schedule, worker signals."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from celery import Celery, signals
from celery.app.amqp import AMQP
from celery.utils.log import get_logger
from kombu import Connection

from votes_app import metrics, topology
from votes_app.config import Settings, get_settings
from votes_app.redaction import EscapeControlCharacters, argument_reprs
from votes_app.resources import forget_inherited_connections
from votes_app.topology import (
    AGGREGATION,
    ALL_QUEUES,
    DEAD,
    DEAD_EXCHANGE,
    DEAD_QUEUE,
    INTERNAL_TASKS,
    REVIEW,
    VALIDATION,
    VOTES_EXCHANGE,
    WORK_QUEUES,
    task_queues,
)

__all__ = [
    "AGGREGATION",
    "ALL_QUEUES",
    "DEAD",
    "DEAD_EXCHANGE",
    "DEAD_QUEUE",
    "REVIEW",
    "TASK_ROUTES",
    "VALIDATION",
    "VOTES_EXCHANGE",
    "WORK_QUEUES",
    "app",
    "declare_topology",
]

logger = get_logger(__name__)

TASK_ROUTES = {
    "votes_app.validate_vote": {"queue": VALIDATION},
    "votes_app.validate_votes": {"queue": VALIDATION},
    "votes_app.aggregate_vote": {"queue": AGGREGATION},
    "votes_app.flush_tallies": {"queue": AGGREGATION},
    "votes_app.record_review": {"queue": REVIEW},
}


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # Publisher confirms: a vote handed on to aggregation or review is on the broker's
        # disk before the message that produced it is acknowledged.
        "broker_transport_options": {"confirm_publish": settings.broker_confirm_publish},
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # Nothing reads task results: no result backend, no result messages.
        "result_backend": None,
        "task_ignore_result": True,
        # At-least-once delivery; every step is idempotent so "at least" becomes "exactly".
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task that failed for good is rejected, hence dead-lettered, not acknowledged away.
        "task_acks_on_failure_or_timeout": False,
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        # With late acks a task cut off by a lost connection is redelivered anyway; cancel it
        # rather than let it finish and try to acknowledge on a dead channel.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_queues": task_queues(settings),
        "worker_consumer": "votes_app.consumer:VotesConsumer",
        "task_routes": TASK_ROUTES,
        "task_default_exchange": VOTES_EXCHANGE.name,
        "task_default_queue": VALIDATION,
        "task_default_routing_key": VALIDATION,
        "task_default_delivery_mode": "persistent",
        # Task events feed Flower and the exporters.
        "worker_send_task_events": True,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": {
            "flush-tallies": {
                "task": "votes_app.flush_tallies",
                "schedule": settings.flush_interval_seconds,
                # No `expires`: Celery turns it into an AMQP message TTL, and RabbitMQ would
                # dead-letter every flush that waited while no worker ran. A late flush is
                # cheap and harmless instead.
            }
        },
    }


class RedactingAMQP(AMQP):
    """Celery's task message maker, with every message's `argsrepr` and `kwargsrepr` made
    from the arguments' shapes (votes_app.redaction), whatever the caller passed. Celery's
    own reprs would carry the vote's fields into headers and task events, and its `saferepr`
    walk of every argument took a sixth of a producer's time (docs/SCALING.md)."""

    def as_task_v2(
        self,
        task_id: str,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        *more: Any,
        **options: Any,
    ) -> Any:
        options["argsrepr"], options["kwargsrepr"] = argument_reprs(args or (), kwargs or {})
        return super().as_task_v2(task_id, name, args, kwargs, *more, **options)


app = Celery("votes_app", include=["votes_app.tasks"], amqp=RedactingAMQP)
app.conf.update(celery_config(get_settings()))


def declare_topology(connection: Connection) -> None:
    """Declare every exchange, queue and binding: RabbitMQ drops what has nowhere to go."""
    topology.declare(connection, get_settings())


# Remote-control commands a worker obeys: those that only read (Flower's pages, health
# checks' `inspect ping`, the exporters) and turning events on. Anyone who may publish to
# celery.pidbox could otherwise revoke votes by task id, stop every worker, or stall them
# (rate and time limits, pool and consumer changes); operators stop workers with signals.
READ_ONLY_CONTROL = frozenset(
    {
        "ping", "hello", "heartbeat", "clock", "election", "report", "stats", "conf",
        "dump_conf", "active_queues", "registered", "dump_tasks", "active", "dump_active",
        "reserved", "dump_reserved", "scheduled", "dump_schedule", "revoked", "dump_revoked",
        "query_task", "enable_events",
    }
)  # fmt: skip


@signals.worker_init.connect
def _obey_read_only_control(**_: Any) -> None:
    # The worker's mailbox dispatches from this registry: a command not in it is answered
    # with an error and changes nothing (kombu.pidbox.Node.dispatch).
    from celery.worker.control import Panel

    for command in set(Panel.data) - READ_ONLY_CONTROL:
        del Panel.data[command]


@signals.worker_init.connect
@signals.beat_init.connect
def _declare_topology_on_start(**_: Any) -> None:
    # Beat too: it declares the exchange `votes` when it first publishes a flush, and a
    # producer's vote routed there before any worker had bound votes.validation would be
    # confirmed, then dropped.
    with app.connection_for_write() as connection:
        declare_topology(connection)


@signals.before_task_publish.connect
def _sign(sender: str, properties: dict[str, Any], **_: Any) -> None:
    # Every task message this app sends (votes handed on, retries, a producer's votes).
    # An internal task names its sender in user_id, which RabbitMQ refuses unless it is the
    # connection's own user: the worker that receives it knows who sent it.
    if sender in INTERNAL_TASKS:
        properties.setdefault("user_id", get_settings().broker_user)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _escape_log_lines(logger: logging.Logger, **_: Any) -> None:
    # Task ids and field names come from producers: each record stays one line of text.
    for handler in logger.handlers:
        handler.addFilter(EscapeControlCharacters())


@signals.worker_process_init.connect
def _forget_inherited_connections(**_: Any) -> None:
    forget_inherited_connections()


@signals.celeryd_init.connect
def _share_metrics_between_processes(**_: Any) -> None:
    # Sent in the worker's main process before the pool forks: every pool process then
    # writes its metrics to files in this directory, and the worker serves their sum.
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="votes_app-metrics-")
    metrics.use_multiprocess_storage()


@signals.worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    settings = get_settings()
    if not settings.metrics_port:
        return
    try:
        metrics.serve(settings.metrics_address, settings.metrics_port)
    except OSError as exc:
        # Another worker on this machine has the port: run on, say so.
        logger.error(
            "metrics not served on %s:%d: %s (set METRICS_PORT per worker)",
            settings.metrics_address,
            settings.metrics_port,
            exc,
        )
