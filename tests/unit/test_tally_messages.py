"""Tally rules without services: the aggregation message, flush results, hash chunking."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from votes_app.schemas import Ballot, Vote
from votes_app.tallies import FlushResult, TallyVote, _chunks
from votes_app.validation import Outcome

HASH = hashlib.sha256(b"nas|000000001|law-001").hexdigest()
GOOD: dict[str, Any] = {"vote_hash": HASH, "law_id": "law-001", "choice": "oui"}
# aggregate_vote reads its `votes` argument exactly this way.
MESSAGE = TypeAdapter(list[TallyVote])


def test_a_recorded_vote_round_trips_through_the_message() -> None:
    vote = TallyVote(**GOOD)

    assert MESSAGE.validate_python([vote.model_dump()]) == [vote]
    assert vote.model_dump() == GOOD


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vote_hash", HASH[:-1]),
        ("vote_hash", HASH + "0"),
        ("vote_hash", "g" * 64),
        # Hashes are lower-cased before they are recorded: an upper-case one in a tally
        # message is not a hash the audit log can hold, so it is refused, not counted.
        ("vote_hash", HASH.upper()),
        ("vote_hash", f"{HASH[:32]}' OR '1'='1"),
        ("law_id", ""),
        ("law_id", "x" * 51),
        ("law_id", "law 001"),
        ("law_id", "law-001;DROP TABLE vote_results"),
        ("choice", "OUI"),
        ("choice", "abstention"),
        ("choice", ""),
        ("vote_hash", None),
        ("law_id", 7),
    ],
)
def test_a_bad_field_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        MESSAGE.validate_python([{**GOOD, field: value}])

    assert [error["loc"] for error in caught.value.errors()] == [(0, field)]


@pytest.mark.parametrize("extra", ["citizen_id", "timestamp", "count"])
def test_an_extra_field_is_refused(extra: str) -> None:
    # Above all citizen_id: no voter identity ever travels with a choice to the tallies.
    with pytest.raises(ValidationError) as caught:
        MESSAGE.validate_python([{**GOOD, extra: "x"}])

    assert [(e["loc"], e["type"]) for e in caught.value.errors()] == [
        ((0, extra), "extra_forbidden")
    ]


@pytest.mark.parametrize("missing", sorted(GOOD))
def test_a_missing_field_is_refused(missing: str) -> None:
    fields = {name: value for name, value in GOOD.items() if name != missing}

    with pytest.raises(ValidationError):
        TallyVote(**fields)


def test_a_tally_vote_is_frozen() -> None:
    vote = TallyVote(**GOOD)

    with pytest.raises(ValidationError):
        vote.choice = "non"  # type: ignore[misc]


def test_recorded_ballots_become_tally_votes_without_the_citizen_id() -> None:
    ballots = [
        Ballot(
            task_id=f"task-{n}",
            vote=Vote(
                vote_hash=hashlib.sha256(f"nas|{n}|law-001".encode()).hexdigest().upper(),
                law_id="law-001",
                choice="non",
                timestamp=datetime(2026, 11, 27, 9, 30, tzinfo=UTC),
                citizen_id="CITIZEN-1",
            ),
        )
        for n in range(3)
    ]

    votes = Outcome(recorded=ballots).tally_votes()

    assert [vote.vote_hash for vote in votes] == [b.vote.vote_hash.lower() for b in ballots]
    assert {(vote.law_id, vote.choice) for vote in votes} == {("law-001", "non")}
    assert all("CITIZEN" not in vote.model_dump_json() for vote in votes)


# --- FlushResult -------------------------------------------------------------------------


def test_vote_count_is_the_sum_of_what_was_counted() -> None:
    counted = Counter({("law-001", "oui"): 4, ("law-001", "non"): 2, ("law-002", "oui"): 1})

    result = FlushResult(batch_id="b1", offered=9, counted=dict(counted), applied=True)

    # Offered is what Redis listed; only what PostgreSQL marked is counted.
    assert (result.offered, result.vote_count) == (9, 7)


def test_a_batch_applied_before_counts_nothing() -> None:
    result = FlushResult(batch_id="b1", offered=5, counted={}, applied=False)

    assert result.vote_count == 0


# --- chunks of hashes --------------------------------------------------------------------


@pytest.mark.parametrize(("items", "size"), [(0, 3), (1, 3), (3, 3), (10, 3), (10, 1), (7, 50)])
def test_chunks_hold_every_hash_once_in_order(items: int, size: int) -> None:
    hashes = [f"{n:064x}" for n in range(items)]

    chunks = list(_chunks(hashes, size))

    assert [h for chunk in chunks for h in chunk] == hashes
    assert all(0 < len(chunk) <= size for chunk in chunks)
    assert len(chunks) == -(-items // size)
