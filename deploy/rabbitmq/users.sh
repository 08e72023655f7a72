#!/bin/sh
# The RabbitMQ users of votes_app, one per role, each with only the rights its role needs
# (docs/ROLES.md). Run on the broker's node, as the compose stack's rabbitmq service does
# once the node is up; idempotent. Passwords come from the environment, never from a file
# in git. rabbitmq.com/docs/access-control: "configure" creates and deletes queues and
# exchanges, "write" publishes to an exchange (and binds a queue), "read" consumes from a
# queue (and binds from an exchange).
#
#   VOTES_VHOST                                   the application's vhost (votes)
#   RABBITMQ_PRODUCER_USER / _PASSWORD            producer services: publish votes, nothing else
#   RABBITMQ_WORKER_USER / _PASSWORD              workers, beat and the operator's `votes`
#   RABBITMQ_MONITOR_USER / _PASSWORD             the exporter and Flower: read events, see queues
set -eu

vhost=${VOTES_VHOST:-votes}

user() { # name password tags configure write read
	if rabbitmqctl -q list_users | cut -f1 | grep -qx -- "$1"; then
		printf '%s' "$2" | rabbitmqctl -q change_password "$1" >/dev/null
	else
		printf '%s' "$2" | rabbitmqctl -q add_user "$1" >/dev/null
	fi
	rabbitmqctl -q set_user_tags "$1" $3
	rabbitmqctl -q set_permissions -p "$vhost" "$1" "$4" "$5" "$6"
}

# Producers write to the exchange votes.validation, whose one binding is the queue
# votes.validation: no other queue, no declaring, no consuming, no remote control.
user "$RABBITMQ_PRODUCER_USER" "$RABBITMQ_PRODUCER_PASSWORD" "" '^$' '^votes\.validation$' '^$'

# Workers and beat: the application's exchanges and queues, Celery's event exchange and its
# remote-control (pidbox) exchanges and queues, which `celery inspect ping` health checks use.
celery='^(votes(\..+)?|celeryev(\..+)?|celery\.pidbox|reply\.celery\.pidbox|.+\.celery\.pidbox|.+\.reply\.celery\.pidbox)$'
user "$RABBITMQ_WORKER_USER" "$RABBITMQ_WORKER_PASSWORD" "" "$celery" "$celery" "$celery"

# Monitoring (celery-exporter, Flower): an event queue of its own (celeryev.<uuid>) on the
# event exchange, the remote-control exchanges for inspecting workers (and waking them to
# send heartbeats), and the management API's read-only view (the "monitoring" tag). No
# votes queue. Workers obey only read-only remote control (votes_app.celery,
# READ_ONLY_CONTROL): Flower's revoke, terminate, shutdown and pool buttons and API calls
# get an error from the worker and change nothing.
monitor='^(celeryev(\..+)?|celery\.pidbox|reply\.celery\.pidbox|.+\.reply\.celery\.pidbox)$'
user "$RABBITMQ_MONITOR_USER" "$RABBITMQ_MONITOR_PASSWORD" monitoring "$monitor" "$monitor" "$monitor"
