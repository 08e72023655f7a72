"""The tools' workload: the mix of votes, their order, what a correct pipeline counts of
them, and how they are dealt to producers."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from votes_tools.publishing import deal
from votes_tools.workload import make_strays, mix, mixed_workload, voter


def test_the_mix_is_five_percent_second_votes_and_two_percent_unknown() -> None:
    assert mix(100_000) == (93_000, 5_000, 2_000)
    assert sum(mix(12_345)) == 12_345


def test_the_workload_holds_the_mix_and_counts_only_first_votes() -> None:
    workload = mixed_workload(10_000, laws=10, tag="t")

    firsts, seconds, unknown = mix(10_000)
    assert len(workload.messages) == 10_000
    assert len(workload.roll) == len(workload.accepted) == firsts
    assert (len(workload.second), len(workload.unknown)) == (seconds, unknown)
    assert sum(workload.expected.values()) == firsts
    assert len({task_id for task_id, _ in workload.messages}) == 10_000
    on_roll = workload.accepted
    strangers = [kwargs for _, kwargs in workload.messages if kwargs["vote_hash"] not in on_roll]
    assert len(strangers) == unknown


def test_a_second_vote_comes_well_after_the_first_with_the_other_choice() -> None:
    workload = mixed_workload(10_000, laws=3, tag="t")

    first_seen: dict[str, tuple[int, str]] = {}
    gaps = []
    for position, (_, kwargs) in enumerate(workload.messages):
        vote_hash = kwargs["vote_hash"]
        if vote_hash in first_seen:
            first_position, first_choice = first_seen[vote_hash]
            assert kwargs["choice"] != first_choice
            gaps.append(position - first_position)
        else:
            first_seen[vote_hash] = (position, kwargs["choice"])
    assert len(gaps) == len(workload.second)
    # A fifth of the stream between them at least: no race with the first vote.
    assert min(gaps) >= 2_000


def test_the_expected_tallies_follow_the_first_votes() -> None:
    workload = mixed_workload(2_000, laws=4, tag="t")

    counted: dict[tuple[str, str], int] = {}
    seen: set[str] = set()
    on_roll = workload.accepted
    for _, kwargs in workload.messages:
        if kwargs["vote_hash"] in on_roll and kwargs["vote_hash"] not in seen:
            seen.add(kwargs["vote_hash"])
            key = (kwargs["law_id"], kwargs["choice"])
            counted[key] = counted.get(key, 0) + 1
    assert counted == workload.expected


def test_workloads_of_different_runs_share_no_voter_and_no_task_id() -> None:
    one, other = mixed_workload(1_000, laws=2, tag="a"), mixed_workload(1_000, laws=2, tag="b")

    assert not one.accepted & other.accepted
    assert not {t for t, _ in one.messages} & {t for t, _ in other.messages}


def test_each_voter_is_on_the_roll_of_the_law_it_votes_on() -> None:
    workload = mixed_workload(3_000, laws=3, tag="t")

    law_of = {vote_hash: law for law, vote_hash in workload.roll}
    on_roll = [kwargs for _, kwargs in workload.messages if kwargs["vote_hash"] in law_of]
    assert all(law_of[kwargs["vote_hash"]] == kwargs["law_id"] for kwargs in on_roll)
    assert {law for law, _ in workload.roll} == set(workload.laws)


def test_strays_are_each_refused_for_their_own_reason() -> None:
    laws = ("law-001", "law-002")
    opens = datetime.now(UTC) - timedelta(minutes=1)
    strays = make_strays(laws, 30, opens_at=opens, tag="t")

    assert strays.expected == {"outside_window": 10, "unknown_law": 10, "invalid": 10}
    law_of = {vote_hash: law for law, vote_hash in strays.roll}
    kinds: Counter[str] = Counter()
    for _, kwargs in strays.messages:
        if kwargs["law_id"] not in laws:
            kinds["unknown_law"] += 1
        elif datetime.fromisoformat(kwargs["timestamp"]) < opens:
            assert law_of[kwargs["vote_hash"]] == kwargs["law_id"]  # on its own roll
            kinds["outside_window"] += 1
        else:
            assert law_of[kwargs["vote_hash"]] != kwargs["law_id"]  # another law's hash
            kinds["invalid"] += 1
    assert kinds == strays.expected


def test_the_same_tag_gives_the_same_votes() -> None:
    def votes(tag: str) -> list[tuple[str, str, str, str]]:
        workload = mixed_workload(500, laws=2, tag=tag)
        return [(t, m["vote_hash"], m["law_id"], m["choice"]) for t, m in workload.messages]

    assert votes("x") == votes("x")


def test_deal_in_turn_and_lose_nothing() -> None:
    items = [(str(n), n) for n in range(10)]
    parts = deal(items, 3)

    assert [[n for _, n in part] for part in parts] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(item for part in parts for item in part) == sorted(items)


def test_a_voters_votes_go_to_one_producer_in_the_workloads_order() -> None:
    workload = mixed_workload(2_000, laws=3, tag="owners")

    parts = deal(workload.messages, 4, owner=voter)

    assert sorted(m for part in parts for m in part) == sorted(workload.messages)
    for part in parts:
        assert part == sorted(part)  # task ids number the stream in order
    producer_of: dict[str, set[int]] = {}
    for k, part in enumerate(parts):
        for _, kwargs in part:
            producer_of.setdefault(kwargs["vote_hash"], set()).add(k)
    assert len(workload.second) > 0
    assert all(len(producers) == 1 for producers in producer_of.values())
    assert min(len(part) for part in parts) > 0.9 * len(workload.messages) / 4
