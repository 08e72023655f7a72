"""Terminal output of the `votes` commands: consoles, progress bars, the results and
reconciliation tables. Kept apart from the commands so that other programs can print the same."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from votes_app.laws import Standing
from votes_app.reconcile import Reconciliation

# Lines are never broken: a hash, a path or a law id stays whole for whoever greps or copies it.
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


def print_table(table: Table, *, to: Console = console) -> None:
    """Print `table` whole: wider than the terminal (which then wraps its lines) rather than
    with figures cut short, as rich does to fit a table in 80 columns when it is piped."""
    needed = Measurement.get(to, to.options.update_width(10_000), table).maximum
    if needed <= to.width:
        to.print(table)
        return
    # Console.print never prints wider than the console: widen it for this table alone.
    detected = to._width  # None: the terminal's width, detected again on each print
    to.width = needed
    try:
        to.print(table)
    finally:
        to._width = detected


def progress_bar(*, transient: bool = False) -> Progress:
    """A progress display on standard error, so that standard output stays the result."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=transient,
    )


WITHHELD = "-"  # a law's per-choice figures while its voting is open


def results_table(standings: Sequence[Standing], now: datetime, title: str = "Results") -> Table:
    """Per law: state, voters against the roll, and the counts; per choice only once the law
    is closed (while it is open, each figure that moved would tell a lone vote's choice)."""
    table = Table(title=title)
    table.add_column("law", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for header in ("voters", "roll", "turnout %", "counted", "oui", "non", "oui %", "non %"):
        table.add_column(header, justify="right")
    for standing in standings:
        counted = standing.oui + standing.non
        per_choice = [WITHHELD] * 4
        if standing.law.final:
            per_choice = [f"{standing.oui:,}", f"{standing.non:,}"] + [
                f"{100 * n / counted:.2f}" if counted else "-" for n in (standing.oui, standing.non)
            ]
        turnout = standing.turnout
        table.add_row(
            standing.law.law_id,
            standing.law.state_at(now),
            f"{standing.voters:,}",
            f"{standing.roll:,}",
            WITHHELD if turnout is None else f"{100 * turnout:.2f}",
            f"{counted:,}",
            *per_choice,
        )
    return table


def print_reconciliation(reconciliation: Reconciliation) -> bool:
    """Print voters against ballots per law and the tallies against the ballots, a mismatch
    in red; True when nothing differs."""
    turnout = Table(title="Voters and ballots per law")
    for header in ("law", "vote_audit (voters)", "ballots", "gap"):
        turnout.add_column(header, justify="left" if header == "law" else "right")
    for law in reconciliation.turnout:
        turnout.add_row(
            law.law_id,
            f"{law.voters:,}",
            f"{law.ballots:,}",
            f"{law.gap:+,}",
            style="red" if law.gap else None,
        )
    print_table(turnout)
    table = Table(title="Tallies against the ballots")
    for header in ("law", "choice", "vote_results", "ballots", "drift"):
        table.add_column(header, justify="left" if header in ("law", "choice") else "right")
    for line in reconciliation.lines:
        table.add_row(
            line.law_id,
            line.choice,
            f"{line.tallied:,}",
            f"{line.ballots:,}",
            f"{line.drift:+,}",
            style="red" if line.drift else None,
        )
    print_table(table)
    if reconciliation.ok:
        console.print(f"reconciled: {reconciliation.ballots:,} votes, no drift")
        return True
    if reconciliation.unmatched:
        console.print(
            f"[red]MISMATCH[/red]: voters and ballots differ for {len(reconciliation.unmatched)}"
            " laws"
        )
    if reconciliation.drifting:
        console.print(f"[red]DRIFT[/red] on {len(reconciliation.drifting)} law/choice pairs")
    if reconciliation.uncounted:
        console.print(
            f"{reconciliation.uncounted:,} recorded votes await their flush; run again after it"
        )
    return False
