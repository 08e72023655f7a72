"""The producer: votes published in windows of confirms all reach the broker, even across a
lost connection."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support import vote, voter_hash
from votes_app.producer import VotePublisher
from votes_tools.faults.injectors import broker_vhost, rabbitmqctl
from votes_tools.publishing import ParallelPublisher

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
    sent = votes(600, first=0)
    reported: list[int] = []

    publication = ParallelPublisher(processes=2, window=50).publish(
        sent, on_progress=reported.append
    )

    assert reported == sorted(reported) and reported[-1] == len(sent)
    assert (publication.sends, publication.errors) == (len(sent), 0)
    assert set(publication.sent) == {task_id for task_id, _ in sent}
    assert sorted(queued_messages()) == sorted(sent)


def test_a_producer_that_loses_the_broker_mid_stream_loses_nothing() -> None:
    sent = votes(1_000, first=0)
    producers = ParallelPublisher(processes=1, window=1, resend_after_error=50)
    closed_at: list[int] = []

    def close_connections_mid_stream(published: int) -> None:
        if published >= 200 and not closed_at:
            closed_at.append(published)
            rabbitmqctl("close_all_connections", "--vhost", broker_vhost(), "test: broker lost")

    # Paced, so that the connections close while most votes are still to be sent.
    publication = producers.publish(sent, per_second=500, on_progress=close_connections_mid_stream)

    assert closed_at and closed_at[0] < len(sent) / 2
    assert publication.reconnects + publication.errors > 0  # it did lose the broker
    queued = queued_task_ids()
    # A vote may arrive twice (sent, then resent unconfirmed): the pipeline counts a task id
    # once. None may be missing.
    assert set(queued) == {task_id for task_id, _ in sent}


def test_a_publisher_used_outside_its_block_says_so() -> None:
    with pytest.raises(RuntimeError, match="outside of `with VotePublisher"):
        VotePublisher().publish(vote(voter_hash(1, LAW), LAW, "oui"))
