# Everyday commands. `make test` and `make demo` set up everything they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install lock services migrate test lint demo bench faults worker beat flower up down clean

help:
	@echo "make test     run the test suite against local RabbitMQ, Redis and PostgreSQL"
	@echo "make demo     run an election end to end on 10,850 votes: vote, close, certify, verify, recount"
	@echo "make lint     ruff, mypy and the import contracts (lint-imports)"
	@echo "make bench    throughput and latency on 100,000 votes (a few minutes)"
	@echo "make faults   the fault campaign: kills, restarts, outages (several minutes)"
	@echo "make migrate  alembic upgrade head on OWNER_DATABASE_URL"
	@echo "make worker   a worker on all three queues; make beat: the flush scheduler"
	@echo "make flower   Flower on 127.0.0.1:5555 (needs FLOWER_BASIC_AUTH=user:password)"
	@echo "make up/down  the whole stack with docker compose (see deploy/README.md)"
	@echo "make lock     rewrite requirements*.lock from pyproject.toml (UPGRADE=--upgrade: newest)"

# The virtualenv is rebuilt when pyproject.toml or the lock changes: every package at the
# version and with the hashes of requirements-dev.lock (pip itself included), then this
# checkout, editable, built with the locked setuptools.
$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --requirement requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation --editable .
	touch $(STAMP)

install: $(STAMP)

# The lock files, from pyproject.toml: every dependency, direct and indirect, pinned with
# the hashes of all its files on the package index. Pins already in a lock are kept unless
# UPGRADE=--upgrade. The runtime's lock (the image's) holds the build backend too.
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	--no-emit-trusted-host --annotation-style=line $(UPGRADE)
lock: install
	$(PIP_COMPILE) --build-deps-for wheel --output-file requirements.lock pyproject.toml
	$(PIP_COMPILE) --build-deps-for editable --extra dev --output-file requirements-dev.lock pyproject.toml

services:
	bash scripts/services.sh

migrate: install services
	$(BIN)/alembic upgrade head

test: install services
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

demo: install services
	$(BIN)/votes demo

# Long runs, not tests: figures and a verdict, each in a namespace of its own.
bench: install services
	$(BIN)/votes bench

faults: install services
	$(BIN)/votes faults

worker: install
	$(BIN)/celery -A votes_app worker -Q votes.validation,votes.aggregation,votes.review -l INFO

beat: install
	$(BIN)/celery -A votes_app beat -l INFO

# Flower with basic auth from the environment and its state kept in flower.db
# (flowerconfig.py); its own metrics at /metrics.
flower: install
	$(BIN)/celery -A votes_app flower --basic-auth="$${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH=user:password}"

# The whole stack in containers (docker-compose.yml; needs a Docker engine and .env).
up:
	docker compose up -d --build

down:
	docker compose down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
