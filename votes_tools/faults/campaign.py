"""The campaign: the chosen scenarios one after another, a line each, then the table."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console

from votes_app.console import console
from votes_tools.faults.options import CampaignOptions
from votes_tools.faults.report import Row, table
from votes_tools.faults.scenarios import run_scenario


def run_campaign(names: Sequence[str], options: CampaignOptions) -> int:
    rows = []
    for name in names:
        console.print(f"[bold]{name}[/bold]: {options.votes:,} votes ...")
        try:
            row = run_scenario(name, options)
        except Exception as exc:
            console.print_exception()
            row = Row(scenario=name, notes=[f"scenario failed: {exc!r}"])
        rows.append(row)
        evidence = ", ".join(f"{key}={value:g}" for key, value in sorted(row.evidence.items()))
        console.print(
            f"  {'ok' if row.ok else 'FAIL: ' + '; '.join(row.problems())}"
            f" in {row.seconds:.0f}s ({evidence})"
        )
    # Wide enough for every column, even when the output is not a terminal.
    Console(width=max(console.width, 200)).print(table(rows))
    console.print(f"logs in {options.directory}")
    return 0 if all(row.ok for row in rows) else 1
