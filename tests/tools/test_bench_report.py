"""The benchmark's report: percentiles, figures against their targets, options as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from votes_tools.bench.options import QUICK_SIZES, BenchOptions
from votes_tools.bench.picture import draw
from votes_tools.bench.report import (
    at_least,
    at_most,
    expected_keys,
    figures,
    format_value,
    lookup,
    percentiles,
)
from votes_tools.bench.throughput import by_second


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


def test_quick_sizes_everything_not_given() -> None:
    quick = BenchOptions(votes=5_000, quick=True).sized(given={"votes", "quick"})

    assert quick.votes == 5_000  # named on the command line: kept
    assert (quick.latency_seconds, quick.flush_votes) == (
        QUICK_SIZES["latency_seconds"],
        QUICK_SIZES["flush_votes"],
    )
    assert BenchOptions().sized(given=set()) == BenchOptions()


def test_unusable_options_are_named() -> None:
    problems = BenchOptions(votes=10, max_batch=501, linger_ms=-1, rate=0).problems(bulk_max=500)

    assert problems == [
        "--votes must be at least 100",
        "--rate must be above 0",
        "--max-batch must be 1 to 500 (VALIDATE_BULK_MAX)",
        "--linger-ms must not be negative",
    ]
    assert BenchOptions().problems(bulk_max=500) == []


def test_the_json_holds_each_figure_the_issue_names() -> None:
    keys = expected_keys(BenchOptions())

    for key in (
        "throughput.end_to_end_per_second",
        "bulk.end_to_end_per_second",
        "ceiling.publish_and_consume_per_second",
        "latency.one_vote_1000.publish_to_audited_ms.p95",
        "latency.bulk_1000.publish_to_tallied_ms.p95",
        "latency.bulk_2500.publish_to_audited_ms.p99",
        "flush.votes_per_second",
        "worker_peak_rss.mib",
        "throughput.cpu_ms_per_vote",
        "bulk.cpu_ms_per_vote",
    ):
        assert key in keys
    assert lookup(report(), "latency.bulk_2500.publish_to_audited_ms.p95") == 300.0
    assert lookup(report(), "latency.bulk_2500.nothing") is None
    quick = expected_keys(BenchOptions(quick=True).sized(given=set()))
    assert quick == keys  # the same figures, smaller
    assert not any(
        k.startswith(("bulk.", "latency.bulk")) for k in expected_keys(BenchOptions(skip_bulk=True))
    )


def latency(path: str, offered: float, audited: float, tallied: float) -> dict[str, Any]:
    per_second = [
        {
            "second": second,
            "votes": int(offered),
            "audited_ms": {"p50": audited / 2, "p95": audited, "p99": audited * 1.2},
            "tallied_ms": {"p50": tallied / 2, "p95": tallied, "p99": tallied * 1.2},
        }
        for second in range(3)
    ]
    return {
        "path": path,
        "max_batch": 1 if path == "one_vote" else 500,
        "offered_per_second": offered,
        "achieved_publish_per_second": offered,
        "votes_per_message": 1.0 if path == "one_vote" else 3.0,
        "publish_to_audited_ms": {"p50": audited / 2, "p95": audited, "p99": audited * 1.2},
        "publish_to_tallied_ms": {"p50": tallied / 2, "p95": tallied, "p99": tallied * 1.2},
        "per_second": per_second,
    }


def report() -> dict[str, Any]:
    """A run's report as `votes bench` writes it, with made-up figures."""
    throughput = {
        "audited": [900, 1_500, 1_400],
        "published": [1_500] * 3,
        "tallied": [0, 2_400, 1_400],
    }
    return {
        "started_at": "2026-12-06T23:00:00+00:00",
        "options": {"window": 100, "producers": 4, "quick": True},
        "machine": {"cpus": 2, "load_average_at_start": [0.3, 0.2, 0.1], "git_commit": "c0ffee0"},
        "throughput": {
            "end_to_end_per_second": 1_500.0,
            "publish_per_second": 2_000.0,
            "per_second": throughput,
        },
        "bulk": {
            "max_batch": 500,
            "linger_ms": 5.0,
            "end_to_end_per_second": 5_500.0,
            "publish_per_second": 40_000.0,
            "votes_per_message": 480.0,
            "per_second": {
                "audited": [5_000, 6_000],
                "published": [11_000, 0],
                "tallied": [0, 11_000],
            },
        },
        "ceiling": {
            "publish_per_second": 8_000.0,
            "consume_ack_per_second": 6_000.0,
            "publish_and_consume_per_second": 2_500.0,
        },
        "latency": {
            "one_vote_1000": latency("one_vote", 1_000.0, 240.0, 1_900.0),
            "bulk_1000": latency("bulk", 1_000.0, 120.0, 1_400.0),
            "bulk_2500": latency("bulk", 2_500.0, 300.0, 1_900.0),
        },
        "flush": {"votes": 1_000_000, "laws": 100, "votes_per_second": 104_000.0},
        "memory": {
            "half_of_throughput": [
                {"label": "bench main", "rss_mib": 95.0, "peak_mib": 95.0},
                {"label": "beat", "rss_mib": 300.0, "peak_mib": 300.0},
            ],
            "after_one_vote_throughput": [
                {"label": "bench main", "rss_mib": 96.0, "peak_mib": 97.0},
                {"label": "beat", "rss_mib": 320.0, "peak_mib": 320.0},
            ],
            "after_bulk_throughput": [
                {"label": "bench main", "rss_mib": 120.0, "peak_mib": 160.0},
                {"label": "beat", "rss_mib": 330.0, "peak_mib": 330.0},
            ],
        },
        "reconcile": {"votes_expected": 93_000, "votes_tallied": 93_000, "ok": True},
    }


def test_figures_compare_with_the_targets_of_both_paths() -> None:
    shown = {f.key: f for f in figures(report())}
    verdicts = {key: f.ok for key, f in shown.items()}

    assert verdicts["bulk_end_to_end"] is True  # 5,500 >= 5,000
    assert verdicts["bulk_vs_ceiling"] is True  # 2.2 x 2,500
    assert verdicts["vs_ceiling"] is True  # 0.6 of 2,500
    assert verdicts["latency_one_vote_1000_audited_p95"] is True  # 240 <= 250
    assert verdicts["latency_one_vote_1000_tallied_p95"] is None  # no target
    assert verdicts["latency_bulk_1000_audited_p95"] is False  # 120 > 100
    assert verdicts["latency_bulk_1000_tallied_p95"] is True
    assert verdicts["latency_bulk_2500_audited_p95"] is False  # 300 > 250
    assert verdicts["latency_bulk_2500_tallied_p95"] is True  # 1,900 <= 2,000
    assert verdicts["flush"] is True
    # The largest worker process at any point, not beat: 160 MiB during the bulk run.
    assert verdicts["worker_peak_rss"] is False
    assert shown["worker_rss_growth"].value == 1.0
    assert verdicts["reconcile"] is True
    targeted = {key for key, ok in verdicts.items() if ok is not None}
    assert targeted == {
        "bulk_end_to_end",
        "bulk_vs_ceiling",
        "vs_ceiling",
        "latency_one_vote_1000_audited_p95",
        "latency_bulk_1000_audited_p95",
        "latency_bulk_1000_tallied_p95",
        "latency_bulk_2500_audited_p95",
        "latency_bulk_2500_tallied_p95",
        "flush",
        "worker_peak_rss",
        "reconcile",
    }


def test_the_picture_is_a_png_of_both_paths(tmp_path: Path) -> None:
    drawn = draw(report(), tmp_path / "bench.png")

    assert drawn == tmp_path / "bench.png"
    assert drawn.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert draw({"options": {}}, tmp_path / "nothing.png") is None
    assert not (tmp_path / "nothing.png").exists()


def test_latency_by_the_second_it_was_due() -> None:
    timed = [(100.2, 10.0, 900.0), (100.7, 30.0, 1_100.0), (102.1, 50.0, 700.0)]

    seconds = by_second(timed, first=100.2)

    assert [(s["second"], s["votes"]) for s in seconds] == [(0, 2), (1, 1)]
    assert seconds[0]["audited_ms"]["p50"] == pytest.approx(20.0)
    assert seconds[1]["tallied_ms"] == {"p50": 700.0, "p95": 700.0, "p99": 700.0}
