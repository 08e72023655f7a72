"""The benchmark's verdict: each figure against its target, as a table, and the JSON file."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from votes_app.console import console
from votes_tools.bench.accounting import OTHERS
from votes_tools.bench.options import BenchOptions
from votes_tools.processes import REPO

# The old pika/aio_pika pipeline on this kind of machine: 343-377 votes/s with one worker,
# 456-566 with two (measured beside this project). The best of them is the one to beat.
OLD_PIPELINE_VOTES_PER_SECOND = 566.0


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


# The targets, on a 2-core machine with everything on it (issue 13).
BULK_MIN_PER_SECOND = 5_000.0
BULK_MIN_OVER_CEILING = 2.0  # times the raw one-message ceiling of the same run
ONE_VOTE_MIN_OF_CEILING = 0.55
FLUSH_MIN_PER_SECOND = 100_000.0
WORKER_RSS_MAX_MIB = 150.0
# p95 limits (ms) by path and votes/s offered: publish -> audited, publish -> tallied.
LATENCY_TARGETS: dict[tuple[str, float], dict[str, float]] = {
    ("one_vote", 1_000.0): {"audited": 250.0},
    ("bulk", 1_000.0): {"audited": 100.0, "tallied": 1_500.0},
    ("bulk", 2_500.0): {"audited": 250.0, "tallied": 2_000.0},
}
PATHS = {"one_vote": "one vote per message", "bulk": "bulk"}
# The report's throughput runs, by the path each measures.
THROUGHPUT_RUNS = {"throughput": "one_vote", "bulk": "bulk"}


def latency_key(path: str, offered: float) -> str:
    """Where a latency run goes in the report's `latency`: e.g. `bulk_2500`."""
    return f"{path}_{offered:.0f}"


def latency_runs(options: BenchOptions) -> list[tuple[str, float]]:
    """The open-loop runs of a benchmark with `options`: (path, votes/s offered) each."""
    if options.skip_latency:
        return []
    runs = [("one_vote", options.rate)]
    if not options.skip_bulk:
        runs += [("bulk", rate) for rate in dict.fromkeys((options.rate, options.bulk_rate))]
    return runs


def expected_keys(options: BenchOptions) -> list[str]:
    """The figures a benchmark with `options` writes to its JSON, as dotted paths: each
    path's end to end rate and CPU per vote by component, the raw ceiling, the latency
    percentiles of each open-loop run, the flush rate and the worker peak RSS."""
    keys = ["throughput.end_to_end_per_second", "throughput.cpu_ms_per_vote"]
    if not options.skip_bulk:
        keys += ["bulk.end_to_end_per_second", "bulk.cpu_ms_per_vote"]
    if not options.skip_ceiling:
        keys.append("ceiling.publish_and_consume_per_second")
    for path, offered in latency_runs(options):
        for stage in ("audited", "tallied"):
            keys += [
                f"latency.{latency_key(path, offered)}.publish_to_{stage}_ms.{point}"
                for point in ("p50", "p95", "p99")
            ]
    if not options.skip_flush:
        keys.append("flush.votes_per_second")
    return [*keys, "worker_peak_rss.mib"]


def lookup(report: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted path of the report; None where there is none."""
    found: Any = report
    for part in dotted.split("."):
        found = found.get(part) if isinstance(found, dict) else None
    return found


def worker_peak(memory: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """The worker process that held the most memory at any point of the run (VmHWM), and how
    much: `{"process": label, "mib": ...}`; beat is not a worker."""
    samples = [m for sample in memory.values() for m in sample if m["label"] != "beat"]
    if not samples:
        return None
    largest = max(samples, key=lambda m: m["peak_mib"])
    return {"process": largest["label"], "mib": largest["peak_mib"]}


def ratio(value: float | None, of: float | None) -> float | None:
    return value / of if value and of else None


def figures(report: dict[str, Any]) -> list[Figure]:
    """Each figure of the report, with its target where the issue sets one."""
    one = report.get("throughput", {})
    bulk = report.get("bulk", {})
    ceiling = report.get("ceiling", {})
    e2e = one.get("end_to_end_per_second")
    bulk_e2e = bulk.get("end_to_end_per_second")
    window = report.get("options", {}).get("window", 1)
    out = [
        Figure("end_to_end", "one vote per message: end to end", e2e, "votes/s"),
        Figure(
            "publish",
            f"one vote per message: publish (confirms per {window} messages)",
            one.get("publish_per_second"),
            "votes/s",
        ),
        Figure(
            "vs_old",
            f"one vote per message: x old pipeline ({OLD_PIPELINE_VOTES_PER_SECOND:.0f} votes/s)",
            ratio(e2e, OLD_PIPELINE_VOTES_PER_SECOND),
            "x",
        ),
    ]
    if bulk:
        shape = f"{bulk['max_batch']} per message, linger {bulk['linger_ms']:g} ms"
        out += [
            at_least(
                "bulk_end_to_end",
                f"bulk ({shape}): end to end",
                bulk_e2e,
                "votes/s",
                BULK_MIN_PER_SECOND,
            ),
            Figure("bulk_publish", "bulk: publish", bulk.get("publish_per_second"), "votes/s"),
            Figure("bulk_batch", "bulk: votes per message", bulk.get("votes_per_message"), ""),
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
                "one vote per message: end to end / raw publish + consume",
                ratio(e2e, both),
                "ratio",
                ONE_VOTE_MIN_OF_CEILING,
            ),
            Figure(
                "vs_consume",
                "one vote per message: end to end / raw consume/ack",
                ratio(e2e, consume),
                "ratio",
            ),
        ]
        if bulk:
            out.append(
                at_least(
                    "bulk_vs_ceiling",
                    "bulk: end to end / raw publish + consume",
                    ratio(bulk_e2e, both),
                    "x",
                    BULK_MIN_OVER_CEILING,
                )
            )
    for run_key, latency in report.get("latency", {}).items():
        offered = latency["offered_per_second"]
        at = f"{PATHS.get(latency['path'], latency['path'])} @ {offered:,.0f}/s"
        limits = LATENCY_TARGETS.get((latency["path"], float(offered)), {})
        # Below the offered rate, the producers fell behind: their lag is in the latencies.
        achieved = latency["achieved_publish_per_second"]
        out.append(Figure(f"latency_{run_key}_publish", f"{at}: published", achieved, "votes/s"))
        if latency.get("max_batch", 1) > 1:
            grouped = latency.get("votes_per_message")
            out.append(Figure(f"latency_{run_key}_batch", f"{at}: votes per message", grouped, ""))
        for stage in ("audited", "tallied"):
            points = latency[f"publish_to_{stage}_ms"]
            for point in ("p50", "p95", "p99"):
                key, label = f"latency_{run_key}_{stage}_{point}", f"{at}: -> {stage} {point}"
                if point == "p95" and stage in limits:
                    out.append(at_most(key, label, points.get(point), "ms", limits[stage]))
                else:
                    out.append(Figure(key, label, points.get(point), "ms"))
    if "validation_alone" in report:
        alone = report["validation_alone"]
        label = f"validate alone, batches of {alone['batch_size']}: CPU"
        out.append(Figure("validate_cpu", label, alone["cpu_ms_per_vote"], "ms/vote"))
    if "voters_load" in report:
        load = report["voters_load"]
        label = f"voters load, {load['hashes']:,} hashes"
        out.append(Figure("voters_load", label, load["hashes_per_second"], "hashes/s"))
    if "flush" in report:
        flushed = report["flush"]
        label = f"flush, {flushed['votes']:,} votes / {flushed['laws']} laws"
        out.append(
            at_least("flush", label, flushed["votes_per_second"], "votes/s", FLUSH_MIN_PER_SECOND)
        )
    if one.get("cpu_seconds"):
        # Other people's processes share these cores: above a few tenths, the figures are low.
        others = one["cpu_seconds"].get(OTHERS, 0.0) / one["end_to_end_seconds"]
        out.append(Figure("others", "cores used by other processes", others, "cores"))
        stolen = one.get("stolen_cpu_seconds", 0.0) / one["end_to_end_seconds"]
        out.append(Figure("stolen", "cores taken by the hypervisor (steal)", stolen, "cores"))
    memory = report.get("memory", {})
    peak = worker_peak(memory)
    if peak:
        label = f"worker peak RSS ({peak['process']})"
        out.append(at_most("worker_peak_rss", label, peak["mib"], "MiB", WORKER_RSS_MAX_MIB))
    growth = rss_growth(memory)
    if growth is not None:
        label = "worker RSS growth, N/2 -> N votes (one vote per message)"
        out.append(Figure("worker_rss_growth", label, growth, "MiB"))
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


def rss_growth(memory: dict[str, list[dict[str, Any]]]) -> float | None:
    """How much more the largest-growing worker process held after N votes than after N/2,
    one vote per message (flat: about 0, whatever N)."""
    half, end = memory.get("half_of_throughput"), memory.get("after_one_vote_throughput")
    if not half or not end:
        return None
    grown = [
        after["rss_mib"] - before["rss_mib"]
        for before in half
        for after in end
        if after["label"] == before["label"] and before["label"] != "beat"
    ]
    return max(grown, default=None)


def render(report: dict[str, Any], shown: Sequence[Figure]) -> None:
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
        for header in ("process", *map(memory_point, memory), "peak"):
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
    runs = {
        PATHS[path]: report[key]
        for key, path in THROUGHPUT_RUNS.items()
        if report.get(key, {}).get("cpu_seconds")
    }
    if runs:
        cpu = Table(title="CPU per vote of the throughput runs (ms, less idle use; cores busy)")
        cpu.add_column("component")
        for path in runs:
            cpu.add_column(f"{path}: ms/vote", justify="right")
            cpu.add_column("cores", justify="right")
        roles = sorted(
            {role for run in runs.values() for role in run["cpu_seconds"]},
            key=lambda role: -sum(run["cpu_seconds"].get(role, 0.0) for run in runs.values()),
        )
        for role in roles:
            cells = []
            for run in runs.values():
                used = run["cpu_seconds"].get(role)
                per_vote = run["cpu_ms_per_vote"].get(role)
                cells.append("-" if per_vote is None else f"{per_vote:.3f}")
                cells.append("-" if used is None else f"{used / run['end_to_end_seconds']:.2f}")
            cpu.add_row(role, *cells)
        console.print(cpu)


def memory_point(key: str) -> str:
    """A column of the RSS table: where in the run its sample was taken."""
    fixed = {
        "started": "start",
        "half_of_throughput": "N/2",
        "after_one_vote_throughput": "N",
        "after_bulk_throughput": "bulk N",
    }
    if key in fixed:
        return fixed[key]
    path, _, offered = key.removeprefix("after_").partition("_latency_")
    return f"{'bulk ' if path == 'bulk' else ''}@{offered}/s" if offered else key


def result_path(options: BenchOptions, started: datetime) -> Path:
    if options.output:
        return Path(options.output)
    return REPO / "bench" / "results" / f"bench-{started:%Y%m%d-%H%M%S}.json"
