"""Malformed messages as real tasks: reviewed once with a reason, never counted or looped."""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis
import sqlalchemy as sa

from tests.support import (
    TIMESTAMP,
    Beat,
    Worker,
    count_rows,
    load_roll,
    publish,
    results,
    vote,
    voter_hash,
    wait_for,
    work_queues_empty,
)
from votes_app.status import queue_depths

LAW = "loi-21"
LARGE = 50_000  # characters: under the test workers' MAX_MESSAGE_BYTES (64 KiB)


def send(*, args: list[Any] | None = None, kwargs: dict[str, Any] | None = None) -> str:
    """Send one `validate_vote` task as any producer could; its task id."""
    from votes_app.celery import app

    return str(app.send_task("votes_app.validate_vote", args=args, kwargs=kwargs).id)


def quoted(text: str) -> str:
    """How a string shows in a review sample (JSON)."""
    return json.dumps(text)


@dataclass(frozen=True)
class Bad:
    """A malformed submission, the field its reason must name, and what identifies its row."""

    label: str
    names: tuple[str, ...]
    marker: str  # text that only this submission's review sample contains
    kwargs: dict[str, Any] = field(default_factory=dict)
    args: list[Any] = field(default_factory=list)


def bad_submissions() -> list[Bad]:
    def on_roll(n: int) -> str:
        return voter_hash(1_000 + n, LAW)

    sql = "L1'; DROP TABLE vote_audit; --"
    return [
        Bad("short hash", ("vote_hash",), quoted("abc123"), vote("abc123", LAW, "oui")),
        Bad("non-hex hash", ("vote_hash",), quoted("z" * 64), vote("z" * 64, LAW, "oui")),
        Bad(
            "hash not a string",
            ("vote_hash",),
            # Shown by its shape: only a hash, law and timestamp given as strings show as sent.
            '"vote_hash": "<int>"',
            {**vote("", LAW, "oui"), "vote_hash": 87654321},
        ),
        Bad("unknown choice", ("choice",), quoted(on_roll(1)), vote(on_roll(1), LAW, "blanc")),
        Bad(
            "null choice",
            ("choice",),
            quoted(on_roll(2)),
            {**vote(on_roll(2), LAW, ""), "choice": None},
        ),
        Bad("SQL in law id", ("law_id",), quoted(sql), vote(on_roll(3), sql, "oui")),
        Bad("quotes in law id", ("law_id",), quoted('loi"21'), vote(on_roll(4), 'loi"21', "non")),
        Bad("law id too long", ("law_id",), quoted("L" * 51), vote(on_roll(5), "L" * 51, "non")),
        Bad(
            "timestamp not a date",
            ("timestamp",),
            quoted("not a date"),
            vote(on_roll(6), LAW, "oui", timestamp="not a date"),
        ),
        Bad(
            "naive timestamp",
            ("timestamp",),
            quoted("2026-11-27T09:30:00"),
            vote(on_roll(7), LAW, "oui", timestamp="2026-11-27T09:30:00"),
        ),
        Bad(
            "timestamp in the future",
            ("timestamp",),
            quoted("2099-01-01T00:00:00+00:00"),
            vote(on_roll(8), LAW, "oui", timestamp="2099-01-01T00:00:00+00:00"),
        ),
        Bad(
            "missing choice",
            ("choice",),
            quoted(on_roll(9)),
            {"vote_hash": on_roll(9), "law_id": LAW, "timestamp": TIMESTAMP},
        ),
        Bad("no fields at all", ("vote_hash", "law_id", "choice", "timestamp"), "{}", {}),
        Bad(
            "extra field",
            ("ballot_box",),
            quoted(on_roll(10)),
            vote(on_roll(10), LAW, "oui", ballot_box="7"),
        ),
        Bad(
            "too many positional arguments",
            ("positional",),
            quoted(on_roll(11)),
            args=[on_roll(11), LAW, "oui", TIMESTAMP, None, "junk"],
        ),
        Bad(
            "field given twice",
            ("vote_hash",),
            quoted(on_roll(12)),
            {"vote_hash": on_roll(12), "law_id": LAW, "choice": "non", "timestamp": TIMESTAMP},
            args=[on_roll(12)],
        ),
        Bad(
            "50 KB law id",
            ("law_id",),
            quoted("x" * 900)[:-1],
            vote(on_roll(13), "x" * LARGE, "oui"),
        ),
        Bad(
            "50 KB extra field",
            ("comment",),
            f'"comment": "<str of {LARGE} characters>"',
            vote(on_roll(14), LAW, "oui", comment="y" * LARGE),
        ),
        Bad(
            "50 KB citizen_id",
            ("citizen_id",),
            quoted(on_roll(15)),
            vote(on_roll(15), LAW, "oui", citizen_id="c" * LARGE),
        ),
    ]


def test_malformed_votes_are_reviewed_once_and_never_counted(
    worker: Worker, beat: Beat, engine: sa.Engine, redis_client: redis.Redis
) -> None:
    bad = bad_submissions()
    rng = random.Random(len(bad))
    valid = [vote(voter_hash(n, LAW), LAW, rng.choice(("oui", "non"))) for n in range(len(bad) + 1)]
    load_roll(
        [ballot["vote_hash"] for ballot in valid]
        + [voter_hash(1_000 + n, LAW) for n in range(len(bad))]
    )

    bad_ids = {}
    for ballot, submission in zip(valid, bad, strict=False):
        publish([ballot])
        bad_ids[submission.label] = send(args=submission.args, kwargs=submission.kwargs)
    # The worker survived all of it: it answers, and a vote sent last is counted.
    worker.wait_ready(timeout=10)
    publish(valid[-1:])

    def observe() -> dict[str, Any]:
        return {
            "results": results(),
            "audit rows": count_rows("vote_audit"),
            "review rows": count_rows("vote_review"),
        }

    expected = {
        "results": dict(Counter((LAW, ballot["choice"]) for ballot in valid)),
        "audit rows": len(valid),
        "review rows": len(bad),
    }
    try:
        wait_for(
            lambda: observe() == expected and work_queues_empty(),
            timeout=60,
            what="valid votes counted, malformed ones reviewed",
        )
    except AssertionError:
        assert observe() == expected
        raise

    with engine.connect() as connection:
        audited = set(connection.scalars(sa.text("SELECT vote_hash FROM vote_audit")))
        reviews = connection.execute(
            sa.text("SELECT kind, reason, sample, occurrences, vote_hash, law_id FROM vote_review")
        ).all()
    assert audited == {ballot["vote_hash"] for ballot in valid}
    assert count_rows("duplicate_attempts") == 0
    assert queue_depths()["votes.dead"] == 0  # reviewed, not given up on
    assert redis_client.smembers("voted_hashes") == audited

    problems = []
    for submission in bad:
        rows = [row for row in reviews if submission.marker in row.sample]
        if len(rows) != 1:
            problems.append(f"{submission.label}: {len(rows)} review rows")
            continue
        [row] = rows
        missing = [name for name in submission.names if name not in row.reason]
        if row.kind != "malformed" or row.occurrences != 1 or missing:
            problems.append(f"{submission.label}: {row.kind} x{row.occurrences} {row.reason!r}")
        if row.vote_hash is not None or row.law_id is not None:
            problems.append(f"{submission.label}: unvalidated hash or law stored")
    assert problems == []

    log = worker.log.read_text(errors="replace")
    for label, task_id in bad_ids.items():
        # One outcome line per message, found by its task id; handled once, never retried.
        lines = [line for line in log.splitlines() if f"task={task_id} " in line]
        assert len(lines) == 1, label
        assert "vote refused" in lines[0] and "verdict=malformed" in lines[0], label
        assert not re.search("retry", lines[0], re.IGNORECASE), label
    assert "retrying" not in log


def dead_letters() -> list[dict[str, Any]]:
    """Take the messages out of votes.dead: headers of each."""
    from votes_app.celery import DEAD_QUEUE, app

    taken = []
    with app.connection_for_write() as connection:
        queue = DEAD_QUEUE.bind(connection.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            taken.append(dict(message.headers))
    return taken


def test_messages_that_cannot_be_processed_land_in_dead_letters_once(
    worker: Worker, beat: Beat
) -> None:
    from votes_app.celery import DEAD, app

    garbage = app.send_task("votes_app.aggregate_vote", kwargs={"votes": [{"x": 1}]})
    unknown = app.send_task("votes_app.no_such_task", kwargs={"vote_hash": "0" * 64})
    wait_for(lambda: queue_depths()[DEAD] == 2, timeout=30, what="two dead letters")

    # A vote after them flows through; meanwhile nothing came back from votes.dead.
    vote_hash = voter_hash(1, LAW)
    load_roll([vote_hash])
    publish([vote(vote_hash, LAW, "non")])
    wait_for(
        lambda: results() == {(LAW, "non"): 1} and work_queues_empty(),
        timeout=30,
        what="a valid vote counted after the garbage",
    )
    assert queue_depths()[DEAD] == 2
    log = worker.log.read_text(errors="replace")
    assert log.count(f"votes_app.aggregate_vote[{garbage.id}] received") == 1
    assert count_rows("vote_audit") == 1

    letters = {headers["id"]: headers for headers in dead_letters()}
    assert set(letters) == {garbage.id, unknown.id}
    origins = {task_id: headers["x-death"][0]["queue"] for task_id, headers in letters.items()}
    assert origins == {garbage.id: "votes.aggregation", unknown.id: "votes.validation"}
    # Dead-lettered once each: not requeued and rejected again in a loop.
    assert [death["count"] for headers in letters.values() for death in headers["x-death"]] == [
        1,
        1,
    ]


def publish_raw(body: bytes, task_id: str) -> None:
    """A `validate_vote` message whose body no JSON decoder can read."""
    from votes_app.celery import VALIDATION, VOTES_EXCHANGE, app

    with app.connection_for_write() as connection:
        connection.Producer().publish(
            body,
            exchange=VOTES_EXCHANGE,
            routing_key=VALIDATION,
            headers={"task": "votes_app.validate_vote", "id": task_id, "lang": "py"},
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
        )


def test_undecodable_message_lands_in_dead_letters(worker: Worker, beat: Beat) -> None:
    from votes_app.celery import DEAD

    task_id = str(uuid.uuid4())
    publish_raw(b'{"vote_hash": "unterminated', task_id)
    # Messages are taken in order: once a vote sent after it is counted, it was handled.
    vote_hash = voter_hash(1, LAW)
    load_roll([vote_hash])
    publish([vote(vote_hash, LAW, "oui")])
    wait_for(
        lambda: results() == {(LAW, "oui"): 1} and work_queues_empty(),
        timeout=30,
        what="a valid vote counted after the undecodable message",
    )
    assert worker.process is not None and worker.process.poll() is None
    assert queue_depths()[DEAD] == 1


def test_extra_field_named_self_is_reviewed(worker: Worker, beat: Beat) -> None:
    from votes_app.celery import DEAD

    vote_hash = voter_hash(1, LAW)
    load_roll([vote_hash])
    send(kwargs=vote(vote_hash, LAW, "oui", self="me"))
    wait_for(
        lambda: work_queues_empty() and (count_rows("vote_review") or queue_depths()[DEAD]),
        timeout=30,
        what="the submission to be reviewed or dead-lettered",
    )
    with_reason = "WHERE kind = 'malformed' AND reason LIKE 'self:%'"
    assert count_rows("vote_review", with_reason) == 1
    assert count_rows("vote_audit") == 0


def test_a_resent_message_is_reviewed_once(worker: Worker, beat: Beat) -> None:
    from votes_app.celery import app

    stranger = voter_hash(99_999, LAW)
    load_roll([voter_hash(1, LAW)])
    submissions = [vote(stranger, LAW, "oui"), vote(voter_hash(2, LAW), LAW, "blanc")]
    task_ids = []
    for kwargs in submissions:
        task_id = str(uuid.uuid4())
        task_ids.append(task_id)
        for _ in range(2):  # the producer resends after a lost confirm, as it is told to
            app.send_task("votes_app.validate_vote", kwargs=kwargs, task_id=task_id)

    def all_reviewed() -> bool:
        log = worker.log.read_text()
        judged = all(log.count(f"vote refused task={task_id} ") == 2 for task_id in task_ids)
        # Every review message the worker took has been handled.
        taken = len(re.findall(r"votes_app\.record_review\[\S+\] received", log))
        done = len(re.findall(r"votes_app\.record_review\[\S+\] succeeded in ", log))
        return judged and taken >= 1 and done == taken and work_queues_empty()

    # Each delivery is judged and its refusal sent on to record_review.
    wait_for(all_reviewed, timeout=30, what="every delivery judged and reviewed")
    assert count_rows("vote_review") == 2
    assert count_rows("vote_review", "WHERE occurrences = 1") == 2


def test_timestamp_before_year_one_is_refused(
    worker: Worker, beat: Beat, engine: sa.Engine
) -> None:
    vote_hash = voter_hash(1, LAW)
    load_roll([vote_hash])
    send(kwargs=vote(vote_hash, LAW, "oui", timestamp="0001-01-01T00:00:00+14:00"))
    wait_for(
        lambda: (count_rows("vote_review") or count_rows("vote_audit")) and work_queues_empty(),
        timeout=30,
        what="the vote to be reviewed or recorded",
    )
    refused = "WHERE kind = 'malformed' AND reason LIKE 'timestamp:%'"
    assert count_rows("vote_review", refused) == 1
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT vote_hash, voted_at FROM vote_audit")).all() == []
