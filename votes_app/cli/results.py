"""`votes results` and `votes reconcile`: the count as it stands, and its check."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from votes_app.console import console, print_reconciliation, print_table, results_table

if TYPE_CHECKING:
    from votes_app.laws import Standing


def current_standings(law_id: str | None = None) -> list[Standing]:
    """Where every law stands (only `law_id`, if given), its roll's size from Redis; read as
    the read-only role where READER_DATABASE_URL is set."""
    from votes_app import laws
    from votes_app.ballot_box import roll_sizes
    from votes_app.resources import get_redis, reader_session_scope

    with reader_session_scope() as session:
        registered = [law.law_id for law in laws.all_laws(session=session)]
        rolls = roll_sizes(get_redis(), [law_id] if law_id else registered)
        standings = laws.standings(session=session, rolls=rolls)
    return [s for s in standings if not law_id or s.law.law_id == law_id]


@click.command()
@click.option("--law", "law_id", help="Only this law.")
def results(law_id: str | None) -> None:
    """The tallies per law with the turnout (voters / roll); per choice once a law is closed."""
    standings = current_standings(law_id)
    if not standings:
        console.print(f"law {law_id} is not registered" if law_id else "no law is registered")
        return
    print_table(results_table(standings, datetime.now(UTC)))


@click.command("reconcile")
def check_tallies() -> None:
    """Check voters against ballots per law, and `vote_results` against the ballots per law
    and choice; exit 1 on any difference."""
    from votes_app import reconcile
    from votes_app.resources import session_scope

    with session_scope() as session:
        found = reconcile.reconcile(session=session)
    sys.exit(0 if print_reconciliation(found) else 1)
