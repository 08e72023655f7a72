"""`votes submit`: publish votes as a producer service would: one vote, or a file of them
grouped into `validate_votes` messages."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

import click

from votes_app.config import BULK_LINGER_MS
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
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="With --file: votes per `validate_votes` message (1: a `validate_vote` message each).",
)
@click.option(
    "--linger-ms",
    type=click.FloatRange(min=0),
    default=BULK_LINGER_MS,
    show_default=True,
    help="With --file: how long a vote may wait for others to fill its message.",
)
def submit(
    vote_hash: str | None,
    law_id: str | None,
    choice: str | None,
    timestamp: str | None,
    source: IO[str] | None,
    max_batch: int,
    linger_ms: float,
) -> None:
    """Publish votes as a producer service would, with publisher confirms.

    Either one vote from --hash/--law/--choice (a `votes_app.validate_vote` task), or many
    from --file, grouped into `votes_app.validate_votes` messages of up to --max-batch votes.
    The worker judges them: what this command sends is not checked here beyond being JSON
    objects. An object's `vote_id`, if it has one, is kept: sending the file again counts
    nothing twice.
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
    publisher_of_the_file = VotePublisher(
        window=PUBLISH_WINDOW, max_batch=max_batch, linger_ms=linger_ms
    )
    with (
        publisher_of_the_file as publisher,
        progress_bar() as progress,
    ):
        task = progress.add_task("publishing votes", total=None)
        for number, kwargs in read_votes(source):
            if kwargs is None:
                bad_lines.append(number)
                continue
            vote_id = kwargs.pop("vote_id", None) if max_batch > 1 else None
            publisher.publish(kwargs, vote_id=str(vote_id) if vote_id is not None else None)
            published += 1
            progress.update(task, advance=1)
    # Read once the block has sent the last, partial message and awaited its confirm.
    messages = publisher.messages_sent
    console.print(f"published {published:,} votes in {messages:,} messages, all confirmed")
    if bad_lines:
        errors.print(
            f"skipped {len(bad_lines):,} lines that are not JSON objects: {bad_lines[:20]}"
        )
        sys.exit(1)
