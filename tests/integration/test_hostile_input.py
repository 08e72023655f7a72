"""Hostile input against a real worker: every bad message recorded, none looping, none counted.

All the cases travel in one stream, each between valid votes, to one worker (and beat):
the module fixture sends them, waits for the pipeline to drain, and reads what became of
each; the tests then check it case by case. docs/HOSTILE_INPUT.md lists the same cases with
their expected outcome. The worker's log is checked too: one outcome line per vote, never
a citizen id, never a whole vote hash.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import sqlalchemy as sa
from kombu import Producer

from tests.support import (
    TIMESTAMP,
    load_roll,
    reset_broker,
    reset_database,
    reset_redis,
    results,
    voter_hash,
)
from votes_app.celery import AGGREGATION, DEAD, VALIDATION, VOTES_EXCHANGE, WORK_QUEUES, app
from votes_app.dead_letters import DeadLetter, deliveries_key, list_dead
from votes_app.redaction import escape, sample_of
from votes_app.resources import get_engine, get_redis
from votes_app.status import queue_depths
from votes_tools.counts import Snapshot
from votes_tools.faults.injectors import in_flight
from votes_tools.polling import wait_for
from votes_tools.processes import Beat, Worker

LAW = "law-001"
CITIZEN_ID = "CITIZEN-7f3a91e2"  # carried by every vote: must never reach a log line
FULL_HASH = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{64}(?![0-9a-fA-F])")
OUTCOME = re.compile(r"vote (?:recorded|refused) task=(\S+)")
VALID_AROUND_EACH = 2  # valid votes before and after each hostile message

Outcome = Literal["malformed", "invalid", "dead", "ignored"]

_hashes = (voter_hash(500_000 + n, LAW) for n in range(10_000))


def fresh_hash() -> str:
    """A well-formed hash nobody else in the stream uses: each case gets its own review row."""
    return next(_hashes)


def ballot(**changes: Any) -> dict[str, Any]:
    """A vote's keyword arguments, as a producer sends them, with `changes` applied
    (a value of None removes the field)."""
    kwargs: dict[str, Any] = {
        "vote_hash": fresh_hash(),
        "law_id": LAW,
        "choice": "oui",
        "timestamp": TIMESTAMP,
        "citizen_id": CITIZEN_ID,
    }
    kwargs.update(changes)
    return {name: value for name, value in kwargs.items() if value is not None}


@dataclass(frozen=True)
class Raw:
    """A message published as is, not through Celery: body, content type, headers."""

    body: bytes
    content_type: str = "application/json"
    celery_headers: dict[str, Any] | None = None
    with_id: bool = True  # Celery headers get the case's id as `id`


@dataclass(frozen=True)
class Case:
    name: str
    sent: str  # what is sent, for the table in docs/HOSTILE_INPUT.md
    outcome: Outcome
    reason: str  # part of the review reason, or of the reason `votes dead list` gives
    task: str = "votes_app.validate_vote"
    kwargs: dict[str, Any] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)
    raw: Raw | None = None
    queue: str = VALIDATION
    task_id: str | None = None  # the message's id, if not a fresh uuid
    eta: datetime | None = None


def validate_headers(**extra: Any) -> dict[str, Any]:
    return {"task": "votes_app.validate_vote", "lang": "py", **extra}


ON_ROLL_NEVER_VOTED = voter_hash(900_000, LAW)
# What a producer would like an operator to read in the worker's log, as a line of its own.
FORGED_LINE = "[2099-01-01_00:00:00,000:_WARNING/MainProcess]_every_vote_was_counted"
CHOICE_REASON = "choice: Input should be 'oui' or 'non'"
BODY_REASON = "task body is not [args, kwargs, options]"
# What a body that does not unpack into three parts gets: refused, the exception named.

CASES = [
    # --- not Celery messages at all, straight onto votes.validation
    Case(
        "non-json-bytes",
        "bytes that are not JSON (`\\xff\\xfe...`), content type JSON, no Celery headers",
        "dead",
        "undecodable message",
        raw=Raw(b"\xff\xfe\x00\x81 not json at all"),
    ),
    Case(
        "old-format-vote",
        "a vote in the old services' format: JSON with `vote_hash`, `citizen_id`, no Celery"
        " headers",
        "dead",
        "message without Celery task headers",
        raw=Raw(json.dumps(ballot()).encode()),
    ),
    Case(
        "raw-json-body",
        'a JSON object without Celery headers (`{"law_id": "law-001", "choice": "oui"}`)',
        "dead",
        "message without Celery task headers",
        raw=Raw(b'{"law_id": "law-001", "choice": "oui"}'),
    ),
    Case(
        "empty-body",
        "an empty body, no headers",
        "dead",
        "message without Celery task headers",
        raw=Raw(b""),
    ),
    Case(
        "pickle-content-type",
        "a Celery task message serialized with pickle (`application/x-python-serialize`)",
        "dead",
        "untrusted content of type pickle",
        raw=Raw(
            b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94.",
            content_type="application/x-python-serialize",
            celery_headers=validate_headers(),
        ),
    ),
    Case(
        "xml-content-type",
        "a Celery task message with content type `application/xml`",
        "dead",
        "untrusted content of type application/xml",
        raw=Raw(b"<vote/>", content_type="application/xml", celery_headers=validate_headers()),
    ),
    Case(
        "kwargs-not-a-mapping",
        "a Celery `validate_vote` message whose body is `[[], [1, 2], {}]`",
        "dead",
        BODY_REASON,
        raw=Raw(b"[[], [1, 2], {}]", celery_headers=validate_headers()),
    ),
    Case(
        "body-two-element-list",
        "a Celery `validate_vote` message whose body is `[1, 2]`",
        "dead",
        BODY_REASON,
        raw=Raw(b"[1, 2]", celery_headers=validate_headers()),
    ),
    Case(
        "body-object",
        'a Celery `validate_vote` message whose body is `{"vote_hash": "x"}`',
        "dead",
        BODY_REASON,
        raw=Raw(b'{"vote_hash": "x"}', celery_headers=validate_headers()),
    ),
    Case(
        "body-string",
        'a Celery `validate_vote` message whose body is `"a vote"`',
        "dead",
        BODY_REASON,
        raw=Raw(b'"a vote"', celery_headers=validate_headers()),
    ),
    Case(
        "args-object",
        'a Celery `validate_vote` message whose args are an object: `[{"x": 1}, {}, {}]`',
        "dead",
        BODY_REASON,
        raw=Raw(b'[{"x": 1}, {}, {}]', celery_headers=validate_headers()),
    ),
    Case(
        "no-id-header",
        "a Celery `validate_vote` message without the `id` header",
        "dead",
        "without the 'id' header",
        raw=Raw(b"[[], {}, {}]", celery_headers=validate_headers(), with_id=False),
    ),
    Case(
        "eta-not-a-date",
        "a Celery `validate_vote` message whose `eta` header is `not a date`",
        "dead",
        "invalid ETA value",
        raw=Raw(b"[[], {}, {}]", celery_headers=validate_headers(eta="not a date")),
    ),
    Case(
        "eta-next-year",
        "a valid vote due a year from now (`eta`): a worker would hold it in its prefetch",
        "dead",
        "beyond MAX_ETA_SECONDS",
        kwargs=ballot(),
        eta=datetime.now(UTC) + timedelta(days=365),
    ),
    # --- unknown tasks on our queues
    Case(
        "unknown-task-validation",
        "task `evil.steal_votes` on votes.validation",
        "dead",
        "unknown task 'evil.steal_votes'",
        task="evil.steal_votes",
        kwargs={"note": "harmless"},
    ),
    Case(
        "misspelt-task-name",
        "a vote sent as task `votes_app.validate_voter` (misspelt)",
        "dead",
        "unknown task 'votes_app.validate_voter'",
        task="votes_app.validate_voter",
        kwargs=ballot(),
    ),
    Case(
        "vote-sent-as-bulk",
        "one vote's arguments sent as task `votes_app.validate_votes` (the bulk task)",
        "dead",
        "a validate_votes message takes one argument, votes",
        task="votes_app.validate_votes",
        kwargs=ballot(),
    ),
    Case(
        "unknown-task-aggregation",
        "task `os.system` on votes.aggregation",
        "dead",
        "unknown task 'os.system'",
        task="os.system",
        args=["true"],
        queue=AGGREGATION,
    ),
    # --- forged internal messages
    Case(
        "forged-aggregate-malformed",
        '`aggregate_vote` with counts that are not counts (`{"law 001": {"oui": -1}}`)',
        "dead",
        "invalid message",
        task="votes_app.aggregate_vote",
        kwargs={"recorded": {"law 001": {"oui": -1}}},
    ),
    Case(
        "forged-aggregate-kwargs-list",
        "an `aggregate_vote` message whose body is `[[], [1], {}]`, without `user_id`"
        " (on votes.aggregation)",
        "dead",
        "internal task votes_app.aggregate_vote from an untrusted publisher (no user_id)",
        raw=Raw(b"[[], [1], {}]", celery_headers={"task": "votes_app.aggregate_vote"}),
        queue=AGGREGATION,
    ),
    Case(
        "forged-aggregate-unrecorded",
        "`aggregate_vote` claiming 5 `oui` votes on a law that were never recorded",
        "ignored",
        "",
        task="votes_app.aggregate_vote",
        kwargs={"recorded": {LAW: {"oui": 5}}},
    ),
    Case(
        "forged-review-garbage",
        "`record_review` with a rejection that is not one",
        "dead",
        "invalid message",
        task="votes_app.record_review",
        kwargs={"rejections": [{"verdict": "pardon"}]},
    ),
    # --- fields missing, surplus, of the wrong type
    Case(
        "missing-choice",
        "`choice` missing",
        "malformed",
        "choice: Field required",
        kwargs=ballot(choice=None),
    ),
    Case(
        "no-fields",
        "no arguments at all",
        "malformed",
        "vote_hash: Field required",
    ),
    Case(
        "extra-field",
        "an extra field `weight: 1000`",
        "malformed",
        "weight: unexpected field",
        kwargs=ballot(weight=1000),
    ),
    Case(
        "hash-wrong-type",
        "`vote_hash` as a number",
        "malformed",
        "vote_hash: must be 64 hexadecimal characters",
        kwargs=ballot(vote_hash=12345),
    ),
    Case(
        "choice-wrong-type",
        "`choice` as a list `['oui']`",
        "malformed",
        CHOICE_REASON,
        kwargs=ballot(choice=["oui"]),
    ),
    Case(
        "timestamp-wrong-type",
        "`timestamp` as a number (epoch seconds)",
        "malformed",
        "timestamp: must be an ISO 8601 string",
        kwargs=ballot(timestamp=1795820000),
    ),
    Case(
        "too-many-positional",
        "six positional arguments",
        "malformed",
        "too many positional arguments (6)",
        args=[fresh_hash(), LAW, "oui", TIMESTAMP, CITIZEN_ID, "surplus"],
    ),
    Case(
        "positional-and-keyword",
        "`vote_hash` both positionally and by keyword",
        "malformed",
        "vote_hash: given both positionally and by keyword",
        args=[fresh_hash()],
        kwargs={"vote_hash": fresh_hash(), "law_id": LAW, "choice": "oui"},
    ),
    # --- sizes
    Case(
        "payload-10kb",
        "a 10 KB `choice`",
        "malformed",
        CHOICE_REASON,
        kwargs=ballot(choice="oui" * 3_414),
    ),
    Case(
        "payload-100kb",
        "a 100 KB extra field (over the test workers' MAX_MESSAGE_BYTES of 64 KiB; RabbitMQ's"
        " max_message_size refuses larger ones to the producer)",
        "dead",
        "over MAX_MESSAGE_BYTES (65536)",
        kwargs=ballot(padding="x" * 100_000),
    ),
    Case(
        "citizen-id-huge",
        "a 30,000-character `citizen_id`",
        "malformed",
        "citizen_id: must be a string of at most 256 characters",
        kwargs=ballot(citizen_id=CITIZEN_ID * 1_875),
    ),
    Case(
        "citizen-id-number",
        "`citizen_id` as a 40-digit number",
        "malformed",
        "citizen_id: must be a string of at most 256 characters",
        kwargs=ballot(citizen_id=10**40),
    ),
    # --- choice
    Case(
        "choice-maybe", "`choice: maybe`", "malformed", CHOICE_REASON, kwargs=ballot(choice="maybe")
    ),
    Case(
        "choice-uppercase-space",
        "`choice: 'OUI '`",
        "malformed",
        CHOICE_REASON,
        kwargs=ballot(choice="OUI "),
    ),
    Case("choice-empty", "`choice: ''`", "malformed", CHOICE_REASON, kwargs=ballot(choice="")),
    # --- vote hash
    Case(
        "hash-too-short",
        "a 63-character hash",
        "malformed",
        "vote_hash: must be 64 hexadecimal characters",
        kwargs=ballot(vote_hash=fresh_hash()[:63]),
    ),
    Case(
        "hash-too-long",
        "a 65-character hash",
        "malformed",
        "vote_hash: must be 64 hexadecimal characters",
        kwargs=ballot(vote_hash=fresh_hash() + "a"),
    ),
    Case(
        "hash-not-hex",
        "64 characters, not hexadecimal (`g` × 64)",
        "malformed",
        "vote_hash: must be 64 hexadecimal characters",
        kwargs=ballot(vote_hash="g" * 64),
    ),
    Case(
        "hash-cyrillic-lookalike",
        "a hash with Cyrillic `а` (U+0430) in place of Latin `a`",
        "malformed",
        "vote_hash: must be 64 hexadecimal characters",
        kwargs=ballot(vote_hash="\u0430" + fresh_hash()[1:]),
    ),
    Case(
        "hash-fullwidth-digits",
        "a hash with fullwidth digits (`１２３...`)",
        "malformed",
        "vote_hash: must be 64 hexadecimal characters",
        kwargs=ballot(vote_hash="\uff11\uff12\uff13" + fresh_hash()[3:]),
    ),
    Case(
        "hash-not-on-roll",
        "a well-formed hash that is not on the voter roll",
        "invalid",
        "voter hash is not on the voter roll",
        kwargs=ballot(),
    ),
    # --- law id
    Case(
        "law-quotes",
        "`law_id: law-001'; DROP TABLE vote_audit; --`",
        "malformed",
        "law_id: must be 1-50 characters",
        kwargs=ballot(law_id="law-001'; DROP TABLE vote_audit; --"),
    ),
    Case(
        "law-sql-fragment",
        '`law_id: law" OR 1=1`',
        "malformed",
        "law_id: must be 1-50 characters",
        kwargs=ballot(law_id='law" OR 1=1'),
    ),
    Case(
        "law-control-characters",
        "`law_id` with NUL, newline and ESC characters",
        "malformed",
        "law_id: must be 1-50 characters",
        kwargs=ballot(law_id="law\x00-001\n\x1b[31m"),
    ),
    Case(
        "law-10000-characters",
        "a 10,000-character `law_id`",
        "malformed",
        "law_id: must be 1-50 characters",
        kwargs=ballot(law_id="L" * 10_000),
    ),
    # --- timestamp
    Case(
        "timestamp-not-a-date",
        "`timestamp: yesterday`",
        "malformed",
        "timestamp: must be an ISO 8601 date and time",
        kwargs=ballot(timestamp="yesterday"),
    ),
    Case(
        "timestamp-far-future",
        "`timestamp: 2999-01-01T00:00:00+00:00`",
        "malformed",
        "timestamp: is in the future",
        kwargs=ballot(timestamp="2999-01-01T00:00:00+00:00"),
    ),
    Case(
        "timestamp-naive",
        "`timestamp: 2026-11-27T09:30:00` (no zone)",
        "malformed",
        "timestamp: must carry a time zone",
        kwargs=ballot(timestamp="2026-11-27T09:30:00"),
    ),
    # --- log lines
    Case(
        "task-id-forging-a-log-line",
        "a vote from a hash not on the roll whose task id holds a newline, a line of its own,"
        " an ANSI escape and a NUL",
        "invalid",
        "voter hash is not on the voter roll",
        kwargs=ballot(),
        task_id=f"forged\n{FORGED_LINE}\x1b[2J\x00",
    ),
    Case(
        "field-name-forging-a-log-line",
        "an extra field whose name holds a newline, a line of its own and an ANSI escape",
        "malformed",
        "unexpected field",
        kwargs=ballot(**{f"x\n{FORGED_LINE}\x1b[2J": 1}),
    ),
]


@dataclass
class HostileRun:
    """What the module fixture sent and what became of it."""

    worker: Worker
    task_ids: dict[str, str]  # case name -> task id (or message id)
    valid: list[tuple[str, dict[str, Any]]]  # (task id, kwargs) of the valid votes
    expected_results: dict[tuple[str, str], int]
    review: list[Any] = field(default_factory=list)
    dead: dict[str, DeadLetter] = field(default_factory=dict)
    audited: set[str] = field(default_factory=set)
    results: dict[tuple[str, str], int] = field(default_factory=dict)
    left_in_flight: int = 0  # messages ready or unacknowledged in the work queues
    redelivered: dict[str, int] = field(default_factory=dict)


@pytest.fixture(autouse=True)
def clean_state() -> None:
    """The cases share one stream: the module fixture empties everything once, instead of
    the suite's per-test reset that would wipe the stream's results between cases."""


def publish_case(producer: Producer, case: Case, task_id: str) -> None:
    if case.raw is None:
        app.send_task(
            case.task,
            args=case.args,
            kwargs=case.kwargs,
            task_id=task_id,
            queue=case.queue if case.queue != VALIDATION else None,
            eta=case.eta,
        )
        return
    headers = None
    if case.raw.celery_headers is not None:
        headers = case.raw.celery_headers | ({"id": task_id} if case.raw.with_id else {})
    producer.publish(
        case.raw.body,
        routing_key=case.queue,
        content_type=case.raw.content_type,
        content_encoding="binary",
        headers=headers,
        message_id=task_id,
        delivery_mode=2,
    )


def review_rows() -> list[Any]:
    with get_engine().connect() as connection:
        return list(
            connection.execute(
                sa.text("SELECT kind, reason, sample, vote_hash, occurrences FROM vote_review")
            )
        )


@pytest.fixture(scope="module")
def stream(fresh_database: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileRun]:
    reset_database()
    reset_redis()
    reset_broker()
    directory = tmp_path_factory.mktemp("hostile")
    valid_hashes = [voter_hash(n, LAW) for n in range(2 * VALID_AROUND_EACH * len(CASES))]
    load_roll([*valid_hashes, ON_ROLL_NEVER_VOTED])
    worker = Worker(directory / "worker.log", name=f"hostile-{os.getpid()}@%h")
    beat = Beat(directory)
    with worker, beat:
        task_ids = {case.name: case.task_id or str(uuid.uuid4()) for case in CASES}
        valid: list[tuple[str, dict[str, Any]]] = []
        expected: Counter[tuple[str, str]] = Counter()
        votes = iter(valid_hashes)

        def send_valid(count: int) -> None:
            for _ in range(count):
                kwargs = ballot(vote_hash=next(votes), choice="oui" if len(valid) % 3 else "non")
                valid.append((app.send_task("votes_app.validate_vote", kwargs=kwargs).id, kwargs))
                expected[(LAW, kwargs["choice"])] += 1

        with app.connection_for_write() as connection:
            producer = Producer(connection.default_channel, exchange=VOTES_EXCHANGE)
            for case in CASES:
                send_valid(VALID_AROUND_EACH)
                publish_case(producer, case, task_ids[case.name])
                send_valid(VALID_AROUND_EACH)

        result = HostileRun(worker, task_ids, valid, dict(expected))
        wanted = Counter(case.outcome for case in CASES)

        def drained() -> bool:
            now = Snapshot.take()
            return (
                now.tallied == len(valid)
                and now.uncounted == 0
                and now.malformed >= wanted["malformed"]
                and now.invalid >= wanted["invalid"]
                and queue_depths()[DEAD] >= wanted["dead"]
            )

        # On a timeout the tests below say what is missing.
        with contextlib.suppress(TimeoutError):
            wait_for(drained, timeout=90, interval=0.5, what="the hostile stream to drain")
            # Beat adds a flush message every FLUSH_INTERVAL: without it, the work queues
            # must empty, unless something loops.
            beat.stop()
            wait_for(
                lambda: in_flight(WORK_QUEUES) == 0, timeout=30, interval=0.5, what="empty queues"
            )
        result.left_in_flight = in_flight(WORK_QUEUES)
        result.review = review_rows()
        with app.connection_for_write() as connection:
            result.dead = {letter.task_id: letter for letter in list_dead(connection, get_redis())}
        with get_engine().connect() as database:
            result.audited = set(
                database.scalars(sa.text("SELECT vote_hash FROM vote_audit")).all()
            )
        result.results = results()
        redis = get_redis()
        for task_id in [*task_ids.values(), *(task_id for task_id, _ in valid)]:
            count = redis.get(deliveries_key(task_id))
            if count is not None:
                result.redelivered[task_id] = int(str(count))
        yield result


@pytest.fixture(scope="module")
def worker_log(stream: HostileRun) -> str:
    return stream.worker.log.read_text(errors="replace")


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 20
    assert len({case.name for case in CASES}) == len(CASES)


def expected_outcome(case: Case) -> str:
    if case.outcome == "dead":
        return f"in `votes.dead`; `votes dead list` gives a reason containing `{case.reason}`"
    if case.outcome == "ignored":
        return "acknowledged and never counted: a flush counts ballots in PostgreSQL, not messages"
    return f"in `vote_review` as `{case.outcome}`, reason containing `{case.reason}`"


def markdown_table() -> str:
    """The table of docs/HOSTILE_INPUT.md, made from CASES."""
    lines = ["| # | case | sent | expected outcome |", "| --- | --- | --- | --- |"]
    for number, case in enumerate(CASES, start=1):
        cells = (str(number), f"`{case.name}`", case.sent, expected_outcome(case))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def test_the_documented_table_is_this_one() -> None:
    document = (Path(__file__).resolve().parents[2] / "docs" / "HOSTILE_INPUT.md").read_text()

    assert markdown_table() in document


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_message(stream: HostileRun, case: Case) -> None:
    task_id = stream.task_ids[case.name]
    hashes = {case.kwargs.get("vote_hash"), *case.args[:1]}
    assert not hashes & stream.audited, "a hostile message was recorded as a vote"
    assert stream.redelivered.get(task_id, 0) <= 1, "redelivered more than once"
    if case.outcome == "dead":
        assert task_id in stream.dead, f"not in votes.dead; dead: {sorted(stream.dead)}"
        letter = stream.dead[task_id]
        assert case.reason in letter.reason
        # Dead-lettered once, not bounced between queue and worker first.
        assert letter.deaths == 1
        assert CITIZEN_ID not in letter.preview
        return
    assert task_id not in stream.dead
    if case.outcome == "ignored":
        assert not [row for row in stream.review if row.vote_hash == ON_ROLL_NEVER_VOTED]
        return
    if case.outcome == "invalid":
        [row] = [row for row in stream.review if row.vote_hash == case.kwargs["vote_hash"]]
        assert (row.kind, row.occurrences) == ("invalid", 1)
        assert case.reason in row.reason
        return
    sample = sample_of(case.args, case.kwargs)
    rows = [row for row in stream.review if row.sample == sample]
    assert [(row.kind, row.occurrences) for row in rows] == [("malformed", 1)]
    assert case.reason in rows[0].reason
    assert CITIZEN_ID not in rows[0].sample


def test_the_worker_kept_running(stream: HostileRun) -> None:
    assert stream.worker.running()
    replies = app.control.ping(timeout=2) or []
    prefix = stream.worker.name.split("@")[0] + "@"
    assert any(node.startswith(prefix) for reply in replies for node in reply)


def test_the_valid_votes_around_them_are_counted(stream: HostileRun) -> None:
    assert stream.results == stream.expected_results
    assert {kwargs["vote_hash"] for _, kwargs in stream.valid} <= stream.audited
    assert len(stream.audited) == len(stream.valid)


def test_nothing_is_left_in_flight(stream: HostileRun) -> None:
    assert stream.left_in_flight == 0
    assert stream.redelivered == {}
    assert len(stream.dead) == sum(case.outcome == "dead" for case in CASES)


# --- logs ---------------------------------------------------------------------------------


def test_the_log_shows_no_citizen_id_and_no_whole_hash(worker_log: str) -> None:
    assert CITIZEN_ID not in worker_log
    assert FULL_HASH.findall(worker_log) == []


def test_no_producer_writes_a_log_line_of_its_own(worker_log: str) -> None:
    assert not [line for line in worker_log.splitlines() if FORGED_LINE in line.split(" ", 1)[0]]
    assert "\x1b" not in worker_log and "\x00" not in worker_log
    # Written out as escapes instead, in the lines of the votes that carried them.
    assert worker_log.count(escape(f"\n{FORGED_LINE}\x1b[2J")) == 2


def test_each_vote_has_one_outcome_line(stream: HostileRun, worker_log: str) -> None:
    outcomes = Counter(OUTCOME.findall(worker_log))
    # Task ids are logged with their control characters escaped.
    task_ids = [task_id for task_id, _ in stream.valid] + [
        escape(stream.task_ids[case.name])
        for case in CASES
        if case.task == "votes_app.validate_vote" and case.raw is None and case.outcome != "dead"
    ]
    assert {task_id: outcomes[task_id] for task_id in task_ids} == dict.fromkeys(task_ids, 1)
    # Outcome lines are INFO: an operator greps them by task id.
    for line in worker_log.splitlines():
        if OUTCOME.search(line):
            assert ": INFO/" in line
