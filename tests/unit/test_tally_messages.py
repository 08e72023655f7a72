"""Tally rules without services: what aggregation hears of a validation batch, flush results."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from votes_app.schemas import CastVote, Vote
from votes_app.tallies import RECORDED, FlushResult
from votes_app.validation import Outcome

GOOD: dict[str, Any] = {"law-001": {"oui": 3, "non": 1}, "law-002": {"non": 2}}


def cast(n: int, law_id: str, choice: str) -> CastVote:
    return CastVote(
        task_id=f"task-{n}",
        vote=Vote(
            vote_hash=hashlib.sha256(f"nas|{n}|{law_id}".encode()).hexdigest(),
            law_id=law_id,
            choice=choice,
            timestamp=datetime(2026, 11, 27, 9, 30, tzinfo=UTC),
            citizen_id="CITIZEN-1",
        ),
    )


def test_a_batch_is_told_to_aggregation_as_counts_per_law_and_choice() -> None:
    votes = [cast(1, "law-001", "oui"), cast(2, "law-001", "non"), cast(3, "law-002", "oui")]
    votes += [cast(4, "law-001", "oui")]

    recorded = Outcome(recorded=votes).recorded_per_law()

    assert recorded == {"law-001": {"oui": 2, "non": 1}, "law-002": {"oui": 1}}
    assert RECORDED.validate_python(recorded) == recorded
    # Nothing in it names a voter: no hash, no task id, no citizen id.
    text = repr(recorded)
    assert not any(v.vote.vote_hash[:8] in text or v.task_id in text for v in votes)
    assert "CITIZEN" not in text


def test_a_batch_with_nothing_recorded_tells_nothing() -> None:
    assert Outcome().recorded_per_law() == {}


@pytest.mark.parametrize(
    "message",
    [
        {"law 001": {"oui": 1}},
        {"": {"oui": 1}},
        {"x" * 51: {"oui": 1}},
        {"law-001;DROP TABLE vote_results": {"oui": 1}},
        {"law-001": {"OUI": 1}},
        {"law-001": {"abstention": 1}},
        {"law-001": {"oui": 0}},
        {"law-001": {"oui": -3}},
        {"law-001": {"oui": "many"}},
        {"law-001": ["oui"]},
        [["law-001", "oui"]],
        {f"law-{n}": {"oui": 1} for n in range(10_001)},
    ],
    ids=[
        "space-in-law",
        "empty-law",
        "long-law",
        "sql-in-law",
        "upper-case-choice",
        "unknown-choice",
        "zero",
        "negative",
        "not-a-number",
        "list-of-choices",
        "not-a-mapping",
        "too-many-laws",
    ],
)
def test_a_bad_aggregation_message_is_refused(message: object) -> None:
    with pytest.raises(ValidationError):
        RECORDED.validate_python(message)


def test_a_good_aggregation_message_is_read_as_sent() -> None:
    assert RECORDED.validate_python(GOOD) == GOOD


def test_vote_count_is_the_sum_of_what_was_counted() -> None:
    counted = {("law-001", "oui"): 4, ("law-001", "non"): 2, ("law-002", "oui"): 1}

    assert FlushResult(batch_ids=["b1", "b2"], counted=counted).vote_count == 7
    assert FlushResult(batch_ids=[], counted={}).vote_count == 0
