"""End to end through a real worker and beat: each voter counted once, the rest reviewed."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
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
    run_votes,
    vote,
    voter_hash,
    wait_for,
    wait_until_drained,
    work_queues_empty,
)

LAWS = ("loi-21", "C.96", "projet_3")
CHOICES = ("oui", "non")
SEED = 20261127
CLOSING = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
ZONES = (UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30)))

Votes = list[dict[str, Any]]


def ballot_counts(engine: sa.Engine) -> dict[tuple[str, str], int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT law_id, choice, count(*) FROM ballots GROUP BY 1, 2")
        )
        return {(law_id, choice): count for law_id, choice, count in rows}


def fetch(engine: sa.Engine, query: str) -> set[tuple[Any, ...]]:
    with engine.connect() as connection:
        return {tuple(row) for row in connection.execute(sa.text(query))}


def cast_at(rng: random.Random) -> str:
    """A time in the day before the polls closed, in one of several time zones."""
    instant = CLOSING - timedelta(seconds=rng.randrange(86_400))
    return instant.astimezone(rng.choice(ZONES)).isoformat()


def referendum(rng: random.Random) -> tuple[list[str], Votes, Votes, Votes]:
    """The roll, one vote per voter on it, votes from unknown hashes, and second votes.

    900 voters on the roll, 850 of whom vote; 50 votes from hashes not on the roll; 100
    second votes (10% of the 1,000 messages). Some hashes come in upper case.
    """
    electorate = [(voter, rng.choice(LAWS)) for voter in range(900)]
    roll = [voter_hash(voter, law) for voter, law in electorate]
    first = [
        vote(voter_hash(voter, law), law, rng.choice(CHOICES), timestamp=cast_at(rng))
        for voter, law in rng.sample(electorate, 850)
    ]
    for ballot in first[::7]:
        ballot["vote_hash"] = ballot["vote_hash"].upper()
    strangers = [(100_000 + n, rng.choice(LAWS)) for n in range(50)]
    unknown = [vote(voter_hash(voter, law), law, rng.choice(CHOICES)) for voter, law in strangers]
    second = [
        vote(
            ballot["vote_hash"].upper() if n % 2 else ballot["vote_hash"].lower(),
            ballot["law_id"],
            rng.choice(CHOICES),
            timestamp=cast_at(rng),
        )
        for n, ballot in enumerate(rng.sample(first, 100))
    ]
    return roll, first, unknown, second


def test_each_voter_is_counted_once_and_the_rest_reviewed(
    worker: Worker, beat: Beat, engine: sa.Engine, redis_client: redis.Redis
) -> None:
    rng = random.Random(SEED)
    roll, first, unknown, second = referendum(rng)
    assert len(first) + len(unknown) + len(second) == 1_000
    load_roll(roll)

    first_wave = first + unknown
    rng.shuffle(first_wave)
    publish(first_wave)
    # Second votes only once every first vote is in, so that the first vote is the one counted.
    wait_for(lambda: count_rows("vote_audit") == len(first), timeout=120, what="the first votes")
    publish(second)

    expected_results = Counter((ballot["law_id"], ballot["choice"]) for ballot in first)

    def observe() -> dict[str, Any]:
        return {
            "results": results(),
            "audit rows": count_rows("vote_audit"),
            "duplicate rows": count_rows("duplicate_attempts"),
            "review rows": count_rows("vote_review"),
        }

    wait_until_drained(
        observe,
        {
            "results": dict(expected_results),
            "audit rows": len(first),
            "duplicate rows": len(second),
            "review rows": len(unknown),
        },
        timeout=120,
    )

    # Stored in lower case, with the instant the vote was cast; the choice apart, in ballots.
    assert fetch(engine, "SELECT vote_hash, law_id, voted_at FROM vote_audit") == {
        (ballot["vote_hash"].lower(), ballot["law_id"], datetime.fromisoformat(ballot["timestamp"]))
        for ballot in first
    }
    assert ballot_counts(engine) == expected_results
    assert fetch(engine, "SELECT law_id, total_votes FROM vote_statistics") == set(
        Counter(ballot["law_id"] for ballot in first).items()
    )

    repeated = {ballot["vote_hash"].lower(): ballot["law_id"] for ballot in second}
    assert fetch(engine, "SELECT vote_hash, law_id, attempt_count FROM duplicate_attempts") == {
        (vote_hash, law_id, 1) for vote_hash, law_id in repeated.items()
    }
    counters = {
        key: int(redis_client.get(key) or 0) for key in redis_client.scan_iter("duplicate_count:*")
    }
    assert counters == {f"duplicate_count:{vote_hash}": 1 for vote_hash in repeated}
    assert redis_client.smembers("voted_hashes") == {
        ballot["vote_hash"].lower() for ballot in first
    }

    reviewed = fetch(engine, "SELECT kind, vote_hash, law_id, occurrences FROM vote_review")
    assert reviewed == {("invalid", ballot["vote_hash"], ballot["law_id"], 1) for ballot in unknown}

    reconciled = run_votes("reconcile")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr


def test_reconcile_reports_drift(worker: Worker, beat: Beat, engine: sa.Engine) -> None:
    ballots = [vote(voter_hash(voter, LAWS[0]), LAWS[0], CHOICES[voter % 2]) for voter in range(6)]
    load_roll(ballot["vote_hash"] for ballot in ballots)
    publish(ballots)
    expected = dict(Counter((ballot["law_id"], ballot["choice"]) for ballot in ballots))
    wait_for(lambda: results() == expected and work_queues_empty(), what="six votes counted")
    assert run_votes("reconcile").returncode == 0

    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE vote_results SET non_count = non_count + 1 WHERE law_id = :law"),
            {"law": LAWS[0]},
        )
    drifted = run_votes("reconcile")
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert LAWS[0] in drifted.stdout


def text_columns_containing(engine: sa.Engine, needle: str) -> list[str]:
    """`table.column` of every column, of every table, whose text contains `needle`."""
    with engine.connect() as connection:
        columns = connection.execute(
            sa.text(
                "SELECT c.table_name, c.column_name FROM information_schema.columns c"
                " JOIN information_schema.tables t USING (table_schema, table_name)"
                " WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'"
            )
        ).all()
        assert columns, "no columns found: the search below would prove nothing"
        return [
            f"{table}.{column}"
            for table, column in columns
            if connection.scalar(
                sa.text(
                    f'SELECT EXISTS (SELECT 1 FROM "{table}"'
                    f' WHERE strpos(CAST("{column}" AS text), :needle) > 0)'
                ),
                {"needle": needle},
            )
        ]


def redis_text(client: redis.Redis) -> Iterator[str]:
    """Every key of the Redis index and every value stored under it (decoded: str)."""
    for key in client.scan_iter():
        kind = client.type(key)
        values: list[Any]
        if kind == "string":
            values = [client.get(key)]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "hash":
            values = [text for item in client.hgetall(key).items() for text in item]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        else:
            raise AssertionError(f"unexpected Redis type {kind!r} for {key!r}")
        yield from (str(text) for text in [key, *values])


def test_citizen_id_leaves_no_trace(
    worker: Worker, beat: Beat, engine: sa.Engine, redis_client: redis.Redis, tmp_path: Path
) -> None:
    from votes_app.celery import app

    law = LAWS[1]
    needle = uuid.uuid4().hex
    citizen = (f"citizen-{needle}-{n}" for n in range(100))
    voters = [voter_hash(voter, law) for voter in range(8)]
    stranger = voter_hash(99_999, law)
    load_roll(voters)
    keyword_votes = [
        vote(voters[0], law, "oui", citizen_id=next(citizen)),  # counted
        vote(voters[0], law, "non", citizen_id=next(citizen)),  # duplicate
        vote(stranger, law, "oui", citizen_id=next(citizen)),  # not on the roll
        vote(voters[1], law, "peut-être", citizen_id=next(citizen)),  # malformed choice
        vote(voters[2], law, "oui", citizen_id=next(citizen) * 10),  # citizen_id too long
        vote(voters[3], law, "oui", citizen_id=next(citizen), remark="hello"),  # extra field
    ]
    positional_votes = [
        [voters[4], law, "non", TIMESTAMP, next(citizen)],  # counted
        [voters[5], law, "non", "yesterday", next(citizen)],  # malformed timestamp
        [voters[6], law, "non", TIMESTAMP, next(citizen), "junk"],  # too many arguments
    ]
    publish(keyword_votes)
    for args in positional_votes:
        app.send_task("votes_app.validate_vote", args=args)

    def observe() -> dict[str, Any]:
        return {
            "audit": fetch(engine, "SELECT vote_hash FROM vote_audit"),
            "duplicate rows": count_rows("duplicate_attempts"),
            "review": Counter(
                kind for kind, _ in fetch(engine, "SELECT kind, id FROM vote_review")
            ),
            "results total": sum(results().values()),
        }

    wait_until_drained(
        observe,
        {
            "audit": {(voters[0],), (voters[4],)},
            "duplicate rows": 1,
            "review": Counter({"malformed": 5, "invalid": 1}),
            "results total": 2,
        },
        timeout=60,
    )

    # The searches find what is stored, so finding no citizen_id means something.
    assert "vote_audit.vote_hash" in text_columns_containing(engine, voters[4])
    assert "vote_review.sample" in text_columns_containing(engine, voters[5])
    assert text_columns_containing(engine, needle) == []

    stored = list(redis_text(redis_client))
    assert voters[0] in stored
    assert [text for text in stored if needle in text] == []

    logs = {path.name: path.read_text(errors="replace") for path in tmp_path.glob("*.log")}
    assert "vote recorded" in logs["worker.log"]
    assert [name for name, text in logs.items() if needle in text] == []
