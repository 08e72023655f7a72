"""`votes voters`: the voter roll in Redis (`valid_hashes`) and the voted set (`voted_hashes`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import IO

import click

from votes_app.console import console, errors, progress_bar
from votes_app.schemas import HASH_PATTERN


@click.group()
def voters() -> None:
    """The voter roll in Redis (set `valid_hashes`)."""


def read_hashes(stream: IO[str], rejected: list[int]) -> Iterator[str]:
    """The well-formed hashes of `stream`, lower-cased; line numbers of the others."""
    for number, line in enumerate(stream, start=1):
        candidate = line.strip()
        if not candidate:
            continue
        if HASH_PATTERN.fullmatch(candidate):
            yield candidate.lower()
        else:
            rejected.append(number)


@voters.command("load")
@click.argument("source", type=click.File("r", encoding="utf-8", errors="replace"))
def load(source: IO[str]) -> None:
    """Add the hashes in SOURCE (one per line, `-` for stdin) to the voter roll.

    Loading the same file twice adds nothing the second time. Lines that are not 64
    hexadecimal characters are not loaded; their numbers are listed and the exit code is 1.
    """
    from votes_app.ballot_box import load_voters, voter_roll_size
    from votes_app.resources import get_redis

    client = get_redis()
    rejected: list[int] = []
    sent = added = 0
    with progress_bar() as progress:
        task = progress.add_task("loading voters", total=None)
        for chunk_sent, chunk_added in load_voters(client, read_hashes(source, rejected)):
            sent += chunk_sent
            added += chunk_added
            progress.update(task, advance=chunk_sent)
    console.print(
        f"read {sent:,} hashes: {added:,} new, {sent - added:,} already on the roll; "
        f"the roll holds {voter_roll_size(client):,}"
    )
    if rejected:
        shown = ", ".join(str(n) for n in rejected[:20]) + (" ..." if len(rejected) > 20 else "")
        errors.print(f"rejected {len(rejected):,} lines that are not 64 hex characters: {shown}")
        sys.exit(1)


@voters.command("rebuild-voted")
def rebuild_voted() -> None:
    """Restore `voted_hashes` from the audit log (after Redis restarted empty).

    Until it runs, PostgreSQL still refuses second votes (UNIQUE vote_hash); this puts the
    fast path back. Safe to run at any time, as often as needed.
    """
    from votes_app import audit
    from votes_app.ballot_box import restore_voted
    from votes_app.resources import get_redis, session_scope

    sent = added = 0
    with session_scope() as session, progress_bar() as progress:
        task = progress.add_task("restoring voted_hashes", total=None)
        for chunk_sent, chunk_added in restore_voted(
            get_redis(), audit.recorded_hashes(session=session)
        ):
            sent += chunk_sent
            added += chunk_added
            progress.update(task, advance=chunk_sent)
    console.print(f"{sent:,} recorded voters: {added:,} were missing from voted_hashes")
