"""The producer client: `VotePublisher` publishes votes, one per message or grouped, confirmed."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from itertools import takewhile
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from amqp.exceptions import AccessRefused
from kombu import Connection
from kombu.exceptions import OperationalError

from votes_app.celery import VALIDATION, app, declare_topology
from votes_app.config import BULK_LINGER_MS, get_settings
from votes_app.topology import INTAKE_EXCHANGE, VALIDATE_VOTE, VALIDATE_VOTES

T = TypeVar("T")


class ConfirmWindow(Generic[T]):
    """Publisher confirms on one channel, awaited a window at a time.

    The caller records each message it publishes with `sent(item)`, in publishing order
    (delivery tags count from 1 on a channel in confirm mode). `wait_for_confirms` waits
    until the broker has confirmed or refused them all and returns the refused ones; after a lost
    connection, `unconfirmed` lists what may not have reached the broker.

    Messages are published `mandatory`: one that no queue takes comes back (`basic.return`,
    identified by `key`, its task id) before the broker acks it, and counts as refused, not
    confirmed. Without it RabbitMQ confirms an unroutable message and drops it.
    """

    def __init__(self, channel: Any, *, key: Callable[[T], str]) -> None:
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        self._key = key
        self._next_tag = 1
        self._pending: dict[int, T] = {}
        self._refused: list[T] = []
        self._returned: set[str] = set()

    def __len__(self) -> int:
        return len(self._pending)

    def sent(self, item: T) -> None:
        self._pending[self._next_tag] = item
        self._next_tag += 1

    def _covered(self, tag: int, multiple: bool) -> list[int]:
        if not multiple:
            return [tag] if tag in self._pending else []
        # Tags go up in publishing order, and so does the dict.
        return list(takewhile(lambda pending: pending <= tag, self._pending))

    def _on_ack(self, tag: int, multiple: bool) -> None:
        for done in self._covered(tag, multiple):
            item = self._pending.pop(done)
            if (key := self._key(item)) in self._returned:
                self._returned.discard(key)
                self._refused.append(item)

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.add(str((message.headers or {}).get("id")))

    def _on_nack(self, tag: int, multiple: bool) -> None:
        for refused in self._covered(tag, multiple):
            self._refused.append(self._pending.pop(refused))

    def wait_for_confirms(self, connection: Connection, timeout: float) -> list[T]:
        """Wait for every confirm; the messages the broker refused (nack)."""
        while self._pending:
            try:
                connection.drain_events(timeout=timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"the broker confirmed nothing of {len(self._pending)} messages "
                    f"in {timeout:.0f}s"
                ) from None
        refused, self._refused = self._refused, []
        return refused

    @property
    def unconfirmed(self) -> list[T]:
        return [*self._refused, *self._pending.values()]


# A task message as the publisher keeps it until the broker confirms it: task name, task
# id, keyword arguments.
Message = tuple[str, str, dict[str, Any]]


class VotePublisher:
    """Publishes votes with publisher confirms: one `validate_vote` message per vote, or, with
    `max_batch` above 1, `validate_votes` messages of up to `max_batch` votes each.

    Grouping works as a Kafka producer's `batch.size` and `linger.ms`: a vote joins the open
    batch, which is sent when it holds `max_batch` votes, or when `publish` or `poll` finds
    its first vote older than `linger_ms`; `confirm()` sends it at once. Each vote of a batch
    carries its `vote_id` (given, or made here), which the pipeline treats as a single vote's
    task id: a message sent again counts each of its votes once.

    Up to `window` messages are in flight before the publisher waits for the broker's
    confirms; `confirm()` (and leaving the `with` block without an error) waits for the rest.
    A vote is on the broker only once `confirm()` has returned (or, with the default window
    of 1 and no grouping, once `publish` has). A message the broker refuses, returns (no queue)
    or that a lost connection leaves unconfirmed is sent again with the same ids.
    """

    def __init__(
        self,
        *,
        window: int = 1,
        confirm_timeout: float = 30.0,
        max_reconnects: int = 5,
        broker_url: str | None = None,
        max_batch: int = 1,
        linger_ms: float = BULK_LINGER_MS,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        if not 1 <= max_batch <= get_settings().validate_bulk_max:
            raise ValueError(f"max_batch must be 1-{get_settings().validate_bulk_max}")
        if linger_ms < 0:
            raise ValueError("linger_ms must not be negative")
        self.window = window
        self.confirm_timeout = confirm_timeout
        self.max_reconnects = max_reconnects
        self.broker_url = broker_url  # None: CELERY_BROKER_URL
        self.max_batch = max_batch
        self.linger_ms = linger_ms
        self.reconnects = 0  # connections opened again after a lost one, for its owner to see
        self.messages_sent = 0  # messages published, each once, resends not counted
        self._connection: Connection | None = None
        self._producer: Any = None
        self._confirms: ConfirmWindow[Message] | None = None
        self._batch: list[dict[str, Any]] = []
        self._batch_opened = 0.0

    def __enter__(self) -> Self:
        self._connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.confirm()
        finally:
            if self._connection is not None:
                self._connection.release()
                self._connection = None

    def publish(
        self, kwargs: dict[str, Any], *, task_id: str | None = None, vote_id: str | None = None
    ) -> str:
        """Send one vote (`validate_vote` keyword arguments); returns its id, the task id of
        its message or its `vote_id` in a batch. Resend with the same id after an error: the
        pipeline recognises its own vote and counts it once."""
        if self._confirms is None:
            raise RuntimeError("publish outside of `with VotePublisher()`")
        identity = vote_id or task_id or str(uuid.uuid4())
        if self.max_batch == 1:
            self._publish((VALIDATE_VOTE, identity, kwargs))
            return identity
        if not self._batch:
            self._batch_opened = time.monotonic()
        self._batch.append({**kwargs, "vote_id": identity})
        if len(self._batch) >= self.max_batch:
            self._send_batch()
        else:
            self.poll()
        return identity

    def poll(self) -> None:
        """Send the open batch if its first vote has waited `linger_ms`."""
        if self._batch and (time.monotonic() - self._batch_opened) * 1000 >= self.linger_ms:
            self._send_batch()

    def confirm(self) -> None:
        """Send the open batch, then wait until the broker has every vote published so far."""
        if self._batch:
            self._send_batch()
        for _ in range(self.max_reconnects + 1):
            assert self._confirms is not None and self._connection is not None
            try:
                refused = self._confirms.wait_for_confirms(self._connection, self.confirm_timeout)
                if not refused:
                    return
                # Refused (a full queue) or returned (no queue bound): declare again, resend.
                declare_topology(self._connection)
                self._send_again(refused)
            except self._connection_errors:
                # A confirm that timed out also lands here: the same cure.
                self._reconnect()
        unconfirmed = len(self._confirms.unconfirmed) if self._confirms is not None else 0
        raise ConnectionError(
            f"{unconfirmed} messages still unconfirmed after "
            f"{self.max_reconnects} attempts: the broker refused them, could not route them "
            "or did not answer"
        )

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        self._publish((VALIDATE_VOTES, str(uuid.uuid4()), {"votes": batch}))

    def _publish(self, message: Message) -> None:
        assert self._confirms is not None
        self.messages_sent += 1
        # Recorded first: if the send fails, the reconnect sends it again.
        self._confirms.sent(message)
        try:
            self._send(message)
        except self._connection_errors:
            self._reconnect()
        if len(self._confirms) >= self.window:
            self.confirm()

    @property
    def _connection_errors(self) -> tuple[type[BaseException], ...]:
        assert self._connection is not None
        # Celery's send_task raises them as kombu's OperationalError.
        return (*self._connection.connection_errors, OperationalError)

    def _connect(self) -> None:
        # Confirms are handled here, a window at a time, not by the transport per message.
        connection = app.connection_for_write(
            url=self.broker_url, transport_options={"confirm_publish": False}
        )
        connection.ensure_connection(max_retries=self.max_reconnects)
        self._connection = connection
        channel = connection.default_channel
        # Declared once per connection, not (as Celery would) checked before every message.
        # A producer's own RabbitMQ user may not declare anything (docs/ROLES.md): then the
        # topology is the broker's (definitions), and `mandatory` returns what it lacks.
        try:
            declare_topology(connection)
        except AccessRefused:
            channel = connection.default_channel  # the refusal closed the channel; revived
        unconfirmed = self._confirms.unconfirmed if self._confirms is not None else []
        self._confirms = ConfirmWindow(channel, key=lambda message: message[1])
        self._producer = app.amqp.Producer(channel)
        self._send_again(unconfirmed)

    def _send_again(self, messages: list[Message]) -> None:
        assert self._confirms is not None
        # All recorded before any is sent: a failure halfway leaves every one unconfirmed.
        for message in messages:
            self._confirms.sent(message)
        for message in messages:
            self._send(message)

    def _reconnect(self) -> None:
        """A new connection, with every unconfirmed message sent again on it."""
        self.reconnects += 1
        for attempt in range(self.max_reconnects + 1):
            assert self._connection is not None
            self._connection.collect()
            try:
                self._connect()
                return
            except self._connection_errors:
                if attempt == self.max_reconnects:
                    raise

    def _send(self, message: Message) -> None:
        """Hand one message to the broker (on the channel whose confirms are awaited)."""
        name, task_id, kwargs = message
        app.send_task(
            name,
            kwargs=kwargs,
            task_id=task_id,
            producer=self._producer,
            # The producers' route (votes_app.topology): a message no queue takes comes back.
            exchange=INTAKE_EXCHANGE.name,
            routing_key=VALIDATION,
            mandatory=True,
            declare=[],
            # A reconnect inside Celery would open a channel that knows nothing of the
            # confirms awaited on this one: connection errors come back here instead.
            retry=False,
        )
