"""Redis faults an operator meets, against a real worker: a full Redis (`maxmemory`,
`noeviction`) and a failover in progress (a replica answering). Votes wait and are recorded
once the fault clears; none goes to votes.dead.

Each test runs its own `redis-server` (never the shared one's configuration) and points
its worker's REDIS_URL at it.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support import (
    Worker,
    count_rows,
    publish,
    register_laws,
    vote,
    voter_hash,
    wait_for,
)
from votes_app.ballot_box import load_rolls
from votes_app.celery import DEAD
from votes_app.status import queue_depths

LAW = "law-001"
VOTES = 10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """A Redis of this test's own, as production runs it (`noeviction`), without disk."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
        + ["--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, decode_responses=True)
    try:
        wait_for(client.ping, timeout=10, what="the private redis-server to answer")
        yield client
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)


def fill(client: redis.Redis) -> None:
    """Leave Redis a little room, then fill it with junk until it answers OOM."""
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 256 * 1024)
    with pytest.raises(redis.OutOfMemoryError):
        for n in range(1_000_000):
            client.set(f"filler:{n}", "x" * 100)


def start(client: redis.Redis, tmp_path: Path) -> tuple[Worker, list[str]]:
    """The roll loaded on `client`, a worker using it; the hashes of the roll."""
    hashes = [voter_hash(n, LAW, tag="redis-fault") for n in range(VOTES)]
    register_laws(LAW)
    for _ in load_rolls(client, [(LAW, h) for h in hashes]):
        pass
    port = client.connection_pool.connection_kwargs["port"]
    worker = Worker(
        tmp_path / "worker.log", env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    )
    return worker, hashes


def send(hashes: list[str]) -> None:
    """The valid votes, and one malformed: its review waits for Redis too."""
    publish([vote(h, LAW, "oui") for h in hashes] + [vote(hashes[0], LAW, "maybe")])


def wait_for_retry_or_dead(worker: Worker, error: str) -> None:
    """Until the worker has retried the votes on `error` (or, wrongly, sent them to
    votes.dead)."""
    retried = f"votes after {error}"  # batching.settle: "retrying N votes after ..."

    def log() -> str:
        return worker.log.read_text(errors="replace")

    wait_for(
        lambda: retried in log() or "to votes.dead" in log(),
        timeout=30,
        what=f"a retry on {error}",
    )
    dead = [line for line in log().splitlines() if "to votes.dead" in line]
    assert not dead, "sent to votes.dead instead of being retried:\n" + "\n".join(dead)


def wait_recorded() -> None:
    wait_for(
        lambda: count_rows("vote_audit") == VOTES and count_rows("vote_review") == 1,
        timeout=30,
        what="the votes to be recorded and the malformed one reviewed",
    )
    assert queue_depths()[DEAD] == 0


def test_a_full_redis_holds_votes_until_it_has_room(
    private_redis: redis.Redis, tmp_path: Path
) -> None:
    worker, hashes = start(private_redis, tmp_path)
    fill(private_redis)
    with worker:
        send(hashes)
        wait_for_retry_or_dead(worker, "OutOfMemoryError")
        assert count_rows("vote_audit") == 0

        private_redis.config_set("maxmemory", 0)  # the operator gives it room

        wait_recorded()


def test_a_read_only_replica_holds_votes_until_failover_ends(
    private_redis: redis.Redis, tmp_path: Path
) -> None:
    worker, hashes = start(private_redis, tmp_path)
    # A replica of a master that is gone: it answers reads, refuses writes (READONLY).
    private_redis.replicaof("127.0.0.1", free_port())
    with worker:
        send(hashes)
        wait_for_retry_or_dead(worker, "ReadOnlyError")
        assert count_rows("vote_audit") == 0

        private_redis.replicaof("NO", "ONE")  # promoted

        wait_recorded()
