"""The system as it is now: queue depths, voter roll, flush lag, beat's heartbeat."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from votes_app import laws, metrics, tallies
from votes_app.ballot_box import roll_sizes
from votes_app.celery import ALL_QUEUES, VALIDATION, app
from votes_app.models import Ballot
from votes_app.resources import get_redis, session_scope

FLUSH_HEARTBEAT = "tallies:last_flush"


def record_flush_heartbeat(client: redis.Redis, began: float) -> None:
    """Each flush says when it began (unix time), once it has committed: beat is alive while
    this stays fresh, and no ballot waiting now is older than it."""
    client.set(FLUSH_HEARTBEAT, f"{began:.3f}")


def seconds_since_flush(client: redis.Redis) -> float | None:
    """How long ago the last successful flush began; None when none has run."""
    last = client.get(FLUSH_HEARTBEAT)
    return None if last is None else time.time() - float(str(last))


def queue_depths() -> dict[str, int]:
    """Ready messages per queue (declared passively; a missing queue counts as empty)."""
    from amqp.exceptions import NotFound

    depths = {}
    with app.connection_for_write() as connection:
        for name in ALL_QUEUES:
            channel: Any = connection.channel()
            try:
                _, depths[name], _ = channel.queue_declare(name, passive=True)
            except NotFound:
                depths[name] = 0
            finally:
                if channel.is_open:
                    channel.close()
    return depths


def flush_lag_seconds(*, session: Session, client: redis.Redis) -> float:
    """How old the oldest ballot waiting for a flush can be: 0 when none waits, else the
    time since the last flush began, which counted every ballot it found (ballots carry no
    time of their own: it would match their voter's). Infinite when no flush has run."""
    waiting = session.scalar(
        sa.select(sa.literal(True)).where(Ballot.tally_batch.is_(None)).limit(1)
    )
    if not waiting:
        return 0.0
    since = seconds_since_flush(client)
    return math.inf if since is None else since


def refresh_gauges() -> None:
    """Gauges that describe the whole system, refreshed by each flush (once a second)."""
    measure = metrics.get()
    client = get_redis()
    with session_scope() as session:
        measure.flush_lag.set(flush_lag_seconds(session=session, client=client))
        per_choice = tallies.results_by_law(session=session)
        registered = laws.all_laws(session=session)
    final = {law.law_id for law in registered if law.final}
    per_law: dict[str, int] = {}
    for (law_id, choice), count in per_choice.items():
        per_law[law_id] = per_law.get(law_id, 0) + count
        # Per choice while voting is open only where EXPORT_CHOICE_METRICS says so.
        if measure.per_choice or law_id in final:
            measure.choice_totals().labels(law_id=law_id, choice=choice).set(count)
    for law_id, count in per_law.items():
        measure.current_law_totals.labels(law_id=law_id).set(count)
    rolls = roll_sizes(client, laws.open_at(registered, datetime.now(UTC)))
    measure.voter_roll_size.set(sum(rolls.values()))
    measure.voter_roll_missing.set(1 if not all(rolls.values()) else 0)
    depths = queue_depths()
    for queue, depth in depths.items():
        measure.queue_depth.labels(queue=queue).set(depth)
    measure.validation_queue_size.set(depths[VALIDATION])
