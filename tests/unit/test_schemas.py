"""The vote contract: what `parse_vote` accepts, what it refuses and why, and what stays private."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from votes_app.redaction import SAMPLE_MAX, sample_of
from votes_app.schemas import MalformedVote, Submission, Vote, parse_vote

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
SKEW = timedelta(seconds=300)
HASH = hashlib.sha256(b"nas|000000001|law-001").hexdigest()
CITIZEN_ID = "CITIZEN-7f3a91c0"
# The contract's example vote (docs/PRODUCERS.md), as a producer sends it.
EXAMPLE: dict[str, Any] = {
    "vote_hash": HASH,
    "law_id": "law-001",
    "choice": "oui",
    "timestamp": "2026-11-27T09:30:00+00:00",
    "citizen_id": CITIZEN_ID,
}
POSITIONAL = tuple(EXAMPLE.values())


def parse(*args: Any, **kwargs: Any) -> Vote:
    submission = Submission(task_id="task-1", args=args, kwargs=kwargs)
    return parse_vote(submission, now=NOW, max_clock_skew=SKEW)


def refusal(*args: Any, **kwargs: Any) -> str:
    with pytest.raises(MalformedVote) as caught:
        parse(*args, **kwargs)
    return caught.value.reason


def with_field(name: str, value: Any) -> dict[str, Any]:
    return {**EXAMPLE, name: value}


def without_field(name: str) -> dict[str, Any]:
    return {key: value for key, value in EXAMPLE.items() if key != name}


# --- accepted -----------------------------------------------------------------------------


def test_contract_example_is_accepted() -> None:
    vote = parse(**EXAMPLE)

    assert (vote.vote_hash, vote.law_id, vote.choice) == (HASH, "law-001", "oui")
    assert vote.timestamp == datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
    assert vote.citizen_id == CITIZEN_ID


def test_citizen_id_is_optional() -> None:
    assert parse(**without_field("citizen_id")).citizen_id is None


@pytest.mark.parametrize(
    "timestamp",
    ["2026-11-27T09:30:00Z", "2026-11-27T11:30:00+02:00", "2026-11-27T05:00:00.000-04:30"],
)
def test_any_time_zone_means_the_same_instant(timestamp: str) -> None:
    assert parse(**with_field("timestamp", timestamp)).timestamp == parse(**EXAMPLE).timestamp


def test_upper_case_hash_is_stored_lower_case() -> None:
    assert parse(**with_field("vote_hash", HASH.upper())).vote_hash == HASH


def test_positional_arguments_follow_the_contract_order() -> None:
    assert parse(*POSITIONAL) == parse(**EXAMPLE)
    assert parse(*POSITIONAL[:2], choice="oui", timestamp=EXAMPLE["timestamp"]) == parse(
        **without_field("citizen_id")
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("law_id", "L" * 50),
        ("law_id", "a.B_9-z"),
        ("choice", "non"),
        ("citizen_id", "c" * 256),
        ("timestamp", (NOW + SKEW).isoformat()),
    ],
    ids=["law_id-50-chars", "law_id-all-classes", "choice-non", "citizen_id-256", "skew-limit"],
)
def test_values_at_the_limits_are_accepted(field: str, value: str) -> None:
    vote = parse(**with_field(field, value))

    assert getattr(vote, field) == (
        datetime.fromisoformat(value) if field == "timestamp" else value
    )


# --- refused ------------------------------------------------------------------------------

FULLWIDTH_DIGITS = "".join(chr(ord("０") + int(c)) if c.isdigit() else c for c in HASH)
CYRILLIC_A = HASH.replace("a", "\u0430")  # looks like 'a', is not hex

BAD_FIELDS = [
    ("vote_hash", HASH[:63]),
    ("vote_hash", HASH + "0"),
    ("vote_hash", "g" + HASH[1:]),
    ("vote_hash", FULLWIDTH_DIGITS),
    ("vote_hash", CYRILLIC_A),
    ("vote_hash", HASH + "\n"),
    ("vote_hash", f" {HASH}"),
    ("vote_hash", ""),
    ("vote_hash", None),
    ("vote_hash", int(HASH, 16)),
    ("choice", "maybe"),
    ("choice", "OUI "),
    ("choice", ""),
    ("choice", None),
    ("choice", 1),
    ("choice", True),
    ("law_id", 'law"001'),
    ("law_id", "law'001"),
    ("law_id", "law-001'; DROP TABLE vote_results; --"),
    ("law_id", "law\x00001"),
    ("law_id", "law-001\n"),
    ("law_id", "law\t001"),
    ("law_id", "L" * 51),
    ("law_id", ""),
    ("law_id", "law-\u0661"),  # an Arabic-Indic digit: a digit to str.isdigit, not to us
    ("law_id", 1),
    ("timestamp", "not a date"),
    ("timestamp", "2026-11-26T09:30:00"),
    ("timestamp", "2026-11-26"),
    ("timestamp", 1_764_235_800),
    ("timestamp", None),
    ("timestamp", (NOW + SKEW + timedelta(seconds=1)).isoformat()),
    ("timestamp", "2126-11-27T09:30:00+00:00"),
    ("citizen_id", "c" * 257),
    ("citizen_id", 123456789),
    ("citizen_id", ["CITIZEN"]),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[repr(v)[:40] for _, v in BAD_FIELDS])
def test_each_bad_field_is_refused_with_its_name(field: str, value: Any) -> None:
    reason = refusal(**with_field(field, value))

    assert reason.startswith(f"{field}: "), reason
    assert len(reason) > len(field) + 10, "the reason should say what is wrong"
    # Reasons are logged and stored: the offending input stays out of them.
    if isinstance(value, str) and len(value) >= 4:
        assert value not in reason


@pytest.mark.parametrize("field", list(EXAMPLE)[:4])
def test_missing_field_is_named(field: str) -> None:
    assert refusal(**without_field(field)) == f"{field}: Field required"


def test_every_missing_field_is_named() -> None:
    reason = refusal()

    for field in list(EXAMPLE)[:4]:
        assert f"{field}: " in reason
    assert "citizen_id" not in reason


def test_extra_field_is_refused() -> None:
    assert refusal(**EXAMPLE, nas="123456789") == "nas: unexpected field"


def test_too_many_positional_arguments_are_refused() -> None:
    assert "too many positional arguments" in refusal(*POSITIONAL, "surplus")


def test_field_given_both_positionally_and_by_keyword_is_refused() -> None:
    reason = refusal(*POSITIONAL[:3], choice="non", timestamp=EXAMPLE["timestamp"])

    assert reason.startswith("choice: ")
    assert "both" in reason


# --- privacy ------------------------------------------------------------------------------


def test_citizen_id_is_left_out_of_repr_and_dumps() -> None:
    vote = parse(**EXAMPLE)

    assert CITIZEN_ID not in repr(vote)
    assert CITIZEN_ID not in str(vote)
    assert "citizen_id" not in vote.model_dump()
    assert CITIZEN_ID not in vote.model_dump_json()
    # The fields that are not private are all there: the exclusion is precise.
    assert vote.model_dump()["vote_hash"] == HASH


def test_review_sample_leaves_out_citizen_id_given_by_keyword() -> None:
    sample = sample_of((), {**EXAMPLE, "choice": "maybe"})

    assert CITIZEN_ID not in sample
    assert json.loads(sample) == {
        key: v for key, v in EXAMPLE.items() if key not in ("citizen_id", "choice")
    } | {"choice": "<str of 5 characters>"}


@pytest.mark.parametrize("choice", ["oui", "non", "Oui", "NON ", ["oui"], {"vote": "non"}])
def test_review_sample_never_shows_a_choice(choice: object) -> None:
    by_keyword = sample_of((), {**EXAMPLE, "choice": choice})
    positional = sample_of((HASH, "law-001", choice, EXAMPLE["timestamp"]), {})

    for sample in (by_keyword, positional):
        assert "oui" not in sample.lower() and "non" not in sample.lower()
        assert HASH in sample and "law-001" in sample  # what an investigator needs stays


def test_review_sample_shows_other_fields_by_their_shape_only() -> None:
    sample = json.loads(sample_of((), {**EXAMPLE, "ballot": "non", "weight": 1000}))

    assert sample["ballot"] == "<str of 3 characters>"
    assert sample["weight"] == "<int>"
    assert sample["timestamp"] == EXAMPLE["timestamp"]


def test_review_sample_leaves_out_citizen_id_given_as_fifth_argument() -> None:
    sample = sample_of(POSITIONAL, {})

    assert CITIZEN_ID not in sample
    assert HASH in sample and "law-001" in sample


def test_review_sample_leaves_out_citizen_id_with_surplus_arguments() -> None:
    sample = sample_of((*POSITIONAL, "surplus"), {"citizen_id": CITIZEN_ID})

    assert CITIZEN_ID not in sample
    assert "surplus" not in sample


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((), {**EXAMPLE, "law_id": "x" * 1_000_000}),
        (("y" * 1_000_000,), {}),
        ((), {f"field{i}": "z" * 1000 for i in range(1000)}),
    ],
    ids=["kwarg", "positional", "many-fields"],
)
def test_review_sample_is_bounded(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    sample = sample_of(args, kwargs)

    assert 0 < len(sample) <= SAMPLE_MAX
    assert CITIZEN_ID not in sample


# --- found while testing ------------------------------------------------------------------


def test_timestamp_sent_as_datetime_through_celery_json_is_accepted() -> None:
    on_the_wire = kombu_dumps(
        with_field("timestamp", datetime(2026, 11, 27, 10, 30, tzinfo=timezone(timedelta(hours=1))))
    )

    vote = parse(**kombu_loads(on_the_wire))

    assert vote.timestamp == parse(**EXAMPLE).timestamp
