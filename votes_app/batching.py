"""Batched validation: the worker buffers `validate_vote` messages and settles them together."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from celery.worker.request import Request
from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task


class SettledBatches(Batches):  # type: ignore[misc]
    """celery-batches' `Batches`, with each message acknowledged according to its fate.

    `Batches.flush` acknowledges every message of a batch when the batch function returns,
    even when it raised, and none when the pool process running it dies, which would leave
    them unacknowledged until the connection closes. Here the batch function returns the ids
    of the messages to dead-letter, the others are acknowledged, and a batch whose process
    was lost goes back to the queue, as `task_reject_on_worker_lost` does for single tasks.
    """

    def flush(self, requests: Collection[Request]) -> Any:
        requests = list(requests)
        batch = ([SimpleRequest.from_request(request) for request in requests],)

        def on_return(dead_ids: Iterable[str] | None) -> None:
            # None: the batch function itself raised, which it never means to do. Keeping
            # the messages in votes.dead beats both losing them and redelivering in a loop.
            dead = {request.id for request in requests} if dead_ids is None else set(dead_ids)
            for request in requests:
                if request.id in dead:
                    request.reject(requeue=False)
                else:
                    request.acknowledge()

        def on_process_lost(*_: Any) -> None:
            for request in requests:
                request.reject(requeue=True)

        return self._pool.apply_async(
            apply_batches_task,
            (self, batch, 0, None),
            callback=on_return,
            error_callback=on_process_lost,
        )
