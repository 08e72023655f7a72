"""The `votes bench` command: an option per `BenchOptions` field, and the measuring process
started on the bench's namespace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from votes_app.config import get_settings
from votes_tools.bench.options import BenchOptions
from votes_tools.namespace import BENCH


def bench_options(command: Callable[..., None]) -> Callable[..., None]:
    """A click option for each field of `BenchOptions`, with its default and help."""
    for spec in reversed(fields(BenchOptions)):
        name, help_text = "--" + spec.name.replace("_", "-"), spec.metadata["help"]
        if spec.default is False:
            decorate = click.option(name, is_flag=True, help=help_text)
        elif spec.default is None:
            decorate = click.option(name, type=click.Path(dir_okay=False), help=help_text)
        else:
            kind = click.Choice(spec.metadata["choices"]) if spec.metadata["choices"] else None
            decorate = click.option(
                name, type=kind, default=spec.default, show_default=True, help=help_text
            )
        command = decorate(command)
    return command


@click.command()
@bench_options
def bench(**params: Any) -> None:
    """Measure the pipeline on a namespace of its own and compare with the targets.

    Wipes and uses BENCH_DATABASE_URL (default database votes_bench), BENCH_REDIS_URL
    (Redis index 2) and BENCH_BROKER_URL (vhost votes_bench). Several minutes with the
    defaults, under three with --quick; exit code 1 if any vote was lost or counted twice.
    """
    if params["output"]:
        params["output"] = str(Path(params["output"]).resolve())
    context = click.get_current_context()
    given = {
        name for name in params if context.get_parameter_source(name) != ParameterSource.DEFAULT
    }
    options = BenchOptions(**params).sized(given)
    problems = options.problems(get_settings().validate_bulk_max)
    if problems:
        raise click.UsageError("; ".join(problems))
    BENCH.run("votes_tools.bench", [options.to_json()])
