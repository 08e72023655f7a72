"""One voter hash sent 50 times to two worker processes at once: one vote, 49 duplicates."""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from tests.support import (
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
    work_queues_empty,
)

LAW = "loi-21"
COPIES = 50
# The task logger's format: "[time: LEVEL/ForkPoolWorker-N] votes_app.validate_vote[id]: ..."
TASK_LINE = re.compile(r"/(?P<process>ForkPoolWorker-\d+)\] votes_app\.validate_vote\[")


@pytest.fixture(params=["one worker, two processes", "two workers, one process each"])
def contenders(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Worker]]:
    """Workers that will take the copies at the same time; not started yet.

    Batches of one: a batch is claimed by one process, so larger ones could put every copy
    in the same process and test nothing but the order inside a pipeline.
    """
    env = {**os.environ, "VALIDATE_BATCH_SIZE": "1"}
    if request.param == "one worker, two processes":
        yield [Worker(tmp_path / "worker.log", concurrency=2, env=env)]
    else:
        yield [Worker(tmp_path / f"worker-{n}.log", concurrency=1, env=env) for n in (1, 2)]


@contextmanager
def running(workers: list[Worker]) -> Iterator[None]:
    """Start the workers side by side, wait until all answer; stop them side by side."""
    try:
        for worker in workers:
            super(Worker, worker).start()  # launch only; readiness is awaited below
        for worker in workers:
            worker.wait_ready()
        yield
    finally:
        for worker in workers:
            if worker.process and worker.process.poll() is None:
                worker.process.terminate()
        for worker in workers:
            worker.stop()


def test_one_vote_per_hash_under_contention(
    contenders: list[Worker], beat: Beat, engine: sa.Engine, redis_client: redis.Redis
) -> None:
    vote_hash = voter_hash(1, LAW)
    load_roll([vote_hash, voter_hash(2, LAW)])
    rng = random.Random(COPIES)
    copies = [vote(vote_hash, LAW, rng.choice(("oui", "non"))) for _ in range(COPIES)]

    if len(contenders) == 1:
        # Queued before the worker starts: its prefetch feeds both processes at once.
        task_ids = publish(copies)
    with running(contenders):
        if len(contenders) > 1:
            # Both consuming before the copies arrive: RabbitMQ deals them out in turn.
            task_ids = publish(copies)
        choice_of = dict(zip(task_ids, (copy["choice"] for copy in copies), strict=True))

        def observe() -> dict[str, Any]:
            return {
                "audit rows": count_rows("vote_audit"),
                "votes counted": sum(results().values()),
                "duplicate_count": redis_client.get(f"duplicate_count:{vote_hash}"),
                "attempts recorded": count_rows(
                    "duplicate_attempts", f"WHERE attempt_count = {COPIES - 1}"
                ),
            }

        expected = {
            "audit rows": 1,
            "votes counted": 1,
            "duplicate_count": str(COPIES - 1),
            "attempts recorded": 1,
        }
        try:
            wait_for(
                lambda: observe() == expected and work_queues_empty(),
                timeout=60,
                what="one vote counted, 49 duplicates recorded, queues drained",
            )
        except AssertionError:
            assert observe() == expected
            raise

        with engine.connect() as connection:
            audit = connection.execute(sa.text("SELECT vote_hash, law_id, task_id FROM vote_audit"))
            [(recorded_hash, law_id, winner)] = audit.all()
            duplicates = connection.execute(
                sa.text("SELECT vote_hash, law_id, attempt_count FROM duplicate_attempts")
            ).all()
        assert (recorded_hash, law_id) == (vote_hash, LAW)
        assert winner in choice_of
        assert results() == {(LAW, choice_of[winner]): 1}
        assert [tuple(row) for row in duplicates] == [(vote_hash, LAW, COPIES - 1)]
        assert redis_client.smembers("voted_hashes") == {vote_hash}
        assert count_rows("vote_review") == 0
        assert run_votes("reconcile").returncode == 0

    logs = [worker.log.read_text() for worker in contenders]
    assert sum(log.count("vote recorded") for log in logs) == 1
    refused = re.compile(r"vote refused task=\S+ verdict=duplicate")
    assert sum(len(refused.findall(log)) for log in logs) == COPIES - 1
    # Both processes took copies: the claim really was contested.
    takers = {
        (worker.log, match["process"])
        for worker, log in zip(contenders, logs, strict=True)
        for match in TASK_LINE.finditer(log)
    }
    assert len(takers) == 2, takers
