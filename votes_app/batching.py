"""Batched validation: the worker buffers `validate_vote` messages and settles them together."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Iterable
from typing import Any

from celery import Celery
from celery.worker.request import Request as CeleryRequest
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task


class SettledBatches(Batches):  # type: ignore[misc]
    """celery-batches' `Batches`, with each message acknowledged according to its fate.

    `Batches.flush` acknowledges every message of a batch when the batch function returns,
    even when it raised, and none when the pool process running it dies, which would leave
    them unacknowledged until the connection closes. Here the batch function returns the ids
    of the messages to dead-letter, the others are acknowledged, and a batch whose process
    was lost goes back to the queue, as `task_reject_on_worker_lost` does for single tasks.

    Each batch is also announced as one task to event consumers (Flower, exporters), which
    `Batches` leaves silent: one event per batch, not two per vote.
    """

    Request = "votes_app.consumer:VotesRequest"
    _events: Any = None

    def Strategy(self, task: Batches, app: Celery, consumer: Any) -> Callable[..., None]:
        # Celery's hook for a task's own message handling: note the event dispatcher.
        self._events = consumer.event_dispatcher
        strategy: Callable[..., None] = super().Strategy(task, app, consumer)
        return strategy

    def _announce(self, kind: str, **fields: Any) -> None:
        if self._events is not None and self._events.enabled:
            self._events.send(kind, **fields)

    def flush(self, requests: Collection[CeleryRequest]) -> Any:
        requests = list(requests)
        batch = ([SimpleRequest.from_request(request) for request in requests],)
        batch_id = uuid.uuid4().hex
        started = time.monotonic()
        self._announce(
            "task-received",
            uuid=batch_id,
            name=self.name,
            args=f"[{len(requests)} votes]",
            kwargs="{}",
            retries=0,
            eta=None,
            root_id=batch_id,
            parent_id=None,
        )

        def on_return(dead_ids: Iterable[str] | None) -> None:
            # None: the batch function itself raised, which it never means to do. Keeping
            # the messages in votes.dead beats both losing them and redelivering in a loop.
            dead = {request.id for request in requests} if dead_ids is None else set(dead_ids)
            for request in requests:
                if request.id in dead:
                    request.reject(requeue=False)
                else:
                    request.acknowledge()
            self._announce(
                "task-succeeded",
                uuid=batch_id,
                result=f"{len(requests) - len(dead)} settled, {len(dead)} to votes.dead",
                runtime=time.monotonic() - started,
            )

        def on_process_lost(*_: Any) -> None:
            for request in requests:
                request.reject(requeue=True)
            self._announce("task-failed", uuid=batch_id, exception="WorkerLostError: requeued")

        return self._pool.apply_async(
            apply_batches_task,
            (self, batch, 0, None),
            callback=on_return,
            error_callback=on_process_lost,
        )
