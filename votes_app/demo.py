"""`votes demo`: the whole pipeline on a namespace of its own, from voter roll to reconcile.

Run as `python -m votes_app.demo VOTERS LAWS SECOND_VOTES UNKNOWN TIMEOUT` with the demo's
DATABASE_URL, REDIS_URL and CELERY_BROKER_URL in the environment (`votes demo` does that).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from votes_app.ballot_box import load_voters
from votes_app.celery import AGGREGATION, DEAD, REVIEW, VALIDATION, app
from votes_app.cli import (
    console,
    progress_bar,
    read_hashes,
    read_results,
    results_table,
    run_reconcile,
)
from votes_app.config import get_settings
from votes_app.models import DuplicateAttempt, ReviewRecord, VoteAudit
from votes_app.producer import publish_in_parallel
from votes_app.resources import get_engine, get_redis, session_scope

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Scenario:
    voters: int = 10_000
    laws: int = 2
    second_votes: int = 500
    unknown: int = 200
    timeout: float = 300.0


@dataclass(frozen=True, slots=True)
class Ballots:
    roll: list[str]
    first: list[dict[str, str]]
    second: list[dict[str, str]]
    unknown: list[dict[str, str]]
    expected: dict[tuple[str, str], int]


def make_ballots(scenario: Scenario, seed: int = 2026) -> Ballots:
    """A voter roll and the votes to send; `expected` counts the first vote of each voter."""
    rng = random.Random(seed)
    laws = [f"law-{n:03d}" for n in range(1, scenario.laws + 1)]
    stamp = datetime.now(UTC).isoformat()
    roll, first = [], []
    expected: dict[tuple[str, str], int] = {}
    for voter in range(scenario.voters):
        law_id = laws[voter % len(laws)]
        vote_hash = hashlib.sha256(f"nas|{voter:09d}|{law_id}".encode()).hexdigest()
        choice = rng.choice(("oui", "non"))
        roll.append(vote_hash)
        first.append(
            {"vote_hash": vote_hash, "law_id": law_id, "choice": choice, "timestamp": stamp}
        )
        expected[(law_id, choice)] = expected.get((law_id, choice), 0) + 1
    second = [
        {**ballot, "choice": "non" if ballot["choice"] == "oui" else "oui"}
        for ballot in rng.sample(first, scenario.second_votes)
    ]
    unknown = [
        {
            "vote_hash": hashlib.sha256(f"not-on-the-roll|{n}".encode()).hexdigest(),
            "law_id": laws[n % len(laws)],
            "choice": "oui",
            "timestamp": stamp,
        }
        for n in range(scenario.unknown)
    ]
    return Ballots(roll, first, second, unknown, expected)


def reset_namespace() -> None:
    """Rebuild the demo database from the migrations; empty its Redis index and queues."""
    with get_engine().begin() as connection:
        connection.execute(sa.text("DROP SCHEMA public CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA public"))
    config = Config(str(REPO / "alembic.ini"))
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
    get_redis().flushdb()
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        for queue in (VALIDATION, AGGREGATION, REVIEW, DEAD):
            channel.queue_delete(queue)


@contextmanager
def background(directory: Path) -> Iterator[None]:
    """A worker on all three queues and beat, stopped on the way out whatever happens."""
    processes = []
    for name, argv in (
        (
            "worker",
            [
                "worker",
                "-Q",
                f"{VALIDATION},{AGGREGATION},{REVIEW}",
                "-c",
                "2",
                "-n",
                f"demo-{os.getpid()}@%h",
                "-l",
                "WARNING",
            ],
        ),
        ("beat", ["beat", "-s", str(directory / "beat-schedule"), "-l", "WARNING"]),
    ):
        log = (directory / f"{name}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "votes_app", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
            )
        )
    console.print(f"worker and beat started; logs in {directory}")
    try:
        yield
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        console.print("worker and beat stopped")


def wait_for_worker(deadline: float) -> None:
    while not app.control.ping(timeout=1.0):
        if time.monotonic() > deadline:
            raise TimeoutError("no worker answered within the deadline")


def outcome_counts() -> tuple[int, int, int, int]:
    """(audited, tallied, duplicates reviewed, invalid reviewed)."""
    with session_scope() as session:
        audited = session.scalar(sa.select(sa.func.count()).select_from(VoteAudit)) or 0
        tallied = sum(row.total_votes for row in read_results())
        duplicates = (
            session.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(DuplicateAttempt.attempt_count), 0))
            )
            or 0
        )
        invalid = (
            session.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(ReviewRecord.occurrences), 0)).where(
                    ReviewRecord.kind == "invalid"
                )
            )
            or 0
        )
    return int(audited), int(tallied), int(duplicates), int(invalid)


def run_demo(scenario: Scenario) -> int:
    settings = get_settings()
    console.print(f"[bold]votes_app demo[/bold] (flush every {settings.flush_interval_seconds}s)")
    reset_namespace()
    ballots = make_ballots(scenario)

    with tempfile.TemporaryDirectory(prefix="votes-demo-") as tmp:
        directory = Path(tmp)
        roll_file = directory / "voter-roll.txt"
        roll_file.write_text("\n".join(ballots.roll) + "\n")
        with roll_file.open() as source, progress_bar() as progress:
            task = progress.add_task("loading the voter roll", total=len(ballots.roll))
            for sent, _ in load_voters(get_redis(), read_hashes(source, [])):
                progress.update(task, advance=sent)

        with background(directory):
            wait_for_worker(time.monotonic() + 60)
            messages = ballots.first + ballots.second + ballots.unknown
            started = time.monotonic()
            with progress_bar() as progress:
                task = progress.add_task("publishing votes", total=len(messages))
                # Second votes go out after every first vote, so that they are the ones refused.
                for phase in (ballots.first, ballots.second + ballots.unknown):
                    publish_in_parallel(
                        phase, on_progress=lambda n: progress.update(task, advance=n)
                    )
            published = time.monotonic()

            target = (
                len(ballots.first),
                len(ballots.first),
                len(ballots.second),
                len(ballots.unknown),
            )
            deadline = started + scenario.timeout
            with progress_bar() as progress:
                task = progress.add_task("waiting for tallies", total=len(ballots.first))
                while (counts := outcome_counts()) != target:
                    progress.update(task, completed=counts[1])
                    if time.monotonic() > deadline:
                        console.print(
                            "[red]timed out[/red]: (audited, tallied, duplicates, invalid)"
                            f" = {counts}, expected {target}"
                        )
                        return 1
                    time.sleep(0.2)
                progress.update(task, completed=counts[1])
            finished = time.monotonic()

    rows = read_results()
    console.print(results_table(rows, title="Results"))
    counted = {(row.law_id, c): getattr(row, f"{c}_count") for row in rows for c in ("oui", "non")}
    exact = all(counted.get(key, 0) == n for key, n in ballots.expected.items())
    elapsed = finished - started
    console.print(
        f"votes sent {len(messages):,}: accepted {counts[0]:,}, "
        f"duplicates refused {counts[2]:,}, unknown voters refused {counts[3]:,}"
    )
    console.print(
        f"published in {published - started:.1f}s; all tallied after {elapsed:.1f}s: "
        f"{len(messages) / elapsed:,.0f} votes/s end to end"
    )
    console.print(
        "tallies match the votes sent" if exact else "[red]tallies differ from the votes sent[/red]"
    )
    status = run_reconcile()
    return 0 if exact and status == 0 else 1


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    voters, laws, second, unknown, timeout = sys.argv[1:6]
    sys.exit(run_demo(Scenario(int(voters), int(laws), int(second), int(unknown), float(timeout))))
