"""Messages that cannot be processed: the redelivery bound, and votes.dead, listed and replayed."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from celery.utils.log import get_logger
from kombu import Connection
from kombu.message import Message
from pydantic import ValidationError

from votes_app import metrics, quotas
from votes_app.celery import DEAD, TASK_ROUTES, VOTES_EXCHANGE, declare_topology
from votes_app.config import get_settings
from votes_app.redaction import argument_reprs, escape, sample_of, shape
from votes_app.resources import get_redis
from votes_app.schemas import describe_errors, utcnow
from votes_app.topology import VALIDATE_VOTE, VALIDATE_VOTES

PREVIEW_MAX = 160


logger = get_logger(__name__)


# Task ids are the producer's: escaped, a lone surrogate in one cannot fail the key's encoding.
def deliveries_key(task_id: str) -> str:
    return f"deliveries:{escape(task_id)}"


def reason_key(task_id: str) -> str:
    return f"dead_reason:{escape(task_id)}"


def count_redelivery(client: redis.Redis, task_id: str, *, ttl_seconds: int) -> int:
    """How many times this message has come back; RabbitMQ's classic queues do not count."""
    pipe = client.pipeline(transaction=False)
    pipe.incr(deliveries_key(task_id))
    pipe.expire(deliveries_key(task_id), ttl_seconds)
    count, _ = pipe.execute()
    return int(count)


def remember_reason(client: redis.Redis, task_id: str, reason: str, *, ttl_seconds: int) -> None:
    """Keep why a message was sent to votes.dead, for `votes dead list`: DEAD_REASONS_PER_HOUR
    at most, past which it infers the reason from the message (the log has it)."""
    per_hour = get_settings().dead_reasons_per_hour
    if quotas.take(client, {"dead_reason": 1}, per_hour=per_hour, now=utcnow())["dead_reason"]:
        client.set(reason_key(task_id), reason[:500], ex=ttl_seconds)


def describe(exc: Exception) -> str:
    """One line on why something failed, without the offending values."""
    if isinstance(exc, ValidationError):
        return "invalid message: " + describe_errors(exc)
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first_line}"


def send_to_dead(task_id: str, reason: str, *, kind: str) -> str:
    """Say why a message goes to votes.dead: in the log, the metrics and, for `votes dead
    list`, in Redis (best effort: Redis may be the problem). `kind` is the metric label,
    one of a few fixed words, unlike `reason`. Returns the task id."""
    logger.error("task %s to votes.dead: %s", task_id, reason)
    metrics.get().dead_letters.labels(reason=kind).inc()
    with contextlib.suppress(redis.RedisError):
        remember_reason(get_redis(), task_id, reason, ttl_seconds=get_settings().claim_ttl_seconds)
    return task_id


def too_often_redelivered(task_id: str, delivery_info: Mapping[str, Any] | None) -> bool:
    """True for a message that came back more than MAX_REDELIVERIES times.

    A message that kills its worker process is requeued by task_reject_on_worker_lost and
    would kill the next one too, forever; past the bound it goes to votes.dead instead.
    """
    if not (delivery_info or {}).get("redelivered"):
        return False
    settings = get_settings()
    try:
        count = count_redelivery(get_redis(), task_id, ttl_seconds=settings.claim_ttl_seconds)
    except redis.RedisError:
        return False  # Redis down: the vote itself will wait for it anyway
    return count > settings.max_redeliveries


@dataclass(frozen=True, slots=True)
class DeadLetter:
    task_id: str
    task: str
    queue: str
    reason: str
    deaths: int
    died_at: datetime | None
    preview: str


def _first_death(message: Any) -> dict[str, Any]:
    deaths = (message.headers or {}).get("x-death") or [{}]
    return dict(deaths[0])


def _preview(message: Any) -> str:
    """What `votes dead list` shows of a message: its arguments redacted as a review sample
    is (`votes_app.redaction`), or only its size when it is not JSON."""
    try:
        body = json.loads(message.body)
    except (TypeError, ValueError):
        return f"<{len(message.body or b'')} bytes, not JSON>"
    if isinstance(body, list) and len(body) == 3 and isinstance(body[1], dict):
        # A Celery message: [args, kwargs, options].
        args = body[0] if isinstance(body[0], list) else [body[0]]
        return sample_of(args, body[1], limit=PREVIEW_MAX)
    if isinstance(body, dict):
        return sample_of((), body, limit=PREVIEW_MAX)
    return shape(body)


def _argument_reprs(message: Any) -> tuple[str, str]:
    """The redacted reprs of a Celery message's arguments; of anything else, none."""
    try:
        body = json.loads(message.body)
    except (TypeError, ValueError):
        body = None
    if isinstance(body, list) and len(body) == 3 and isinstance(body[1], dict):
        args = body[0] if isinstance(body[0], list) else [body[0]]
        return argument_reprs(args, body[1])
    return argument_reprs((), {})


def _reason(message: Any, remembered: str | None) -> str:
    if remembered:
        return remembered
    headers = message.headers or {}
    if message.content_type not in ("application/json", None):
        return f"content type {message.content_type!r} is not accepted (JSON only)"
    if "task" not in headers:
        return "not a Celery task message"
    try:
        json.loads(message.body)
    except (TypeError, ValueError):
        return "body is not JSON"
    if headers["task"] not in TASK_ROUTES:
        return f"unknown task {str(headers['task'])[:80]!r}"
    death = _first_death(message)
    if death.get("reason", "rejected") != "rejected":
        # RabbitMQ's own doing: expired, maxlen, delivery_limit (quorum queues).
        return f"{death['reason']} in {death.get('queue', '?')} (RabbitMQ)"
    return f"rejected by a worker (see its log for task {headers.get('id')})"


def identify(message: Any) -> str:
    """How `votes dead list` names a message: its task id, else a digest of its body."""
    # A Celery message has a task id; anything else is known by its content.
    headers = message.headers or {}
    known = headers.get("id") or message.properties.get("message_id")
    return str(known) if known else "sha256:" + hashlib.sha256(message.body).hexdigest()[:16]


def _drain(connection: Connection, limit: int) -> Iterator[tuple[Any, Message]]:
    """Take up to `limit` messages from votes.dead without acknowledging them; whatever is
    not acknowledged goes back to the queue when the channel closes."""
    declare_topology(connection)
    channel: Any = connection.channel()
    try:
        for _ in range(limit):
            message = channel.basic_get(DEAD, no_ack=False)
            if message is None:
                break
            yield channel, channel.message_to_python(message)
    finally:
        channel.close()


def list_dead(
    connection: Connection, client: redis.Redis | None, *, limit: int = 1000
) -> list[DeadLetter]:
    letters = []
    for _, message in _drain(connection, limit):
        death = _first_death(message)
        task_id = identify(message)
        remembered = None
        if client is not None:
            try:
                remembered = client.get(reason_key(task_id))
            except redis.RedisError:
                remembered = None
        letters.append(
            DeadLetter(
                task_id=task_id,
                task=str((message.headers or {}).get("task", "-")),
                queue=str(death.get("queue", "-")),
                reason=_reason(message, str(remembered) if remembered else None),
                deaths=int(death.get("count", 1)),
                died_at=death.get("time"),
                preview=_preview(message),
            )
        )
    return letters


def dead_votes(connection: Connection, *, limit: int = 1_000_000) -> Counter[str]:
    """How many votes wait in votes.dead, per law they name: each `validate_vote` message, and
    each vote of a `validate_votes` one. A vote cast in time but dead-lettered is counted only
    if replayed before its law closes."""
    per_law: Counter[str] = Counter()
    for _, message in _drain(connection, limit):
        task = (message.headers or {}).get("task")
        if task not in (VALIDATE_VOTE, VALIDATE_VOTES):
            continue
        try:
            args, kwargs, _ = json.loads(message.body or b"")
            if task == VALIDATE_VOTES:
                law_ids = [vote["law_id"] for vote in kwargs["votes"]]
            else:
                law_ids = [kwargs.get("law_id") if "law_id" in kwargs else args[1]]
        except (TypeError, ValueError, AttributeError, IndexError, KeyError):
            continue  # not a vote anyone could count: it stays a dead letter
        for law_id in law_ids:
            per_law[str(law_id)[:PREVIEW_MAX]] += 1
    return per_law


def replay(
    connection: Connection, select: Callable[[str], bool], *, limit: int = 1_000_000
) -> list[str]:
    """Publish the selected dead letters back to the queue they died on; their ids.

    The copy keeps the task id, so a vote that had been partly processed is finished, not
    counted twice. The original is acknowledged only after the broker confirmed the copy.
    """
    replayed = []
    publish_channel: Any = connection.channel()
    try:
        for channel, message in _drain(connection, limit):
            task_id = identify(message)
            if not select(task_id):
                continue
            queue = _first_death(message).get("queue")
            if not queue:
                continue
            headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-")}
            # The producer's reprs of the arguments would reach task events when replayed.
            headers |= dict(zip(("argsrepr", "kwargsrepr"), _argument_reprs(message), strict=True))
            publish_channel.basic_publish_confirm(
                publish_channel.prepare_message(
                    message.body,
                    priority=0,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    headers=headers,
                    properties={
                        k: v
                        for k, v in message.properties.items()
                        if k in ("correlation_id", "reply_to", "message_id")
                    }
                    # The replaying user vouches for the copy (RabbitMQ checks user_id):
                    # an internal task runs again only if that user is a trusted one.
                    | {"delivery_mode": 2, "user_id": get_settings().broker_user},
                ),
                exchange=VOTES_EXCHANGE.name,
                routing_key=queue,
            )
            channel.basic_ack(message.delivery_tag)
            replayed.append(task_id)
    finally:
        publish_channel.close()
    return replayed
