"""The benchmark's pure parts: the vote stream it sends, how it deals and times it, verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from votes_app.bench import (
    Options,
    at_least,
    at_most,
    figures,
    format_value,
    make_stream,
    mix,
    percentiles,
    shares,
    voter,
)


def test_the_mix_is_five_percent_second_votes_and_two_percent_unknown() -> None:
    assert mix(100_000) == (93_000, 5_000, 2_000)
    assert sum(mix(12_345)) == 12_345


def test_the_stream_holds_the_mix_and_counts_only_first_votes() -> None:
    stream = make_stream(10_000, laws=10, tag="t")

    firsts, seconds, unknown = mix(10_000)
    assert len(stream.messages) == 10_000
    assert len(stream.roll) == len(set(stream.roll)) == firsts
    assert (stream.seconds, stream.unknown) == (seconds, unknown)
    assert sum(stream.expected.values()) == firsts
    assert len({task_id for task_id, _ in stream.messages}) == 10_000
    on_roll = set(stream.roll)
    strangers = [kwargs for _, kwargs in stream.messages if kwargs["vote_hash"] not in on_roll]
    assert len(strangers) == unknown


def test_a_second_vote_comes_well_after_the_first_with_the_other_choice() -> None:
    stream = make_stream(10_000, laws=3, tag="t")

    first_seen: dict[str, tuple[int, str]] = {}
    gaps = []
    for position, (_, kwargs) in enumerate(stream.messages):
        vote_hash = kwargs["vote_hash"]
        if vote_hash in first_seen:
            first_position, first_choice = first_seen[vote_hash]
            assert kwargs["choice"] != first_choice
            gaps.append(position - first_position)
        else:
            first_seen[vote_hash] = (position, kwargs["choice"])
    assert len(gaps) == stream.seconds
    # At least a tenth of the stream between them: no race with the first vote.
    assert min(gaps) >= 1_000


def test_the_expected_tallies_follow_the_first_votes() -> None:
    stream = make_stream(2_000, laws=4, tag="t")

    counted: dict[tuple[str, str], int] = {}
    seen: set[str] = set()
    on_roll = set(stream.roll)
    for _, kwargs in stream.messages:
        if kwargs["vote_hash"] in on_roll and kwargs["vote_hash"] not in seen:
            seen.add(kwargs["vote_hash"])
            key = (kwargs["law_id"], kwargs["choice"])
            counted[key] = counted.get(key, 0) + 1
    assert counted == stream.expected


def test_streams_of_different_runs_share_no_voter_and_no_task_id() -> None:
    one, other = make_stream(1_000, laws=2, tag="a"), make_stream(1_000, laws=2, tag="b")

    assert not set(one.roll) & set(other.roll)
    assert not {t for t, _ in one.messages} & {t for t, _ in other.messages}


def test_the_same_tag_gives_the_same_votes() -> None:
    def votes(tag: str) -> list[tuple[str, str, str, str]]:
        stream = make_stream(500, laws=2, tag=tag)
        return [(t, m["vote_hash"], m["law_id"], m["choice"]) for t, m in stream.messages]

    assert votes("x") == votes("x")


def test_shares_deal_in_turn_and_lose_nothing() -> None:
    parts = shares(list(range(10)), 3)

    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(n for part in parts for n in part) == list(range(10))


def test_a_voters_votes_go_to_one_producer_in_the_streams_order() -> None:
    stream = make_stream(2_000, laws=3, tag="owners")

    parts = shares(stream.messages, 4, owner=voter)

    assert sorted(m for part in parts for m in part) == sorted(stream.messages)
    for part in parts:
        assert part == sorted(part)  # task ids number the stream in order
    producer_of: dict[str, set[int]] = {}
    for k, part in enumerate(parts):
        for _, kwargs in part:
            producer_of.setdefault(kwargs["vote_hash"], set()).add(k)
    assert stream.seconds > 0
    assert all(len(producers) == 1 for producers in producer_of.values())
    assert min(len(part) for part in parts) > 0.9 * len(stream.messages) / 4


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
    options = Options(votes=10, rate=5.0, topology="split", skip_flush=True, output="/x.json")

    assert Options.from_json(options.to_json()) == options


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
