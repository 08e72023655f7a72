"""The system as it is now: queue depths, voter roll, flush lag, beat's heartbeat."""

from __future__ import annotations

import time
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from votes_app import metrics, tallies
from votes_app.ballot_box import voter_roll_size
from votes_app.celery import ALL_QUEUES, VALIDATION, app
from votes_app.models import VoteAudit
from votes_app.resources import get_redis, session_scope

FLUSH_HEARTBEAT = "tallies:last_flush"


def record_flush_heartbeat(client: redis.Redis) -> None:
    """Each flush says when it ran: beat is alive while this stays fresh."""
    client.set(FLUSH_HEARTBEAT, f"{time.time():.3f}")


def seconds_since_flush(client: redis.Redis) -> float | None:
    """How long ago the last flush ran; None when none has run."""
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


def flush_lag_seconds(*, session: Session) -> float:
    """Age of the oldest recorded vote that no flush has counted yet; 0 when none waits."""
    lag = session.scalar(
        sa.select(
            sa.func.extract("epoch", sa.func.now() - sa.func.min(VoteAudit.recorded_at))
        ).where(VoteAudit.tally_batch.is_(None))
    )
    return float(lag or 0.0)


def refresh_gauges() -> None:
    """Gauges that describe the whole system, refreshed by each flush (once a second)."""
    measure = metrics.get()
    with session_scope() as session:
        measure.flush_lag.set(flush_lag_seconds(session=session))
        for (law_id, choice), count in tallies.results_by_law(session=session).items():
            measure.current_vote_totals.labels(law_id=law_id, choice=choice).set(count)
    roll = voter_roll_size(get_redis())
    measure.voter_roll_size.set(roll)
    measure.voter_roll_missing.set(0 if roll else 1)
    depths = queue_depths()
    for queue, depth in depths.items():
        measure.queue_depth.labels(queue=queue).set(depth)
    measure.validation_queue_size.set(depths[VALIDATION])
