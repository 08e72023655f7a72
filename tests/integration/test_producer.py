"""The producer: votes published in windows of confirms all reach the broker, even across a
lost connection."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support import vote, voter_hash
from votes_app.faults import broker_vhost, rabbitmqctl
from votes_app.producer import ParallelPublisher, VotePublisher

LAW = "loi-21"


def queued_task_ids() -> list[str]:
    """The task ids of every message waiting in votes.validation (taken off the queue)."""
    return [task_id for task_id, _ in queued_messages()]


def queued_messages() -> list[tuple[str, dict[str, Any]]]:
    """(task id, kwargs) of every message waiting in votes.validation (taken off the queue)."""
    from votes_app.celery import VALIDATION, app

    found = []
    (validation,) = (q for q in app.conf.task_queues if q.name == VALIDATION)
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(validation, no_ack=True)
        try:
            while True:
                message: Any = queue.get(timeout=1)
                _, kwargs, _ = message.decode()
                found.append((message.headers["id"], kwargs))
        except queue.Empty:
            return found
        finally:
            queue.close()


def votes(count: int, *, first: int) -> list[tuple[str, dict[str, str]]]:
    return [(str(uuid.uuid4()), vote(voter_hash(first + n, LAW), LAW, "oui")) for n in range(count)]


@pytest.mark.parametrize("window", [1, 7, 100])
def test_every_vote_of_a_window_reaches_the_broker(window: int) -> None:
    sent = votes(250, first=0)

    with VotePublisher(window=window) as publisher:
        for task_id, kwargs in sent:
            assert publisher.publish(kwargs, task_id=task_id) == task_id

    assert sorted(queued_task_ids()) == sorted(task_id for task_id, _ in sent)


def test_votes_unconfirmed_when_the_connection_drops_are_sent_again() -> None:
    before, after = votes(150, first=0), votes(150, first=150)

    # A window larger than the stream: nothing is confirmed before the connection drops.
    with VotePublisher(window=1_000) as publisher:
        for task_id, kwargs in before:
            publisher.publish(kwargs, task_id=task_id)
        rabbitmqctl("close_all_connections", "--vhost", broker_vhost(), "test: connection lost")
        for task_id, kwargs in after:
            publisher.publish(kwargs, task_id=task_id)

    queued = queued_task_ids()
    # Some votes may arrive twice (sent, then sent again unconfirmed): the pipeline counts
    # a task id once. None may be missing.
    assert set(queued) == {task_id for task_id, _ in before + after}
    assert len(queued) >= len(before) + len(after)


def test_parallel_producers_publish_every_vote_once_confirmed() -> None:
    sent = [kwargs for _, kwargs in votes(600, first=0)]
    reported: list[int] = []

    with ParallelPublisher(processes=2, window=50) as producers:
        producers.publish(sent, chunk_size=100, on_progress=reported.append)

    assert sum(reported) == len(sent)
    queued = queued_messages()
    assert sorted(kwargs["vote_hash"] for _, kwargs in queued) == sorted(
        kwargs["vote_hash"] for kwargs in sent
    )
    assert len({task_id for task_id, _ in queued}) == len(sent)


def test_a_publisher_used_outside_its_block_says_so() -> None:
    with pytest.raises(RuntimeError, match="outside of `with VotePublisher"):
        VotePublisher().publish(vote(voter_hash(1, LAW), LAW, "oui"))
