"""The `votes` command: the operator's commands, one module per command group.

Commands that other installed packages offer (the development tools: `votes demo`, `bench`,
`faults`) are found through the `votes_app.commands` entry points and loaded only when used.
Where such a package is missing, as in the production image, the command says so.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import click

from votes_app.cli.auditing import checkpoint, export, recount, verify
from votes_app.cli.broker import broker
from votes_app.cli.dead import dead
from votes_app.cli.health import health
from votes_app.cli.laws import certify, close, laws_group
from votes_app.cli.preflight import preflight
from votes_app.cli.results import check_tallies, results
from votes_app.cli.submit import submit
from votes_app.cli.voters import voters

PLUGIN_GROUP = "votes_app.commands"


def not_installed(name: str, missing: str) -> click.Command:
    """A stand-in for a command whose code is not installed here."""

    def explain() -> None:
        raise click.ClickException(
            f"`votes {name}` is a development tool, and {missing!r} is not installed here "
            "(the production image carries the runtime only). From a checkout of the "
            f"repository: `make {name}`, or `pip install -e '.[dev]'` and then `votes {name}`."
        )

    return click.Command(
        name,
        callback=explain,
        help=f"(not installed here: needs {missing})",
        # Whatever follows the name, `--help` included, gets the explanation.
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


class VotesGroup(click.Group):
    """A group whose plugin commands are imported on first use (click: lazily loading
    subcommands), so that `votes results` never pays for the benchmark's imports."""

    def _plugins(self) -> dict[str, EntryPoint]:
        return {point.name: point for point in entry_points(group=PLUGIN_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        point = self._plugins().get(cmd_name)
        if command is not None or point is None:
            return command
        try:
            loaded = point.load()
        except ModuleNotFoundError as exc:
            return not_installed(cmd_name, exc.name or point.module)
        if not isinstance(loaded, click.Command):
            raise click.ClickException(f"{point.value} is not a click command")
        return loaded


@click.group(cls=VotesGroup)
def main() -> None:
    """votes_app: count referendum votes exactly once."""


for command in (
    laws_group,
    voters,
    submit,
    results,
    check_tallies,
    close,
    certify,
    checkpoint,
    verify,
    export,
    recount,
    health,
    dead,
    broker,
    preflight,
):
    main.add_command(command)
