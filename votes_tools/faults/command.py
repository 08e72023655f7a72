"""`votes faults`: its options, and the campaign started on the campaign's namespace."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from votes_tools.faults.campaign import run_campaign
from votes_tools.faults.options import QUICK_VOTES, CampaignOptions
from votes_tools.faults.scenarios import SCENARIOS
from votes_tools.namespace import FAULTS


def plan(params: dict[str, Any], directory: Path) -> tuple[list[str], CampaignOptions]:
    """The scenarios to run and how, from the options of `votes faults`."""
    options = CampaignOptions.quick(directory) if params["quick"] else CampaignOptions(directory)
    changes: dict[str, Any] = {"redis_restart": params["redis_restart"]}
    if params["votes"]:
        changes["votes"] = params["votes"]
    if params["bulk"]:
        changes["bulk"] = params["bulk"]
    if params["rabbitmq_restart"]:
        changes["broker_restart"] = params["rabbitmq_restart"]
    if params["real_restarts"]:
        changes |= {"broker_restart": "stop-app", "redis_restart": "shutdown"}
    return list(params["scenarios"]) or list(SCENARIOS), replace(options, **changes)


@click.command()
@click.option("--votes", type=click.IntRange(min=1_000), help="Votes per scenario.")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(list(SCENARIOS)),
    help="Run only this scenario (repeatable).",
)
@click.option(
    "--quick",
    is_flag=True,
    help=f"{QUICK_VOTES:,} votes per scenario, 5 s outages, RabbitMQ connections"
    " closed instead of the broker stopped (the short version `make test` runs).",
)
@click.option(
    "--rabbitmq-restart",
    type=click.Choice(["stop-app", "close-connections"]),
    help="stop-app (default; stops the whole broker for everyone) or"
    " close-connections (only this namespace's vhost).",
)
@click.option(
    "--real-restarts",
    is_flag=True,
    help="Restart RabbitMQ (stop_app/start_app) and Redis (shutdown nosave, then start)"
    " for real: every user of this machine's services sees them go.",
)
@click.option(
    "--redis-restart",
    type=click.Choice(["empty", "shutdown"]),
    default="empty",
    show_default=True,
    help="empty: empty this namespace's Redis index and drop its clients;"
    " shutdown: `redis-cli shutdown nosave` and start it again (for everyone).",
)
@click.option(
    "--bulk",
    type=click.IntRange(min=1, max=500),
    help="Votes per validate_votes message (bulk intake); default 1, a validate_vote each.",
)
def faults(**params: Any) -> None:
    """The fault campaign: kills, restarts and outages while votes stream in.

    One table row per scenario; exit code 1 if any vote is lost, counted twice, wrongly
    refused or left in votes.dead, or if a law's close or certification fails or its
    certified count moves (close-and-certify). Runs on a namespace of its own: FAULTS_DATABASE_URL
    (default database votes_faults), FAULTS_REDIS_URL (Redis index 3), FAULTS_BROKER_URL
    (vhost votes_faults), wiped before each scenario.
    """
    FAULTS.run("votes_tools.faults", [json.dumps(params)])


def main(arguments: str) -> int:
    """The campaign itself, on the namespace the environment names (`python -m
    votes_tools.faults OPTIONS_JSON`, which `votes faults` runs)."""
    names, options = plan(json.loads(arguments), Path(tempfile.mkdtemp(prefix="faults-")))
    return run_campaign(names, options)
