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


def result_path(options: BenchOptions, started: datetime) -> Path:
    if options.output:
        return Path(options.output)
    return REPO / "bench" / "results" / f"bench-{started:%Y%m%d-%H%M%S}.json"
