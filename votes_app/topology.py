"""What votes_app asks of RabbitMQ: exchanges, queues, bindings, policies and who may publish what.

Every process that publishes or consumes declares the same topology (`declare`) when it
connects, so that no message can reach an exchange with no queue bound to it: a worker, beat,
`VotePublisher`, the tools. The queues are declared with no optional arguments at all, the way
a plain Celery producer declares them (`send_task(..., queue="votes.validation")`); what
RabbitMQ must do with their messages (dead-letter, bound their length, refuse a publish when
full) comes from policies, which RabbitMQ recommends over queue arguments because a policy can
change without redeclaring the queue ("Policies", rabbitmq.com/docs/parameters#policies;
"Dead Letter Exchanges: Configuration using a Policy", rabbitmq.com/docs/dlx). A queue declared
with another argument would be refused to every later declarer (PRECONDITION_FAILED), and the
worker that hit it would stop: arguments here are a contract with every producer team.

The policies (`policies`) are applied by scripts/services.sh on a development machine and by
the definitions the compose stack imports (deploy/rabbitmq/definitions.json, made by
`votes broker definitions`).

Producers have a route of their own, the exchange `votes.validation`, whose one binding leads
to the queue of the same name: a producer's RabbitMQ user may write to that exchange and to
nothing else (deploy/rabbitmq/users.sh), so it cannot reach aggregation, review or the
workers' control channel. Tasks the workers send one another (`INTERNAL_TASKS`) are run only
when the message's `user_id` property, which RabbitMQ checks against the publishing
connection's user ("Validated User-ID", rabbitmq.com/docs/validated-user-id), names a trusted
user (votes_app.consumer).
"""

from __future__ import annotations

from typing import Any

from kombu import Connection, Exchange, Queue

from votes_app.config import Settings

VALIDATION = "votes.validation"
AGGREGATION = "votes.aggregation"
REVIEW = "votes.review"
DEAD = "votes.dead"
# The queues workers consume, and with votes.dead every queue of the application.
WORK_QUEUES = (VALIDATION, AGGREGATION, REVIEW)
ALL_QUEUES = (*WORK_QUEUES, DEAD)

# The workers' exchange: every route, for the tasks they send each other.
VOTES_EXCHANGE = Exchange("votes", type="direct", durable=True)
# The producers' exchange: one route, to votes.validation. Named as Celery names the
# exchange it makes for a queue it does not know, so a plain Celery producer's declaration
# (`queue="votes.validation"`) is this one.
INTAKE_EXCHANGE = Exchange(VALIDATION, type="direct", durable=True)
# Fanout keeps each dead message's original routing key, so a replay knows its queue.
DEAD_EXCHANGE = Exchange(DEAD, type="fanout", durable=True)
DEAD_QUEUE = Queue(DEAD, DEAD_EXCHANGE, durable=True)

# The tasks producers send: one vote a message, or many.
VALIDATE_VOTE = "votes_app.validate_vote"
VALIDATE_VOTES = "votes_app.validate_votes"
# Tasks only workers and beat send: refused when they come from anyone else's user.
INTERNAL_TASKS = frozenset(
    {"votes_app.aggregate_vote", "votes_app.flush_tallies", "votes_app.record_review"}
)

WORK_POLICY = "votes-work"
DEAD_POLICY = "votes-dead"


def task_queues(settings: Settings) -> tuple[Queue, ...]:
    """The work queues, as workers consume them and Celery routes to them."""
    arguments: dict[str, Any] | None = None
    if settings.queue_type == "quorum":
        # The one argument a policy cannot give. Producers must then declare nothing
        # (docs/PRODUCERS.md): a classic declaration of a quorum queue is refused.
        arguments = {"x-queue-type": "quorum"}
    return tuple(
        Queue(name, VOTES_EXCHANGE, routing_key=name, durable=True, queue_arguments=arguments)
        for name in WORK_QUEUES
    )


def declare(connection: Connection, settings: Settings) -> None:
    """Declare every exchange, queue and binding of the application (idempotent)."""
    channel = connection.default_channel
    for queue in (*task_queues(settings), DEAD_QUEUE):
        queue.bind(channel).declare()
    INTAKE_EXCHANGE.bind(channel).declare()
    Queue(VALIDATION, INTAKE_EXCHANGE, routing_key=VALIDATION, durable=True).bind(
        channel
    ).queue_bind()


def policies(settings: Settings) -> dict[str, dict[str, Any]]:
    """The RabbitMQ policies, by name: pattern, definition, and what they apply to.

    Work queues dead-letter what a worker rejects into votes.dead and refuse new messages
    past QUEUE_MAX_BYTES (`reject-publish`: a producer with confirms gets a `basic.nack`, and
    sends again later, instead of a broker that fills its disk and blocks every publisher).
    votes.dead keeps DEAD_LETTER_MAX_BYTES; past it RabbitMQ drops further dead letters,
    whose reasons the workers still record ("Queue Length Limit", rabbitmq.com/docs/maxlength).
    """
    work: dict[str, Any] = {
        "dead-letter-exchange": DEAD,
        "max-length-bytes": settings.queue_max_bytes,
        "overflow": "reject-publish",
    }
    if settings.queue_type == "quorum":
        # Quorum queues count deliveries themselves and dead-letter past the limit.
        work["delivery-limit"] = settings.max_redeliveries
    return {
        WORK_POLICY: {
            "pattern": "^votes\\.(validation|aggregation|review)$",
            "definition": work,
            "apply-to": "queues",
            "priority": 10,
        },
        DEAD_POLICY: {
            "pattern": "^votes\\.dead$",
            "definition": {
                "max-length-bytes": settings.dead_letter_max_bytes,
                "overflow": "reject-publish",
            },
            "apply-to": "queues",
            "priority": 10,
        },
    }


def definitions(settings: Settings, vhost: str) -> dict[str, Any]:
    """RabbitMQ definitions (`rabbitmqctl import_definitions`) of the topology and policies.

    No users: their passwords come from the environment (deploy/rabbitmq/users.sh).
    """

    def exchange(e: Exchange) -> dict[str, Any]:
        return {
            "name": e.name,
            "vhost": vhost,
            "type": e.type,
            "durable": e.durable,
            "auto_delete": e.auto_delete,
            "internal": False,
            "arguments": {},
        }

    def queue(q: Queue) -> dict[str, Any]:
        return {
            "name": q.name,
            "vhost": vhost,
            "durable": q.durable,
            "auto_delete": q.auto_delete,
            "arguments": q.queue_arguments or {},
        }

    def binding(source: str, destination: str, routing_key: str) -> dict[str, Any]:
        return {
            "source": source,
            "vhost": vhost,
            "destination": destination,
            "destination_type": "queue",
            "routing_key": routing_key,
            "arguments": {},
        }

    queues = (*task_queues(settings), DEAD_QUEUE)
    return {
        "vhosts": [{"name": vhost}],
        "policies": [
            {"vhost": vhost, "name": name, **policy} for name, policy in policies(settings).items()
        ],
        "exchanges": [exchange(e) for e in (VOTES_EXCHANGE, INTAKE_EXCHANGE, DEAD_EXCHANGE)],
        "queues": [queue(q) for q in queues],
        "bindings": [
            *(binding(VOTES_EXCHANGE.name, name, name) for name in WORK_QUEUES),
            binding(INTAKE_EXCHANGE.name, VALIDATION, VALIDATION),
            binding(DEAD_EXCHANGE.name, DEAD, ""),
        ],
    }
