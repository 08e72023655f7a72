"""`votes bench`: throughput, latency and resource figures of the real pipeline."""

from __future__ import annotations

import click


@click.command()
def bench() -> None:
    """Measure the pipeline (not written yet)."""
    raise click.ClickException("not written yet")
