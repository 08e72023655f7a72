"""`votes verify`, `votes export`, `votes recount`: checking a count, handing it to an auditor,
repairing tallies."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from votes_app.console import console, errors
from votes_app.schemas import HASH_PATTERN


def roll_check(law_id: str, hashes: Sequence[str]) -> list[bool] | None:
    """Which of `hashes` are on the law's roll in Redis; None without a roll."""
    from votes_app.ballot_box import on_roll
    from votes_app.resources import get_redis

    return on_roll(get_redis(), law_id, hashes)


def parse_checkpoints(values: Sequence[str]) -> dict[str, list[str]]:
    """`LAW=HASH` values, as law -> hashes."""
    checkpoints: dict[str, list[str]] = {}
    for value in values:
        law_id, _, link = value.partition("=")
        if not law_id or not HASH_PATTERN.fullmatch(link):
            raise click.BadParameter(f"{value!r} is not LAW=HASH", param_hint="--published")
        checkpoints.setdefault(law_id, []).append(link.lower())
    return checkpoints


@click.command()
@click.argument("law_ids", nargs=-1)
@click.option(
    "--published",
    multiple=True,
    metavar="LAW=HASH",
    help="A link hash of LAW's chain published outside the system (the head that `votes"
    " certify` printed, or one published during the vote); the chain must pass through it."
    " Repeatable.",
)
def verify(law_ids: tuple[str, ...], published: tuple[str, ...]) -> None:
    """Recompute LAW_IDS' counts (every law without) from the recorded votes and the hash
    chain; exit 1 naming each law that does not verify."""
    from votes_app import laws, verification
    from votes_app.resources import snapshot_scope

    checkpoints = parse_checkpoints(published)
    skipped = checkpoints.keys() - set(law_ids) if law_ids else set()
    if skipped:
        raise click.UsageError(
            f"--published names {', '.join(sorted(skipped))}, which is not to be verified"
        )
    failed = []
    with snapshot_scope() as session:
        registered = laws.all_laws(session=session)
        unknown = (set(law_ids) | checkpoints.keys()) - {law.law_id for law in registered}
        if unknown:
            raise click.UsageError(f"not registered: {', '.join(sorted(unknown))}")
        for law in registered:
            if law_ids and law.law_id not in law_ids:
                continue
            problems = verification.verify_law(
                session=session,
                law=law,
                roll_check=roll_check,
                checkpoints=checkpoints.get(law.law_id, []),
            )
            if problems:
                failed.append(law.law_id)
                for problem in problems:
                    errors.print(f"[red]FAIL[/red] {law.law_id}: {problem}")
            else:
                console.print(f"ok   {law.law_id}")
    if failed:
        errors.print(f"does not verify: {', '.join(failed)}")
        sys.exit(1)


@click.command()
@click.argument("law_ids", nargs=-1)
def checkpoint(law_ids: tuple[str, ...]) -> None:
    """Print the last link hash of each law's chain (of LAW_IDS only, if given), to publish
    outside the system during the vote: `votes verify --published LAW=HASH` then checks that
    the chain still passes through it (docs/AUDIT.md)."""
    from votes_app import chain
    from votes_app.resources import session_scope

    with session_scope() as session:
        links = [link for link in chain.heads(session) if not law_ids or link.law_id in law_ids]
    if not links:
        errors.print("no link yet: nothing has been counted")
        sys.exit(1)
    for link in links:
        console.print(
            f"{link.law_id} link {link.seq} of {link.linked_at.isoformat(timespec='seconds')}:"
            f" {link.law_id}={link.link_hash}",
            highlight=False,
        )


@click.command()
@click.argument("law_id")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def export(law_id: str, directory: Path) -> None:
    """Write what an auditor needs to recount LAW_ID into DIRECTORY: its ballots, apart its
    voters, its chain, its figures and certification, its roll's digest (docs/AUDIT.md)."""
    from votes_app import laws
    from votes_app.ballot_box import roll_key
    from votes_app.export import FILES, export_law
    from votes_app.resources import get_redis, snapshot_scope

    client = get_redis()
    key = roll_key(law_id)
    roll = sorted(str(h) for h in client.smembers(key)) if client.exists(key) else None
    try:
        with snapshot_scope() as session:  # the files agree with each other
            export_law(session=session, law_id=law_id, directory=directory, roll=roll)
    except laws.LawError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"exported {law_id} to {directory}: {', '.join(FILES)}")
    if roll is None:
        errors.print("the law's voter roll is not loaded: law.json has no roll digest")


@click.command()
@click.argument("law_id")
def recount(law_id: str) -> None:
    """Rebuild LAW_ID's tallies (`vote_results`) from its counted ballots, and say what it
    changed: an operator's repair after `votes reconcile` or `votes verify` finds drift.
    Refused on a certified law."""
    from votes_app import laws, tallies
    from votes_app.resources import owner_session_scope

    try:
        with owner_session_scope() as session:
            before, after = tallies.recount(session=session, law_id=law_id)
    except laws.LawError as exc:
        raise click.ClickException(str(exc)) from None
    if before == after:
        console.print(f"{law_id}: vote_results already held {after[0]:,} oui / {after[1]:,} non")
        return
    console.print(
        f"{law_id}: vote_results {before[0]:,} oui / {before[1]:,} non ->"
        f" {after[0]:,} oui / {after[1]:,} non, as its counted ballots say"
    )
