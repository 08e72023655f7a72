"""Where the figures come from: hardware, load, service and library versions, the code, and
the pipeline's settings."""

from __future__ import annotations

import os
import platform
import socket
from importlib.metadata import version
from typing import Any

import sqlalchemy as sa

from votes_app.celery import app
from votes_app.config import get_settings
from votes_app.resources import get_engine, get_redis
from votes_tools.bench.accounting import read_proc
from votes_tools.processes import run

MIB = 1024 * 1024
# Distribution name -> the name the report gives it.
LIBRARIES = {
    "celery": "celery",
    "kombu": "kombu",
    "celery-batches": "celery-batches",
    "SQLAlchemy": "SQLAlchemy",
    "psycopg2-binary": "psycopg2-binary",
    "redis": "redis-py",
}
SETTINGS = (
    "validate_batch_size",
    "validate_batch_ms",
    "validate_bulk_max",
    "worker_prefetch_multiplier",
    "flush_interval_seconds",
    "broker_confirm_publish",
    "queue_type",
    "database_pool_size",
)


def machine_facts(load_average: tuple[float, float, float]) -> dict[str, Any]:
    with app.connection_for_write() as broker:
        broker.connect()
        rabbitmq = broker.connection.server_properties.get("version", "?")
    with get_engine().connect() as database:
        postgresql = {
            name: database.scalar(sa.text(f"SHOW {name}"))
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }

    def git(*argv: str) -> str:
        return run(["git", *argv]).stdout.strip()

    return {
        "hostname": socket.gethostname(),
        "cpu": read_proc("/proc/cpuinfo").get("model name", platform.processor()),
        "cpus": os.cpu_count(),
        "memory_gib": round(int(read_proc("/proc/meminfo")["MemTotal"].split()[0]) / MIB, 1),
        "kernel": platform.release(),
        "load_average_at_start": load_average,
        "python": platform.python_version(),
        "rabbitmq": str(rabbitmq),
        "redis": get_redis().info("server").get("redis_version"),
        "postgresql": postgresql,
        "libraries": {shown: version(name) for name, shown in LIBRARIES.items()},
        "git_commit": git("rev-parse", "HEAD"),
        "git_modified_files": len(
            git("status", "--porcelain", "--untracked-files=no").splitlines()
        ),
    }


def pipeline_settings() -> dict[str, Any]:
    settings = get_settings()
    return {name: getattr(settings, name) for name in SETTINGS}
