"""`votes demo`: the whole pipeline on a namespace of its own, from voter roll to reconcile.

`votes demo` runs `python -m votes_tools.demo VOTERS LAWS SECOND_VOTES UNKNOWN TIMEOUT` on
the demo's namespace (see `votes_tools.namespace`).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click

from votes_app import reconcile
from votes_app.ballot_box import load_voters
from votes_app.config import get_settings
from votes_app.console import console, print_reconciliation, progress_bar, results_table
from votes_app.resources import get_redis, session_scope
from votes_app.tallies import statistics
from votes_tools import namespace
from votes_tools.counts import Snapshot
from votes_tools.polling import wait_for
from votes_tools.processes import Beat, Worker, exit_on_sigterm
from votes_tools.publishing import ParallelPublisher
from votes_tools.workload import make_workload, voter


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
@click.option("--laws", "law_count", default=Scenario.laws, show_default=True)
@click.option("--second-votes", default=Scenario.second_votes, show_default=True)
@click.option("--unknown", default=Scenario.unknown, show_default=True)
@click.option(
    "--timeout", default=Scenario.timeout, show_default=True, help="Seconds to wait for tallies."
)
def demo(voter_count: int, law_count: int, second_votes: int, unknown: int, timeout: float) -> None:
    """Run the whole pipeline on a namespace of its own and check the result.

    The demo wipes and uses DEMO_DATABASE_URL (default database votes_demo), DEMO_REDIS_URL
    (Redis index 1) and DEMO_BROKER_URL (vhost votes_demo), never the application's own.
    """
    scenario = [str(voter_count), str(law_count), str(second_votes), str(unknown), str(timeout)]
    namespace.DEMO.run("votes_tools.demo", scenario)


def run_demo(scenario: Scenario) -> int:
    settings = get_settings()
    console.print(f"[bold]votes_app demo[/bold] (flush every {settings.flush_interval_seconds}s)")
    namespace.reset()
    workload = make_workload(
        scenario.voters,
        second_votes=scenario.second_votes,
        unknown=scenario.unknown,
        laws=scenario.laws,
        tag="demo",
    )
    messages = workload.messages
    target = (len(workload.roll), len(workload.roll), len(workload.second), len(workload.unknown))

    with progress_bar() as progress:
        task = progress.add_task("loading the voter roll", total=len(workload.roll))
        for sent, _ in load_voters(get_redis(), workload.roll):
            progress.update(task, advance=sent)

    with tempfile.TemporaryDirectory(prefix="votes-demo-") as tmp:
        directory = Path(tmp)
        worker = Worker(directory / "worker.log", loglevel="WARNING")
        with worker, Beat(directory, loglevel="WARNING"):
            console.print(f"worker and beat started; logs in {directory}")
            with progress_bar() as progress:
                task = progress.add_task("publishing votes", total=len(messages))
                publication = ParallelPublisher().publish(
                    messages,
                    owner=voter,
                    on_progress=lambda n: progress.update(task, completed=n),
                )

            with progress_bar() as progress:
                task = progress.add_task("waiting for tallies", total=len(workload.roll))

                def complete() -> bool:
                    now = Snapshot.take()
                    progress.update(task, completed=now.tallied)
                    return (now.audited, now.tallied, now.duplicates, now.invalid) == target

                try:
                    wait_for(complete, timeout=scenario.timeout, interval=0.2, what="the tallies")
                except TimeoutError:
                    console.print(f"[red]timed out[/red]: {Snapshot.take()}, expected {target}")
                    return 1
            finished = time.time()
        console.print("worker and beat stopped")

    with session_scope() as session:
        rows = statistics(session=session)
    with session_scope() as session:
        reconciliation = reconcile.reconcile(session=session)
    console.print(results_table(rows, title="Results"))
    counted = {(row.law_id, c): getattr(row, f"{c}_count") for row in rows for c in ("oui", "non")}
    exact = all(counted.get(key, 0) == n for key, n in workload.expected.items())
    elapsed = finished - publication.first
    console.print(
        f"votes sent {len(messages):,}: accepted {target[0]:,}, "
        f"duplicates refused {target[2]:,}, unknown voters refused {target[3]:,}"
    )
    console.print(
        f"published in {publication.seconds:.1f}s; all tallied after {elapsed:.1f}s: "
        f"{len(messages) / elapsed:,.0f} votes/s end to end"
    )
    verdict = (
        "tallies match the votes sent" if exact else "[red]tallies differ from the votes sent[/red]"
    )
    console.print(verdict)
    reconciled = print_reconciliation(reconciliation)
    return 0 if exact and reconciled else 1


if __name__ == "__main__":
    exit_on_sigterm()
    voters, laws, second, unknown, timeout = sys.argv[1:6]
    sys.exit(run_demo(Scenario(int(voters), int(laws), int(second), int(unknown), float(timeout))))
