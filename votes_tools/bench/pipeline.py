"""The pipeline under measurement: workers and beat started as an operator starts them, the
throughput and latency runs of each intake path through them, Redis memory per voter, and
the final check that no vote was lost or counted twice."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from votes_app import reconcile
from votes_app.ballot_box import VOTED_HASHES, roll_key
from votes_app.celery import AGGREGATION, REVIEW, VALIDATION, WORK_QUEUES
from votes_app.models import TallyBatch, VoteAudit
from votes_app.resources import get_engine, get_redis, session_scope
from votes_app.status import FLUSH_HEARTBEAT
from votes_tools import election
from votes_tools.bench.accounting import pipeline_memory
from votes_tools.bench.display import Display
from votes_tools.bench.options import BenchOptions
from votes_tools.bench.report import latency_key, latency_runs
from votes_tools.bench.throughput import (
    ONE_VOTE,
    Intake,
    bulk_intake,
    goal_of,
    run_latency,
    run_throughput,
)
from votes_tools.counts import Snapshot
from votes_tools.polling import wait_for
from votes_tools.processes import Beat, Worker, free_port
from votes_tools.workload import Workload, mixed_workload


def start_pipeline(
    options: BenchOptions, directory: Path, stack: ExitStack
) -> tuple[list[Worker], Beat]:
    """Workers and beat as an operator starts them; each worker serves metrics on a port
    of its own, so that two workers (or another run on this machine) do not collide."""
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
        worker = Worker(
            directory / f"{name}.log",
            name=f"{name}-{os.getpid()}@%h",
            queues=queues,
            concurrency=concurrency,
            loglevel=options.loglevel,
            env=os.environ | {"METRICS_PORT": str(free_port())},
        )
        workers.append(stack.enter_context(worker))
    beat = stack.enter_context(Beat(directory, loglevel=options.loglevel))
    # Ready when its first flush has run: its start-up is not part of any measurement.
    get_redis().delete(FLUSH_HEARTBEAT)
    wait_for(lambda: get_redis().exists(FLUSH_HEARTBEAT), timeout=120, what="the first flush")
    return workers, beat


def open_election(workload: Workload) -> None:
    """Its laws registered, its voters on their laws' rolls."""
    election.open_laws(workload.laws)
    election.load_roll(workload.roll)


def redis_key_bytes(*keys: str) -> dict[str, int]:
    """Memory of each key, exact (`MEMORY USAGE ... SAMPLES 0` reads every member): the
    Redis server is shared with other namespaces, so its total says little about ours."""
    client = get_redis()
    return {key: int(client.memory_usage(key, samples=0) or 0) for key in keys}


def measure_pipeline(
    options: BenchOptions,
    workload: Workload,
    report: dict[str, Any],
    display: Display,
    directory: Path,
) -> list[Workload]:
    """Workers and beat up for each path in turn: one vote per message (`workload`), then
    bulk intake; each with its throughput run, then its latency runs. Their figures go into
    `report`; returns the workloads published besides `workload`."""
    published = [workload]
    open_election(workload)
    with ExitStack() as stack:
        workers, beat = start_pipeline(options, directory, stack)
        display.note(f"workers and beat started; logs in {directory}")
        report["memory"] = {"started": [asdict(m) for m in pipeline_memory(workers, beat)]}

        def throughput(intake: Intake, votes: Workload) -> dict[str, Any]:
            if votes is not workload:
                published.append(votes)
                open_election(votes)
            found = run_throughput(
                options,
                intake,
                votes,
                goal_of(published),
                workers,
                beat,
                display,
                report["idle_cores"],
            )
            memory = found.pop("memory")
            if intake is ONE_VOTE:
                report["memory"]["half_of_throughput"] = memory.get("half", [])
            report["memory"][f"after_{intake.key}_throughput"] = memory["end"]
            return found

        def latency(intake: Intake, offered: float) -> None:
            votes = mixed_workload(
                round(offered * options.latency_seconds),
                laws=options.laws,
                tag=f"latency-{intake.key}-{offered:g}",
            )
            published.append(votes)
            open_election(votes)
            found = run_latency(
                options, intake, offered, votes, goal_of(published), workers, beat, display
            )
            report.setdefault("latency", {})[latency_key(intake.key, offered)] = found
            report["memory"][f"after_{intake.key}_latency_{offered:.0f}"] = [
                asdict(m) for m in pipeline_memory(workers, beat)
            ]

        report["throughput"] = throughput(ONE_VOTE, workload)
        # The throughput voters have all voted: their roll and voted set, exactly.
        rolls = [roll_key(law) for law in workload.laws]
        held = redis_key_bytes(*rolls, VOTED_HASHES)
        report["redis"] = {
            "voters": len(workload.roll),
            "laws": len(rolls),
            "roll_bytes": sum(held[roll] for roll in rolls),
            "voted_bytes": held[VOTED_HASHES],
            "bytes_per_voter": sum(held.values()) / len(workload.roll),
        }
        runs = latency_runs(options)
        for offered in (rate for path, rate in runs if path == ONE_VOTE.key):
            latency(ONE_VOTE, offered)
        if not options.skip_bulk:
            bulk = bulk_intake(options)
            votes = mixed_workload(options.votes, laws=options.laws, tag="bulk")
            report["bulk"] = throughput(bulk, votes)
            for offered in (rate for path, rate in runs if path == bulk.key):
                latency(bulk, offered)
    return published[1:]


def reconcile_votes(workloads: Sequence[Workload]) -> dict[str, Any]:
    """vote_results against the audit log (`votes reconcile`), and both against what was sent."""
    with session_scope() as session:
        lines = reconcile.compare(session=session)
    expected: dict[tuple[str, str], int] = {}
    for workload in workloads:
        for key, count in workload.expected.items():
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
