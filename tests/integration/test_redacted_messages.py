"""What votes_app publishes again carries no vote in its headers: a vote sent back to wait
(a retry), and a message replayed from votes.dead. Celery copies the argument reprs of a
message's headers into task events and logs; the vote itself stays in the body, for the worker.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from celery_batches import SimpleRequest
from kombu import Exchange, Producer

from tests.support import vote, voter_hash
from votes_app.celery import DEAD, VALIDATION, app
from votes_app.redaction import argument_reprs

CITIZEN_ID = "CITIZEN-53c1e7"


def queued(queue: str) -> list[tuple[dict[str, Any], Any]]:
    """(headers, decoded body) of every message waiting in `queue` (taken off the queue)."""
    (declared,) = (q for q in app.conf.task_queues if q.name == queue)
    found = []
    with app.connection_for_write() as connection:
        simple = connection.SimpleQueue(declared, no_ack=True)
        try:
            while True:
                message: Any = simple.get(timeout=1)
                found.append((dict(message.headers), message.decode()))
        except simple.Empty:
            return found
        finally:
            simple.close()


def assert_no_vote_in(headers: dict[str, Any], kwargs: dict[str, Any]) -> None:
    text = json.dumps(headers, default=str)
    assert kwargs["vote_hash"][:8] not in text
    assert kwargs["choice"] not in text
    assert CITIZEN_ID not in text


def test_a_task_sent_through_this_app_carries_the_shapes_of_its_arguments_only() -> None:
    kwargs = vote(voter_hash(3, "law-001"), "law-001", "non", citizen_id=CITIZEN_ID)

    task_id = app.send_task("votes_app.validate_vote", kwargs=kwargs).id

    [(headers, body)] = queued(VALIDATION)
    assert headers["id"] == task_id
    assert headers["kwargsrepr"] == repr(
        {
            "vote_hash": "<str of 64 characters>",
            "law_id": "<str of 7 characters>",
            "choice": "<str of 3 characters>",
            "timestamp": f"<str of {len(kwargs['timestamp'])} characters>",
            "citizen_id": f"<str of {len(CITIZEN_ID)} characters>",
        }
    )
    assert body[1] == kwargs
    assert_no_vote_in(headers, kwargs)


def test_a_vote_sent_back_to_wait_carries_no_vote_in_its_headers() -> None:
    from votes_app.batching import retry_later
    from votes_app.tasks import validate_vote

    kwargs = vote(voter_hash(1, "law-001"), "law-001", "non", citizen_id=CITIZEN_ID)
    task_id = str(uuid.uuid4())
    request = SimpleRequest(
        id=task_id,
        name=validate_vote.name,
        args=(),
        kwargs=kwargs,
        delivery_info={},
        hostname="test",
        ignore_result=True,
        reply_to=None,
        correlation_id=None,
        request_dict={"retries": 0},
    )

    assert retry_later(validate_vote, [request], hold=True) == []

    [(headers, body)] = queued(VALIDATION)
    assert headers["id"] == task_id
    assert (headers["argsrepr"], headers["kwargsrepr"]) == argument_reprs((), kwargs)
    assert body[1] == kwargs  # the vote travels on, in the body
    assert_no_vote_in(headers, kwargs)


def test_a_replayed_dead_letter_carries_no_vote_in_its_headers() -> None:
    from votes_app.dead_letters import replay

    kwargs = vote(voter_hash(2, "law-001"), "law-001", "oui", citizen_id=CITIZEN_ID)
    task_id = str(uuid.uuid4())
    # As a Celery producer writes it, with its own reprs of the arguments, dead-lettered
    # from votes.validation.
    headers = {
        "task": "votes_app.validate_vote",
        "id": task_id,
        "lang": "py",
        "argsrepr": "()",
        "kwargsrepr": repr(kwargs),
        "x-death": [{"queue": VALIDATION, "reason": "rejected", "count": 1}],
    }
    with app.connection_for_write() as connection:
        Producer(connection.default_channel).publish(
            [[], kwargs, {}],
            exchange=Exchange(DEAD, type="fanout", durable=True),
            routing_key=VALIDATION,
            headers=headers,
            serializer="json",
            delivery_mode=2,
        )
        assert replay(connection, lambda found: found == task_id) == [task_id]

    [(replayed, body)] = queued(VALIDATION)
    assert replayed["id"] == task_id
    assert (replayed["argsrepr"], replayed["kwargsrepr"]) == argument_reprs((), kwargs)
    assert body[1] == kwargs
    assert_no_vote_in(replayed, kwargs)
