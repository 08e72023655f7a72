"""The tools' namespaces: a database, a Redis index and a vhost of their own, which they wipe.

`votes demo|bench|faults` run the tool again in a fresh interpreter whose OWNER_DATABASE_URL,
DATABASE_URL, REDIS_URL and CELERY_BROKER_URL name the tool's namespace, never the
application's: every setting then comes from that environment, as for an operator's worker.
The tool resets and runs the election with the owner's role; its workers connect as the
application's role, `votes_app`, as in production.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import sqlalchemy as sa
from alembic import command
from dotenv import dotenv_values
from sqlalchemy.engine import make_url

from votes_app.celery import ALL_QUEUES, app
from votes_app.migrations import alembic_config
from votes_app.resources import get_owner_engine, get_redis
from votes_tools.processes import python, run

# Set in the environment of a tool running on its namespace; `reset` wipes nothing without it.
NAMESPACE_VARIABLE = "VOTES_TOOLS_NAMESPACE"
APP_ROLE = "votes_app"  # the role the migrations make


@dataclass(frozen=True, slots=True)
class Namespace:
    """Database votes_NAME, Redis index `redis_index`, vhost votes_NAME.

    NAME_DATABASE_URL (the owner's role), NAME_REDIS_URL and NAME_BROKER_URL (environment
    or `.env`) override each of them.
    """

    name: str
    redis_index: int

    def environment(self) -> dict[str, str]:
        """This process's environment, with the connections pointed at the namespace."""
        prefix = self.name.upper()
        configured = {**dotenv_values(".env"), **os.environ}
        defaults = {
            "DATABASE_URL": f"postgresql+psycopg2://postgres@127.0.0.1:5432/votes_{self.name}",
            "REDIS_URL": f"redis://127.0.0.1:6379/{self.redis_index}",
            "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/votes_{self.name}",
        }
        env = os.environ | {NAMESPACE_VARIABLE: self.name}
        for variable, default in defaults.items():
            override = configured.get(f"{prefix}_{variable.removeprefix('CELERY_')}")
            env[variable] = override or default
        owner = make_url(env["DATABASE_URL"])
        env["OWNER_DATABASE_URL"] = owner.render_as_string(hide_password=False)
        env["DATABASE_URL"] = owner.set(
            username=APP_ROLE, password=configured.get("APP_DATABASE_PASSWORD") or None
        ).render_as_string(hide_password=False)
        return env

    def run(self, module: str, args: list[str]) -> NoReturn:
        """Run `python -m module args` on the namespace, then exit with its status."""
        done = run(python(module, *args), env=self.environment(), timeout=None, capture=False)
        sys.exit(done.returncode)


DEMO = Namespace("demo", redis_index=1)
BENCH = Namespace("bench", redis_index=2)
FAULTS = Namespace("faults", redis_index=3)


def reset() -> None:
    """Rebuild this namespace's database from the migrations; empty its Redis index and
    queues. Refused outside a namespace (see `Namespace.run`): it destroys data."""
    if not os.environ.get(NAMESPACE_VARIABLE):
        raise RuntimeError(
            f"refusing to wipe the configured database: {NAMESPACE_VARIABLE} is not set "
            "(run the tool as `votes demo|bench|faults`)"
        )
    with get_owner_engine().begin() as connection:
        connection.execute(sa.text("DROP SCHEMA public CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA public"))
    command.upgrade(alembic_config(), "head")
    get_redis().flushdb()
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        for queue in ALL_QUEUES:
            channel.queue_delete(queue)
