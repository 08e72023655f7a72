"""AckCoalescer: one multiple ack for the settled run at the front, never past a delivery that
is not settled, and nothing held for long behind one that waits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from votes_app.consumer import AckCoalescer


class RecordingChannel:
    """The two methods of a channel the coalescer calls, recording what RabbitMQ would get."""

    is_open = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bool]] = []

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.sent.append(("ack", delivery_tag, multiple))

    def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        self.sent.append(("reject", delivery_tag, requeue))


def coalescer(
    channel: RecordingChannel, *, hold_limit: int = 200
) -> tuple[AckCoalescer, list[Callable[[], None]]]:
    scheduled: list[Callable[[], None]] = []
    acks = AckCoalescer(channel, schedule=scheduled.append, hold_limit=hold_limit)
    return acks, scheduled


def run(scheduled: list[Callable[[], None]]) -> None:
    while scheduled:
        scheduled.pop(0)()


def settled_by_broker(sent: list[tuple[str, int, Any]], delivered: range) -> set[int]:
    """The tags RabbitMQ would consider settled after `sent`."""
    done: set[int] = set()
    for kind, tag, flag in sent:
        if kind == "ack" and flag:
            done |= {t for t in delivered if t <= tag}
        else:
            assert tag not in done, f"tag {tag} settled twice"
            done.add(tag)
    return done


def test_a_batch_settled_in_one_turn_is_one_multiple_ack() -> None:
    channel = RecordingChannel()
    acks, scheduled = coalescer(channel)
    for tag in range(1, 101):
        acks.delivered(tag)
    for tag in range(1, 101):
        channel.basic_ack(tag)  # what kombu's Message.ack calls

    run(scheduled)

    assert channel.sent == [("ack", 100, True)]


def test_no_ack_reaches_past_a_delivery_still_running() -> None:
    channel = RecordingChannel()
    acks, scheduled = coalescer(channel)
    for tag in range(1, 11):
        acks.delivered(tag)
    for tag in (1, 2, 3, 5, 6, 7):  # 4 runs on (an aggregation task), 8-10 fill a batch
        channel.basic_ack(tag)
    channel.basic_reject(8, requeue=False)
    run(scheduled)

    assert settled_by_broker(channel.sent, range(1, 11)) == {1, 2, 3, 8}

    channel.basic_ack(4)
    run(scheduled)
    assert settled_by_broker(channel.sent, range(1, 11)) == {1, 2, 3, 4, 5, 6, 7, 8}
    assert channel.sent[-1] == ("ack", 7, True)


def test_settled_deliveries_behind_a_long_wait_go_one_by_one() -> None:
    channel = RecordingChannel()
    acks, scheduled = coalescer(channel, hold_limit=5)
    for tag in range(1, 21):
        acks.delivered(tag)
    # Tag 1 waits for its ETA; the others settle.
    for tag in range(2, 21):
        channel.basic_ack(tag)
    run(scheduled)

    assert settled_by_broker(channel.sent, range(1, 21)) == set(range(2, 21))
    channel.basic_ack(1)
    run(scheduled)
    assert settled_by_broker(channel.sent, range(1, 21)) == set(range(1, 21))
