"""The benchmark's report: percentiles, figures against their targets, options as JSON."""

from __future__ import annotations

from typing import Any

import pytest

from votes_tools.bench.options import BenchOptions
from votes_tools.bench.report import at_least, at_most, figures, format_value, percentiles


def test_percentiles() -> None:
    values = [float(n) for n in range(1, 101)]

    found = percentiles(values)

    assert found["p50"] == pytest.approx(50.5)
    assert found["p95"] == pytest.approx(95.05)
    assert found["p99"] == pytest.approx(99.01)
    assert percentiles([]) == {}
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}


def test_verdicts() -> None:
    assert at_least("k", "l", 3_000, "votes/s", 3_000).ok is True
    assert at_least("k", "l", 2_999, "votes/s", 3_000).ok is False
    assert at_most("k", "l", 101, "ms", 100).ok is False
    assert at_most("k", "l", None, "ms", 100).ok is None
    assert at_least("k", "l", 1, "votes/s", 3_000).target == ">= 3,000 votes/s"


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (3_456.7, "votes/s", "3,457 votes/s"),
        (12.34, "ms", "12.3 ms"),
        (0.61, "ratio", "0.61"),
        (None, "ms", "-"),
    ],
)
def test_format_value(value: float | None, unit: str, shown: str) -> None:
    assert format_value(value, unit) == shown


def test_options_travel_as_json() -> None:
    options = BenchOptions(votes=10, rate=5.0, topology="split", skip_flush=True, output="/x.json")

    assert BenchOptions.from_json(options.to_json()) == options


def test_figures_compare_with_the_targets() -> None:
    report: dict[str, Any] = {
        "throughput": {"end_to_end_per_second": 4_000.0, "publish_per_second": 5_000.0},
        "ceiling": {
            "publish_per_second": 6_000.0,
            "consume_ack_per_second": 12_000.0,
            "publish_and_consume_per_second": 10_000.0,
        },
        "latency": {
            "offered_per_second": 1_000.0,
            "achieved_publish_per_second": 999.0,
            "publish_to_audited_ms": {"p50": 20.0, "p95": 120.0, "p99": 150.0},
            "publish_to_tallied_ms": {"p50": 600.0, "p95": 1_100.0, "p99": 1_300.0},
        },
        "memory": {
            "after_throughput": [
                {"label": "bench main", "peak_mib": 100.0},
                {"label": "bench pool 1", "peak_mib": 160.0},
                {"label": "beat", "peak_mib": 300.0},
            ]
        },
        "reconcile": {"votes_expected": 93_000, "votes_tallied": 93_000, "ok": True},
    }

    verdicts = {f.key: f.ok for f in figures(report)}

    assert verdicts["end_to_end"] is True
    assert verdicts["vs_ceiling"] is False  # 0.4
    assert verdicts["vs_old"] is True
    assert verdicts["audited_p95"] is False
    assert verdicts["tallied_p95"] is True
    assert verdicts["worker_peak_rss"] is False  # the pool process, not beat
    assert verdicts["reconcile"] is True
    assert verdicts["publish"] is None
