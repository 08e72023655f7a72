"""The vote message: the one place where input from producers is judged."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from votes_app.redaction import escape

HASH_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
LAW_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,50}")
CITIZEN_ID_MAX_LENGTH = 256
# Votes are cast now: anything this old is a producer's bug, not a vote.
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)

# Positional order of `validate_vote(vote_hash, law_id, choice, timestamp, citizen_id=None)`.
FIELD_ORDER = ("vote_hash", "law_id", "choice", "timestamp", "citizen_id")

Choice = Literal["oui", "non"]


class Vote(BaseModel):
    """A vote as the contract defines it; anything else is malformed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vote_hash: str
    law_id: str
    choice: Choice
    timestamp: datetime
    # Accepted for compatibility with the old message format; never stored, never logged.
    citizen_id: str | None = Field(default=None, repr=False, exclude=True)

    @field_validator("vote_hash", mode="before")
    @classmethod
    def _hash_is_64_hex(cls, value: object) -> str:
        if not isinstance(value, str) or not HASH_PATTERN.fullmatch(value):
            raise ValueError("must be 64 hexadecimal characters (SHA-256)")
        return value.lower()

    @field_validator("law_id", mode="before")
    @classmethod
    def _law_id_is_safe(cls, value: object) -> str:
        if not isinstance(value, str) or not LAW_ID_PATTERN.fullmatch(value):
            raise ValueError("must be 1-50 characters of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp_is_iso_with_zone(cls, value: object) -> datetime:
        # Celery's JSON turns a Python producer's datetime into a tagged string and back.
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError("must be an ISO 8601 date and time with a time zone") from None
        else:
            raise ValueError("must be an ISO 8601 string with a time zone")
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise ValueError("must carry a time zone (e.g. 2026-11-27T09:30:00Z)")
        # Year 1 at +14:00 is year 0 in UTC: PostgreSQL stores it, Python cannot read it back.
        try:
            in_utc = parsed.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"must not be before {EARLIEST_TIMESTAMP:%Y-%m-%d}") from None
        if in_utc < EARLIEST_TIMESTAMP:
            raise ValueError(f"must not be before {EARLIEST_TIMESTAMP:%Y-%m-%d}")
        return parsed

    @field_validator("citizen_id", mode="before")
    @classmethod
    def _citizen_id_is_bounded(cls, value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > CITIZEN_ID_MAX_LENGTH:
            raise ValueError(f"must be a string of at most {CITIZEN_ID_MAX_LENGTH} characters")
        return value


class MalformedVote(ValueError):
    """A submission that can never become a vote; `reason` says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Submission:
    """One `validate_vote` message as it arrived: its task id and raw arguments."""

    task_id: str
    args: Sequence[Any]
    kwargs: Mapping[str, Any]


def parse_vote(submission: Submission, *, now: datetime, max_clock_skew: timedelta) -> Vote:
    """Judge a submission; raise `MalformedVote` with a readable reason if it is not a vote."""
    if len(submission.args) > len(FIELD_ORDER):
        raise MalformedVote(f"too many positional arguments ({len(submission.args)})")
    fields = dict(zip(FIELD_ORDER, submission.args, strict=False))
    for name in submission.kwargs:
        if name in fields:
            raise MalformedVote(f"{name}: given both positionally and by keyword")
    fields.update(submission.kwargs)
    # pydantic refuses a name that UTF-8 cannot carry (a lone surrogate, from JSON's "\ud800")
    # without saying which: such a name is an unexpected field, said here.
    unnamed = sorted(escape(name) for name in fields if not _encodable(name))
    problems = [f"{name}: unexpected field" for name in unnamed]
    try:
        vote = Vote.model_validate({k: v for k, v in fields.items() if _encodable(k)})
    except ValidationError as exc:
        problems.insert(0, describe_errors(exc))
    if problems:
        raise MalformedVote("; ".join(problems))
    if vote.timestamp - now > max_clock_skew:
        raise MalformedVote("timestamp: is in the future")
    return vote


def _encodable(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def describe_errors(exc: ValidationError) -> str:
    """`field: problem; field: problem` — short, stable, and free of the offending values.

    A field's name is the producer's: control characters and unpaired surrogates are written
    as escapes (`\\x00`, `\\ud800`), so that the reason can be stored (PostgreSQL's text
    refuses NUL; UTF-8 cannot carry a lone surrogate) and logged on a line of its own.
    """
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or "message"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unexpected field"
        parts.append(f"{field}: {message}")
    return escape("; ".join(parts))


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CastVote:
    """A well-formed vote and the task that carries it."""

    task_id: str
    vote: Vote

    @property
    def key(self) -> tuple[str, str]:
        return self.vote.vote_hash, self.task_id
