"""The `votes` command: load the voter roll, submit votes, read and reconcile results."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from votes_app.schemas import HASH_PATTERN

console = Console()
errors = Console(stderr=True)


def progress_bar(*, transient: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=transient,
    )


@click.group()
def main() -> None:
    """votes_app: count referendum votes exactly once."""


# --- voter roll -----------------------------------------------------------------------


@main.group()
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
def voters_load(source: IO[str]) -> None:
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
def voters_rebuild_voted() -> None:
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


# --- operations -----------------------------------------------------------------------


@main.command()
@click.option(
    "--skip",
    multiple=True,
    type=click.Choice(["broker", "redis", "postgresql", "workers", "beat"]),
    help="Leave a check out (repeatable), e.g. --skip workers in a worker's own health check.",
)
def health(skip: tuple[str, ...]) -> None:
    """Check the broker, Redis (voter roll), PostgreSQL (migrations), workers and beat.

    One line per check; exit code 0 when all pass, 1 otherwise.
    """
    from votes_app.health import CHECKS, run_checks

    checks = run_checks([name for name in CHECKS if name not in skip])
    for check in checks:
        mark = "[green]ok  [/green]" if check.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {check.name:<10} {check.detail}", highlight=False)
    sys.exit(0 if all(check.ok for check in checks) else 1)


# --- dead letters ---------------------------------------------------------------------


@main.group()
def dead() -> None:
    """Messages in votes.dead: what they are, and sending them back once fixed."""


@dead.command("list")
@click.option("--limit", default=1000, show_default=True)
def dead_list(limit: int) -> None:
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
    console.print(table)


@dead.command("replay")
@click.option("--all", "replay_all", is_flag=True, help="Replay every message in votes.dead.")
@click.argument("task_ids", nargs=-1)
def dead_replay(replay_all: bool, task_ids: tuple[str, ...]) -> None:
    """Send dead letters back to the queue they came from: TASK_IDS, or --all.

    A replayed vote keeps its task id, so a vote already partly processed is finished
    and counted once. Exit code 1 if a requested id was not found.
    """
    from votes_app.celery import app
    from votes_app.dead_letters import replay

    if replay_all == bool(task_ids):
        raise click.UsageError("give task ids or --all (not both)")
    wanted = set(task_ids)
    with app.connection_for_write() as connection:
        replayed = replay(connection, lambda task_id: replay_all or task_id in wanted)
    console.print(f"replayed {len(replayed):,} messages")
    missing = wanted - set(replayed)
    if missing:
        errors.print(f"not found in votes.dead: {', '.join(sorted(missing))}")
        sys.exit(1)


# --- submitting -----------------------------------------------------------------------


def read_votes(stream: IO[str]) -> Iterator[tuple[int, dict[str, Any] | None]]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            yield number, None
            continue
        yield number, value if isinstance(value, dict) else None


@main.command()
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


# --- results --------------------------------------------------------------------------


def results_table(rows: list[Any], title: str = "Results") -> Table:
    table = Table(title=title)
    for header in ("law", "oui", "non", "total", "oui %", "non %", "updated"):
        table.add_column(header, justify="left" if header in ("law", "updated") else "right")
    for row in rows:
        table.add_row(
            row.law_id,
            f"{row.oui_count:,}",
            f"{row.non_count:,}",
            f"{row.total_votes:,}",
            f"{row.oui_percentage:.2f}",
            f"{row.non_percentage:.2f}",
            f"{row.updated_at:%Y-%m-%d %H:%M:%S}",
        )
    return table


def read_results(law_id: str | None = None) -> list[Any]:
    import sqlalchemy as sa

    from votes_app.models import vote_statistics
    from votes_app.resources import session_scope

    query = sa.select(vote_statistics).order_by(vote_statistics.c.law_id)
    if law_id:
        query = query.where(vote_statistics.c.law_id == law_id)
    with session_scope() as session:
        return list(session.execute(query))


@main.command()
@click.option("--law", "law_id", help="Only this law.")
def results(law_id: str | None) -> None:
    """The live tallies per law, from the `vote_statistics` view."""
    rows = read_results(law_id)
    if not rows:
        console.print(f"no results yet for law {law_id}" if law_id else "no results yet")
        return
    console.print(results_table(rows))


@main.command()
def reconcile() -> None:
    """Compare `vote_results` with the audit log per law and choice; exit 1 on any drift."""
    sys.exit(run_reconcile())


def run_reconcile() -> int:
    from votes_app import audit
    from votes_app import reconcile as reconciliation
    from votes_app.resources import session_scope

    with session_scope() as session:
        lines = reconciliation.compare(session=session)
        uncounted = audit.uncounted(session=session)
    table = Table(title="Tallies against the audit log")
    for header in ("law", "choice", "vote_results", "vote_audit", "drift"):
        table.add_column(header, justify="left" if header in ("law", "choice") else "right")
    for line in lines:
        style = "red" if line.drift else None
        table.add_row(
            line.law_id,
            line.choice,
            f"{line.tallied:,}",
            f"{line.audited:,}",
            f"{line.drift:+,}",
            style=style,
        )
    console.print(table)
    drifting = [line for line in lines if line.drift]
    if not drifting:
        console.print(f"reconciled: {sum(line.audited for line in lines):,} votes, no drift")
        return 0
    console.print(f"[red]DRIFT[/red] on {len(drifting)} law/choice pairs")
    if uncounted:
        console.print(f"{uncounted:,} recorded votes await their flush; run again after it")
    return 1


def run_in_namespace(name: str, *, redis_index: int, module: str, args: list[str]) -> None:
    """Run `python -m module args` on a namespace of its own, then exit with its status.

    The namespace (database votes_NAME, Redis index, vhost votes_NAME) is wiped by the
    tools that use it: never the application's. NAME_DATABASE_URL, NAME_REDIS_URL and
    NAME_BROKER_URL override it. A fresh interpreter, so every setting comes from there.
    """
    import os
    import subprocess

    from dotenv import dotenv_values

    prefix = name.upper()
    configured = {**dotenv_values(".env"), **os.environ}
    defaults = {
        "DATABASE_URL": f"postgresql+psycopg2://postgres@127.0.0.1:5432/votes_{name}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{redis_index}",
        "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/votes_{name}",
    }
    env = os.environ.copy()
    for variable, default in defaults.items():
        env[variable] = configured.get(f"{prefix}_{variable.removeprefix('CELERY_')}") or default
    sys.exit(subprocess.run([sys.executable, "-m", module, *args], env=env).returncode)


@main.command()
@click.option("--voters", "voter_count", default=10_000, show_default=True)
@click.option("--laws", "law_count", default=2, show_default=True)
@click.option("--second-votes", default=500, show_default=True)
@click.option("--unknown", default=200, show_default=True)
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for tallies.")
def demo(voter_count: int, law_count: int, second_votes: int, unknown: int, timeout: float) -> None:
    """Run the whole pipeline on a namespace of its own and check the result.

    The demo wipes and uses DEMO_DATABASE_URL (default database votes_demo), DEMO_REDIS_URL
    (Redis index 1) and DEMO_BROKER_URL (vhost votes_demo), never the application's own.
    """
    scenario = [str(voter_count), str(law_count), str(second_votes), str(unknown), str(timeout)]
    run_in_namespace("demo", redis_index=1, module="votes_app.demo", args=scenario)


def _add_tools() -> None:
    # The benchmark and the fault campaign run the pipeline like the demo; each has a module.
    from votes_app.bench import bench
    from votes_app.faults import faults

    main.add_command(bench)
    main.add_command(faults)


_add_tools()

if __name__ == "__main__":
    main()
