"""Tally arithmetic without services: PendingBatch rows and totals, parsing of HGETALL data."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from votes_app.tallies import PendingBatch, _parse_counts

LAWS = ["law-010", "law-002", "Law_3.b", "law-001"]


def cast_votes(count: int, seed: int) -> list[tuple[str, str]]:
    chooser = random.Random(seed)
    return [(chooser.choice(LAWS), chooser.choice(("oui", "non"))) for _ in range(count)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rows_add_up_to_the_votes(seed: int) -> None:
    votes = cast_votes(500, seed)
    batch = PendingBatch(batch_id="b1", counts=dict(Counter(votes)))

    rows = batch.rows()

    assert batch.vote_count == len(votes)
    assert sum(int(str(r["oui_count"])) + int(str(r["non_count"])) for r in rows) == len(votes)
    for row in rows:
        assert row["oui_count"] == sum(1 for vote in votes if vote == (row["law_id"], "oui"))
        assert row["non_count"] == sum(1 for vote in votes if vote == (row["law_id"], "non"))


def test_rows_come_once_per_law_in_law_order() -> None:
    # The order is the lock order of the upsert: the same for every flush, so no deadlock.
    batch = PendingBatch(batch_id="b1", counts=dict(Counter(cast_votes(200, 4))))

    laws = [row["law_id"] for row in batch.rows()]

    assert laws == sorted(set(LAWS))


def test_a_law_with_one_choice_gets_zero_for_the_other() -> None:
    batch = PendingBatch(batch_id="b1", counts={("law-001", "non"): 4, ("law-002", "oui"): 3})

    assert batch.rows() == [
        {"law_id": "law-001", "oui_count": 0, "non_count": 4},
        {"law_id": "law-002", "oui_count": 3, "non_count": 0},
    ]
    assert batch.vote_count == 7


def test_empty_batch_has_no_rows() -> None:
    batch = PendingBatch(batch_id="b1", counts={})

    assert (batch.rows(), batch.vote_count) == ([], 0)


def test_hgetall_mapping_and_flat_script_reply_parse_alike() -> None:
    counts = Counter(cast_votes(300, 5))
    as_hash = {f"{law}:{choice}": str(n) for (law, choice), n in counts.items()}
    # A Lua script's HGETALL reply reaches Python as a flat [field, value, ...] list.
    as_reply = [item for pair in as_hash.items() for item in pair]

    assert _parse_counts(as_hash) == dict(counts)
    assert _parse_counts(as_reply) == dict(counts)


def test_law_ids_with_separators_survive_parsing() -> None:
    parsed = _parse_counts({"a.b_c-d:oui": "2", "a.b_c-d:non": "5", "x:oui": "1"})

    assert parsed == {("a.b_c-d", "oui"): 2, ("a.b_c-d", "non"): 5, ("x", "oui"): 1}


def test_empty_hash_parses_to_nothing() -> None:
    assert _parse_counts({}) == {} == _parse_counts([])


def test_truncated_flat_reply_is_an_error_not_a_silent_loss() -> None:
    with pytest.raises(ValueError):
        _parse_counts(["law-001:oui", "3", "law-001:non"])
