"""`votes demo`: an election on a namespace of its own, from registering the laws to an
independent recount of their exports.

`votes demo` runs `python -m votes_tools.demo VOTERS LAWS SECOND_VOTES UNKNOWN TIMEOUT` on
the demo's namespace (see `votes_tools.namespace`).
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from votes_app import tallies
from votes_app.config import get_settings
from votes_app.console import console, progress_bar
from votes_app.resources import session_scope
from votes_tools import namespace
from votes_tools.counts import Snapshot
from votes_tools.polling import wait_for
from votes_tools.processes import REPO, Beat, Worker, exit_on_sigterm, run, run_votes
from votes_tools.publishing import ParallelPublisher
from votes_tools.workload import UNKNOWN_LAW, Strays, Workload, make_strays, make_workload, voter

# The auditor's recount, which the demo runs on each export as an auditor would.
RECOUNT = REPO / "docs" / "recount.py"
STRAYS = 150  # votes that must not count: before the window, unknown law, another law's hash


# No slots here: the command's option defaults are read from the class attributes.
@dataclass(frozen=True)
class Scenario:
    voters: int = 10_000
    laws: int = 2
    second_votes: int = 500
    unknown: int = 200
    timeout: float = 300.0


@click.command()
@click.option("--voters", "voter_count", default=Scenario.voters, show_default=True)
@click.option(
    "--laws", "law_count", default=Scenario.laws, show_default=True, type=click.IntRange(min=2)
)
@click.option("--second-votes", default=Scenario.second_votes, show_default=True)
@click.option("--unknown", default=Scenario.unknown, show_default=True)
@click.option(
    "--timeout", default=Scenario.timeout, show_default=True, help="Seconds to wait for the count."
)
def demo(voter_count: int, law_count: int, second_votes: int, unknown: int, timeout: float) -> None:
    """Run an election on a namespace of its own: register the laws, load their rolls, vote
    (strays included), close, certify, verify, export and recount; exit 1 if a step fails.

    The demo wipes and uses DEMO_DATABASE_URL (default database votes_demo), DEMO_REDIS_URL
    (Redis index 1) and DEMO_BROKER_URL (vhost votes_demo), never the application's own.
    """
    scenario = [str(voter_count), str(law_count), str(second_votes), str(unknown), str(timeout)]
    namespace.DEMO.run("votes_tools.demo", scenario)


def operator(*args: str) -> bool:
    """Run `votes ARGS` as an operator types it, show what it printed; True if it exited 0."""
    console.print(f"[bold cyan]$ votes {shlex.join(args)}[/bold cyan]", soft_wrap=True)
    done = run_votes(*args, timeout=600)
    for output in (done.stdout, done.stderr):
        if output.strip():
            console.print(output.rstrip(), markup=False, highlight=False, soft_wrap=True)
    return done.returncode == 0


def recount(directory: Path, roll: Path) -> bool:
    """The auditor's recount of an export (docs/recount.py), shown like a command."""
    console.print(
        f"[bold cyan]$ python docs/recount.py {directory} {roll}[/bold cyan]", soft_wrap=True
    )
    done = run([sys.executable, str(RECOUNT), str(directory), str(roll)], timeout=600)
    console.print(
        (done.stdout + done.stderr).rstrip(), markup=False, highlight=False, soft_wrap=True
    )
    return done.returncode == 0


def write_roll(directory: Path, workload: Workload, strays: Strays) -> Path:
    """The voter roll as its issuer hands it over: `law_id,hash` lines, with a header."""
    roll = directory / "voter-roll.csv"
    with roll.open("w") as out:
        out.write("law_id,hash\n")
        for law, vote_hash in [*workload.roll, *strays.roll]:
            out.write(f"{law},{vote_hash}\n")
    return roll


def run_demo(scenario: Scenario) -> int:
    settings = get_settings()
    console.print(f"[bold]votes_app demo[/bold] (flush every {settings.flush_interval_seconds}s)")
    namespace.reset()
    os.environ.setdefault("COLUMNS", str(console.width))  # the commands' tables, as wide
    workload = make_workload(
        scenario.voters,
        second_votes=scenario.second_votes,
        unknown=scenario.unknown,
        laws=scenario.laws,
        tag="demo",
    )
    opens = datetime.now(UTC) - timedelta(hours=1)
    strays = make_strays(workload.laws, STRAYS, opens_at=opens, tag="demo-strays")
    messages = workload.messages + strays.messages
    refusals = dict(strays.expected)
    refusals["invalid"] += len(workload.unknown)
    steps: dict[str, bool] = {}

    with tempfile.TemporaryDirectory(prefix="votes-demo-") as tmp:
        directory = Path(tmp)
        console.rule("Before the polls open: the laws and their rolls")
        for number, law in enumerate(workload.laws, start=1):
            steps[f"register {law}"] = operator(
                "laws", "add", law, "--title", f"Question {number} of the demo",
                "--opens", opens.isoformat(timespec="seconds"),
                "--closes", (opens + timedelta(days=1)).isoformat(timespec="seconds"),
            )  # fmt: skip
        roll = write_roll(directory, workload, strays)
        steps["load the rolls"] = operator("voters", "load", str(roll))
        if not all(steps.values()):
            return verdict(steps)

        console.rule("Voting")
        worker = Worker(directory / "worker.log", loglevel="WARNING")
        with worker, Beat(directory, loglevel="WARNING"):
            console.print(f"worker and beat started; logs in {directory}")
            console.print(
                f"sending {len(messages):,} votes: {len(workload.roll):,} voters, "
                f"{len(workload.second):,} second votes, {len(workload.unknown):,} hashes on no"
                f" roll, {strays.expected['outside_window']} cast before the polls opened,"
                f" {strays.expected['unknown_law']} for law {UNKNOWN_LAW!r} (not registered),"
                f" {strays.expected['invalid']} with another law's hash"
            )
            with progress_bar() as progress:
                task = progress.add_task("publishing votes", total=len(messages))
                publication = ParallelPublisher().publish(
                    messages,
                    owner=voter,
                    on_progress=lambda n: progress.update(task, completed=n),
                )
            target = (len(workload.roll), len(workload.roll), len(workload.second), refusals)
            if not wait_for_the_count(target, scenario.timeout):
                return 1
            finished = time.time()
            elapsed = finished - publication.first
            console.print(
                f"published in {publication.seconds:.1f}s; all counted after {elapsed:.1f}s:"
                f" {len(messages) / elapsed:,.0f} votes/s end to end"
            )
            steps["results while open (per choice withheld)"] = operator("results")
            console.rule("The polls close")
            for law in workload.laws:
                steps[f"close {law}"] = operator("close", law, "--now")
        console.print("worker and beat stopped")

        console.rule("Certification and audit")
        for law in workload.laws:
            steps[f"certify {law}"] = operator("certify", law)
        steps["verify"] = operator("verify")
        for law in workload.laws:
            export = directory / f"export-{law}"
            steps[f"export {law}"] = operator("export", law, str(export))
            law_roll = directory / f"roll-{law}.txt"
            law_roll.write_text("".join(f"{h}\n" for ll, h in [*workload.roll, *strays.roll]
                                        if ll == law))  # fmt: skip
            steps[f"recount {law} from its export"] = recount(export, law_roll)
        steps["reconcile"] = operator("reconcile")

    with session_scope() as session:
        counted = tallies.results_by_law(session=session)
    steps["tallies match the votes sent"] = all(
        counted.get(key, 0) == n for key, n in workload.expected.items()
    ) and sum(counted.values()) == sum(workload.expected.values())
    return verdict(steps)


def wait_for_the_count(target: tuple[int, int, int, dict[str, int]], timeout: float) -> bool:
    """Until every vote is recorded and counted, and every refusal reviewed."""

    def reached() -> tuple[int, int, int, dict[str, int]]:
        now = Snapshot.take()
        refused = {
            "invalid": now.invalid,
            "unknown_law": now.unknown_law,
            "outside_window": now.outside_window,
        }
        return now.audited, now.tallied, now.duplicates, refused

    with progress_bar() as progress:
        task = progress.add_task("waiting for the count", total=target[1])

        def complete() -> bool:
            now = reached()
            progress.update(task, completed=now[1])
            return now == target

        try:
            wait_for(complete, timeout=timeout, interval=0.2, what="the count")
        except TimeoutError:
            console.print(f"[red]timed out[/red]: {reached()}, expected {target}")
            return False
    return True


def verdict(steps: dict[str, bool]) -> int:
    failed = [step for step, ok in steps.items() if not ok]
    if failed:
        console.print(f"[red]the demo failed[/red]: {'; '.join(failed)}")
        return 1
    console.print(
        "[green]election run end to end[/green]: every vote counted once, refusals reviewed,"
        " laws closed, certified, verified, exported and recounted independently"
    )
    return 0


if __name__ == "__main__":
    exit_on_sigterm()
    voters, laws, second, unknown, timeout = sys.argv[1:6]
    sys.exit(run_demo(Scenario(int(voters), int(laws), int(second), int(unknown), float(timeout))))
