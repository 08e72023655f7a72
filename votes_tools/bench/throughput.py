"""The timed runs through the real pipeline, for each intake path (one vote per message, or
bulk through `VotePublisher` with linger): throughput (as fast as the producers go) and
latency (an open-loop run at a fixed rate), with CPU, WAL, memory and what happened in each
second measured around them."""

from __future__ import annotations

import bisect
import functools
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from votes_app.models import TallyBatch, VoteAudit
from votes_app.producer import VotePublisher
from votes_app.resources import get_engine
from votes_tools.bench.accounting import (
    ProcessMemory,
    cpu_by_component,
    cpu_ticks,
    net_cpu_ms,
    pipeline_memory,
    pipeline_roles,
    stolen_seconds,
    stolen_ticks,
)
from votes_tools.bench.display import Display
from votes_tools.bench.options import BenchOptions
from votes_tools.bench.report import percentiles, rate
from votes_tools.counts import Totals
from votes_tools.processes import Child, Worker
from votes_tools.publishing import ParallelPublisher, Publication
from votes_tools.workload import Workload, voter


class CountingPublisher(VotePublisher):
    """`VotePublisher` that adds the messages it sent to a counter of the bench's, as it
    leaves its `with` block: how many votes each message carried on average."""

    def __init__(self, *, sent: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sent = sent

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            with self._sent.get_lock():
                self._sent.value += self.messages_sent


@dataclass(frozen=True, slots=True)
class Intake:
    """How the producers hand votes to the pipeline."""

    key: str  # in the report: "one_vote" or "bulk"
    label: str
    max_batch: int = 1  # votes per message at most (1: validate_vote, else validate_votes)
    linger_ms: float = 0.0

    def publish(
        self,
        options: BenchOptions,
        workload: Workload,
        *,
        per_second: float | None = None,
        on_progress: Callable[[int], None],
    ) -> tuple[Publication, int]:
        """The votes of `workload` from `options.producers` processes, each with a
        `VotePublisher` grouping as this path does, confirms awaited `options.window`
        messages at a time; what they did, and the messages they sent."""
        context = multiprocessing.get_context("spawn")  # ParallelPublisher's
        sent = context.Value("q", 0)
        opener = functools.partial(
            CountingPublisher, sent=sent, max_batch=self.max_batch, linger_ms=self.linger_ms
        )
        producers = ParallelPublisher(
            processes=options.producers, window=options.window, opener=opener
        )
        publication = producers.publish(
            workload.messages, owner=voter, per_second=per_second, on_progress=on_progress
        )
        return publication, int(sent.value)


ONE_VOTE = Intake("one_vote", "one vote per message")


def bulk_intake(options: BenchOptions) -> Intake:
    return Intake("bulk", "bulk", max_batch=options.max_batch, linger_ms=options.linger_ms)


def goal_of(workloads: Iterable[Workload]) -> Totals:
    """The pipeline's totals once every vote of `workloads` has been counted."""
    tallied = duplicates = invalid = 0
    for workload in workloads:
        tallied += len(workload.roll)
        duplicates += len(workload.second)
        invalid += len(workload.unknown)
    return Totals(tallied, duplicates, invalid)


def wait_until_counted(
    goal: Totals,
    *,
    processes: Sequence[Child],
    timeout: float,
    on_poll: Callable[[Totals], None],
    interval: float = 0.1,
) -> float:
    """Poll until the pipeline's totals reach `goal`; the wall clock of the poll that saw it."""
    deadline = time.monotonic() + timeout
    while True:
        now = Totals.read()
        seen = time.time()
        on_poll(now)
        if now == goal:
            return seen
        if (
            now.tallied > goal.tallied
            or now.duplicates > goal.duplicates
            or now.invalid > goal.invalid
        ):
            raise RuntimeError(f"more counted than sent: {now} > {goal}")
        for process in processes:
            if not process.running():
                raise RuntimeError(f"process {process.pid} exited; see {process.log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout:.0f}s: {now}, expected {goal}")
        time.sleep(interval)


def wal_position() -> int:
    """Bytes of WAL written so far by the PostgreSQL server (all its databases)."""
    query = sa.text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
    with get_engine().connect() as connection:
        return int(connection.scalar(query) or 0)


def audited_count() -> int:
    with get_engine().connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count()).select_from(VoteAudit)) or 0)


def seconds_since(column: Any, first: float) -> Any:
    """Whole seconds from `first` (a wall clock) to a timestamp column (PostgreSQL's clock:
    the same machine's)."""
    return sa.cast(sa.func.floor(sa.func.extract("epoch", column) - first), sa.Integer)


def timeline(first: float, until: float, sent: Iterable[float]) -> dict[str, list[int]]:
    """Votes published (first sent), audited (their voter row committed) and tallied (by a
    flush that started then) in each second from `first` to `until`: the run as it went,
    read afterwards, so that watching it costs the pipeline nothing."""
    seconds = max(1, int(until - first) + 1)

    def bins(pairs: Iterable[tuple[int, int]]) -> list[int]:
        counts = [0] * seconds
        for second, count in pairs:
            if 0 <= second < seconds:
                counts[second] += int(count)
        return counts

    audited = seconds_since(VoteAudit.recorded_at, first)
    tallied = seconds_since(TallyBatch.applied_at, first)
    since = sa.func.to_timestamp(first)
    with get_engine().connect() as connection:
        audits = connection.execute(
            sa.select(audited, sa.func.count())
            .where(VoteAudit.recorded_at >= since)
            .group_by(audited)
        ).all()
        flushes = connection.execute(
            sa.select(tallied, sa.func.sum(TallyBatch.vote_count))
            .where(TallyBatch.applied_at >= since)
            .group_by(tallied)
        ).all()
    return {
        "published": bins((int(at - first), 1) for at in sent),
        "audited": bins((int(s), int(n)) for s, n in audits),
        "tallied": bins((int(s), int(n or 0)) for s, n in flushes),
    }


def run_throughput(
    options: BenchOptions,
    intake: Intake,
    workload: Workload,
    goal: Totals,
    workers: Sequence[Worker],
    beat: Child,
    display: Display,
    idle: dict[str, float],
) -> dict[str, Any]:
    """The votes of `workload` as fast as the producers go; first publish -> everything
    counted (`goal`: the totals with them)."""
    total = len(workload.messages)
    memory: dict[str, list[ProcessMemory]] = {}
    last_audit_poll = 0.0
    line = f"{intake.label}: "
    counted_before = goal.tallied - len(workload.roll)

    def on_poll(now: Totals) -> None:
        nonlocal last_audit_poll
        display.show(line + "tallied", now.tallied - counted_before, len(workload.roll))
        if time.monotonic() - last_audit_poll > 1.0:
            # count(*) over the audit log costs more than the other sums: once a second.
            audited = audited_count() - counted_before
            display.show(line + "audited", audited, len(workload.roll))
            last_audit_poll = time.monotonic()
        if "half" not in memory and now.tallied - counted_before >= len(workload.roll) / 2:
            memory["half"] = pipeline_memory(workers, beat)

    polled = 0.0

    def on_progress(published: int) -> None:
        nonlocal polled
        display.show(line + "published", published, total)
        if time.monotonic() - polled > 0.5:
            on_poll(Totals.read())
            polled = time.monotonic()

    roles = pipeline_roles(workers, beat)
    ticks = cpu_ticks()
    stolen = stolen_ticks()
    wal = wal_position()
    publication, messages = intake.publish(options, workload, on_progress=on_progress)
    counted = wait_until_counted(
        goal, processes=[*workers, beat], timeout=options.timeout, on_poll=on_poll
    )
    cpu = cpu_by_component(ticks, cpu_ticks(), roles) | {"producers": publication.cpu_seconds}
    stolen_cpu = stolen_seconds(stolen)
    wal_bytes = wal_position() - wal
    display.show(line + "audited", audited_count() - counted_before, len(workload.roll))
    memory["end"] = pipeline_memory(workers, beat)
    per_vote = net_cpu_ms(cpu, idle, time.time() - publication.first, total)
    return {
        "max_batch": intake.max_batch,
        "linger_ms": intake.linger_ms,
        "votes": total,
        "messages": messages,
        "votes_per_message": total / messages if messages else None,
        "first_votes": len(workload.roll),
        "second_votes": len(workload.second),
        "unknown_hashes": len(workload.unknown),
        "publish_seconds": publication.seconds,
        "publish_per_second": rate(total, publication.seconds),
        "end_to_end_seconds": counted - publication.first,
        "end_to_end_per_second": rate(total, counted - publication.first),
        # From the producers' start to the last tally: what each part costs per vote.
        "cpu_seconds": cpu,
        "cpu_ms_per_vote": per_vote,
        # One vote per message: the same figure, by its older name.
        **({"cpu_ms_per_message": per_vote} if intake.max_batch == 1 else {}),
        # On a virtual machine: CPU time the host gave to other guests (all cores).
        "stolen_cpu_seconds": stolen_cpu,
        # Server-wide: other databases' writes count too (the load average says if any).
        "wal_bytes_per_vote": wal_bytes / total,
        "per_second": timeline(publication.first, counted, publication.sent.values()),
        "memory": {when: [asdict(m) for m in sample] for when, sample in memory.items()},
    }


class BatchWatch(threading.Thread):
    """When each flush batch became visible in tally_batches: the moment its votes were
    tallied for anyone reading vote_results (its commit, to within the polling interval)."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.seen: dict[str, float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
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


def by_second(timed: Sequence[tuple[float, float, float]], first: float) -> list[dict[str, Any]]:
    """Percentiles of `(due, audited ms, tallied ms)` per vote, by the second it was due in."""
    seconds: dict[int, tuple[list[float], list[float]]] = {}
    for due, audited, tallied in timed:
        bucket = seconds.setdefault(int(due - first), ([], []))
        bucket[0].append(audited)
        bucket[1].append(tallied)
    return [
        {
            "second": second,
            "votes": len(audited),
            "audited_ms": percentiles(audited),
            "tallied_ms": percentiles(tallied),
        }
        for second, (audited, tallied) in sorted(seconds.items())
    ]


def run_latency(
    options: BenchOptions,
    intake: Intake,
    offered: float,
    workload: Workload,
    goal: Totals,
    workers: Sequence[Worker],
    beat: Child,
    display: Display,
) -> dict[str, Any]:
    """An open-loop run at `offered` votes/s: each vote is timed from when it was due to be
    published (so that a producer falling behind, or a batch lingering, cannot hide
    queueing) to its voter row's recorded_at (PostgreSQL's clock: the same machine's), and
    to the commit of the flush that counted it. Votes are known by their task id, or in a
    bulk message by their vote id: both are what vote_audit.task_id holds.

    Which flush counted a ballot is nowhere to be read (nothing pairs it with its voter):
    each flush counts every ballot committed before it starts, so a vote is taken to be
    counted by the first flush that started after its transaction began (recorded_at). A
    flush that starts during that transaction, a few milliseconds, comes out early by one
    flush interval.
    """
    with get_engine().connect() as connection:
        before = connection.scalar(sa.select(sa.func.now()))
    watch = BatchWatch()
    watch.start()
    total = len(workload.messages)
    line = f"latency, {intake.label} @ {offered:,.0f}/s: "
    try:
        publication, messages = intake.publish(
            options,
            workload,
            per_second=offered,
            on_progress=lambda n: display.show(line + "published", n, total),
        )
        wait_until_counted(
            goal,
            processes=[*workers, beat],
            timeout=options.timeout,
            on_poll=lambda now: display.show(line + "tallied", now.tallied, goal.tallied),
        )
        # The watch polls every `interval`: three more polls see the last batch committed.
        time.sleep(watch.interval * 3)
    finally:
        watch.stop()
    epoch = sa.func.extract("epoch", VoteAudit.recorded_at)
    with get_engine().connect() as connection:
        rows = connection.execute(
            sa.select(VoteAudit.task_id, epoch).where(VoteAudit.recorded_at >= before)
        ).all()
        flushes = connection.execute(
            sa.select(sa.func.extract("epoch", TallyBatch.applied_at), TallyBatch.batch_id)
            .where(TallyBatch.applied_at >= before)
            .order_by(TallyBatch.applied_at)
        ).all()
    starts = [float(started) for started, _ in flushes]
    timed: list[tuple[float, float, float]] = []  # (due, ms to audited, ms to tallied)
    for task_id, recorded in rows:
        due = publication.sent[task_id]
        counted_by = bisect.bisect_right(starts, float(recorded))
        if counted_by == len(flushes) or flushes[counted_by][1] not in watch.seen:
            raise RuntimeError(f"no flush was seen counting the vote of task {task_id}")
        tallied = watch.seen[flushes[counted_by][1]]
        timed.append((due, (float(recorded) - due) * 1000, (tallied - due) * 1000))
    audited = [a for _, a, _ in timed]
    tallied_ms = [t for _, _, t in timed]
    return {
        "path": intake.key,
        "max_batch": intake.max_batch,
        "linger_ms": intake.linger_ms,
        "offered_per_second": offered,
        "seconds": options.latency_seconds,
        "votes": total,
        "messages": messages,
        "votes_per_message": total / messages if messages else None,
        "achieved_publish_per_second": rate(total, publication.seconds),
        "votes_timed": len(timed),
        "publish_to_audited_ms": percentiles(audited) | {"max": max(audited, default=0.0)},
        "publish_to_tallied_ms": percentiles(tallied_ms) | {"max": max(tallied_ms, default=0.0)},
        "producer_lag_ms_max": publication.lag_max * 1000,
        "per_second": by_second(timed, min(publication.sent.values(), default=0.0)),
    }
