"""Publishing from several producer processes at once, as many producer services would: each
process holds one publisher (by default votes_app's `VotePublisher`, confirms awaited a
window at a time) and sends its share of the messages, as fast as it goes or on an open-loop
schedule."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

from votes_app.config import PUBLISH_WINDOW
from votes_app.producer import VotePublisher

# A producer that lost its connection waits this long before it connects again.
RECONNECT_BACKOFF_SECONDS = 0.5
PROGRESS_EVERY = 100  # messages between two progress reports of a producer process


class Publisher(Protocol):
    """What a producer process publishes with (`VotePublisher` is one)."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    reconnects: int  # connections it opened again after losing one

    def publish(self, payload: Any, *, task_id: str) -> object: ...

    def confirm(self) -> None: ...


# Called with `window=` in each producer process; picklable (a class or a module function).
Opener = Callable[..., Publisher]


@dataclass(frozen=True, slots=True)
class Share:
    """What one producer process did."""

    index: int
    first: float  # wall clock of the first publish
    last: float  # wall clock once the last message was confirmed
    intended: list[float]  # per message: when it was due (open loop) or first sent
    lag_max: float  # how far behind its schedule the producer fell, at worst
    cpu_seconds: float  # user + system time spent publishing
    sends: int  # publish calls that succeeded, resends included
    errors: int  # publish calls that failed (a lost broker)
    reconnects: int  # connections the publishers opened again by themselves


@dataclass(frozen=True, slots=True)
class Publication:
    """What all the producer processes did together."""

    first: float
    last: float
    sent: dict[str, float]  # task id -> when it was due (open loop) or first sent
    lag_max: float
    cpu_seconds: float
    sends: int
    errors: int
    reconnects: int

    @property
    def seconds(self) -> float:
        return self.last - self.first


class StartLine:
    """Producers connect, say they are ready, and start together when told to.

    Not a Barrier: a producer that dies while connecting must fail the run at once, not
    after a barrier's timeout.
    """

    def __init__(self, context: Any) -> None:
        self._ready = context.Value("i", 0)
        self._go = context.Event()

    def ready(self) -> None:
        with self._ready.get_lock():
            self._ready.value += 1
        self._go.wait()

    def go(self, processes: Sequence[Any], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self._ready.value < len(processes):
            if any(p.exitcode not in (None, 0) for p in processes):
                raise RuntimeError("a producer process failed while connecting")
            if time.monotonic() > deadline:
                raise TimeoutError(f"producers not connected after {timeout:.0f}s")
            time.sleep(0.05)
        self._go.set()


class ParallelPublisher:
    """Publishes messages from `processes` producer processes, each with a publisher of its
    own (`opener(window=window)`) that keeps up to `window` messages awaiting confirms.

    The processes connect before the clock starts, so that what is timed is publishing,
    not interpreters starting. With `resend_after_error`, a producer whose publish fails
    (the broker went away) connects again and resends that many messages before the one
    that failed, with their task ids: a producer that cannot tell what reached the broker
    resends, and the pipeline counts each vote once. Without it, the failure ends the run.
    """

    def __init__(
        self,
        *,
        processes: int = 4,
        window: int = PUBLISH_WINDOW,
        opener: Opener = VotePublisher,
        resend_after_error: int | None = None,
    ) -> None:
        self.processes = processes
        self.window = window
        self.opener = opener
        self.resend_after_error = resend_after_error
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self._progress = self._context.Value("q", 0)
        self._errors = self._context.Value("q", 0)

    @property
    def published(self) -> int:
        """Messages published so far by the current or last `publish`."""
        return int(self._progress.value)

    @property
    def errors(self) -> int:
        """Publish calls that failed so far, over every `publish` of this publisher."""
        return int(self._errors.value)

    def stop(self) -> None:
        """Ask the producers to stop after the message at hand."""
        self._stop.set()

    def publish(
        self,
        messages: Sequence[tuple[str, Any]],
        *,
        owner: Callable[[tuple[str, Any]], str] | None = None,
        per_second: float | None = None,
        on_progress: Callable[[int], None] = lambda _: None,
    ) -> Publication:
        """Publish `(task id, payload)` messages; returns once the broker confirmed them all.

        Messages with the same `owner` (a voter) go to one producer, in their order: only
        within one producer is the order of two messages certain. `per_second` (in total)
        makes it an open-loop run: each message goes out when due, whatever became of the
        ones before. `on_progress` gets the number of messages published so far.
        """
        start = StartLine(self._context)
        results = self._context.Queue()
        self._progress.value = 0
        parts = deal(messages, self.processes, owner=owner)
        each = per_second / self.processes if per_second else None
        # In an open-loop run the producers take turns within each interval: an even stream.
        offsets = [k / per_second if per_second else 0.0 for k in range(self.processes)]
        producers = [
            self._context.Process(
                target=_produce,
                args=(
                    _Job(k, parts[k], each, offsets[k], self.window, self.resend_after_error),
                    self.opener,
                    start,
                    self._stop,
                    self._progress,
                    self._errors,
                    results,
                ),
                daemon=True,
            )
            for k in range(self.processes)
        ]
        for producer in producers:
            producer.start()
        try:
            start.go(producers)
            done: dict[int, Share] = {}
            while len(done) < len(producers):
                on_progress(self.published)
                try:
                    share = results.get(timeout=0.2)
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in producers):
                        raise RuntimeError("a producer process failed") from None
                    continue
                done[share.index] = share
            on_progress(self.published)
        finally:
            for producer in producers:
                producer.join(timeout=30)
                if producer.is_alive():
                    producer.kill()
        shares = list(done.values())
        return Publication(
            first=min(s.first for s in shares),
            last=max(s.last for s in shares),
            sent={
                task_id: due
                for k, part in enumerate(parts)
                for (task_id, _), due in zip(part, done[k].intended, strict=False)
            },
            lag_max=max(s.lag_max for s in shares),
            cpu_seconds=sum(s.cpu_seconds for s in shares),
            sends=sum(s.sends for s in shares),
            errors=sum(s.errors for s in shares),
            reconnects=sum(s.reconnects for s in shares),
        )


def deal(
    items: Sequence[tuple[str, Any]],
    parts: int,
    *,
    owner: Callable[[tuple[str, Any]], str] | None = None,
) -> list[list[tuple[str, Any]]]:
    """Deal `items` to `parts` producers in turn: together they keep the stream's order, and
    items with the same `owner` go to one producer."""
    dealt: list[list[tuple[str, Any]]] = [[] for _ in range(parts)]
    producer_of: dict[str, int] = {}
    for n, item in enumerate(items):
        k = n % parts if owner is None else producer_of.setdefault(owner(item), n % parts)
        dealt[k].append(item)
    return dealt


# --- in each producer process ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Job:
    index: int
    messages: list[tuple[str, Any]]
    per_second: float | None
    offset: float
    window: int
    resend_after_error: int | None


class _Producer:
    """One producer process's publisher, connected again after an error if the job allows."""

    def __init__(self, job: _Job, opener: Opener, stop: Any, errors: Any) -> None:
        self.job, self.opener, self.stop, self.shared_errors = job, opener, stop, errors
        self.publisher: Publisher | None = None
        self.sends = self.errors = self.reconnects = 0

    def connect(self) -> None:
        if self.publisher is None:
            self.publisher = self.opener(window=self.job.window).__enter__()

    def send(self, task_id: str, payload: Any) -> bool:
        """Publish one message; False when that failed and the job resends."""
        try:
            self.connect()
            assert self.publisher is not None
            self.publisher.publish(payload, task_id=task_id)
        except Exception as exc:
            self._failed(exc)
            return False
        self.sends += 1
        return True

    def finish(self) -> bool:
        """Wait for the last confirms and disconnect; False when that failed and the job
        resends."""
        try:
            self._disconnect(None)
        except Exception as exc:
            self._failed(exc)
            return False
        return True

    def abandon(self) -> None:
        """Disconnect without waiting for anything (the producer was told to stop)."""
        with contextlib.suppress(Exception):
            self._disconnect(RuntimeError("stopped"))

    def _disconnect(self, error: BaseException | None) -> None:
        """Leave the publisher's block: on no `error`, after its last confirms."""
        publisher, self.publisher = self.publisher, None
        if publisher is None:
            return
        try:
            publisher.__exit__(type(error) if error else None, error, None)
        finally:
            self.reconnects += publisher.reconnects

    def _failed(self, exc: Exception) -> None:
        if self.job.resend_after_error is None:
            raise exc
        self.errors += 1
        with self.shared_errors.get_lock():
            self.shared_errors.value += 1
        self.abandon()
        # A producer's back-off before it reconnects: not a wait for a condition.
        self.stop.wait(RECONNECT_BACKOFF_SECONDS)


def _produce(
    job: _Job,
    opener: Opener,
    start: StartLine,
    stop: Any,
    progress: Any,
    errors: Any,
    results: Any,
) -> None:
    producer = _Producer(job, opener, stop, errors)
    producer.connect()
    start.ready()
    cpu = os.times()
    begun = first = time.time()
    intended: list[float] = []
    lag_max = 0.0
    position = reported = 0
    resend = job.resend_after_error or 0
    while not stop.is_set():
        if position == len(job.messages):
            if producer.finish():
                break
            position = max(0, position - resend)
            continue
        task_id, payload = job.messages[position]
        if position == len(intended):  # the first attempt at this message
            now = time.time()
            due = begun + job.offset + position / job.per_second if job.per_second else now
            if due > now:
                time.sleep(due - now)
            lag_max = max(lag_max, now - due)
            intended.append(due)
            if position == 0:
                first = time.time()
        if not producer.send(task_id, payload):
            position = max(0, position - resend)
            continue
        position += 1
        if position - reported >= PROGRESS_EVERY:
            with progress.get_lock():
                progress.value += position - reported
            reported = position
    producer.abandon()
    with progress.get_lock():
        progress.value += max(0, position - reported)
    spent = os.times()
    results.put(
        Share(
            index=job.index,
            first=first,
            last=time.time(),
            intended=intended,
            lag_max=lag_max,
            cpu_seconds=spent.user + spent.system - cpu.user - cpu.system,
            sends=producer.sends,
            errors=producer.errors,
            reconnects=producer.reconnects,
        )
    )
