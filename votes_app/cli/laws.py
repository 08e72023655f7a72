"""`votes laws`, `votes close`, `votes certify`: the laws on the ballot and their lifecycle.

These commands change what the application may not: they run with the owner's role
(OWNER_DATABASE_URL).
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import click
from rich.table import Table

from votes_app.console import console, errors, print_table, results_table

ISO8601 = "ISO 8601 with a time zone, e.g. 2026-12-06T08:00:00+01:00"


def parse_instant(value: str, name: str) -> datetime:
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not {ISO8601}", param_hint=name) from None
    if instant.tzinfo is None:
        raise click.BadParameter(f"no time zone: {ISO8601}", param_hint=name)
    return instant


@click.group("laws")
def laws_group() -> None:
    """The laws on the ballot: register them, list them."""


@laws_group.command("add")
@click.argument("law_id")
@click.option("--title", required=True, help="The question, as voters read it.")
@click.option("--opens", required=True, help=f"When voting opens ({ISO8601}).")
@click.option("--closes", required=True, help=f"When voting closes ({ISO8601}).")
def add(law_id: str, title: str, opens: str, closes: str) -> None:
    """Register LAW_ID with its voting window. A vote for a law not registered is refused."""
    from votes_app import laws
    from votes_app.resources import owner_session_scope
    from votes_app.schemas import LAW_ID_PATTERN

    if not LAW_ID_PATTERN.fullmatch(law_id):
        raise click.BadParameter("1-50 characters of A-Z a-z 0-9 . _ -", param_hint="LAW_ID")
    if not 0 < len(title) <= 200:
        raise click.BadParameter("1 to 200 characters", param_hint="--title")
    opens_at, closes_at = parse_instant(opens, "--opens"), parse_instant(closes, "--closes")
    try:
        with owner_session_scope() as session:
            law = laws.register(
                session=session, law_id=law_id, title=title, opens_at=opens_at, closes_at=closes_at
            )
    except laws.LawError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(
        f"registered {law.law_id}: votes cast from {law.opens_at.isoformat()}"
        f" to {law.closes_at.isoformat()} count"
    )


@laws_group.command("list")
def list_laws() -> None:
    """Every registered law, its window and its state."""
    from votes_app import laws
    from votes_app.resources import session_scope

    with session_scope() as session:
        registered = laws.all_laws(session=session)
    if not registered:
        console.print("no law is registered")
        return
    now = datetime.now(UTC)
    table = Table(title="Laws")
    for header in ("law", "title", "opens", "closes", "state"):
        table.add_column(header, overflow="fold")
    for law in registered:
        table.add_row(
            law.law_id,
            law.title,
            law.opens_at.isoformat(),
            law.closes_at.isoformat(),
            law.state_at(now),
        )
    print_table(table)


@click.command()
@click.argument("law_id")
@click.option(
    "--now", "early", is_flag=True, help="Close before the window ends: it then ends now."
)
@click.option(
    "--timeout",
    default=300.0,
    show_default=True,
    help="Seconds to wait for the law's last votes to be counted.",
)
@click.option(
    "--abandon-dead-letters",
    is_flag=True,
    help="Close even though votes for the law wait in votes.dead (they will be refused).",
)
def close(law_id: str, early: bool, timeout: float, abandon_dead_letters: bool) -> None:
    """Close LAW_ID: from now on every vote for it is refused (`outside_window`). Waits until
    every vote recorded for it is counted, then prints its final result. Refused before the
    window ends, unless --now, and while votes for it wait in votes.dead, unless
    --abandon-dead-letters. On a closed law, waits for its count and prints it again."""
    from votes_app import laws
    from votes_app.cli.results import current_standings
    from votes_app.resources import owner_session_scope, session_scope

    try:
        with owner_session_scope() as session:
            law = laws.get(session=session, law_id=law_id)
            if law.state == "scheduled" and not abandon_dead_letters:
                refuse_if_votes_are_dead(law_id)
            if law.state == "scheduled":
                law = laws.close(session=session, law_id=law_id, now=datetime.now(UTC), early=early)
                console.print(f"law {law_id} closed; its window ended {law.closes_at.isoformat()}")
            elif law.state == "closed":  # closed before: wait for its count again
                console.print(f"law {law_id} was closed at {law.closed_at:%Y-%m-%d %H:%M:%S %Z}")
            else:
                raise laws.LawError(f"law {law_id} is {law.state}")
    except laws.LawError as exc:
        raise click.ClickException(str(exc)) from None
    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as session:
            left = laws.waiting(session=session, law_id=law_id)
        if not left:
            break
        if time.monotonic() > deadline:
            errors.print(
                f"{left:,} votes of {law_id} still not counted after {timeout:.0f}s:"
                " is beat running? Run `votes close` again to wait more."
            )
            sys.exit(1)
        time.sleep(0.5)  # polling the flush that beat sends every FLUSH_INTERVAL_SECONDS
    final = current_standings(law_id)
    print_table(results_table(final, datetime.now(UTC), title=f"Final result of {law_id}"))


def refuse_if_votes_are_dead(law_id: str) -> None:
    """A vote cast in time that died on the way (votes.dead) is lost once its law closes: the
    operator replays it first, or says to abandon it."""
    from kombu.exceptions import OperationalError

    from votes_app.celery import app
    from votes_app.dead_letters import dead_votes

    try:
        with app.connection_for_write() as connection:
            dead = dead_votes(connection)[law_id]
    except OperationalError as exc:
        raise click.ClickException(
            f"cannot read votes.dead ({exc}): a vote of {law_id} may wait there;"
            " close with --abandon-dead-letters to close without looking"
        ) from None
    if dead:
        raise click.ClickException(
            f"votes.dead holds {dead:,} vote{'s' if dead > 1 else ''} for {law_id}, refused"
            " once it is closed: replay them first (votes dead list; votes dead replay),"
            " or close with --abandon-dead-letters"
        )


@click.command()
@click.argument("law_id")
def certify(law_id: str) -> None:
    """Certify closed LAW_ID: verify it, record its final counts and digests, and freeze it.
    From then on PostgreSQL refuses any change to its votes or tallies."""
    from votes_app import laws, verification
    from votes_app.cli.auditing import roll_check
    from votes_app.resources import owner_session_scope

    try:
        with owner_session_scope() as session:
            law = laws.get(session=session, law_id=law_id)
            problems = verification.verify_law(session=session, law=law, roll_check=roll_check)
            if problems:
                for problem in problems:
                    errors.print(f"[red]{law_id}[/red]: {problem}")
                raise click.ClickException(f"law {law_id} does not verify: not certified")
            final = laws.certify(session=session, law_id=law_id)
    except laws.LawError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"law {law_id} certified: {final.oui:,} oui, {final.non:,} non,"
                  f" {final.voters:,} voters")  # fmt: skip
    # Never wrapped: they are copied from here into a publication.
    # `votes verify --published LAW=HEAD` checks the chain against the head; an auditor's
    # docs/recount.py recomputes the digests from `votes export` (docs/AUDIT.md).
    console.print("Publish these outside the system, for `votes verify --published` and auditors:")
    console.print(f"  chain head      {final.chain_head}")
    console.print(f"  ballots digest  {final.ballots_digest}")
    console.print(f"  voters digest   {final.voters_digest}")
