"""record_rejections on PostgreSQL: duplicate attempts, bounded review rows, no voter identity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import sqlalchemy as sa

from tests.support import TIMESTAMP, voter_hash
from votes_app.redaction import sample_of
from votes_app.resources import session_scope
from votes_app.review import Rejection, Verdict, record_rejections
from votes_app.schemas import Submission
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
