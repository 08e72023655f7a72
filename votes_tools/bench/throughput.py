"""The timed runs through the real pipeline: throughput (as fast as the producers go) and
latency (an open-loop run at a fixed rate), with CPU, WAL and memory measured around them."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa

from votes_app.models import TallyBatch, VoteAudit
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
from votes_tools.publishing import ParallelPublisher
from votes_tools.workload import Workload, voter


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


def producers(options: BenchOptions) -> ParallelPublisher:
    return ParallelPublisher(processes=options.producers, window=options.window)


def run_throughput(
    options: BenchOptions,
    workload: Workload,
    workers: Sequence[Worker],
    beat: Child,
    display: Display,
    idle: dict[str, float],
) -> dict[str, Any]:
    """N votes as fast as the producers go; first publish -> everything counted."""
    goal = Totals(len(workload.roll), len(workload.second), len(workload.unknown))
    total = len(workload.messages)
    memory: dict[str, list[ProcessMemory]] = {}
    last_audit_poll = 0.0

    def on_poll(now: Totals) -> None:
        nonlocal last_audit_poll
        display.show("throughput: tallied", now.tallied, goal.tallied)
        if time.monotonic() - last_audit_poll > 1.0:
            # count(*) over the audit log costs more than the other sums: once a second.
            display.show("throughput: audited", audited_count(), goal.tallied)
            last_audit_poll = time.monotonic()
        if "half" not in memory and now.tallied >= goal.tallied / 2:
            memory["half"] = pipeline_memory(workers, beat)

    polled = 0.0

    def on_progress(published: int) -> None:
        nonlocal polled
        display.show("throughput: published", published, total)
        if time.monotonic() - polled > 0.5:
            on_poll(Totals.read())
            polled = time.monotonic()

    roles = pipeline_roles(workers, beat)
    ticks = cpu_ticks()
    stolen = stolen_ticks()
    wal = wal_position()
    publication = producers(options).publish(
        workload.messages, owner=voter, on_progress=on_progress
    )
    counted = wait_until_counted(
        goal, processes=[*workers, beat], timeout=options.timeout, on_poll=on_poll
    )
    cpu = cpu_by_component(ticks, cpu_ticks(), roles) | {"producers": publication.cpu_seconds}
    stolen_cpu = stolen_seconds(stolen)
    wal_bytes = wal_position() - wal
    display.show("throughput: audited", audited_count(), goal.tallied)
    memory["end"] = pipeline_memory(workers, beat)
    return {
        "messages": total,
        "first_votes": len(workload.roll),
        "second_votes": len(workload.second),
        "unknown_hashes": len(workload.unknown),
        "publish_seconds": publication.seconds,
        "publish_per_second": rate(total, publication.seconds),
        "end_to_end_seconds": counted - publication.first,
        "end_to_end_per_second": rate(total, counted - publication.first),
        # From the producers' start to the last tally: what each part costs per vote.
        "cpu_seconds": cpu,
        "cpu_ms_per_message": net_cpu_ms(cpu, idle, time.time() - publication.first, total),
        # On a virtual machine: CPU time the host gave to other guests (all cores).
        "stolen_cpu_seconds": stolen_cpu,
        # Server-wide: other databases' writes count too (the load average says if any).
        "wal_bytes_per_message": wal_bytes / total,
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


def run_latency(
    options: BenchOptions,
    workload: Workload,
    goal: Totals,
    workers: Sequence[Worker],
    beat: Child,
    display: Display,
) -> dict[str, Any]:
    """An open-loop run at --rate: each vote is timed from when it was due to be published
    (so that a producer falling behind cannot hide queueing) to its voter row's recorded_at
    (PostgreSQL's clock: the same machine's), and to the commit of the flush that counted it.

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
    try:
        publication = producers(options).publish(
            workload.messages,
            owner=voter,
            per_second=options.rate,
            on_progress=lambda n: display.show("latency: published", n, total),
        )
        wait_until_counted(
            goal,
            processes=[*workers, beat],
            timeout=options.timeout,
            on_poll=lambda now: display.show("latency: tallied", now.tallied, goal.tallied),
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
    audited, tallied = [], []
    for task_id, recorded in rows:
        due = publication.sent[task_id]
        audited.append((float(recorded) - due) * 1000)
        counted_by = bisect.bisect_right(starts, float(recorded))
        if counted_by == len(flushes) or flushes[counted_by][1] not in watch.seen:
            raise RuntimeError(f"no flush was seen counting the vote of task {task_id}")
        tallied.append((watch.seen[flushes[counted_by][1]] - due) * 1000)
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
