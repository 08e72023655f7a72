"""The benchmark's picture, beside its JSON: votes/s over each throughput run and latency
percentiles over each latency run, for both intake paths. Drawn on matplotlib's Agg canvas
with no pyplot (matplotlib: "Embed in a web application server"), so no display is needed
and no figure outlives the call."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from votes_tools.bench.report import LATENCY_TARGETS, PATHS, THROUGHPUT_RUNS

PATH_COLOURS = {"one_vote": "tab:blue", "bulk": "tab:orange"}
STAGE_COLOURS = {"audited": "tab:green", "tallied": "tab:purple"}
POINT_STYLES: dict[str, tuple[Any, float]] = {
    "p50": (":", 1.2),
    "p95": ("-", 2.0),
    "p99": ("--", 1.0),
}
TARGET_STYLE: dict[str, Any] = {"linestyle": "-", "linewidth": 6, "alpha": 0.3}


def draw(report: dict[str, Any], path: Path) -> Path | None:
    """Draw the runs of `report` to the PNG `path`; None when it holds no run to draw."""
    runs = {path: report[key] for key, path in THROUGHPUT_RUNS.items() if key in report}
    latencies: dict[str, Any] = report.get("latency", {})
    if not runs and not latencies:
        return None
    figure = Figure(figsize=(13, 8.5 if runs and latencies else 4.5), layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas: PNG with no display
    rows = [row for row in (runs, latencies) if row]
    grid = figure.add_gridspec(len(rows), max(1, len(latencies)))
    if runs:
        producers = report.get("options", {}).get("producers", "the")
        axes = figure.add_subplot(grid[0, :])
        draw_throughput(axes, runs, report.get("ceiling", {}))
        axes.set_title(
            f"Throughput: votes recorded (audited) each second, {producers} producers as fast"
            " as they go"
        )
    if latencies:
        first: Axes | None = None
        for column, latency in enumerate(latencies.values()):
            axes = figure.add_subplot(grid[len(rows) - 1, column], sharey=first)
            draw_latency(axes, latency)
            first = first or axes
        figure.legend(handles=latency_legend(), loc="outside lower center", ncols=8, fontsize=8)
    figure.suptitle(title(report), fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def title(report: dict[str, Any]) -> str:
    machine = report.get("machine", {})
    started = report.get("started_at")
    when = f"{datetime.fromisoformat(started):%Y-%m-%d %H:%M} UTC" if started else ""
    load = machine.get("load_average_at_start")
    facts = [
        "votes bench" + (" --quick" if report.get("options", {}).get("quick") else ""),
        when,
        f"{machine['cpus']} cores" if "cpus" in machine else "",
        f"load {load[0]:.1f} at start" if load else "",
        f"commit {machine['git_commit'][:7]}" if machine.get("git_commit") else "",
    ]
    return ", ".join(fact for fact in facts if fact)


def draw_throughput(axes: Axes, runs: dict[str, Any], ceiling: dict[str, Any]) -> None:
    """Votes recorded (audited) in each second from each run's first publish, and its end to
    end rate as a level line; the raw one-message ceiling of the same run beside them."""
    levels: list[tuple[float, str, Any, str]] = []  # (votes/s, colour, line style, label)
    for path, run in runs.items():
        colour, name = PATH_COLOURS[path], PATHS[path]
        audited = run.get("per_second", {}).get("audited", [])
        axes.stairs(
            audited,
            range(len(audited) + 1),
            baseline=None,
            color=colour,
            linewidth=2,
            label=f"{name}: votes recorded each second",
        )
        if e2e := run.get("end_to_end_per_second"):
            levels.append((e2e, colour, "--", f"{name}: {e2e:,.0f} votes/s end to end"))
    if both := ceiling.get("publish_and_consume_per_second"):
        levels.append((both, "grey", "-.", f"raw kombu, one message per vote: {both:,.0f} msg/s"))
    for value, colour, style, label in levels:
        axes.axhline(value, color=colour, linestyle=style, linewidth=1, label=label)
    axes.set_xlabel("seconds since the run's first publish")
    axes.set_ylabel("votes/s")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper right")


def draw_latency(axes: Axes, latency: dict[str, Any]) -> None:
    """Percentiles of publish -> audited and -> tallied of the votes due in each second of an
    open-loop run, with the p95 targets that apply."""
    offered = latency["offered_per_second"]
    seconds = latency.get("per_second", [])
    x = [s["second"] for s in seconds]
    for stage, colour in STAGE_COLOURS.items():
        for point, (style, width) in POINT_STYLES.items():
            values = [s[f"{stage}_ms"].get(point) for s in seconds]
            axes.plot(x, values, color=colour, linestyle=style, linewidth=width)
    limits = LATENCY_TARGETS.get((latency["path"], float(offered)), {})
    for stage, limit in limits.items():
        axes.axhline(limit, **TARGET_STYLE, color=STAGE_COLOURS[stage])
    p95 = [
        f"{stage} {latency[f'publish_to_{stage}_ms'].get('p95', 0):,.0f} ms"
        for stage in STAGE_COLOURS
    ]
    axes.set_title(
        f"{PATHS.get(latency['path'], latency['path'])} @ {offered:,.0f} votes/s offered\n"
        f"p95 {', '.join(p95)}",
        fontsize=10,
    )
    axes.set_yscale("log")
    axes.set_xlabel("second of the run (votes due then)")
    axes.set_ylabel("ms from due to audited / tallied")
    axes.grid(alpha=0.3, which="both")


def latency_legend() -> list[Line2D]:
    """What the lines of the latency panels are (the same in each)."""
    handles = [
        Line2D([], [], color=colour, linestyle=style, linewidth=width, label=f"-> {stage} {point}")
        for stage, colour in STAGE_COLOURS.items()
        for point, (style, width) in POINT_STYLES.items()
    ]
    return handles + [
        Line2D([], [], **TARGET_STYLE, color=colour, label=f"p95 target -> {stage}")
        for stage, colour in STAGE_COLOURS.items()
    ]
