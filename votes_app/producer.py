"""Publishing votes the way a producer service does: one `validate_vote` task per vote."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
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
            "votes_app.validate_vote",
            kwargs=kwargs,
            task_id=task_id,
            producer=self._producer,
            # Celery copies a repr of the arguments into the message headers, where task
            # events and logs pick it up: leave the voter's identity out of it.
            kwargsrepr=repr({k: v for k, v in kwargs.items() if k != "citizen_id"}),
        )
        return str(result.id)


_process_publisher: VotePublisher | None = None


def _open_process_publisher() -> None:
    global _process_publisher
    _process_publisher = VotePublisher().__enter__()


def _publish_chunk(chunk: list[dict[str, Any]]) -> int:
    assert _process_publisher is not None, "started without _open_process_publisher"
    for kwargs in chunk:
        _process_publisher.publish(kwargs)
    return len(chunk)


def publish_in_parallel(
    votes: Sequence[dict[str, Any]],
    *,
    processes: int = 4,
    chunk_size: int = 250,
    on_progress: Callable[[int], None] = lambda _: None,
) -> None:
    """Publish from several processes at once, as many producer services would.

    A publisher confirm costs a round trip per message, so one process waits most of the
    time; a few processes keep the broker busy. `on_progress` gets each chunk's size.
    """
    chunks = [list(votes[i : i + chunk_size]) for i in range(0, len(votes), chunk_size)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        processes, mp_context=context, initializer=_open_process_publisher
    ) as pool:
        for done in as_completed([pool.submit(_publish_chunk, chunk) for chunk in chunks]):
            on_progress(done.result())
