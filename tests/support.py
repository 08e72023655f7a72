"""Helpers for the integration tests: real worker and beat processes, data, polling."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
ALL_QUEUES = ("votes.validation", "votes.aggregation", "votes.review")
TIMESTAMP = "2026-11-27T09:30:00+00:00"

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)


# --- state --------------------------------------------------------------------------------


def migrate_fresh_database(url: str) -> None:
    """Drop and re-create the database, then build it the one supported way: Alembic."""
    target = make_url(url)
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        name = target.database
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    alembic_upgrade(url, "head")


def alembic_config(url: str) -> Config:
    config = Config(str(REPO / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    return config


def alembic_upgrade(url: str, revision: str) -> None:
    command.upgrade(alembic_config(url), revision)


def alembic_downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def reset_database() -> None:
    from votes_app.models import Base
    from votes_app.resources import get_engine

    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with get_engine().begin() as connection:
        connection.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY"))


def reset_redis() -> None:
    from votes_app.resources import get_redis

    get_redis().flushdb()


def reset_broker() -> None:
    """Delete our queues (and anything in them); the next worker or publisher re-declares."""
    from votes_app.celery import DEAD, app

    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        for name in (*ALL_QUEUES, DEAD):
            channel.queue_delete(name)


def queue_depths() -> dict[str, int]:
    """Ready messages per queue (declared passively; a missing queue counts as empty)."""
    from amqp.exceptions import NotFound

    from votes_app.celery import DEAD, app

    depths = {}
    with app.connection_for_write() as connection:
        for name in (*ALL_QUEUES, DEAD):
            channel: Any = connection.channel()
            try:
                _, depths[name], _ = channel.queue_declare(name, passive=True)
            except NotFound:
                depths[name] = 0
            finally:
                if channel.is_open:
                    channel.close()
    return depths


# --- data -----------------------------------------------------------------------------


def voter_hash(voter: int, law_id: str) -> str:
    """SHA-256 of `nas|CODE|law_id`, as the front end computes it offline."""
    return hashlib.sha256(f"nas|{voter:09d}|{law_id}".encode()).hexdigest()


def vote(vote_hash: str, law_id: str, choice: str, **extra: Any) -> dict[str, Any]:
    return {
        "vote_hash": vote_hash,
        "law_id": law_id,
        "choice": choice,
        "timestamp": TIMESTAMP,
        **extra,
    }


def load_roll(hashes: Iterable[str]) -> int:
    from votes_app.ballot_box import load_voters
    from votes_app.resources import get_redis

    return sum(new for _, new in load_voters(get_redis(), hashes))


def publish(votes: Iterable[dict[str, Any]]) -> list[str]:
    """Publish one `validate_vote` task per vote, as a producer would; the task ids."""
    from votes_app.celery import app

    return [app.send_task("votes_app.validate_vote", kwargs=kwargs).id for kwargs in votes]


def count_rows(table: str, where: str = "") -> int:
    from votes_app.resources import get_engine

    with get_engine().connect() as connection:
        return int(connection.scalar(sa.text(f"SELECT count(*) FROM {table} {where}")) or 0)


def results() -> dict[tuple[str, str], int]:
    """`vote_results` as `(law_id, choice) -> count`, zero counts left out."""
    from votes_app.resources import get_engine

    with get_engine().connect() as connection:
        rows = connection.execute(sa.text("SELECT law_id, oui_count, non_count FROM vote_results"))
        counts = {}
        for law_id, oui, non in rows:
            counts.update({(law_id, "oui"): oui, (law_id, "non"): non})
    return {key: value for key, value in counts.items() if value}


def run_votes(
    *args: str, check: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the `votes` command as a user would, with the test environment."""
    return subprocess.run(
        [sys.executable, "-m", "votes_app.cli", *args],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


# --- processes ------------------------------------------------------------------------


class _Process:
    """A celery subprocess in its own process group, logging to a file."""

    argv: Sequence[str]

    def __init__(self, log: Path) -> None:
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "votes_app", *self.argv],
                cwd=REPO,
                env=os.environ.copy(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL the whole group: main process and pool children, no goodbyes."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM: warm shutdown, finishing what it holds; SIGKILL if it hangs."""
        if self.process and self.process.poll() is None:
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


class Worker(_Process):
    _count = 0

    def __init__(
        self, log: Path, *, queues: Sequence[str] = ALL_QUEUES, concurrency: int = 2
    ) -> None:
        super().__init__(log)
        Worker._count += 1
        self.name = f"test{Worker._count}-{os.getpid()}@%h"
        self.argv = [
            "worker",
            "-Q",
            ",".join(queues),
            "-c",
            str(concurrency),
            "-n",
            self.name,
            "--without-mingle",
            "--without-gossip",
            "-l",
            "INFO",
        ]

    def start(self) -> Self:
        super().start()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        from votes_app.celery import app

        prefix = self.name.split("@")[0] + "@"

        def answered() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early; see {self.log}")
            replies = app.control.ping(timeout=0.5) or []
            return any(name.startswith(prefix) for reply in replies for name in reply)

        wait_for(answered, timeout=timeout, what=f"worker {self.name} to answer ping")

    def children(self) -> list[int]:
        """Pids of the prefork pool processes."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(pid) for pid in out.split()]


class Beat(_Process):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory / "beat.log")
        self.argv = ["beat", "-s", str(directory / "beat-schedule"), "-l", "INFO"]
