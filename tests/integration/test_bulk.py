"""Bulk intake: `validate_votes` carries many votes in one message, and every guarantee holds
per vote: counted once however often the message comes, a bad vote spoils only itself."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.support import (
    Beat,
    Worker,
    count_rows,
    load_roll,
    register_laws,
    results,
    run_votes,
    scrape,
    value,
    vote,
    voter_hash,
    wait_for,
    work_queues_empty,
)
from votes_app.celery import app
from votes_app.dead_letters import list_dead
from votes_app.producer import VotePublisher
from votes_app.resources import get_engine, get_owner_engine, get_redis
from votes_tools.processes import free_port

LAW = "loi-bulk"


def ballots(count: int, tag: str, *, on_roll: bool = True) -> list[dict[str, Any]]:
    hashes = [voter_hash(n, LAW, tag) for n in range(count)]
    if on_roll:
        load_roll(hashes)
    else:
        register_laws(LAW)
    return [
        vote(h, LAW, "oui" if n % 3 else "non") | {"vote_id": f"{tag}-{n}"}
        for n, h in enumerate(hashes)
    ]


def send_bulk(votes: list[Any], message_id: str | None = None) -> str:
    return str(
        app.send_task("votes_app.validate_votes", kwargs={"votes": votes}, task_id=message_id).id
    )


def tallied() -> int:
    return sum(results().values())


def dead_reasons() -> dict[str, str]:
    with app.connection_for_write() as connection:
        return {d.task_id: d.reason for d in list_dead(connection, get_redis())}


def test_a_bulk_message_counts_each_vote_once_and_refuses_only_the_bad_ones(
    worker: Worker, beat: Beat
) -> None:
    good = ballots(40, "good")
    strangers = ballots(3, "stranger", on_roll=False)
    bad: list[Any] = [
        {**good[0], "vote_id": "bad-choice", "choice": "peut-être"},
        {**good[1], "vote_id": None},  # no usable id
        "not an object",
        {**good[2], "vote_id": "big", "comment": "x" * 10_000},  # one oversized vote
        {**good[3]},  # good[3]'s id again in the same message
    ]
    message = send_bulk([*good[:20], *bad, *strangers, *good[20:]])

    wait_for(lambda: tallied() == 40, timeout=60, what="the 40 good votes tallied")
    wait_for(
        lambda: count_rows("vote_review") == 5 + 3,
        timeout=30,
        what="the bad votes and the strangers reviewed",
    )
    assert count_rows("vote_audit") == 40
    assert results() == Counter((LAW, b["choice"]) for b in good)
    malformed = [
        reason for (reason,) in rows("SELECT reason FROM vote_review WHERE kind = 'malformed'")
    ]
    for expected in (
        "choice: Input should be",
        "vote_id: must be a string",
        "must be an object",
        "comment: unexpected field",
        "vote_id: repeated in this message",
    ):
        assert [r for r in malformed if expected in r], (expected, malformed)
    assert count_rows("vote_review", "WHERE kind = 'invalid'") == 3
    assert message not in dead_reasons()

    # A message that is not a list of votes, or too long a one, goes to votes.dead whole.
    refused = {
        send_bulk({"votes": good}): "votes: must be a list",  # type: ignore[arg-type]
        send_bulk([{"vote_id": str(n)} for n in range(501)]): "501 in one message, over",
    }
    wait_for(lambda: set(refused) <= set(dead_reasons()), timeout=30, what="both in votes.dead")
    reasons = dead_reasons()
    for refused_id, reason in refused.items():
        assert reason in reasons[refused_id]
    assert count_rows("vote_audit") == 40


def test_a_bulk_message_sent_again_counts_nothing_twice_and_publishers_group_votes(
    worker: Worker, beat: Beat
) -> None:
    votes = ballots(50, "again")
    message = send_bulk(votes)
    wait_for(lambda: tallied() == 50, timeout=60, what="the first copy counted")
    # A producer that never saw the confirm sends it again; a resend may also be a new
    # message holding the same votes.
    send_bulk(votes, message)
    send_bulk(list(reversed(votes)))
    wait_for(
        lambda: count_rows("vote_audit") == 50 and work_queues_empty(),
        timeout=60,
        what="the copies judged",
    )
    assert tallied() == 50
    assert count_rows("duplicate_attempts") == 0
    assert count_rows("vote_review") == 0

    # The producer's side: VotePublisher groups votes into messages of max_batch.
    grouped = ballots(1_000, "grouped")
    with VotePublisher(window=4, max_batch=200, linger_ms=10_000) as publisher:
        ids = [publisher.publish({k: v for k, v in b.items() if k != "vote_id"}) for b in grouped]
        # 1,000 votes, 5 messages of 200: the last went out full, nothing lingers.
        assert publisher.messages_sent == 5
        lingering = publisher.publish(ballots(1, "lingering")[0])
        assert publisher.messages_sent == 5  # it waits for more, up to linger_ms
    assert publisher.messages_sent == 6  # leaving the block sent it and awaited its confirm
    assert len(set(ids)) == 1_000 and lingering not in ids
    wait_for(lambda: tallied() == 1_051, timeout=60, what="every grouped vote tallied")


def rows(query: str) -> list[Any]:
    with get_engine().connect() as connection:
        return list(connection.execute(sa.text(query)))


def test_votes_submit_sends_a_file_in_bulk_and_again_without_counting_twice(
    worker: Worker, beat: Beat, tmp_path: Path
) -> None:
    votes = ballots(30, "file")
    lines = [
        json.dumps(b if n % 2 else {k: v for k, v in b.items() if k != "vote_id"})
        for n, b in enumerate(votes)
    ]
    source = tmp_path / "votes.jsonl"
    source.write_text("\n".join([*lines[:10], "not json", *lines[10:]]) + "\n")

    first = run_votes("submit", "--file", str(source), "--max-batch", "8")
    assert first.returncode == 1  # one line is not a vote: said, and the rest published
    assert "published 30 votes in 4 messages" in first.stdout
    assert "skipped 1 lines" in first.stderr
    wait_for(lambda: tallied() == 30, timeout=60, what="the file's votes tallied")
    # The votes with an id are recognised when the file is sent again; the others are
    # second votes of the same voters, refused as duplicates.
    run_votes("submit", "--file", str(source), "--max-batch", "8")
    wait_for(
        lambda: count_rows("duplicate_attempts") == 15 and work_queues_empty(),
        timeout=60,
        what="the second sending judged",
    )
    assert tallied() == 30


# Raised by PostgreSQL for one law's ballots only: an error of the vote's doing, not of the
# infrastructure's (SQLSTATE P0001, not retried), as a vote no check foresaw would cause.
POISON_LAW = "loi-poison"
POISON_TRIGGER = f"""
CREATE FUNCTION poisoned_ballot() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a ballot this database cannot take';
END $$;
CREATE TRIGGER poisoned_ballot BEFORE INSERT ON ballots
    FOR EACH ROW WHEN (NEW.law_id = '{POISON_LAW}') EXECUTE FUNCTION poisoned_ballot();
"""


def test_a_vote_that_fails_in_a_bulk_message_goes_on_alone_and_the_others_are_counted(
    tmp_path: Path, beat: Beat
) -> None:
    good = ballots(30, "beside")
    poison_hash = voter_hash(0, POISON_LAW, "poison")
    load_roll([poison_hash])
    poison = vote(poison_hash, POISON_LAW, "oui") | {"vote_id": "poison-0"}
    port = free_port()
    metered = Worker(tmp_path / "worker.log", env={**os.environ, "METRICS_PORT": str(port)})
    with get_owner_engine().begin() as connection:
        connection.execute(sa.text(POISON_TRIGGER))
    try:
        with metered:
            message = send_bulk([*good[:15], poison, *good[15:]])

            # The batch fails, then the message alone, then each of its votes alone: the
            # poisoned one is sent on as a validate_vote message of its own, and fails there.
            wait_for(
                lambda: "poison-0" in dead_reasons(),
                timeout=60,
                what="the poisoned vote in votes.dead under its vote id",
            )
            wait_for(lambda: tallied() == 30, timeout=60, what="the 30 others tallied")
            wait_for(work_queues_empty, timeout=30, what="the work queues drained")
            samples = scrape(port)
    finally:
        with get_owner_engine().begin() as connection:
            connection.execute(sa.text("DROP TRIGGER poisoned_ballot ON ballots"))
            connection.execute(sa.text("DROP FUNCTION poisoned_ballot()"))

    assert "cannot take" in dead_reasons()["poison-0"]
    assert message not in dead_reasons()  # the bulk message itself was settled
    assert count_rows("vote_audit") == 30
    assert count_rows("duplicate_attempts") == 0  # judged again, none taken for a second vote
    assert count_rows("vote_review") == 0
    # The votes settled one by one are counted in the metrics as any others are.
    assert value(samples, "validation_votes_processed_total", status="valid") == 30
