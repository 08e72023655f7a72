"""`votes health`: one line per dependency check, exit code 1 when any fails."""

from __future__ import annotations

import sys

import click

from votes_app.checks import CHECKS, run_checks
from votes_app.console import console


@click.command()
@click.option(
    "--skip",
    multiple=True,
    type=click.Choice(list(CHECKS)),
    help="Leave a check out (repeatable), e.g. --skip workers in a worker's own health check.",
)
def health(skip: tuple[str, ...]) -> None:
    """Check the broker, Redis (voter roll), PostgreSQL (migrations), workers and beat.

    One line per check; exit code 0 when all pass, 1 otherwise.
    """
    checks = run_checks([name for name in CHECKS if name not in skip])
    for check in checks:
        mark = "[green]ok  [/green]" if check.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {check.name:<10} {check.detail}", highlight=False)
    sys.exit(0 if all(check.ok for check in checks) else 1)
