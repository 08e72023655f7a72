"""The raw kombu ceiling: what the broker does with the same messages when no Celery, Redis or
PostgreSQL touches them. Producers publish as `VotePublisher` does, a consumer acknowledges
each message with a worker's prefetch, as Celery's late acks do."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from kombu import Connection, Consumer, Queue

from votes_app.config import get_settings
from votes_app.producer import Message, VotePublisher
from votes_tools.bench.accounting import cpu_by_component, cpu_ticks, net_cpu_ms
from votes_tools.bench.display import Display
from votes_tools.bench.options import BenchOptions
from votes_tools.bench.report import rate
from votes_tools.publishing import ParallelPublisher
from votes_tools.workload import Workload

CEILING_QUEUE = "votes.bench.ceiling"


def celery_body(kwargs: dict[str, str]) -> list[Any]:
    """The body Celery publishes for these kwargs (protocol 2), to size the raw messages."""
    return [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


class RawPublisher(VotePublisher):
    """`VotePublisher` with its confirm window and reconnects, sending each message with
    kombu alone (persistent, JSON) to the scratch queue instead of as a Celery task."""

    def _send(self, message: Message) -> None:
        _, task_id, kwargs = message
        self._producer.publish(
            kwargs,
            exchange="",
            routing_key=CEILING_QUEUE,
            serializer="json",
            delivery_mode=2,
            message_id=task_id,
            retry=False,
        )


class RawConsumer(threading.Thread):
    """One kombu consumer acknowledging each message, with a worker's prefetch."""

    def __init__(self, url: str, queue: Queue, prefetch: int, expected: int) -> None:
        super().__init__(daemon=True)
        self.url, self.queue, self.prefetch, self.expected = url, queue, prefetch, expected
        self.consumed = 0
        self.first = self.last = 0.0
        self.error: BaseException | None = None
        self.ready = threading.Event()

    def on_message(self, body: Any, message: Any) -> None:
        message.ack()
        self.consumed += 1
        self.last = time.time()
        if self.consumed == 1:
            self.first = self.last

    def run(self) -> None:
        try:
            with Connection(self.url) as connection:
                channel = connection.channel()
                with Consumer(
                    channel,
                    queues=[self.queue],
                    callbacks=[self.on_message],
                    accept=["json"],
                    prefetch_count=self.prefetch,
                ):
                    self.ready.set()
                    while self.consumed < self.expected:
                        connection.drain_events(timeout=60)
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def wait(self, on_tick: Callable[[int], None]) -> None:
        while self.is_alive():
            on_tick(self.consumed)
            self.join(timeout=0.25)
        on_tick(self.consumed)
        if self.error is not None:
            raise RuntimeError(f"ceiling consumer failed: {self.error!r}")


def measure_ceiling(
    options: BenchOptions, workload: Workload, display: Display, idle: dict[str, float]
) -> dict[str, Any]:
    """kombu alone on the same broker, with as many messages of the same size as the
    throughput run, in three passes: publish alone, consume alone (the queue full), then
    both at once, first publish -> last acknowledgement: what the pipeline's end to end
    is compared with."""
    settings = get_settings()
    url = settings.broker_url
    scratch = Queue(CEILING_QUEUE, durable=True, auto_delete=False)
    bodies = [(task_id, celery_body(kwargs)) for task_id, kwargs in workload.messages]
    body_bytes = statistics.mean(len(json.dumps(body)) for _, body in bodies[:1000])
    prefetch = settings.worker_prefetch_multiplier * options.concurrency
    total = len(bodies)
    with Connection(url) as connection:
        scratch(connection.default_channel).declare()
        scratch(connection.default_channel).purge()
    roles = {os.getpid(): "consumer"}
    producers = ParallelPublisher(
        processes=options.producers, window=options.window, opener=RawPublisher
    )

    ticks = cpu_ticks()
    alone = producers.publish(
        bodies, on_progress=lambda n: display.show("ceiling: publish", n, total)
    )
    publish_cpu = cpu_by_component(ticks, cpu_ticks(), roles) | {"producers": alone.cpu_seconds}
    publish_seconds = time.time() - alone.first

    ticks = cpu_ticks()
    drain = RawConsumer(url, scratch, prefetch, total)
    drain.start()
    drain.wait(lambda n: display.show("ceiling: consume/ack", n, total))
    consume_cpu = cpu_by_component(ticks, cpu_ticks(), roles)
    consume_seconds = drain.last - drain.first

    both = RawConsumer(url, scratch, prefetch, total)
    both.start()
    both.ready.wait(timeout=60)
    line = "ceiling: publish + consume/ack"
    together = producers.publish(bodies, on_progress=lambda n: display.show(line, n, total))
    both.wait(lambda n: display.show(line, n, total))
    with Connection(url) as connection:
        scratch(connection.default_channel).delete()
    return {
        "messages": total,
        "body_bytes": round(body_bytes),
        "prefetch": prefetch,
        "publish_per_second": rate(total, alone.seconds),
        "consume_ack_per_second": rate(total, consume_seconds),
        "publish_and_consume_per_second": rate(total, both.last - together.first),
        "cpu_ms_per_message": {
            "publish": net_cpu_ms(publish_cpu, idle, publish_seconds, total),
            "consume_ack": net_cpu_ms(consume_cpu, idle, consume_seconds, total),
        },
    }
