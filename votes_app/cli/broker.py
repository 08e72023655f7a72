"""`votes broker`: what RabbitMQ must hold for votes_app, as files its own tools import."""

from __future__ import annotations

import json

import click

from votes_app.config import get_settings
from votes_app.topology import definitions as topology_definitions


@click.group()
def broker() -> None:
    """RabbitMQ's side of the contract: topology and policies."""


@broker.command()
@click.option("--vhost", default="votes", show_default=True, help="The vhost they describe.")
def definitions(vhost: str) -> None:
    """Print the exchanges, queues, bindings and policies as RabbitMQ definitions (JSON).

    The compose stack imports deploy/rabbitmq/definitions.json, made by this command with
    the default settings; scripts/services.sh applies its policies to the local vhosts.
    After changing QUEUE_MAX_BYTES, DEAD_LETTER_MAX_BYTES, QUEUE_TYPE or MAX_REDELIVERIES:
    `votes broker definitions > deploy/rabbitmq/definitions.json`, then import it again
    (`rabbitmqctl import_definitions`; a policy changes without redeclaring any queue).
    """
    click.echo(json.dumps(topology_definitions(get_settings(), vhost), indent=2))


@broker.command()
def declare() -> None:
    """Declare every exchange, queue and binding on CELERY_BROKER_URL's vhost (idempotent).

    Workers, beat and `VotePublisher` do this when they connect; this is for a broker where
    none has run yet (a new vhost, one restored without definitions), before producers
    publish. Policies are not declared here: they need `rabbitmqctl` or the management API
    (scripts/services.sh, or importing `votes broker definitions`).
    """
    from votes_app.celery import app, declare_topology

    with app.connection_for_write() as connection:
        declare_topology(connection)
    click.echo(f"declared: exchanges, queues and bindings on {connection.as_uri()}")
