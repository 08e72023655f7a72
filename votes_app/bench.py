"""`votes bench`: throughput, latency and resource figures of the real pipeline, against targets.

`votes bench` runs `python -m votes_app.bench OPTIONS_JSON` on the namespace "bench"
(database votes_bench, Redis index 2, vhost votes_bench; BENCH_DATABASE_URL, BENCH_REDIS_URL
and BENCH_BROKER_URL override them), which it wipes. The phases, in this order:

1. ceiling: kombu alone, on a scratch queue, with the same number of same-sized messages and
   the same producer processes: publish alone, consume/ack alone, then both at once;
2. throughput: the real workers and beat (started as `celery -A votes_app ...`), N votes
   published as fast as the producers go; first publish -> last vote tallied;
3. latency: a smaller open-loop run at --rate votes/s; publish -> audited -> tallied per vote;
4. worker memory, Redis memory per voter, reconciliation (a lost or doubled vote fails the run);
5. `votes voters load` of a large roll, and one flush of a large backlog of pending votes.

A table compares each figure with its target; bench/results/bench-<time>.json keeps them all
with the machine they came from. The exit code is 1 when a vote was lost or doubled.

This module is imported by `votes` for its command: what only the measuring process needs
is imported inside the functions that use it, so that `votes --help` stays quick.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import platform
import queue
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from votes_app.config import PUBLISH_WINDOW

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from votes_app.harness import CeleryProcess, Worker

# The mix of the issue: of N messages, 5 % are second votes and 2 % unknown voter hashes.
SECOND_VOTE_SHARE = 0.05
UNKNOWN_SHARE = 0.02
# Second votes go out in the last 30 % of the stream, from voters of the first 60 %: far
# enough behind their first vote that the refusal is measured, not a race between the two.
SECOND_VOTES_FROM = 0.6
SECOND_VOTES_AT = 0.7
# The old pika/aio_pika pipeline on this kind of machine: 343-377 votes/s with one worker,
# 456-566 with two (shared MEASUREMENTS.md). The best of them is the one to beat.
OLD_PIPELINE_VOTES_PER_SECOND = 566.0
CEILING_QUEUE = "votes.bench.ceiling"
VALIDATE_ALONE_VOTES = 20_000
MIB = 1024 * 1024

T = TypeVar("T")


# No slots here: the command's option defaults are read from the class attributes.
@dataclass(frozen=True)
class Options:
    """What `votes bench` was asked to do; travels to the measuring process as JSON."""

    votes: int = 100_000
    rate: float = 1_000.0
    producers: int = 4
    window: int = PUBLISH_WINDOW
    concurrency: int = 2
    topology: str = "single"
    laws: int = 10
    latency_seconds: float = 30.0
    voters_load: int = 1_000_000
    flush_votes: int = 1_000_000
    flush_laws: int = 100
    loglevel: str = "INFO"
    timeout: float = 600.0
    skip_ceiling: bool = False
    skip_latency: bool = False
    skip_voters_load: bool = False
    skip_flush: bool = False
    output: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Options:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


# --- the command ----------------------------------------------------------------------


@click.command()
@click.option("--votes", default=Options.votes, show_default=True, help="Messages to publish.")
@click.option(
    "--rate", default=Options.rate, show_default=True, help="Votes/s offered in the latency run."
)
@click.option("--producers", default=Options.producers, show_default=True)
@click.option(
    "--window",
    default=Options.window,
    show_default=True,
    help="Votes each producer keeps awaiting the broker's confirm (1: wait for each).",
)
@click.option(
    "--concurrency",
    default=Options.concurrency,
    show_default=True,
    help="Prefork processes of the (validation) worker.",
)
@click.option(
    "--topology",
    type=click.Choice(["single", "split"]),
    default=Options.topology,
    show_default=True,
    help="single: one worker on the three queues; split: a validation worker and an "
    "aggregation + review worker (-c 1).",
)
@click.option("--laws", default=Options.laws, show_default=True)
@click.option("--latency-seconds", default=Options.latency_seconds, show_default=True)
@click.option(
    "--voters-load",
    default=Options.voters_load,
    show_default=True,
    help="Hashes loaded by the timed `votes voters load`.",
)
@click.option(
    "--flush-votes",
    default=Options.flush_votes,
    show_default=True,
    help="Pending votes of the timed flush.",
)
@click.option("--flush-laws", default=Options.flush_laws, show_default=True)
@click.option(
    "--loglevel",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    default=Options.loglevel,
    show_default=True,
    help="Of the workers and beat (INFO: as `make worker` runs them).",
)
@click.option("--timeout", default=Options.timeout, show_default=True, help="Seconds per phase.")
@click.option("--skip-ceiling", is_flag=True, help="Leave out the raw kombu ceiling.")
@click.option("--skip-latency", is_flag=True, help="Leave out the open-loop latency run.")
@click.option("--skip-voters-load", is_flag=True, help="Leave out the voter roll timing.")
@click.option("--skip-flush", is_flag=True, help="Leave out the large flush timing.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    help="JSON file for the figures (default bench/results/bench-<time>.json).",
)
def bench(**params: Any) -> None:
    """Measure the pipeline on a namespace of its own and compare with the targets.

    Wipes and uses BENCH_DATABASE_URL (default database votes_bench), BENCH_REDIS_URL
    (Redis index 2) and BENCH_BROKER_URL (vhost votes_bench). Several minutes with the
    defaults; exit code 1 if any vote was lost or counted twice.
    """
    from votes_app.cli import run_in_namespace

    if params["output"]:
        params["output"] = str(Path(params["output"]).resolve())
    options = Options(**params)
    run_in_namespace("bench", redis_index=2, module="votes_app.bench", args=[options.to_json()])


# --- pure helpers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stream:
    """Messages to publish, and what a correct pipeline makes of them."""

    roll: list[str]  # the voter hashes to load before publishing
    messages: list[tuple[str, dict[str, str]]]  # (task id, validate_vote kwargs)
    expected: dict[tuple[str, str], int]  # (law, choice) -> votes counted
    seconds: int  # second votes: refused as duplicates
    unknown: int  # hashes not on the roll: refused as invalid

    @property
    def firsts(self) -> int:
        return len(self.roll)


def mix(total: int) -> tuple[int, int, int]:
    """(first votes, second votes, unknown hashes) among `total` messages."""
    seconds = round(total * SECOND_VOTE_SHARE)
    unknown = round(total * UNKNOWN_SHARE)
    return total - seconds - unknown, seconds, unknown


def make_stream(total: int, *, laws: int, tag: str, seed: int = 2026) -> Stream:
    """`total` messages with the issue's mix; voters and task ids are unique to `tag`."""
    rng = random.Random(f"{seed}|{tag}")
    law_ids = [f"law-{n:03d}" for n in range(1, laws + 1)]
    firsts, second_count, unknown_count = mix(total)
    stamp = datetime.now(UTC).isoformat()
    roll: list[str] = []
    expected: dict[tuple[str, str], int] = {}
    body: list[tuple[bool, dict[str, str]]] = []  # (on the roll, kwargs)
    for voter in range(firsts):
        law_id = law_ids[voter % laws]
        vote_hash = hashlib.sha256(f"nas|{tag}|{voter:09d}|{law_id}".encode()).hexdigest()
        choice = rng.choice(("oui", "non"))
        roll.append(vote_hash)
        body.append(
            (True, {"vote_hash": vote_hash, "law_id": law_id, "choice": choice, "timestamp": stamp})
        )
        expected[(law_id, choice)] = expected.get((law_id, choice), 0) + 1
    for n in range(unknown_count):
        stranger = hashlib.sha256(f"not-on-the-roll|{tag}|{n}".encode()).hexdigest()
        body.append(
            (
                False,
                {
                    "vote_hash": stranger,
                    "law_id": law_ids[n % laws],
                    "choice": "oui",
                    "timestamp": stamp,
                },
            )
        )
    rng.shuffle(body)
    early = [kwargs for on_roll, kwargs in body[: int(len(body) * SECOND_VOTES_FROM)] if on_roll]
    second = [
        {**kwargs, "choice": "non" if kwargs["choice"] == "oui" else "oui"}
        for kwargs in rng.sample(early, second_count)
    ]
    cut = int(len(body) * SECOND_VOTES_AT)
    tail = [kwargs for _, kwargs in body[cut:]] + second
    rng.shuffle(tail)
    ordered = [kwargs for _, kwargs in body[:cut]] + tail
    messages = [(f"bench-{tag}-{n:07d}", kwargs) for n, kwargs in enumerate(ordered)]
    return Stream(roll, messages, expected, second_count, unknown_count)


def shares(
    items: Sequence[T], parts: int, *, owner: Callable[[T], str] | None = None
) -> list[list[T]]:
    """Deal `items` to `parts` producers in turn: together they keep the stream's order.

    Producers run at their own pace, so only within one producer is the order of two
    messages certain: items with the same `owner` (a voter) go to one producer.
    """
    dealt: list[list[T]] = [[] for _ in range(parts)]
    producer_of: dict[str, int] = {}
    for n, item in enumerate(items):
        k = n % parts if owner is None else producer_of.setdefault(owner(item), n % parts)
        dealt[k].append(item)
    return dealt


def voter(message: tuple[str, dict[str, str]]) -> str:
    return message[1]["vote_hash"]


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """`{"p50": ..., ...}` by linear interpolation between closest ranks; {} when empty."""
    if not values:
        return {}
    if len(values) == 1:
        return {f"p{p}": float(values[0]) for p in points}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {f"p{p}": cuts[p - 1] for p in points}


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure; `ok` is None when it has no target."""

    key: str
    label: str
    value: float | None
    unit: str
    target: str = ""
    ok: bool | None = None


def at_least(key: str, label: str, value: float | None, unit: str, minimum: float) -> Figure:
    ok = None if value is None else value >= minimum
    return Figure(key, label, value, unit, f">= {format_value(minimum, unit)}", ok)


def at_most(key: str, label: str, value: float | None, unit: str, maximum: float) -> Figure:
    ok = None if value is None else value <= maximum
    return Figure(key, label, value, unit, f"<= {format_value(maximum, unit)}", ok)


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("x", "ratio", "cores"):
        return f"{value:.2f}"
    if unit == "ms/vote":
        return f"{value:.3f} {unit}"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f} {unit}".strip()
    return f"{value:,.1f} {unit}".strip()


def rate(count: int, seconds: float) -> float | None:
    return count / seconds if seconds > 0 else None


# --- machine facts --------------------------------------------------------------------


def read_proc(path: str) -> dict[str, str]:
    """`key: value` lines of a /proc file; {} where there is none."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def machine_facts() -> dict[str, Any]:
    """Where the figures come from: hardware, load, service and library versions, the code."""
    from importlib.metadata import version

    import sqlalchemy as sa

    from votes_app.celery import app
    from votes_app.harness import REPO
    from votes_app.resources import get_engine, get_redis

    with app.connection_for_write() as broker:
        broker.connect()
        rabbitmq = broker.connection.server_properties.get("version", "?")
    with get_engine().connect() as database:
        postgresql = {
            name: database.scalar(sa.text(f"SHOW {name}"))
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
    redis_info = get_redis().info("server")

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "hostname": socket.gethostname(),
        "cpu": read_proc("/proc/cpuinfo").get("model name", platform.processor()),
        "cpus": os.cpu_count(),
        "memory_gib": round(int(read_proc("/proc/meminfo")["MemTotal"].split()[0]) / MIB, 1),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "rabbitmq": str(rabbitmq),
        "redis": redis_info.get("redis_version"),
        "postgresql": postgresql,
        "libraries": {
            name: version(name)
            for name in ("celery", "kombu", "celery-batches", "SQLAlchemy", "psycopg2-binary")
        }
        | {"redis-py": version("redis")},
        "git_commit": git("rev-parse", "HEAD"),
        "git_modified_files": len(
            git("status", "--porcelain", "--untracked-files=no").splitlines()
        ),
    }


def pipeline_settings() -> dict[str, Any]:
    from votes_app.config import get_settings

    settings = get_settings()
    return {
        name: getattr(settings, name)
        for name in (
            "validate_batch_size",
            "validate_batch_ms",
            "worker_prefetch_multiplier",
            "flush_interval_seconds",
            "broker_confirm_publish",
            "queue_type",
            "database_pool_size",
        )
    }


# --- producers (separate processes) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShareResult:
    index: int
    first: float  # wall clock of the first publish
    last: float  # wall clock after the last publish returned (confirmed)
    intended: list[float]  # per message: when it was due (open loop) or sent
    lag_max: float  # how far behind its schedule the producer fell, at worst
    cpu_seconds: float  # user + system time spent publishing


def _publish_votes(
    index: int,
    share: list[tuple[str, dict[str, str]]],
    per_second: float | None,
    offset: float,
    window: int,
    start: Any,
    progress: Any,
    results: Any,
) -> None:
    """A producer process: the project's VotePublisher (publisher confirms, as a producer
    service should, `window` votes in flight), as fast as it goes or on an open-loop
    schedule of `per_second`."""
    from votes_app.producer import VotePublisher

    with VotePublisher(window=window) as publisher:
        start.ready()

        def send(task_id: str, kwargs: dict[str, Any]) -> None:
            publisher.publish(kwargs, task_id=task_id)

        _run_share(index, share, per_second, offset, send, publisher.confirm, progress, results)


def _publish_raw(
    index: int,
    share: list[tuple[str, Any]],
    per_second: float | None,
    offset: float,
    window: int,
    start: Any,
    progress: Any,
    results: Any,
) -> None:
    """A producer process for the ceiling: kombu alone, persistent, with publisher confirms
    awaited as the VotePublisher awaits them, `window` messages at a time."""
    from kombu import Connection, Exchange, Producer

    from votes_app.config import get_settings
    from votes_app.producer import ConfirmWindow

    url = get_settings().broker_url
    with Connection(url) as connection:
        channel = connection.default_channel
        confirms: ConfirmWindow[str] = ConfirmWindow(channel)
        producer = Producer(channel, exchange=Exchange(""), routing_key=CEILING_QUEUE)
        start.ready()

        def confirm() -> None:
            if refused := confirms.settle(connection, timeout=60):
                raise RuntimeError(f"the broker refused {len(refused)} messages")

        def send(task_id: str, body: Any) -> None:
            confirms.sent(task_id)
            producer.publish(body, serializer="json", delivery_mode=2, message_id=task_id)
            if len(confirms) >= window:
                confirm()

        _run_share(index, share, per_second, offset, send, confirm, progress, results)


def _run_share(
    index: int,
    share: Sequence[tuple[str, Any]],
    per_second: float | None,
    offset: float,
    send: Callable[[str, Any], None],
    confirm: Callable[[], None],
    progress: Any,
    results: Any,
) -> None:
    intended: list[float] = []
    cpu = os.times()
    start = time.time()
    unreported = 0
    first = start
    lag_max = 0.0
    for n, (task_id, payload) in enumerate(share):
        now = time.time()
        if per_second:
            due = start + offset + n / per_second
            if due > now:
                time.sleep(due - now)
            lag_max = max(lag_max, now - due)
        else:
            due = now
        if n == 0:
            first = time.time()
        send(task_id, payload)
        intended.append(due)
        unreported += 1
        if unreported == 100:
            with progress.get_lock():
                progress.value += unreported
            unreported = 0
    confirm()
    with progress.get_lock():
        progress.value += unreported
    finished = time.time()
    spent = os.times()
    cpu_seconds = spent.user + spent.system - cpu.user - cpu.system
    results.put(ShareResult(index, first, finished, intended, lag_max, cpu_seconds))


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


@dataclass(frozen=True, slots=True)
class Publication:
    first: float
    last: float
    sent: dict[str, float]  # task id -> when it was due (open loop) or sent
    lag_max: float
    cpu_seconds: float

    @property
    def seconds(self) -> float:
        return self.last - self.first


def publish(
    messages: Sequence[tuple[str, Any]],
    *,
    target: Callable[..., None],
    producers: int,
    window: int,
    owner: Callable[[tuple[str, Any]], str] | None = None,
    per_second: float | None = None,
    on_tick: Callable[[int], None] = lambda _: None,
) -> Publication:
    """Publish from `producers` processes that start together once connected.

    `per_second` (total) makes it an open-loop run: each message goes out when due,
    whatever became of the ones before. `on_tick` gets the messages published so far.
    """
    context = multiprocessing.get_context("spawn")
    start = StartLine(context)
    progress = context.Value("q", 0)
    results = context.Queue()
    parts = shares(messages, producers, owner=owner)
    each = per_second / producers if per_second else None
    # In an open-loop run the producers take turns within each interval: an even stream.
    offsets = [k / per_second if per_second else 0.0 for k in range(producers)]
    processes = [
        context.Process(
            target=target,
            args=(k, parts[k], each, offsets[k], window, start, progress, results),
            daemon=True,
        )
        for k in range(producers)
    ]
    for process in processes:
        process.start()
    try:
        start.go(processes)
        collected: dict[int, ShareResult] = {}
        while len(collected) < producers:
            on_tick(int(progress.value))
            try:
                result = results.get(timeout=0.2)
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in processes):
                    raise RuntimeError("a producer process failed") from None
                continue
            collected[result.index] = result
        on_tick(int(progress.value))
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    sent = {
        task_id: due
        for k, part in enumerate(parts)
        for (task_id, _), due in zip(part, collected[k].intended, strict=True)
    }
    return Publication(
        first=min(r.first for r in collected.values()),
        last=max(r.last for r in collected.values()),
        sent=sent,
        lag_max=max(r.lag_max for r in collected.values()),
        cpu_seconds=sum(r.cpu_seconds for r in collected.values()),
    )


# --- progress display -----------------------------------------------------------------


class Display:
    """One rich progress display for the whole run: a line per phase."""

    def __init__(self) -> None:
        from votes_app.cli import progress_bar

        self.progress: Progress = progress_bar()
        self._lines: dict[str, TaskID] = {}

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def show(self, line: str, completed: float, total: float | None = None) -> None:
        if line not in self._lines:
            self._lines[line] = self.progress.add_task(line, total=total)
        self.progress.update(self._lines[line], completed=completed, total=total)

    def note(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)


# --- phase 1: the raw kombu ceiling ---------------------------------------------------


def celery_body(kwargs: dict[str, str]) -> list[Any]:
    """The body Celery publishes for these kwargs (protocol 2), to size the raw messages."""
    return [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


class RawConsumer(threading.Thread):
    """One kombu consumer acknowledging each message, with a worker's prefetch: the
    consuming half of the ceiling."""

    def __init__(self, url: str, queue: Any, prefetch: int, expected: int) -> None:
        super().__init__(daemon=True)
        self.url, self.queue, self.prefetch, self.expected = url, queue, prefetch, expected
        self.consumed = 0
        self.first = self.last = 0.0
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def on_message(self, body: Any, message: Any) -> None:
        message.ack()
        self.consumed += 1
        self.last = time.time()
        if self.consumed == 1:
            self.first = self.last

    def run(self) -> None:
        from kombu import Connection, Consumer

        try:
            with Connection(self.url) as connection:
                channel = connection.channel()
                with Consumer(
                    channel,
                    queues=[self.queue],
                    callbacks=[self.on_message],
                    accept=["json"],
                    prefetch_count=self.prefetch,
                ):
                    self.ready.set()
                    while self.consumed < self.expected:
                        connection.drain_events(timeout=60)
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def wait(self, on_tick: Callable[[int], None]) -> None:
        while self.is_alive():
            on_tick(self.consumed)
            self.join(timeout=0.25)
        on_tick(self.consumed)
        if self.error is not None:
            raise RuntimeError(f"ceiling consumer failed: {self.error!r}")


def measure_ceiling(
    options: Options, stream: Stream, display: Display, idle: dict[str, float]
) -> dict[str, Any]:
    """kombu alone on the same broker, with the same number of same-sized messages: the
    same producer processes (publisher confirms, persistent), one consumer with a worker's
    prefetch (multiplier x processes) acknowledging each message, as Celery's late acks do.

    Three passes: publish alone, consume alone (the queue full), then both at once, first
    publish -> last acknowledgement: what the pipeline's end to end is compared with.
    """
    from kombu import Connection, Queue

    from votes_app.config import get_settings

    settings = get_settings()
    url = settings.broker_url
    scratch = Queue(CEILING_QUEUE, durable=True, auto_delete=False)
    bodies = [(task_id, celery_body(kwargs)) for task_id, kwargs in stream.messages]
    body_bytes = statistics.mean(len(json.dumps(body)) for _, body in bodies[:1000])
    prefetch = settings.worker_prefetch_multiplier * options.concurrency
    total = len(bodies)
    with Connection(url) as connection:
        scratch(connection.default_channel).declare()
        scratch(connection.default_channel).purge()
    roles = {os.getpid(): "consumer"}

    ticks = cpu_ticks()
    alone = publish(
        bodies,
        target=_publish_raw,
        producers=options.producers,
        window=options.window,
        on_tick=lambda n: display.show("ceiling: publish", n, total),
    )
    publish_cpu = cpu_by_component(ticks, cpu_ticks(), roles) | {"producers": alone.cpu_seconds}
    publish_seconds = time.time() - alone.first

    ticks = cpu_ticks()
    drain = RawConsumer(url, scratch, prefetch, total)
    drain.start()
    drain.wait(lambda n: display.show("ceiling: consume/ack", n, total))
    consume_cpu = cpu_by_component(ticks, cpu_ticks(), roles)
    consume_seconds = drain.last - drain.first

    both = RawConsumer(url, scratch, prefetch, total)
    both.start()
    both.ready.wait(timeout=60)
    together = publish(
        bodies,
        target=_publish_raw,
        producers=options.producers,
        window=options.window,
        on_tick=lambda n: display.show("ceiling: publish + consume/ack", n, total),
    )
    both.wait(lambda n: display.show("ceiling: publish + consume/ack", n, total))
    with Connection(url) as connection:
        scratch(connection.default_channel).delete()
    return {
        "messages": total,
        "body_bytes": round(body_bytes),
        "prefetch": prefetch,
        "publish_per_second": rate(total, alone.seconds),
        "consume_ack_per_second": rate(total, consume_seconds),
        "publish_and_consume_per_second": rate(total, both.last - together.first),
        "cpu_ms_per_message": {
            "publish": net_cpu_ms(publish_cpu, idle, publish_seconds, total),
            "consume_ack": net_cpu_ms(consume_cpu, idle, consume_seconds, total),
        },
    }


# --- phases 2 and 3: the pipeline -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_pipeline(
    options: Options, directory: Path, stack: ExitStack
) -> tuple[list[Worker], CeleryProcess]:
    """Workers and beat as an operator starts them; each worker serves metrics on a port
    of its own, so that two workers (or another run on this machine) do not collide."""
    from votes_app.celery import AGGREGATION, REVIEW, VALIDATION
    from votes_app.harness import WORK_QUEUES, Beat, Worker, wait_for
    from votes_app.health import FLUSH_HEARTBEAT
    from votes_app.resources import get_redis

    layout: list[tuple[str, Sequence[str], int]]
    if options.topology == "single":
        layout = [("bench", WORK_QUEUES, options.concurrency)]
    else:
        layout = [
            ("bench-validation", (VALIDATION,), options.concurrency),
            ("bench-aggregation", (AGGREGATION, REVIEW), 1),
        ]
    workers = []
    for name, queues, concurrency in layout:
        env = os.environ | {"METRICS_PORT": str(free_port())}
        worker = Worker(
            directory / f"{name}.log",
            name=f"{name}-{os.getpid()}@%h",
            queues=queues,
            concurrency=concurrency,
            loglevel=options.loglevel,
            env=env,
        )
        workers.append(stack.enter_context(worker))
    beat = stack.enter_context(Beat(directory, loglevel=options.loglevel))
    # Ready when its first flush has run: its start-up is not part of any measurement.
    get_redis().delete(FLUSH_HEARTBEAT)
    wait_for(lambda: get_redis().exists(FLUSH_HEARTBEAT), timeout=120, what="the first flush")
    return workers, beat


@dataclass(frozen=True, slots=True)
class Progressed:
    """Counts a finished run must reach, cumulated over the runs of this benchmark."""

    tallied: int
    duplicates: int
    invalid: int


def settled_counts() -> Progressed:
    """What the pipeline has settled: cheap sums over small tables, polled often."""
    import sqlalchemy as sa

    from votes_app.models import DuplicateAttempt, ReviewRecord, VoteResult
    from votes_app.resources import get_engine

    query = sa.select(
        sa.select(
            sa.func.coalesce(sa.func.sum(VoteResult.oui_count + VoteResult.non_count), 0)
        ).scalar_subquery(),
        sa.select(
            sa.func.coalesce(sa.func.sum(DuplicateAttempt.attempt_count), 0)
        ).scalar_subquery(),
        sa.select(sa.func.coalesce(sa.func.sum(ReviewRecord.occurrences), 0))
        .where(ReviewRecord.kind == "invalid")
        .scalar_subquery(),
    )
    with get_engine().connect() as connection:
        tallied, duplicates, invalid = connection.execute(query).one()
    return Progressed(int(tallied), int(duplicates), int(invalid))


def wal_position() -> int:
    """Bytes of WAL written so far by the PostgreSQL server (all its databases)."""
    import sqlalchemy as sa

    from votes_app.resources import get_engine

    query = sa.text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
    with get_engine().connect() as connection:
        return int(connection.scalar(query) or 0)


def audited_count() -> int:
    import sqlalchemy as sa

    from votes_app.models import VoteAudit
    from votes_app.resources import get_engine

    with get_engine().connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count()).select_from(VoteAudit)) or 0)


def wait_until_settled(
    goal: Progressed,
    *,
    workers: Sequence[CeleryProcess],
    timeout: float,
    on_poll: Callable[[Progressed], None],
    interval: float = 0.1,
) -> float:
    """Poll until the pipeline has settled `goal`; the wall clock of the poll that saw it."""
    deadline = time.monotonic() + timeout
    while True:
        now = settled_counts()
        seen = time.time()
        on_poll(now)
        if now == goal:
            return seen
        if (
            now.tallied > goal.tallied
            or now.duplicates > goal.duplicates
            or now.invalid > goal.invalid
        ):
            raise RuntimeError(f"more settled than sent: {now} > {goal}")
        for process in workers:
            if not process.running():
                raise RuntimeError(
                    f"{' '.join(process.argv[:1])} process exited; see {process.log}"
                )
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout:.0f}s: {now}, expected {goal}")
        time.sleep(interval)


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    label: str
    pid: int
    rss_mib: float  # now
    peak_mib: float  # VmHWM: the most it ever held


def process_memory(label: str, pid: int) -> ProcessMemory | None:
    status = read_proc(f"/proc/{pid}/status")
    if "VmRSS" not in status:
        return None

    def mib(key: str) -> float:
        return round(int(status[key].split()[0]) / 1024, 1)

    return ProcessMemory(label, pid, mib("VmRSS"), mib("VmHWM"))


def short_name(worker: Worker) -> str:
    return worker.name.split("@")[0].rsplit("-", 1)[0]  # without the pid


def pipeline_memory(workers: Sequence[Worker], beat: CeleryProcess) -> list[ProcessMemory]:
    """Each worker's main process and pool processes, and beat."""
    found = []
    for worker in workers:
        short = short_name(worker)
        found.append(process_memory(f"{short} main", worker.pid))
        for n, child in enumerate(sorted(worker.children()), start=1):
            found.append(process_memory(f"{short} pool {n}", child))
    found.append(process_memory("beat", beat.pid))
    return [memory for memory in found if memory is not None]


# Processes of the services, by their command name; a machine running only this benchmark
# has no other (check the load average in the report).
SERVICE_COMMANDS = {"beam.smp": "rabbitmq", "redis-server": "redis", "postgres": "postgresql"}
OTHERS = "others"


def cpu_ticks() -> dict[int, tuple[str, int]]:
    """pid -> (command name, user + system clock ticks) of every process."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        command = text[text.index("(") + 1 : text.rindex(")")]
        rest = text[text.rindex(")") + 2 :].split()
        # Fields 14 and 15 of proc(5), utime and stime; `rest` starts at field 3.
        found[int(stat.parent.name)] = (command, int(rest[11]) + int(rest[12]))
    return found


def cpu_by_component(
    before: dict[int, tuple[str, int]],
    after: dict[int, tuple[str, int]],
    roles: dict[int, str],
) -> dict[str, float]:
    """CPU seconds spent between two `cpu_ticks()`, per component: `roles` names the
    pipeline's own processes, service processes go by command name, and "others" is
    everything else on the machine (what makes a run's figures unreliable). A process
    that ended in between is not counted (the pipeline's and the services' last the run;
    the producers report their own)."""
    tick = os.sysconf("SC_CLK_TCK")
    spent: dict[str, float] = {}
    for pid, (command, ticks) in after.items():
        role = roles.get(pid) or SERVICE_COMMANDS.get(command) or OTHERS
        earlier = before.get(pid)
        used = ticks - (earlier[1] if earlier and earlier[0] == command else 0)
        spent[role] = spent.get(role, 0.0) + used / tick
    return spent


def stolen_ticks() -> int:
    """Clock ticks the hypervisor gave to other machines (`steal` in /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) if len(fields) > 8 else 0


def idle_cores(seconds: float = 5.0) -> dict[str, float]:
    """Cores each service uses with nothing of ours running: the share of its CPU that
    is not the benchmark's (other connections, timers), taken off its cost per vote."""
    before = cpu_ticks()
    time.sleep(seconds)
    return {
        role: used / seconds for role, used in cpu_by_component(before, cpu_ticks(), {}).items()
    }


def net_cpu_ms(
    spent: dict[str, float], idle: dict[str, float], seconds: float, messages: int
) -> dict[str, float]:
    """CPU milliseconds per message, less what each service spends when idle."""
    return {
        role: max(0.0, used - idle.get(role, 0.0) * seconds) * 1000 / messages
        for role, used in spent.items()
    }


def pipeline_roles(workers: Sequence[Worker], beat: CeleryProcess) -> dict[int, str]:
    roles = {beat.pid: "beat", os.getpid(): "bench"}
    for worker in workers:
        # The main process consumes and acknowledges every message; the pool does the work.
        roles[worker.pid] = f"{short_name(worker)} worker main"
        roles |= dict.fromkeys(worker.children(), f"{short_name(worker)} worker pool")
    return roles


class BatchWatch(threading.Thread):
    """When each flush batch became visible in tally_batches: the moment its votes were
    tallied for anyone reading vote_results (its commit, to within the polling interval)."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.seen: dict[str, float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        import sqlalchemy as sa

        from votes_app.models import TallyBatch
        from votes_app.resources import get_engine

        with get_engine().connect() as connection:
            while not self._stop_event.is_set():
                ids = connection.scalars(sa.select(TallyBatch.batch_id)).all()
                connection.rollback()
                now = time.time()
                for batch_id in ids:
                    self.seen.setdefault(batch_id, now)
                self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def load_roll(roll: Sequence[str]) -> None:
    from votes_app.ballot_box import load_voters
    from votes_app.resources import get_redis

    for _ in load_voters(get_redis(), roll):
        pass


def redis_key_bytes(*keys: str) -> dict[str, int]:
    """Memory of each key, exact (`MEMORY USAGE ... SAMPLES 0` reads every member): the
    Redis server is shared with other namespaces, so its total says little about ours."""
    from votes_app.resources import get_redis

    client = get_redis()
    return {key: int(client.memory_usage(key, samples=0) or 0) for key in keys}


def run_throughput(
    options: Options,
    stream: Stream,
    workers: Sequence[Worker],
    beat: CeleryProcess,
    display: Display,
    idle: dict[str, float],
) -> dict[str, Any]:
    """N votes as fast as the producers go; first publish -> everything settled."""
    goal = Progressed(stream.firsts, stream.seconds, stream.unknown)
    total = len(stream.messages)
    memory: dict[str, list[ProcessMemory]] = {}
    last_audit_poll = 0.0

    def on_poll(now: Progressed) -> None:
        nonlocal last_audit_poll
        display.show("throughput: tallied", now.tallied, goal.tallied)
        if time.monotonic() - last_audit_poll > 1.0:
            # count(*) over the audit log costs more than the other sums: once a second.
            display.show("throughput: audited", audited_count(), goal.tallied)
            last_audit_poll = time.monotonic()
        if "half" not in memory and now.tallied >= goal.tallied / 2:
            memory["half"] = pipeline_memory(workers, beat)

    polled = 0.0

    def on_tick(published: int) -> None:
        nonlocal polled
        display.show("throughput: published", published, total)
        if time.monotonic() - polled > 0.5:
            on_poll(settled_counts())
            polled = time.monotonic()

    roles = pipeline_roles(workers, beat)
    ticks = cpu_ticks()
    stolen = stolen_ticks()
    wal = wal_position()
    publication = publish(
        stream.messages,
        target=_publish_votes,
        producers=options.producers,
        window=options.window,
        owner=voter,
        on_tick=on_tick,
    )
    settled = wait_until_settled(
        goal, workers=[*workers, beat], timeout=options.timeout, on_poll=on_poll
    )
    cpu = cpu_by_component(ticks, cpu_ticks(), roles) | {"producers": publication.cpu_seconds}
    stolen_seconds = (stolen_ticks() - stolen) / os.sysconf("SC_CLK_TCK")
    wal_bytes = wal_position() - wal
    display.show("throughput: audited", audited_count(), goal.tallied)
    memory["end"] = pipeline_memory(workers, beat)
    return {
        "messages": total,
        "first_votes": stream.firsts,
        "second_votes": stream.seconds,
        "unknown_hashes": stream.unknown,
        "publish_seconds": publication.seconds,
        "publish_per_second": rate(total, publication.seconds),
        "end_to_end_seconds": settled - publication.first,
        "end_to_end_per_second": rate(total, settled - publication.first),
        # From the producers' start to the last tally: what each part costs per vote.
        "cpu_seconds": cpu,
        "cpu_ms_per_message": net_cpu_ms(cpu, idle, time.time() - publication.first, total),
        # On a virtual machine: CPU time the host gave to other guests (all cores).
        "stolen_cpu_seconds": stolen_seconds,
        # Server-wide: other databases' writes count too (the load average says if any).
        "wal_bytes_per_message": wal_bytes / total,
        "memory": {when: [asdict(m) for m in sample] for when, sample in memory.items()},
    }


def run_latency(
    options: Options,
    stream: Stream,
    goal: Progressed,
    workers: Sequence[Worker],
    beat: CeleryProcess,
    display: Display,
) -> dict[str, Any]:
    """An open-loop run at --rate: each vote is timed from when it was due to be published
    (so that a producer falling behind cannot hide queueing) to its audit row's
    recorded_at (PostgreSQL's clock: the same machine's), and to its flush batch's commit."""
    import sqlalchemy as sa

    from votes_app.models import VoteAudit
    from votes_app.resources import get_engine

    with get_engine().connect() as connection:
        before = int(connection.scalar(sa.select(sa.func.max(VoteAudit.id))) or 0)
    watch = BatchWatch()
    watch.start()
    total = len(stream.messages)
    try:
        publication = publish(
            stream.messages,
            target=_publish_votes,
            producers=options.producers,
            window=options.window,
            owner=voter,
            per_second=options.rate,
            on_tick=lambda n: display.show("latency: published", n, total),
        )
        wait_until_settled(
            goal,
            workers=[*workers, beat],
            timeout=options.timeout,
            on_poll=lambda now: display.show("latency: tallied", now.tallied, goal.tallied),
        )
        time.sleep(watch.interval * 3)
    finally:
        watch.stop()
    with get_engine().connect() as connection:
        rows = connection.execute(
            sa.select(
                VoteAudit.task_id,
                sa.func.extract("epoch", VoteAudit.recorded_at),
                VoteAudit.tally_batch,
            ).where(VoteAudit.id > before)
        ).all()
    audited, tallied = [], []
    for task_id, recorded, batch_id in rows:
        due = publication.sent[task_id]
        audited.append((float(recorded) - due) * 1000)
        if batch_id not in watch.seen:
            raise RuntimeError(f"flush batch {batch_id} was never seen committing")
        tallied.append((watch.seen[batch_id] - due) * 1000)
    return {
        "offered_per_second": options.rate,
        "seconds": options.latency_seconds,
        "messages": total,
        "achieved_publish_per_second": rate(total, publication.seconds),
        "votes_timed": len(rows),
        "publish_to_audited_ms": percentiles(audited) | {"max": max(audited, default=0.0)},
        "publish_to_tallied_ms": percentiles(tallied) | {"max": max(tallied, default=0.0)},
        "producer_lag_ms_max": publication.lag_max * 1000,
    }


# --- phase 4: checks ------------------------------------------------------------------


def reconcile_votes(streams: Sequence[Stream]) -> dict[str, Any]:
    """vote_results against the audit log (`votes reconcile`), and both against what was sent."""
    from votes_app import reconcile
    from votes_app.harness import Snapshot
    from votes_app.resources import session_scope

    with session_scope() as session:
        lines = reconcile.compare(session=session)
    expected: dict[tuple[str, str], int] = {}
    for stream in streams:
        for key, count in stream.expected.items():
            expected[key] = expected.get(key, 0) + count
    tallied = {(line.law_id, line.choice): line.tallied for line in lines}
    snapshot = Snapshot.take()
    wrong = {
        f"{law}/{choice}": {"sent": expected.get((law, choice), 0), "tallied": count}
        for law, choice in sorted(tallied.keys() | expected.keys())
        if (count := tallied.get((law, choice), 0)) != expected.get((law, choice), 0)
    }
    drift = [asdict(line) for line in lines if line.drift]
    return {
        "votes_expected": sum(expected.values()),
        "votes_audited": snapshot.audited,
        "votes_tallied": snapshot.tallied,
        "uncounted": snapshot.uncounted,
        "drift": drift,
        "differences_from_sent": wrong,
        "ok": not drift
        and not wrong
        and snapshot.uncounted == 0
        and snapshot.audited == sum(expected.values()),
    }


def batch_shapes() -> dict[str, Any]:
    """How the work was cut: audit rows per validation transaction (one recorded_at each),
    votes per flush batch."""
    import sqlalchemy as sa

    from votes_app.models import TallyBatch, VoteAudit
    from votes_app.resources import get_engine

    with get_engine().connect() as connection:
        rows, transactions = connection.execute(
            sa.select(sa.func.count(), sa.func.count(sa.distinct(VoteAudit.recorded_at)))
        ).one()
        batches, votes = connection.execute(
            sa.select(sa.func.count(), sa.func.sum(TallyBatch.vote_count)).where(
                TallyBatch.vote_count > 0
            )
        ).one()
    return {
        "audit_rows_per_validation_commit": rows / transactions if transactions else None,
        "flush_batches": int(batches),
        "votes_per_flush_batch": int(votes or 0) / batches if batches else None,
    }


# --- phase 5: bulk operations ---------------------------------------------------------


def measure_voters_load(count: int, directory: Path, display: Display) -> dict[str, Any]:
    """Time the real `votes voters load FILE` on `count` new hashes, from an empty Redis
    index: what an operator waits for, interpreter start included."""
    from votes_app.ballot_box import VALID_HASHES, voter_roll_size
    from votes_app.harness import run_votes
    from votes_app.resources import get_redis

    client = get_redis()
    client.flushdb()
    roll_file = directory / "voter-roll.txt"
    with roll_file.open("w") as out:
        for n in range(count):
            out.write(hashlib.sha256(f"bench-roll|{n}".encode()).hexdigest() + "\n")
    display.show("votes voters load", 0, count)
    started = time.monotonic()
    done = run_votes("voters", "load", str(roll_file), timeout=None)
    seconds = time.monotonic() - started
    roll_file.unlink()
    loaded = voter_roll_size(client)
    display.show("votes voters load", loaded, count)
    if done.returncode != 0 or loaded != count:
        raise RuntimeError(
            f"votes voters load: exit {done.returncode}, {loaded:,} loaded: {done.stderr[-500:]}"
        )
    roll_bytes = redis_key_bytes(VALID_HASHES)[VALID_HASHES]
    client.flushdb()
    return {
        "hashes": count,
        "seconds": seconds,
        "hashes_per_second": rate(count, seconds),
        "roll_bytes_per_hash": roll_bytes / count,
    }


def measure_validation(count: int, display: Display) -> dict[str, Any]:
    """`validate` alone, in this process, on `count` new voters in batches of
    VALIDATE_BATCH_SIZE: the pool's share of a vote without the broker, Celery or other
    processes, so its CPU time is far less at the mercy of a busy machine than the
    pipeline's figures."""
    from votes_app.ballot_box import load_voters
    from votes_app.config import get_settings
    from votes_app.harness import reset_namespace
    from votes_app.resources import get_ballot_box, get_redis, session_scope
    from votes_app.schemas import Submission
    from votes_app.validation import validate

    batch_size = get_settings().validate_batch_size
    reset_namespace()
    hashes = [hashlib.sha256(f"bench-validate|{n}".encode()).hexdigest() for n in range(count)]
    for _ in load_voters(get_redis(), hashes):
        pass
    stamp = datetime.now(UTC).isoformat()
    submissions = [
        Submission(
            task_id=f"bench-validate-{n}",
            args=[],
            kwargs={"vote_hash": h, "law_id": "law-001", "choice": "oui", "timestamp": stamp},
        )
        for n, h in enumerate(hashes)
    ]
    recorded = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, count, batch_size):
        outcome = validate(
            submissions[start : start + batch_size],
            ballot_box=get_ballot_box(),
            session_scope=session_scope,
            now=datetime.now(UTC),
            max_clock_skew=timedelta(minutes=5),
        )
        recorded += len(outcome.recorded)
        display.show("validate alone", start + batch_size, count)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    reset_namespace()
    if recorded != count:
        raise RuntimeError(f"validate alone recorded {recorded:,} of {count:,} votes")
    return {
        "votes": count,
        "batch_size": batch_size,
        "cpu_ms_per_vote": 1000 * cpu / count,
        "wall_ms_per_vote": 1000 * wall / count,
    }


FILL_AUDIT = """
INSERT INTO vote_audit (vote_hash, law_id, choice, voted_at, task_id)
SELECT encode(sha256(convert_to('bench-flush|' || n, 'UTF8')), 'hex'),
       'law-' || lpad((n % :laws + 1)::text, 3, '0'),
       CASE WHEN (n / :laws) % 2 = 0 THEN 'oui' ELSE 'non' END,
       now(),
       'bench-flush-' || n
FROM generate_series(0, :count - 1) AS n
"""


def audit_sizes(rows: int) -> dict[str, float]:
    """Bytes per audit row of the table and of each of its indexes."""
    import sqlalchemy as sa

    from votes_app.resources import get_engine

    query = sa.text(
        "SELECT 'table', pg_table_size('vote_audit') UNION ALL "
        "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) "
        "FROM pg_index WHERE indrelid = 'vote_audit'::regclass"
    )
    with get_engine().connect() as connection:
        return {name: size / rows for name, size in connection.execute(query)}


def measure_flush(count: int, laws: int, display: Display) -> dict[str, Any]:
    """One `tallies.flush` of `count` pending votes over `laws` laws, as after an outage
    of beat: audit rows filled by SQL, their hashes in tallies:pending, then one flush."""
    import sqlalchemy as sa

    from votes_app import reconcile
    from votes_app.ballot_box import add_to_set
    from votes_app.config import get_settings
    from votes_app.harness import reset_namespace
    from votes_app.resources import get_engine, get_redis, get_tallies, session_scope
    from votes_app.tallies import PENDING, flush

    reset_namespace()
    display.show("flush: filling the audit log", 0, count)
    with get_engine().begin() as connection:
        connection.execute(sa.text(FILL_AUDIT), {"laws": laws, "count": count})
    # Autovacuum analyzes a table that grew this much within a minute; do it now.
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE vote_audit"))
    hashes = (hashlib.sha256(f"bench-flush|{n}".encode()).hexdigest() for n in range(count))
    for _ in add_to_set(get_redis(), PENDING, hashes):
        pass
    display.show("flush: filling the audit log", count, count)
    before = audit_sizes(count)
    settings = get_settings()
    started = time.monotonic()
    result = flush(
        tallies=get_tallies(),
        session_scope=session_scope,
        straggler_age=timedelta(seconds=settings.tally_straggler_seconds),
    )
    seconds = time.monotonic() - started
    counted = result.vote_count if result else 0
    display.show("flush: one flush", counted, count)
    reconciling = time.monotonic()
    with session_scope() as session:
        drift = [line for line in reconcile.compare(session=session) if line.drift]
    reconcile_seconds = time.monotonic() - reconciling
    if counted != count or drift:
        raise RuntimeError(f"flush counted {counted:,} of {count:,}; drift: {drift}")
    return {
        "votes": count,
        "laws": laws,
        "seconds": seconds,
        "votes_per_second": rate(count, seconds),
        # `votes reconcile` reads the whole audit log: how long that takes at this size.
        "reconcile_seconds": reconcile_seconds,
        # Each counted vote leaves a dead row version behind until (auto)vacuum.
        "audit_bytes_per_row_before_flush": before,
        "audit_bytes_per_row_after_flush": audit_sizes(count),
    }


# --- the report -----------------------------------------------------------------------


def figures(report: dict[str, Any]) -> list[Figure]:
    """Each figure of the report, with its target where the issue sets one."""
    throughput = report.get("throughput", {})
    ceiling = report.get("ceiling", {})
    e2e = throughput.get("end_to_end_per_second")
    window = report.get("options", {}).get("window", 1)
    out = [
        at_least("end_to_end", "end to end", e2e, "votes/s", 3000),
        Figure(
            "publish",
            f"publish (producers, confirms per {window})",
            throughput.get("publish_per_second"),
            "votes/s",
        ),
        at_least(
            "vs_old",
            f"x old pipeline ({OLD_PIPELINE_VOTES_PER_SECOND:.0f} votes/s)",
            e2e / OLD_PIPELINE_VOTES_PER_SECOND if e2e else None,
            "x",
            6,
        ),
    ]
    if ceiling:
        both = ceiling["publish_and_consume_per_second"]
        consume = ceiling["consume_ack_per_second"]
        out += [
            Figure("ceiling_publish", "raw kombu: publish", ceiling["publish_per_second"], "msg/s"),
            Figure("ceiling_consume", "raw kombu: consume/ack", consume, "msg/s"),
            Figure("ceiling", "raw kombu: publish + consume/ack", both, "msg/s"),
            # Like for like: both start at the first publish and end when the last message
            # is done with, publishing with the same producers (see docs/SCALING.md).
            at_least(
                "vs_ceiling",
                "end to end / raw publish + consume",
                e2e / both if e2e else None,
                "ratio",
                0.5,
            ),
            Figure(
                "vs_consume",
                "end to end / raw consume/ack",
                e2e / consume if e2e else None,
                "ratio",
            ),
        ]
    if "latency" in report:
        latency = report["latency"]
        offered = f"@ {latency['offered_per_second']:,.0f}/s"
        # Below the offered rate, the producers fell behind: their lag is in the latencies.
        achieved = latency["achieved_publish_per_second"]
        out.append(Figure("latency_publish", f"published {offered}", achieved, "votes/s"))
        for stage, limit in (("audited", 100), ("tallied", 1500)):
            points = latency[f"publish_to_{stage}_ms"]
            for point in ("p50", "p95", "p99"):
                key, label = f"{stage}_{point}", f"-> {stage} {point} {offered}"
                if point == "p95":
                    out.append(at_most(key, label, points.get(point), "ms", limit))
                else:
                    out.append(Figure(key, label, points.get(point), "ms"))
    if "validation_alone" in report:
        alone = report["validation_alone"]
        label = f"validate alone, batches of {alone['batch_size']}: CPU"
        out.append(Figure("validate_cpu", label, alone["cpu_ms_per_vote"], "ms/vote"))
    if "voters_load" in report:
        load = report["voters_load"]
        label = f"voters load, {load['hashes']:,} hashes"
        out.append(at_least("voters_load", label, load["hashes_per_second"], "hashes/s", 200_000))
    if "flush" in report:
        flushed = report["flush"]
        label = f"flush, {flushed['votes']:,} votes / {flushed['laws']} laws"
        out.append(at_least("flush", label, flushed["votes_per_second"], "votes/s", 100_000))
    if throughput.get("cpu_seconds"):
        # Other people's processes share these cores: above a few tenths, the figures are low.
        others = throughput["cpu_seconds"].get(OTHERS, 0.0) / throughput["end_to_end_seconds"]
        out.append(Figure("others", "cores used by other processes", others, "cores"))
        stolen = throughput.get("stolen_cpu_seconds", 0.0) / throughput["end_to_end_seconds"]
        out.append(Figure("stolen", "cores taken by the hypervisor (steal)", stolen, "cores"))
    after = report.get("memory", {}).get("after_throughput")
    if after:
        largest = max((m for m in after if m["label"] != "beat"), key=lambda m: m["peak_mib"])
        label = f"worker peak RSS ({largest['label']})"
        out.append(at_most("worker_peak_rss", label, largest["peak_mib"], "MiB", 150))
    if "redis" in report:
        per_voter = report["redis"]["bytes_per_voter"]
        out.append(Figure("redis_per_voter", "Redis per voter, roll + voted", per_voter, "bytes"))
    if "reconcile" in report:
        reconciled = report["reconcile"]
        out.append(
            Figure(
                "reconcile",
                "reconcile: votes tallied",
                reconciled["votes_tallied"],
                "votes",
                f"= {reconciled['votes_expected']:,}, no drift",
                reconciled["ok"],
            )
        )
    return out


def render(report: dict[str, Any], shown: Sequence[Figure]) -> None:
    from rich.table import Table

    from votes_app.cli import console

    table = Table(title="votes bench")
    for header in ("figure", "measured", "target", ""):
        table.add_column(header, justify="right" if header == "measured" else "left")
    for figure in shown:
        verdict = {True: "[green]pass[/green]", False: "[red]MISS[/red]", None: ""}[figure.ok]
        table.add_row(figure.label, format_value(figure.value, figure.unit), figure.target, verdict)
    console.print(table)
    memory = report.get("memory", {})
    if memory:
        rss = Table(title="RSS of the pipeline processes (MiB), at each point of the run")
        for header in ("process", *(MEMORY_POINTS.get(k, k) for k in memory), "peak"):
            rss.add_column(header, justify="left" if header == "process" else "right")
        labels = [m["label"] for m in next(iter(memory.values()))]
        for label in labels:
            cells = []
            for sample in memory.values():
                found = [m for m in sample if m["label"] == label]
                cells.append(f"{found[0]['rss_mib']:.0f}" if found else "-")
            peaks = [
                m["peak_mib"] for sample in memory.values() for m in sample if m["label"] == label
            ]
            rss.add_row(label, *cells, f"{max(peaks):.0f}")
        console.print(rss)
    throughput = report.get("throughput", {})
    if throughput.get("cpu_seconds"):
        seconds = throughput["end_to_end_seconds"]
        cpu = Table(title="CPU of the throughput run (ms per message: less idle use)")
        for header in ("component", "CPU s", "ms per message", "cores busy"):
            cpu.add_column(header, justify="left" if header == "component" else "right")
        for role, used in sorted(throughput["cpu_seconds"].items(), key=lambda kv: -kv[1]):
            per_message = throughput["cpu_ms_per_message"][role]
            cpu.add_row(role, f"{used:.1f}", f"{per_message:.3f}", f"{used / seconds:.2f}")
        console.print(cpu)


MEMORY_POINTS = {
    "started": "start",
    "half_of_throughput": "N/2",
    "after_throughput": "N",
    "after_latency": "+latency",
}


def result_path(options: Options, started: datetime) -> Path:
    from votes_app.harness import REPO

    if options.output:
        return Path(options.output)
    return REPO / "bench" / "results" / f"bench-{started:%Y%m%d-%H%M%S}.json"


# --- the run --------------------------------------------------------------------------


def measure_pipeline(
    options: Options,
    stream: Stream,
    report: dict[str, Any],
    display: Display,
    directory: Path,
) -> list[Stream]:
    """Workers and beat up for the throughput run, then the latency run: their figures go
    into `report`; returns the streams published besides `stream`."""
    from votes_app.ballot_box import VALID_HASHES, VOTED_HASHES

    more: list[Stream] = []
    load_roll(stream.roll)
    with ExitStack() as stack:
        workers, beat = start_pipeline(options, directory, stack)
        display.note(f"workers and beat started; logs in {directory}")
        report["memory"] = {"started": [asdict(m) for m in pipeline_memory(workers, beat)]}
        throughput = run_throughput(options, stream, workers, beat, display, report["idle_cores"])
        memory = throughput.pop("memory")
        report["memory"] |= {
            "half_of_throughput": memory.get("half", []),
            "after_throughput": memory["end"],
        }
        report["throughput"] = throughput
        # The throughput voters have all voted: their roll and voted set, exactly.
        held = redis_key_bytes(VALID_HASHES, VOTED_HASHES)
        report["redis"] = {
            "voters": stream.firsts,
            "roll_bytes": held[VALID_HASHES],
            "voted_bytes": held[VOTED_HASHES],
            "bytes_per_voter": sum(held.values()) / stream.firsts,
        }
        if options.skip_latency:
            return more
        offered = round(options.rate * options.latency_seconds)
        more.append(make_stream(offered, laws=options.laws, tag="latency"))
        load_roll(more[0].roll)
        everything = [stream, *more]
        goal = Progressed(
            sum(s.firsts for s in everything),
            sum(s.seconds for s in everything),
            sum(s.unknown for s in everything),
        )
        report["latency"] = run_latency(options, more[0], goal, workers, beat, display)
        report["memory"]["after_latency"] = [asdict(m) for m in pipeline_memory(workers, beat)]
    return more


def run_bench(options: Options) -> int:
    from votes_app.cli import console
    from votes_app.harness import reset_namespace

    started = datetime.now(UTC)
    console.print(
        f"[bold]votes bench[/bold]: {options.votes:,} votes from {options.producers} producers "
        f"(confirms awaited {options.window} at a time), topology {options.topology}, "
        f"worker -c {options.concurrency}, logs at {options.loglevel}"
    )
    report: dict[str, Any] = {
        "started_at": started.isoformat(),
        "options": asdict(options),
        "machine": machine_facts(),
        "settings": pipeline_settings(),
    }
    load = report["machine"]["load_average_at_start"]
    if load[0] > 1.5:
        console.print(
            f"[yellow]the machine is busy (load {load[0]:.1f}): figures will be low[/yellow]"
        )
    directory = Path(tempfile.mkdtemp(prefix="votes-bench-"))
    reset_namespace()
    report["idle_cores"] = idle_cores()
    throughput_stream = make_stream(options.votes, laws=options.laws, tag="throughput")
    streams = [throughput_stream]
    healthy = False
    with Display() as display:
        if not options.skip_ceiling:
            report["ceiling"] = measure_ceiling(
                options, throughput_stream, display, report["idle_cores"]
            )
        streams += measure_pipeline(options, throughput_stream, report, display, directory)
        report["batches"] = batch_shapes()
        report["reconcile"] = reconcile_votes(streams)
        healthy = bool(report["reconcile"]["ok"])
        # The bulk phases wipe the namespace: when a vote went astray, keep the evidence.
        if healthy:
            report["validation_alone"] = measure_validation(VALIDATE_ALONE_VOTES, display)
        if healthy and not options.skip_voters_load:
            report["voters_load"] = measure_voters_load(options.voters_load, directory, display)
        if healthy and not options.skip_flush:
            report["flush"] = measure_flush(options.flush_votes, options.flush_laws, display)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["finished_at"] = datetime.now(UTC).isoformat()
    shown = figures(report)
    report["figures"] = [asdict(f) for f in shown]
    render(report, shown)
    path = result_path(options, started)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    console.print(f"figures written to {path}")
    missed = [f.label for f in shown if f.ok is False]
    if missed:
        console.print(f"[yellow]{len(missed)} target(s) missed[/yellow]")
    if not healthy:
        console.print(f"[red]votes lost or doubled[/red]; namespace and logs kept in {directory}")
        return 1
    reset_namespace()  # the bulk phases left a million rows and hashes behind
    for log in directory.iterdir():
        log.unlink()
    directory.rmdir()
    return 0


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    sys.exit(run_bench(Options.from_json(sys.argv[1])))
