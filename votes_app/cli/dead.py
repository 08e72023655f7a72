"""`votes dead`: the messages in votes.dead, listed with their reasons, and replayed."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from votes_app.console import console, errors, print_table


@click.group()
def dead() -> None:
    """Messages in votes.dead: what they are, and sending them back once fixed."""


@dead.command("list")
@click.option("--limit", default=1000, show_default=True)
def list_letters(limit: int) -> None:
    """List the messages in votes.dead with why they are there (they stay there)."""
    from votes_app.celery import app
    from votes_app.dead_letters import list_dead
    from votes_app.resources import get_redis

    with app.connection_for_write() as connection:
        letters = list_dead(connection, get_redis(), limit=limit)
    if not letters:
        console.print("votes.dead is empty")
        return
    table = Table(title=f"votes.dead ({len(letters)} shown)")
    for header in ("task id", "task", "from queue", "deaths", "reason", "message"):
        table.add_column(header, overflow="fold")
    for letter in letters:
        table.add_row(
            letter.task_id,
            letter.task,
            letter.queue,
            str(letter.deaths),
            letter.reason,
            letter.preview,
        )
    print_table(table)


@dead.command("replay")
@click.option("--all", "replay_all", is_flag=True, help="Replay every message in votes.dead.")
@click.argument("task_ids", nargs=-1)
def replay(replay_all: bool, task_ids: tuple[str, ...]) -> None:
    """Send dead letters back to the queue they came from: TASK_IDS, or --all.

    A replayed vote keeps its task id, so a vote already partly processed is finished
    and counted once. Exit code 1 if a requested id was not found.
    """
    from votes_app import dead_letters
    from votes_app.celery import app

    if replay_all == bool(task_ids):
        raise click.UsageError("give task ids or --all (not both)")
    wanted = set(task_ids)
    with app.connection_for_write() as connection:
        replayed = dead_letters.replay(connection, lambda task_id: replay_all or task_id in wanted)
    console.print(f"replayed {len(replayed):,} messages")
    missing = wanted - set(replayed)
    if missing:
        errors.print(f"not found in votes.dead: {', '.join(sorted(missing))}")
        sys.exit(1)
