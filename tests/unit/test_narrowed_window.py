"""The prefetch window narrows while bulk messages are held, and opens again after them."""

from __future__ import annotations

from dataclasses import dataclass, field

from kombu.common import QoS

from votes_app.batching import LARGE_MESSAGE_BYTES, NarrowedWindow

WHOLE, NARROW = 400, 60


@dataclass
class Delivery:
    body: bytes


@dataclass
class Consumer:
    """What the window reads of Celery's consumer: its QoS, replaced at each reconnect."""

    sent: list[int] = field(default_factory=list)
    qos: QoS = field(init=False)

    def __post_init__(self) -> None:
        self.reconnect()

    def reconnect(self) -> None:
        self.qos = QoS(lambda prefetch_count: self.sent.append(prefetch_count), WHOLE)
        self.qos.update()

    def window(self) -> int:
        self.qos.update()  # as Celery's event loop does at its next turn
        return self.sent[-1]


def bulk() -> Delivery:
    return Delivery(b"[" + b" " * LARGE_MESSAGE_BYTES + b"]")


def test_single_votes_leave_the_window_whole() -> None:
    consumer = Consumer()
    window = NarrowedWindow(consumer, narrow=NARROW)
    votes = [Delivery(b"[[], {}, {}]") for _ in range(1000)]
    for vote in votes:
        window.hold(vote)
    window.release(votes)
    assert consumer.window() == WHOLE
    assert consumer.sent == [WHOLE]


def test_the_window_is_narrow_from_the_first_bulk_message_until_the_last_is_settled() -> None:
    consumer = Consumer()
    window = NarrowedWindow(consumer, narrow=NARROW)
    first, second, third = bulk(), bulk(), bulk()

    window.hold(first)
    assert consumer.window() == NARROW
    window.hold(second)
    window.release([first])
    window.hold(third)
    assert consumer.window() == NARROW
    window.release([second, third])
    assert consumer.window() == WHOLE
    assert consumer.sent == [WHOLE, NARROW, WHOLE]


def test_a_retry_waiting_meanwhile_keeps_its_place() -> None:
    consumer = Consumer()
    window = NarrowedWindow(consumer, narrow=NARROW)
    message = bulk()

    window.hold(message)
    consumer.qos.increment_eventually()  # an ETA retry waits in the worker
    assert consumer.window() == NARROW + 1
    window.release([message])
    assert consumer.window() == WHOLE + 1
    consumer.qos.decrement_eventually()
    assert consumer.window() == WHOLE


def test_after_a_reconnect_the_new_window_is_whole_and_stays_so() -> None:
    consumer = Consumer()
    window = NarrowedWindow(consumer, narrow=NARROW)
    held = bulk()
    window.hold(held)
    assert consumer.window() == NARROW

    consumer.reconnect()  # Celery makes a new strategy, and window, on the new channel
    window.release([held])  # the old channel's batch settles late
    assert consumer.window() == WHOLE
