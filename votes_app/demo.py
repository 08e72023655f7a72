"""`votes demo`: the whole pipeline on a namespace of its own, from voter roll to reconcile.

Run as `python -m votes_app.demo VOTERS LAWS SECOND_VOTES UNKNOWN TIMEOUT` with the demo's
DATABASE_URL, REDIS_URL and CELERY_BROKER_URL in the environment (`votes demo` does that).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from votes_app.ballot_box import load_voters
from votes_app.cli import (
    console,
    progress_bar,
    read_hashes,
    read_results,
    results_table,
    run_reconcile,
)
from votes_app.config import get_settings
from votes_app.harness import Beat, Snapshot, Worker, reset_namespace, voter_hash, wait_for
from votes_app.producer import ParallelPublisher
from votes_app.resources import get_redis


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
        vote_hash = voter_hash(voter, law_id)
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


def run_demo(scenario: Scenario) -> int:
    settings = get_settings()
    console.print(f"[bold]votes_app demo[/bold] (flush every {settings.flush_interval_seconds}s)")
    reset_namespace()
    ballots = make_ballots(scenario)
    target = (len(ballots.first), len(ballots.first), len(ballots.second), len(ballots.unknown))

    with tempfile.TemporaryDirectory(prefix="votes-demo-") as tmp:
        directory = Path(tmp)
        roll_file = directory / "voter-roll.txt"
        roll_file.write_text("\n".join(ballots.roll) + "\n")
        with roll_file.open() as source, progress_bar() as progress:
            task = progress.add_task("loading the voter roll", total=len(ballots.roll))
            for sent, _ in load_voters(get_redis(), read_hashes(source, [])):
                progress.update(task, advance=sent)

        worker = Worker(directory / "worker.log", name=f"demo-{os.getpid()}@%h", loglevel="WARNING")
        with worker, Beat(directory, loglevel="WARNING"):
            console.print(f"worker and beat started; logs in {directory}")
            messages = ballots.first + ballots.second + ballots.unknown
            with ParallelPublisher() as producers, progress_bar() as progress:
                started = time.monotonic()
                task = progress.add_task("publishing votes", total=len(messages))
                # Second votes go out after every first vote, so that they are the ones refused.
                for phase in (ballots.first, ballots.second + ballots.unknown):
                    producers.publish(phase, on_progress=lambda n: progress.update(task, advance=n))
                published = time.monotonic()

            with progress_bar() as progress:
                task = progress.add_task("waiting for tallies", total=len(ballots.first))

                def complete() -> bool:
                    now = Snapshot.take()
                    progress.update(task, completed=now.tallied)
                    return (now.audited, now.tallied, now.duplicates, now.invalid) == target

                try:
                    wait_for(complete, timeout=scenario.timeout, interval=0.2, what="the tallies")
                except TimeoutError:
                    console.print(f"[red]timed out[/red]: {Snapshot.take()}, expected {target}")
                    return 1
            finished = time.monotonic()
        console.print("worker and beat stopped")

    rows = read_results()
    console.print(results_table(rows, title="Results"))
    counted = {(row.law_id, c): getattr(row, f"{c}_count") for row in rows for c in ("oui", "non")}
    exact = all(counted.get(key, 0) == n for key, n in ballots.expected.items())
    elapsed = finished - started
    console.print(
        f"votes sent {len(messages):,}: accepted {target[0]:,}, "
        f"duplicates refused {target[2]:,}, unknown voters refused {target[3]:,}"
    )
    console.print(
        f"published in {published - started:.1f}s; all tallied after {elapsed:.1f}s: "
        f"{len(messages) / elapsed:,.0f} votes/s end to end"
    )
    verdict = (
        "tallies match the votes sent" if exact else "[red]tallies differ from the votes sent[/red]"
    )
    console.print(verdict)
    status = run_reconcile()
    return 0 if exact and status == 0 else 1


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    voters, laws, second, unknown, timeout = sys.argv[1:6]
    sys.exit(run_demo(Scenario(int(voters), int(laws), int(second), int(unknown), float(timeout))))
