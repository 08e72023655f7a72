"""Terminal output of the `votes` commands: consoles, progress bars, the results and
reconciliation tables. Kept apart from the commands so that other programs can print the same."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from votes_app.reconcile import Reconciliation

console = Console()
errors = Console(stderr=True)


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


def results_table(rows: Sequence[Any], title: str = "Results") -> Table:
    """Rows of the `vote_statistics` view as a table."""
    table = Table(title=title)
    for header in ("law", "oui", "non", "total", "oui %", "non %", "updated"):
        table.add_column(header, justify="left" if header in ("law", "updated") else "right")
    for row in rows:
        table.add_row(
            row.law_id,
            f"{row.oui_count:,}",
            f"{row.non_count:,}",
            f"{row.total_votes:,}",
            f"{row.oui_percentage:.2f}",
            f"{row.non_percentage:.2f}",
            f"{row.updated_at:%Y-%m-%d %H:%M:%S}",
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
    console.print(turnout)
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
    console.print(table)
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
