"""One benchmark run: the phases in order on a wiped namespace, then the report and its file."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from votes_app.console import console
from votes_tools import namespace
from votes_tools.bench.accounting import idle_cores
from votes_tools.bench.bulk import (
    VALIDATE_ALONE_VOTES,
    measure_flush,
    measure_validation,
    measure_voters_load,
)
from votes_tools.bench.ceiling import measure_ceiling
from votes_tools.bench.display import Display
from votes_tools.bench.machine import machine_facts, pipeline_settings
from votes_tools.bench.options import BenchOptions
from votes_tools.bench.picture import draw
from votes_tools.bench.pipeline import batch_shapes, measure_pipeline, reconcile_votes
from votes_tools.bench.report import (
    expected_keys,
    figures,
    lookup,
    render,
    result_path,
    worker_peak,
)
from votes_tools.workload import mixed_workload

BUSY_LOAD_AVERAGE = 1.5  # above this at the start, other work will lower the figures


def run_bench(options: BenchOptions) -> int:
    started = datetime.now(UTC)
    console.print(
        f"[bold]votes bench{' --quick' if options.quick else ''}[/bold]: {options.votes:,} votes "
        f"per path from {options.producers} producers (confirms awaited {options.window} "
        f"messages at a time; bulk: up to {options.max_batch} votes per message, linger "
        f"{options.linger_ms:g} ms), topology {options.topology}, worker -c "
        f"{options.concurrency}, logs at {options.loglevel}"
    )
    load_at_start = os.getloadavg()  # before the reset's own work
    # The reset migrates the namespace, which makes the app's role on a fresh server:
    # the facts connect as that role.
    namespace.reset()
    report: dict[str, Any] = {
        "started_at": started.isoformat(),
        "options": asdict(options),
        "machine": machine_facts(load_at_start),
        "settings": pipeline_settings(),
    }
    load = report["machine"]["load_average_at_start"]
    if load[0] > BUSY_LOAD_AVERAGE:
        console.print(
            f"[yellow]the machine is busy (load {load[0]:.1f}): figures will be low[/yellow]"
        )
    directory = Path(tempfile.mkdtemp(prefix="votes-bench-"))
    report["idle_cores"] = idle_cores()
    throughput = mixed_workload(options.votes, laws=options.laws, tag="throughput")
    workloads = [throughput]
    healthy = False
    with Display() as display:
        if not options.skip_ceiling:
            report["ceiling"] = measure_ceiling(options, throughput, display, report["idle_cores"])
        workloads += measure_pipeline(options, throughput, report, display, directory)
        report["batches"] = batch_shapes()
        report["reconcile"] = reconcile_votes(workloads)
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
    report["worker_peak_rss"] = worker_peak(report.get("memory", {}))
    shown = figures(report)
    report["figures"] = [asdict(f) for f in shown]
    path = result_path(options, started)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    render(report, shown)
    console.print(f"figures written to {path}")
    try:
        picture = draw(report, path.with_suffix(".png"))
    except Exception as exc:  # the figures are written: a picture that fails loses only itself
        console.print(f"[yellow]no picture: {exc!r}[/yellow]")
    else:
        if picture:
            console.print(f"picture drawn to {picture}")
    absent = [key for key in expected_keys(options) if lookup(report, key) is None]
    if absent:
        console.print(f"[yellow]figures not measured: {', '.join(absent)}[/yellow]")
    missed = [f.label for f in shown if f.ok is False]
    if missed:
        console.print(f"[yellow]{len(missed)} target(s) missed[/yellow]")
    if not healthy:
        console.print(f"[red]votes lost or doubled[/red]; namespace and logs kept in {directory}")
        return 1
    namespace.reset()  # the bulk phases left a million rows and hashes behind
    for log in directory.iterdir():
        log.unlink()
    directory.rmdir()
    return 0
