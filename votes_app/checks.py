"""Health checks of each dependency (broker, Redis, PostgreSQL, workers, beat): one `Check` each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from votes_app import laws
from votes_app.ballot_box import legacy_roll_size, roll_sizes
from votes_app.celery import app
from votes_app.config import get_settings
from votes_app.migrations import alembic_config
from votes_app.resources import get_engine, get_redis, session_scope
from votes_app.status import seconds_since_flush


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_broker() -> Check:
    url = app.connection_for_write().as_uri()  # as_uri() masks the password
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=5)
    return Check("broker", True, url)


def check_redis() -> Check:
    client = get_redis()
    client.ping()
    with session_scope() as session:
        registered = laws.all_laws(session=session)
    open_laws = laws.open_at(registered, datetime.now(UTC))
    rolls = roll_sizes(client, open_laws)
    legacy = legacy_roll_size(client)
    note = f"; valid_hashes, a roll without laws ({legacy:,} hashes), is not read" if legacy else ""
    if missing := sorted(law_id for law_id, size in rolls.items() if not size):
        return Check(
            "redis",
            False,
            f"answers, but no voter roll for {', '.join(missing)}: their votes are held{note}",
        )
    if not open_laws:
        return Check("redis", True, f"answers; no law is open{note}")
    return Check(
        "redis",
        True,
        f"voter rolls of {len(rolls)} open laws, {sum(rolls.values()):,} hashes{note}",
    )


def check_postgresql() -> Check:
    url = make_url(get_settings().database_url.get_secret_value())
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with get_engine().connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    where = f"{url.host}:{url.port or 5432}/{url.database}"
    if current != head:
        return Check("postgresql", False, f"{where} at migration {current}, head is {head}")
    return Check("postgresql", True, f"{where} at migration head ({head})")


def check_workers() -> Check:
    replies = app.control.ping(timeout=2.0) or []
    nodes = sorted(node for reply in replies for node in reply)
    if not nodes:
        return Check("workers", False, "no worker answered ping")
    return Check("workers", True, ", ".join(nodes))


def check_beat() -> Check:
    interval = get_settings().flush_interval_seconds
    age = seconds_since_flush(get_redis())
    if age is None:
        return Check("beat", False, "no flush has run yet")
    # A few missed beats are normal under load; many mean beat (or the workers) stopped.
    limit = max(10 * interval, 30.0)
    if age > limit:
        return Check("beat", False, f"last flush {age:.0f}s ago (more than {limit:.0f}s)")
    return Check("beat", True, f"last flush {age:.1f}s ago")


CHECKS: dict[str, Callable[[], Check]] = {
    "broker": check_broker,
    "redis": check_redis,
    "postgresql": check_postgresql,
    "workers": check_workers,
    "beat": check_beat,
}


def run_checks(names: list[str]) -> list[Check]:
    results = []
    for name in names:
        try:
            results.append(CHECKS[name]())
        except Exception as exc:  # a health check reports every failure, whatever it is
            results.append(Check(name, False, f"{type(exc).__name__}: {exc}"))
    return results
