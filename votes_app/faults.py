"""`votes faults`: the fault campaign against the real services."""

from __future__ import annotations

import click


@click.command()
def faults() -> None:
    """Run the fault campaign (not written yet)."""
    raise click.ClickException("not written yet")
