"""Publishing votes the way a producer service does: one `validate_vote` task per vote."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from kombu import Connection

from votes_app.celery import app, declare_dead_letters


class VotePublisher:
    """One broker connection, with publisher confirms, reused for many votes."""

    def __init__(self) -> None:
        self._connection: Connection | None = None
        self._producer: Any = None

    def __enter__(self) -> Self:
        self._connection = app.connection_for_write()
        declare_dead_letters(self._connection)
        self._producer = app.amqp.Producer(self._connection)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            self._connection.release()

    def publish(self, kwargs: dict[str, Any], *, task_id: str | None = None) -> str:
        """Send one vote; returns its task id. Resend with the same task id after an error:
        the pipeline recognises its own message and counts the vote once."""
        result = app.send_task(
            "votes_app.validate_vote", kwargs=kwargs, task_id=task_id, producer=self._producer
        )
        return str(result.id)
