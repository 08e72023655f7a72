"""`votes results` and `votes reconcile`: the count as it stands, and its check."""

from __future__ import annotations

import sys

import click

from votes_app.console import console, print_reconciliation, results_table


@click.command()
@click.option("--law", "law_id", help="Only this law.")
def results(law_id: str | None) -> None:
    """The live tallies per law, from the `vote_statistics` view."""
    from votes_app.resources import session_scope
    from votes_app.tallies import statistics

    with session_scope() as session:
        rows = statistics(session=session, law_id=law_id)
    if not rows:
        console.print(f"no results yet for law {law_id}" if law_id else "no results yet")
        return
    console.print(results_table(rows))


@click.command("reconcile")
def check_tallies() -> None:
    """Check voters against ballots per law, and `vote_results` against the ballots per law
    and choice; exit 1 on any difference."""
    from votes_app import reconcile
    from votes_app.resources import session_scope

    with session_scope() as session:
        found = reconcile.reconcile(session=session)
    sys.exit(0 if print_reconciliation(found) else 1)
