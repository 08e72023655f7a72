"""`votes voters`: the voter rolls in Redis, one per law (`valid_hashes:{law_id}`), and the
voted set (`voted_hashes`)."""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterator
from typing import IO

import click

from votes_app.console import console, errors, progress_bar
from votes_app.schemas import HASH_PATTERN


@click.group()
def voters() -> None:
    """The voter rolls in Redis, one per law (sets `valid_hashes:{law_id}`)."""


HEADER = ("law_id", "hash")


def read_entries(
    stream: IO[str], law_id: str | None, registered: Collection[str], rejected: list[str]
) -> Iterator[tuple[str, str]]:
    """The `(law_id, hash)` entries of `stream`, hashes lower-cased: one hash per line for
    `law_id`, or `law_id,hash` lines. What cannot be loaded goes to `rejected`, a line each."""
    for number, line in enumerate(stream, start=1):
        text = line.strip()
        if not text:
            continue
        if law_id is not None:
            law, candidate = law_id, text
        else:
            fields = [field.strip() for field in text.split(",")]
            if number == 1 and tuple(fields) == HEADER:
                continue
            if len(fields) != 2:
                rejected.append(f"line {number}: not `law_id,hash`")
                continue
            law, candidate = fields
        if not HASH_PATTERN.fullmatch(candidate):
            rejected.append(f"line {number}: not 64 hexadecimal characters")
        elif law not in registered:
            rejected.append(f"line {number}: law {law[:60]!r} is not registered")
        else:
            yield law, candidate.lower()


@voters.command("load")
@click.argument("source", type=click.File("r", encoding="utf-8", errors="replace"))
@click.option(
    "--law",
    "law_id",
    help="The law each hash of SOURCE was issued for. Without it, each line of SOURCE is"
    " `law_id,hash` (a first line `law_id,hash` is a header).",
)
def load(source: IO[str], law_id: str | None) -> None:
    """Add the hashes in SOURCE (`-` for stdin) to the voter rolls of their laws.

    A hash counts only for the law it is loaded for, and only registered laws have a roll.
    Loading the same file twice adds nothing the second time. Lines that cannot be loaded
    (not a hash, a law not registered) are listed and the exit code is 1.
    """
    from votes_app import laws
    from votes_app.ballot_box import load_rolls, roll_sizes
    from votes_app.resources import get_redis, session_scope

    with session_scope() as session:
        registered = {law.law_id for law in laws.all_laws(session=session)}
    if law_id is not None and law_id not in registered:
        raise click.UsageError(f"law {law_id!r} is not registered (votes laws add)")
    client = get_redis()
    rejected: list[str] = []
    sent = added = 0
    entries = read_entries(source, law_id, registered, rejected)
    with progress_bar() as progress:
        task = progress.add_task("loading voters", total=None)
        for chunk_sent, chunk_added in load_rolls(client, entries):
            sent += chunk_sent
            added += chunk_added
            progress.update(task, advance=chunk_sent)
    sizes = ", ".join(f"{law} {n:,}" for law, n in roll_sizes(client, sorted(registered)).items())
    console.print(
        f"read {sent:,} hashes: {added:,} new, {sent - added:,} already on their roll;"
        f" rolls now: {sizes or 'none loaded'}"
    )
    if rejected:
        errors.print(f"rejected {len(rejected):,} lines:")
        for line in rejected[:20]:
            errors.print(f"  {line}", markup=False)
        if len(rejected) > 20:
            errors.print(f"  ... and {len(rejected) - 20:,} more")
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
