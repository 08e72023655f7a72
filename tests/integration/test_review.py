"""record_rejections on PostgreSQL: duplicate attempts, bounded review rows, no voter identity."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias

import pytest
import redis
import sqlalchemy as sa

from tests.support import (
    TIMESTAMP,
    Worker,
    count_rows,
    load_roll,
    vote,
    voter_hash,
    wait_for,
)
from votes_app.ballot_box import BallotBox
from votes_app.celery import DEAD, app
from votes_app.config import get_settings
from votes_app.dead_letters import list_dead, remember_reason
from votes_app.redaction import sample_of
from votes_app.resources import get_redis, session_scope
from votes_app.review import Rejection, Verdict, mark_reviewed, record_rejections, within_quota
from votes_app.schemas import Submission
from votes_app.status import queue_depths
from votes_app.validation import judge

Row: TypeAlias = sa.Row[*tuple[Any, ...]]

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
CITIZEN_ID = "CITIZEN-5e1f0c77"


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def record(rejections: list[Rejection]) -> None:
    with session_scope() as session:
        record_rejections(session=session, rejections=rejections)


def fetch(engine: sa.Engine, query: str) -> list[Row]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text(query)))


def duplicate(vote_hash: str, law_id: str, attempt: int, seen_at: datetime) -> Rejection:
    return Rejection(
        verdict=Verdict.DUPLICATE,
        reason="voter hash has already voted",
        seen_at=seen_at,
        vote_hash=vote_hash,
        law_id=law_id,
        attempt=attempt,
    )


def malformed(sample: str, seen_at: datetime = T0) -> Rejection:
    return Rejection(
        verdict=Verdict.MALFORMED,
        reason="choice: Input should be 'oui' or 'non'",
        seen_at=seen_at,
        sample=sample,
    )


def invalid(vote_hash: str, law_id: str, seen_at: datetime = T0) -> Rejection:
    return Rejection(
        verdict=Verdict.INVALID,
        reason="voter hash is not on the voter roll",
        seen_at=seen_at,
        vote_hash=vote_hash,
        law_id=law_id,
    )


def duplicate_rows(engine: sa.Engine) -> dict[tuple[str, str], tuple[int, datetime, datetime]]:
    rows = fetch(
        engine,
        "SELECT vote_hash, law_id, attempt_count, first_attempt_at, last_attempt_at"
        " FROM duplicate_attempts",
    )
    return {(row[0], row[1]): (row[2], row[3], row[4]) for row in rows}


def expected_duplicates(
    rejections: list[Rejection],
) -> dict[tuple[str, str], tuple[int, datetime, datetime]]:
    expected: dict[tuple[str, str], tuple[int, datetime, datetime]] = {}
    for key in {(r.vote_hash or "", r.law_id or "") for r in rejections}:
        mine = [r for r in rejections if (r.vote_hash, r.law_id) == key]
        expected[key] = (
            max(r.attempt or 1 for r in mine),
            min(r.seen_at for r in mine),
            max(r.seen_at for r in mine),
        )
    return expected


H1 = voter_hash(1, "law-001")
H2 = voter_hash(2, "law-001")
DUPLICATES = [
    duplicate(H1, "law-001", 1, at(1)),
    duplicate(H1, "law-001", 3, at(7)),
    duplicate(H1, "law-001", 2, at(4)),  # delivered out of order
    duplicate(H1, "law-002", 1, at(2)),
    duplicate(H2, "law-001", 5, at(3)),
]


# --- duplicates ---------------------------------------------------------------------------


def test_one_duplicate_row_per_hash_and_law(engine: sa.Engine) -> None:
    record(DUPLICATES)

    assert duplicate_rows(engine) == expected_duplicates(DUPLICATES)


def test_duplicates_over_several_messages_keep_the_extremes(engine: sa.Engine) -> None:
    for rejection in DUPLICATES:
        record([rejection])

    assert duplicate_rows(engine) == expected_duplicates(DUPLICATES)


def test_replayed_duplicates_change_nothing(engine: sa.Engine) -> None:
    record(DUPLICATES)
    before = duplicate_rows(engine)

    record(DUPLICATES)
    record(DUPLICATES[::-1])
    record([DUPLICATES[0]])

    assert duplicate_rows(engine) == before


def test_a_later_attempt_moves_the_count_and_last_time(engine: sa.Engine) -> None:
    record(DUPLICATES)
    later = duplicate(H1, "law-001", 4, at(30))

    record([later])

    assert duplicate_rows(engine) == expected_duplicates([*DUPLICATES, later])


# --- invalid and malformed ----------------------------------------------------------------


def review_rows(engine: sa.Engine) -> list[Row]:
    return fetch(
        engine,
        "SELECT kind, vote_hash, law_id, sample, occurrences, first_seen_at, last_seen_at"
        " FROM vote_review ORDER BY id",
    )


def test_a_flood_of_one_malformed_message_is_one_row(engine: sa.Engine) -> None:
    sample = sample_of((), {"vote_hash": "nope", "choice": "maybe"})
    flood = [malformed(sample, at(n % 60)) for n in range(1_000)]

    record(flood)

    [row] = review_rows(engine)
    assert (row.kind, row.sample, row.occurrences) == ("malformed", sample, len(flood))
    assert (row.first_seen_at, row.last_seen_at) == (at(0), at(59))


def test_the_flood_goes_on_in_the_same_row(engine: sa.Engine) -> None:
    sample = sample_of((), {"choice": "maybe"})
    for _ in range(3):
        record([malformed(sample)] * 400)

    assert [row.occurrences for row in review_rows(engine)] == [1_200]


def test_different_submissions_get_different_rows(engine: sa.Engine) -> None:
    samples = [sample_of((), {"choice": choice}) for choice in ("maybe", "yes", "OUI ")]
    invalids = [invalid(voter_hash(n, "law-001"), "law-001") for n in range(3)]
    rejections = [malformed(s) for s in samples for _ in range(2)] + invalids * 3
    # The same voter hash on another law is another submission.
    rejections.append(invalid(invalids[0].vote_hash or "", "law-002"))

    record(rejections)

    rows = review_rows(engine)
    assert sorted(
        (r.kind, r.sample, r.occurrences) for r in rows if r.kind == "malformed"
    ) == sorted(("malformed", s, 2) for s in samples)
    assert sorted(
        (r.vote_hash, r.law_id, r.occurrences) for r in rows if r.kind == "invalid"
    ) == sorted(
        [(i.vote_hash, "law-001", 3) for i in invalids] + [(invalids[0].vote_hash, "law-002", 1)]
    )


def test_no_citizen_id_reaches_the_tables(engine: sa.Engine) -> None:
    h = voter_hash(7, "law-001")
    submissions = [
        Submission(
            "t1",
            (),
            {
                "vote_hash": h,
                "law_id": "law-001",
                "choice": "maybe",
                "timestamp": TIMESTAMP,
                "citizen_id": CITIZEN_ID,
            },
        ),
        Submission("t2", (h, "law-001", "maybe", TIMESTAMP, CITIZEN_ID), {}),
        Submission("t3", (h, "law-001", "oui", TIMESTAMP, CITIZEN_ID, "surplus"), {}),
        Submission(
            "t4",
            (h, "law-001"),
            {"choice": "oui", "timestamp": TIMESTAMP, "citizen_id": CITIZEN_ID * 100},
        ),
        Submission("t5", (h, "law-001", "oui", TIMESTAMP, CITIZEN_ID), {"citizen_id": CITIZEN_ID}),
    ]
    _, rejections = judge(submissions, now=at(60), max_clock_skew=timedelta(minutes=5))
    assert len(rejections) == len(submissions)

    record(rejections)

    stored = fetch(engine, "SELECT v::text FROM vote_review v")
    assert len(stored) == len({rejection.fingerprint for rejection in rejections})
    for (text,) in stored:
        assert CITIZEN_ID not in text


# --- found while testing ------------------------------------------------------------------


def test_an_earlier_sighting_delivered_late_moves_first_seen_at(engine: sa.Engine) -> None:
    sample = sample_of((), {"choice": "maybe"})
    record([malformed(sample, at(10))])

    record([malformed(sample, at(5))])

    [row] = review_rows(engine)
    assert (row.occurrences, row.first_seen_at, row.last_seen_at) == (2, at(5), at(10))


# --- one bad field or record spoils no other ----------------------------------------------


def test_one_bad_field_spoils_no_other_vote(engine: sa.Engine, tmp_path: Path) -> None:
    """Tried as an attacker would: in one batch, a NUL (which PostgreSQL's text refuses) and
    an unpaired surrogate (which UTF-8 cannot carry) in field names and in task ids. Every
    vote of the batch is recorded or reviewed all the same, theirs included."""
    on_roll = [voter_hash(n, "law-001", "bad-field") for n in range(4)]
    load_roll(on_roll)
    messages: list[tuple[dict[str, Any], str]] = [
        *((vote(h, "law-001", "oui"), str(uuid.uuid4())) for h in on_roll[:3]),
        (vote(on_roll[3], "law-001", "non"), f"nul\x00{uuid.uuid4()}"),
        *(
            (vote(voter_hash(n, "law-001", "x"), "law-001", "maybe"), str(uuid.uuid4()))
            for n in range(3)
        ),
        (vote(voter_hash(4, "law-001", "x"), "law-001", "oui", **{"x\x00y": 1}), str(uuid.uuid4())),
        (
            vote(voter_hash(5, "law-001", "x"), "law-001", "oui", **{"x\ud800y": 1}),
            str(uuid.uuid4()),
        ),
        (vote(voter_hash(6, "law-001", "x"), "law-001", "oui"), f"lone\ud800{uuid.uuid4()}"),
    ]
    # Queued before the worker starts: one batch, one review message.
    for kwargs, task_id in messages:
        app.send_task("votes_app.validate_vote", kwargs=kwargs, task_id=task_id)

    with Worker(tmp_path / "worker.log"):
        wait_for(
            lambda: count_rows("vote_review") == 6 or queue_depths()[DEAD] > 0,
            timeout=30,
            what="the six refusals to be reviewed",
        )
        wait_for(lambda: count_rows("vote_audit") == 4, timeout=10, what="the four votes")

    assert queue_depths()[DEAD] == 0
    reasons = sorted(row.reason for row in fetch(engine, "SELECT reason FROM vote_review"))
    assert reasons == [
        *["choice: Input should be 'oui' or 'non'"] * 3,
        "voter hash is not on the voter roll",
        "x\\ud800y: unexpected field",
        "x\\x00y: unexpected field",
    ]


def test_a_review_message_with_an_unreadable_record_records_the_others(
    engine: sa.Engine, tmp_path: Path
) -> None:
    sample = sample_of((), {"choice": "forged"})
    good = malformed(sample).model_dump(mode="json")

    with Worker(tmp_path / "worker.log"):
        app.send_task("votes_app.record_review", kwargs={"rejections": [good, {"verdict": "?"}]})
        wait_for(lambda: queue_depths()[DEAD] == 1, timeout=30, what="the bad record in votes.dead")
        wait_for(lambda: count_rows("vote_review") == 1, timeout=10, what="the good one recorded")

    assert [row.sample for row in review_rows(engine)] == [sample]
    with app.connection_for_write() as connection:
        [letter] = list_dead(connection, get_redis())
    # Alone: the dead letter holds the unreadable record only, and says why.
    assert "invalid message" in letter.reason
    assert letter.preview == '{"rejections": "<list of 1 items>"}'


# --- what producers can make is bounded ---------------------------------------------------

NOON = datetime(2026, 11, 27, 12, 5, tzinfo=UTC)


def sent_as(task_id: str, rejection: Rejection) -> Rejection:
    return rejection.model_copy(update={"task_id": task_id})


def review_in(hour: datetime, rejections: list[Rejection]) -> list[Rejection]:
    """What record_review does with one message at `hour`, with a quota of 3 an hour."""
    kept = within_quota(get_redis(), rejections, per_hour=3, now=hour)
    record(kept)
    mark_reviewed(get_redis(), kept, ttl_seconds=3600)
    return kept


def test_refusals_past_the_hourly_quota_are_counted_in_one_row(engine: sa.Engine) -> None:
    invalids = [
        sent_as(f"i{n}", invalid(voter_hash(n, "law-001", "quota"), "law-001")) for n in range(5)
    ]
    malformeds = [
        sent_as(f"m{n}", malformed(sample_of((), {"choice": "x" * (n + 1)}))) for n in range(5)
    ]
    duplicates = [sent_as(f"d{n}", duplicate(H1, "law-001", n, T0)) for n in range(1, 5)]

    review_in(NOON, invalids[:2] + malformeds[:4] + duplicates)
    review_in(NOON + timedelta(minutes=50), invalids[2:])
    review_in(NOON + timedelta(hours=1), malformeds[4:])

    rows = review_rows(engine)
    own = sorted((r.kind, r.occurrences) for r in rows if r.vote_hash or r.sample)
    counted = sorted((r.kind, r.occurrences) for r in rows if not (r.vote_hash or r.sample))
    # Three of each verdict in the hour get a row of their own; the others are counted in one
    # row per verdict and hour. Duplicates have no quota: their rows are bounded by the roll.
    assert own == [("invalid", 1)] * 3 + [("malformed", 1)] * 4
    assert counted == [("invalid", 2), ("malformed", 1)]
    assert duplicate_rows(engine) == expected_duplicates(duplicates)
    # Only a refusal with a row of its own is marked as reviewed.
    assert sorted(get_redis().keys("reviewed:*")) == [
        f"reviewed:{task_id}" for task_id in ("i0", "i1", "i2", "m0", "m1", "m2", "m4")
    ]


def test_duplicate_marks_are_bounded_per_hour(redis_client: redis.Redis) -> None:
    box = BallotBox(redis_client, claim_ttl_seconds=3600, duplicate_marks_per_hour=10)
    voter = voter_hash(1, "law-001", "marks")

    attempts = box.count_duplicates([(voter, f"task-{n}") for n in range(15)])

    assert attempts == list(range(1, 16))
    assert len(redis_client.keys("duplicate_seen:*")) == 10
    # A redelivered message that was marked is not counted again; one past the quota may be.
    assert box.count_duplicates([(voter, "task-0")]) == [15]
    assert box.count_duplicates([(voter, "task-14")]) == [16]


def test_dead_letter_reasons_are_bounded(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEAD_REASONS_PER_HOUR", "2")
    get_settings.cache_clear()
    try:
        for n in range(4):
            remember_reason(redis_client, f"t{n}", "junk", ttl_seconds=60)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()

    assert sorted(redis_client.keys("dead_reason:*")) == ["dead_reason:t0", "dead_reason:t1"]
