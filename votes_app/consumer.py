"""The worker's message intake: Celery's own consumer and request, made safe for hostile input.

Celery acknowledges (drops) a message it cannot decode, logs whole message bodies when a
message is not a task or names an unknown task, and stops the worker when a task message
has the wrong shape. Here every such message is rejected without requeue, which RabbitMQ
dead-letters to votes.dead, and logged in one line without its body: a vote in the wrong
format still carries a hash and perhaps a citizen id.

Before Celery sees a task message, the intake also refuses what a producer may not send
(`admissible`): a message over MAX_MESSAGE_BYTES, a task due more than MAX_ETA_SECONDS
ahead (the worker would hold it unacknowledged, in its prefetch, until then), and an
internal task whose `user_id` is not a trusted publisher's.
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.utils.log import get_logger
from celery.utils.time import maybe_iso8601
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from redis import RedisError

from votes_app.config import Settings, get_settings
from votes_app.dead_letters import identify, remember_reason
from votes_app.resources import get_redis
from votes_app.topology import INTERNAL_TASKS

logger = get_logger(__name__)

NAME_SHOWN = 80  # characters of an unknown task name worth a log line


class VotesRequest(Request):
    """A task request that refuses, as an invalid task, a message of the wrong shape."""

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(message, *args, **kwargs)
        except KeyError as exc:
            raise InvalidTaskError(f"task message without the {exc} header") from None
        except (TypeError, ValueError):
            raise InvalidTaskError("task body is not [args, kwargs, options]") from None
        payload = self._payload  # type: ignore[attr-defined]
        if not (
            isinstance(payload, list | tuple)
            and len(payload) == 3
            and isinstance(payload[0], list | tuple)
            and isinstance(payload[1], Mapping)
        ):
            raise InvalidTaskError("task body is not [args, kwargs, options]")


def admissible(message: Any, settings: Settings, now: datetime) -> str | None:
    """Why a producer may not send this task message; None when it may."""
    headers = message.headers or {}
    size = len(message.body or b"")
    if size > settings.max_message_bytes:
        return f"message of {size} bytes, over MAX_MESSAGE_BYTES ({settings.max_message_bytes})"
    task = headers.get("task")
    if task in INTERNAL_TASKS:
        user = (message.properties or {}).get("user_id")
        if user not in settings.trusted_users:
            shown = str(user)[:NAME_SHOWN] if user is not None else "no user_id"
            return f"internal task {task} from an untrusted publisher ({shown})"
    if eta := headers.get("eta"):
        try:
            due = maybe_iso8601(eta)
        except (TypeError, ValueError, OverflowError):
            due = None
        if due is None:
            return "invalid ETA value (not a date and time)"
        if due.tzinfo is None:
            due = due.replace(tzinfo=UTC)
        if due - now > timedelta(seconds=settings.max_eta_seconds):
            return f"due {due - now} ahead, beyond MAX_ETA_SECONDS ({settings.max_eta_seconds})"
    return None


class AckCoalescer:
    """The acknowledgements of one channel, sent as few `basic.ack multiple` as order allows.

    Each settled batch of votes would otherwise cost one `basic.ack` per message, in the
    worker's main process and in RabbitMQ. With `multiple`, one ack settles every delivery up
    to its tag ("Consumer Acknowledgements and Publisher Confirms",
    rabbitmq.com/docs/confirms): safe only up to the oldest delivery that is not settled yet
    (a task still running, a vote waiting for its ETA, the next batch filling). So deliveries
    are registered as they arrive, acks are collected until the event loop's next turn, and
    one multiple ack goes out for the settled run at the front. Settled deliveries stuck
    behind one that waits long are acknowledged one by one past `hold_limit`, so that they
    never hold the prefetch window. Rejections go out at once.
    """

    def __init__(
        self,
        channel: Any,
        *,
        schedule: Callable[[Callable[[], None]], object] | None,
        hold_limit: int = 200,
    ) -> None:
        self._channel = channel
        self._send_ack = channel.basic_ack
        self._send_reject = channel.basic_reject
        self._schedule = schedule
        self._hold_limit = hold_limit
        self._outstanding: list[int] = []  # heap of delivered tags, some settled or gone
        self._settled: set[int] = set()  # acknowledged here, not yet sent
        self._gone: set[int] = set()  # sent (rejected, or acked alone): skip in the heap
        self._flush_scheduled = False
        channel.basic_ack = self.ack
        channel.basic_reject = self.reject

    def delivered(self, tag: int) -> None:
        heapq.heappush(self._outstanding, tag)

    def ack(self, delivery_tag: int, multiple: bool = False, **kwargs: Any) -> None:
        if multiple:  # not ours to reorder
            self.flush()
            self._send_ack(delivery_tag, multiple=True, **kwargs)
            return
        self._settled.add(delivery_tag)
        if self._schedule is None:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._schedule(self.flush)

    def reject(self, delivery_tag: int, requeue: bool = True, **kwargs: Any) -> None:
        self._send_reject(delivery_tag, requeue=requeue, **kwargs)
        self._gone.add(delivery_tag)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not getattr(self._channel, "is_open", True):
            return  # a reconnect replaced this channel: its deliveries come again
        front = None
        while self._outstanding and (
            self._outstanding[0] in self._settled or self._outstanding[0] in self._gone
        ):
            tag = heapq.heappop(self._outstanding)
            if tag in self._settled:
                self._settled.discard(tag)
                front = tag
            else:
                self._gone.discard(tag)
        if front is not None:
            self._send_ack(front, multiple=True)
        if len(self._settled) > self._hold_limit:
            for tag in sorted(self._settled):
                self._send_ack(tag, multiple=False)
            self._gone |= self._settled
            self._settled.clear()


class VotesConsumer(Consumer):
    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        # Celery's Events step is the only user of this connection: task events for Flower
        # and exporters. They are transient and worth no confirm round trip each, which
        # would stall the loop that receives and acknowledges every vote. Votes handed on
        # (aggregation, review, retries) go out on the app's producer pool, confirmed.
        return self.ensure_connected(
            self.app.connection_for_write(
                url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False}
            )
        )

    def _refuse(self, message: Any, why: str, *args: Any) -> None:
        reason = why % args
        logger.error("%s: to votes.dead", reason)
        # For `votes dead list`, under the id it shows; best effort, Redis may be failing.
        with contextlib.suppress(RedisError):
            remember_reason(
                get_redis(), identify(message), reason, ttl_seconds=get_settings().claim_ttl_seconds
            )
        message.reject_log_error(logger, self.connection_errors)  # type: ignore[attr-defined]

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._refuse(
            message,
            "undecodable message (%s, content type %r)",
            type(exc).__name__,
            message.content_type,
        )

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._refuse(message, "message without Celery task headers (%d bytes)", len(message.body))

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = str((message.headers or {}).get("task", "?"))[:NAME_SHOWN]
        self._refuse(message, "unknown task %r", name)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._refuse(message, "invalid task message (%s)", exc)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], None]:
        handle: Callable[[Any], None] = super().create_task_handler(*args, **kwargs)
        connection_errors = tuple(self.connection_errors)  # type: ignore[attr-defined]
        # Made again after every reconnect (Celery's loop asks for a new handler), on the
        # new channel: a delivery tag means something on its own channel only.
        hub = getattr(self, "hub", None)
        acks = AckCoalescer(
            self.task_consumer.channel,  # type: ignore[attr-defined]
            schedule=hub.call_soon if hub is not None else None,
        )

        def on_task_received(message: Any) -> None:
            acks.delivered(message.delivery_tag)
            try:
                if refused := admissible(message, get_settings(), datetime.now(UTC)):
                    self._refuse(message, "task message refused: %s", refused)
                    return
                handle(message)
            except connection_errors:
                raise  # the consumer reconnects; the broker redelivers
            except Exception as exc:
                # Any other failure here is the message's doing: without this, Celery calls
                # it unrecoverable and stops the worker, and the next worker, and the next.
                self._refuse(message, "task message refused (%s)", type(exc).__name__)

        return on_task_received
