"""Submissions that were not counted: duplicates, unknown voters, malformed messages.

A review record says who (the hash), where (the law) and why, never what was voted: a
malformed submission is kept as a redacted sample (`votes_app.redaction`).

What a producer can add is bounded (docs/HOSTILE_INPUT.md, "Bounds"): duplicates by the
voter roll (one row per voter and law), the other verdicts by REVIEW_QUOTA_PER_HOUR each,
past which a refusal is counted in one row per verdict and hour instead of a row of its own.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from enum import StrEnum
from typing import Any

import redis
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from votes_app import metrics, quotas
from votes_app.models import DuplicateAttempt, ReviewRecord
from votes_app.redaction import SAMPLE_MAX, escape

REASON_MAX = 500


class Verdict(StrEnum):
    DUPLICATE = "duplicate"
    INVALID = "invalid"  # not on the roll of the vote's law
    MALFORMED = "malformed"
    UNKNOWN_LAW = "unknown_law"  # no such law is registered
    OUTSIDE_WINDOW = "outside_window"  # cast outside the law's window, or the law is closed


class Rejection(BaseModel):
    """One `record_review` item: what was refused and why. JSON in, JSON out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verdict: Verdict
    task_id: str | None = Field(default=None, max_length=255)
    reason: str = Field(max_length=REASON_MAX)
    seen_at: datetime
    vote_hash: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    law_id: str | None = Field(default=None, pattern="^[A-Za-z0-9._-]{1,50}$")
    # duplicate_attempts.attempt_count is a PostgreSQL integer.
    attempt: int | None = Field(default=None, ge=1, le=2**31 - 1)
    sample: str = Field(default="", max_length=SAMPLE_MAX)

    @field_validator("task_id", "reason", "sample", mode="before")
    @classmethod
    def _storable(cls, value: object) -> object:
        # Whatever a message carries, what is stored or keyed on holds no NUL (PostgreSQL's
        # text refuses it) and no unpaired surrogate (UTF-8, hence Redis, cannot carry it).
        return escape(value) if isinstance(value, str) else value

    @property
    def fingerprint(self) -> str:
        """Identical submissions share a fingerprint, hence a review row."""
        basis = (
            f"{self.vote_hash}|{self.law_id}" if self.vote_hash else f"{self.reason}|{self.sample}"
        )
        return hashlib.sha256(f"{self.verdict}|{basis}".encode()).hexdigest()


def clip(text: str, limit: int = REASON_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reviewed_key(task_id: str) -> str:
    return f"reviewed:{task_id}"


_ITEMS = TypeAdapter(list[Any])


def read_rejections(items: object) -> tuple[list[Rejection], list[tuple[Any, ValidationError]]]:
    """A `record_review` message's rejections that can be read, and each item that cannot,
    with its error; a ValidationError if `items` is not a list at all."""
    readable: list[Rejection] = []
    unreadable: list[tuple[Any, ValidationError]] = []
    for item in _ITEMS.validate_python(items):
        try:
            readable.append(Rejection.model_validate(item))
        except ValidationError as exc:
            unreadable.append((item, exc))
    return readable, unreadable


def within_quota(
    client: redis.Redis, rejections: Sequence[Rejection], *, per_hour: int, now: datetime
) -> list[Rejection]:
    """The rejections as they are to be recorded: the first `per_hour` of each verdict this
    hour as they are, each later one as a count in its verdict's row for the hour
    (`over_quota`). Duplicates are not counted: their rows are bounded by the voter roll."""
    counted = Counter(r.verdict for r in rejections if r.verdict is not Verdict.DUPLICATE)
    granted = quotas.take(
        client,
        {f"review:{verdict}": n for verdict, n in counted.items()},
        per_hour=per_hour,
        now=now,
    )
    kept: list[Rejection] = []
    for rejection in rejections:
        name = f"review:{rejection.verdict}"
        if rejection.verdict is Verdict.DUPLICATE:
            kept.append(rejection)
        elif granted[name] > 0:
            granted[name] -= 1
            kept.append(rejection)
        else:
            kept.append(over_quota(rejection, now=now))
    return kept


def over_quota(rejection: Rejection, *, now: datetime) -> Rejection:
    """A refusal past REVIEW_QUOTA_PER_HOUR: one more occurrence of its verdict's row for the
    hour, which keeps no hash, law, sample or task id."""
    return Rejection(
        verdict=rejection.verdict,
        reason=f"past REVIEW_QUOTA_PER_HOUR in the hour {quotas.hour_of(now)} UTC:"
        " counted here, not kept one by one",
        seen_at=rejection.seen_at,
    )


def not_yet_reviewed(client: redis.Redis, rejections: Sequence[Rejection]) -> list[Rejection]:
    """The rejections whose message was not reviewed before: one count per message, however
    often it is resent or redelivered. Duplicates need no such check (their attempt
    number already counts each message once)."""
    counted = [r for r in rejections if r.task_id and r.verdict is not Verdict.DUPLICATE]
    pipe = client.pipeline(transaction=False)
    for rejection in counted:
        pipe.exists(reviewed_key(str(rejection.task_id)))
    seen = {r.task_id for r, known in zip(counted, pipe.execute(), strict=True) if known}
    fresh, taken = [], set()
    for rejection in rejections:
        if rejection.task_id in seen or (rejection.task_id, rejection.verdict) in taken:
            continue
        taken.add((rejection.task_id, rejection.verdict))
        fresh.append(rejection)
    return fresh


def mark_reviewed(
    client: redis.Redis, rejections: Sequence[Rejection], *, ttl_seconds: int
) -> None:
    """Remember the reviewed messages (after their rows are committed)."""
    pipe = client.pipeline(transaction=False)
    for rejection in rejections:
        if rejection.task_id and rejection.verdict is not Verdict.DUPLICATE:
            pipe.set(reviewed_key(rejection.task_id), "1", ex=ttl_seconds)
    pipe.execute()


def record_apart(
    *,
    session_scope: Callable[[], AbstractContextManager[Session]],
    rejections: Sequence[Rejection],
    transient: tuple[type[Exception], ...],
) -> list[tuple[Rejection, Exception]]:
    """Store rejections in one transaction or, when that fails for a reason of the records'
    own, each in a transaction of its own (as `batching.settle` narrows a batch down): one
    that cannot be stored keeps no other out. Returns those that could not be stored, each
    with its error; the `transient` errors (infrastructure) are raised, for a retry."""
    try:
        with session_scope() as session:
            record_rejections(session=session, rejections=rejections)
        return []
    except transient:
        raise
    except Exception as exc:
        if len(rejections) == 1:
            return [(rejections[0], exc)]
    return [
        failed
        for rejection in rejections
        for failed in record_apart(
            session_scope=session_scope, rejections=[rejection], transient=transient
        )
    ]


@metrics.database_operation("record_review")
def record_rejections(*, session: Session, rejections: Sequence[Rejection]) -> None:
    """Store rejections; replaying the same ones leaves duplicate counts unchanged."""
    duplicates = [r for r in rejections if r.verdict is Verdict.DUPLICATE]
    others = [r for r in rejections if r.verdict is not Verdict.DUPLICATE]
    if duplicates:
        _record_duplicates(session, duplicates)
    if others:
        _record_others(session, others)


def _record_duplicates(session: Session, rejections: Sequence[Rejection]) -> None:
    # `attempt` comes from Redis's duplicate_count: keeping the greatest makes the row right
    # when a review message is delivered twice or out of order.
    rows: dict[tuple[str | None, str | None], dict[str, Any]] = {}
    for r in rejections:
        row = rows.setdefault(
            (r.vote_hash, r.law_id),
            {
                "vote_hash": r.vote_hash,
                "law_id": r.law_id,
                "attempt_count": 1,
                "first_attempt_at": r.seen_at,
                "last_attempt_at": r.seen_at,
            },
        )
        row["attempt_count"] = max(row["attempt_count"], r.attempt or 1)
        row["first_attempt_at"] = min(row["first_attempt_at"], r.seen_at)
        row["last_attempt_at"] = max(row["last_attempt_at"], r.seen_at)
    upsert = pg_insert(DuplicateAttempt).values([rows[key] for key in sorted(rows, key=str)])
    table = DuplicateAttempt.__table__.c
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=[table.vote_hash, table.law_id],
            set_={
                "attempt_count": sa.func.greatest(
                    table.attempt_count, upsert.excluded.attempt_count
                ),
                "first_attempt_at": sa.func.least(
                    table.first_attempt_at, upsert.excluded.first_attempt_at
                ),
                "last_attempt_at": sa.func.greatest(
                    table.last_attempt_at, upsert.excluded.last_attempt_at
                ),
            },
        )
    )


def _record_others(session: Session, rejections: Sequence[Rejection]) -> None:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rejections:
        key = (r.verdict.value, r.fingerprint)
        if key in rows:
            row = rows[key]
            row["occurrences"] += 1
            row["first_seen_at"] = min(row["first_seen_at"], r.seen_at)
            row["last_seen_at"] = max(row["last_seen_at"], r.seen_at)
            continue
        rows[key] = {
            "kind": r.verdict.value,
            "fingerprint": r.fingerprint,
            "reason": r.reason,
            "vote_hash": r.vote_hash,
            "law_id": r.law_id,
            "sample": r.sample,
            "occurrences": 1,
            "first_seen_at": r.seen_at,
            "last_seen_at": r.seen_at,
        }
    # Rows in key order: concurrent upserts then lock in the same order and cannot deadlock.
    upsert = pg_insert(ReviewRecord).values([rows[key] for key in sorted(rows)])
    table = ReviewRecord.__table__.c
    session.execute(
        upsert.on_conflict_do_update(
            constraint="uq_vote_review_kind_fingerprint",
            set_={
                "occurrences": table.occurrences + upsert.excluded.occurrences,
                "reason": upsert.excluded.reason,
                "first_seen_at": sa.func.least(table.first_seen_at, upsert.excluded.first_seen_at),
                "last_seen_at": sa.func.greatest(table.last_seen_at, upsert.excluded.last_seen_at),
            },
        )
    )
