"""The system as it is right now: queue depths, voter roll, flush lag, last flush."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from votes_app.celery import AGGREGATION, DEAD, REVIEW, VALIDATION, app
from votes_app.models import TallyBatch, VoteAudit

ALL_QUEUES = (VALIDATION, AGGREGATION, REVIEW, DEAD)


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


def last_flush_at(*, session: Session) -> datetime | None:
    """When a flush last applied a batch."""
    return session.scalar(sa.select(sa.func.max(TallyBatch.applied_at)))
