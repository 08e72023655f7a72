"""Running the pipeline as an operator would, for the demo, the benchmark, the fault campaign
and the tests: worker and beat processes, a namespace to reset, polling with a deadline."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from votes_app.celery import AGGREGATION, DEAD, REVIEW, VALIDATION, app
from votes_app.models import DuplicateAttempt, ReviewRecord, VoteAudit, VoteResult
from votes_app.resources import get_engine, get_redis
from votes_app.status import queue_depths as queue_depths

REPO = Path(__file__).resolve().parent.parent
WORK_QUEUES = (VALIDATION, AGGREGATION, REVIEW)

T = TypeVar("T")


def run_votes(
    *args: str, check: bool = False, timeout: float | None = 120
) -> subprocess.CompletedProcess[str]:
    """The `votes` command of this checkout, as a user runs it, in this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "votes_app.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)


def voter_hash(voter: int, law_id: str) -> str:
    """SHA-256 of `nas|CODE|law_id`, as the front end computes it offline."""
    return hashlib.sha256(f"nas|{voter:09d}|{law_id}".encode()).hexdigest()


def alembic_config(url: str | None = None) -> Config:
    config = Config(str(REPO / "alembic.ini"))
    config.attributes["configure_logger"] = False
    if url:
        config.attributes["database_url"] = url
    return config


def reset_namespace() -> None:
    """Rebuild the configured database from the migrations; empty its Redis index and queues.

    Only for namespaces of their own (demo, benchmark, fault campaign): it destroys data.
    """
    with get_engine().begin() as connection:
        connection.execute(sa.text("DROP SCHEMA public CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA public"))
    command.upgrade(alembic_config(), "head")
    get_redis().flushdb()
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        for queue in (*WORK_QUEUES, DEAD):
            channel.queue_delete(queue)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Where the votes are, read in one transaction."""

    audited: int
    tallied: int
    uncounted: int
    duplicates: int  # sum of duplicate_attempts.attempt_count
    invalid: int  # occurrences of invalid (unknown voter) submissions
    malformed: int

    @classmethod
    def take(cls) -> Snapshot:
        with get_engine().begin() as connection:

            def scalar(query: sa.Select[Any]) -> int:
                return int(connection.scalar(query) or 0)

            def reviewed(kind: str) -> int:
                return scalar(
                    sa.select(sa.func.sum(ReviewRecord.occurrences)).where(
                        ReviewRecord.kind == kind
                    )
                )

            return cls(
                audited=scalar(sa.select(sa.func.count()).select_from(VoteAudit)),
                tallied=scalar(sa.select(sa.func.sum(VoteResult.oui_count + VoteResult.non_count))),
                uncounted=scalar(
                    sa.select(sa.func.count())
                    .select_from(VoteAudit)
                    .where(VoteAudit.tally_batch.is_(None))
                ),
                duplicates=scalar(sa.select(sa.func.sum(DuplicateAttempt.attempt_count))),
                invalid=reviewed("invalid"),
                malformed=reviewed("malformed"),
            )


class CeleryProcess:
    """A `celery -A votes_app ...` subprocess in its own process group, logging to a file."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "votes_app", *self.argv],
                cwd=REPO,
                env=self.env or os.environ.copy(),
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own group: Ctrl-C reaches the caller, which stops it in order.
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[int]:
        """Pids of its child processes (a worker's prefork pool)."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole group: main process and pool children, no goodbyes."""
        if self.process is not None and self.running():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM: a worker's warm shutdown; SIGKILL if it hangs."""
        if self.process is not None and self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Worker(CeleryProcess):
    """A worker on the work queues; `start()` returns once it answers a ping."""

    def __init__(
        self,
        log: Path,
        *,
        name: str,
        queues: Sequence[str] = WORK_QUEUES,
        concurrency: int = 2,
        loglevel: str = "INFO",
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        argv = ["worker", "-Q", ",".join(queues), "-c", str(concurrency), "-n", name]
        super().__init__([*argv, "--without-mingle", "--without-gossip", "-l", loglevel], log, env)

    def start(self) -> Self:
        super().start()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        prefix = self.name.split("@")[0] + "@"

        def answered() -> bool:
            if not self.running():
                raise RuntimeError(f"worker {self.name} exited; see {self.log}")
            replies = app.control.ping(timeout=0.5) or []
            return any(node.startswith(prefix) for reply in replies for node in reply)

        wait_for(answered, timeout=timeout, what=f"worker {self.name} to answer ping")


class Beat(CeleryProcess):
    def __init__(
        self, directory: Path, *, loglevel: str = "INFO", env: dict[str, str] | None = None
    ) -> None:
        schedule = directory / "beat-schedule"
        super().__init__(["beat", "-s", str(schedule), "-l", loglevel], directory / "beat.log", env)
