"""`votes submit`: publish votes as a producer service would, one `validate_vote` task each."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

import click

from votes_app.console import console, errors, progress_bar


def read_votes(stream: IO[str]) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """`(line number, object)` per non-empty line; None for a line that is not a JSON object."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            yield number, None
            continue
        yield number, value if isinstance(value, dict) else None


@click.command()
@click.option("--hash", "vote_hash", help="Voter hash (64 hex characters).")
@click.option("--law", "law_id", help="Law id.")
@click.option("--choice", type=click.Choice(["oui", "non"]), help="The vote.")
@click.option("--timestamp", help="When the vote was cast (ISO 8601 with zone; default now).")
@click.option(
    "--file",
    "source",
    type=click.File("r", encoding="utf-8"),
    help="JSON lines, one object of validate_vote arguments per line (`-` for stdin).",
)
def submit(
    vote_hash: str | None,
    law_id: str | None,
    choice: str | None,
    timestamp: str | None,
    source: IO[str] | None,
) -> None:
    """Publish votes as `votes_app.validate_vote` tasks, as a producer service would.

    Either one vote from --hash/--law/--choice, or many from --file. The worker judges
    them: what this command sends is not checked here beyond being JSON objects.
    """
    from votes_app.config import PUBLISH_WINDOW
    from votes_app.producer import VotePublisher

    if source is None:
        if not (vote_hash and law_id and choice):
            raise click.UsageError("give --hash, --law and --choice, or --file")
        stamp = timestamp or datetime.now(UTC).isoformat()
        with VotePublisher() as publisher:
            task_id = publisher.publish(
                {"vote_hash": vote_hash, "law_id": law_id, "choice": choice, "timestamp": stamp}
            )
        console.print(f"published vote task {task_id}")
        return

    bad_lines: list[int] = []
    published = 0
    with VotePublisher(window=PUBLISH_WINDOW) as publisher, progress_bar() as progress:
        task = progress.add_task("publishing votes", total=None)
        for number, kwargs in read_votes(source):
            if kwargs is None:
                bad_lines.append(number)
                continue
            publisher.publish(kwargs)
            published += 1
            progress.update(task, advance=1)
    console.print(f"published {published:,} vote tasks")
    if bad_lines:
        errors.print(
            f"skipped {len(bad_lines):,} lines that are not JSON objects: {bad_lines[:20]}"
        )
        sys.exit(1)
