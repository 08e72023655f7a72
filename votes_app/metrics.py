"""Prometheus metrics, summed over a worker's prefork processes and served by the worker.

The names are those of the services this project replaces, with their labels, label values
and meaning, so existing dashboards keep working; what this design adds (validation batches,
held votes, dead letters, flush lag, totals per law, Redis memory) has names of its own.
Nothing here moves per choice unless EXPORT_CHOICE_METRICS says so (see docs/SECRECY.md).
Every series whose labels are known in advance exists from the start, at zero.

prometheus_client chooses where values live when it is first imported: in memory, or in
files shared by the processes of a worker when PROMETHEUS_MULTIPROC_DIR is set
(prometheus_client docs: "Multiprocess Mode"). The worker sets that variable as it starts
(votes_app.celery), so this module imports prometheus_client only on first use.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache, wraps
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from votes_app.config import get_settings

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

# The old validation worker's statuses (valid; invalid: not on the roll; duplicate), then
# the refusals this design adds (votes_app.review.Verdict).
OUTCOMES = ("valid", "invalid", "duplicate", "malformed", "unknown_law", "outside_window")
VALID = OUTCOMES[0]
DEAD_LETTER_KINDS = ("redelivered", "failed", "out_of_retries", "retry_unpublished")

P = ParamSpec("P")
R = TypeVar("R")

# The operations counted by `redis_operation` / `database_operation`, gathered as the modules
# that use them are imported: their series start at zero.
_OPERATIONS: dict[str, set[str]] = {"redis_operations": set(), "database_operations": set()}


class Metrics:
    """Every metric of the application, created once per process."""

    def __init__(self, *, per_choice: bool) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def gauge(name: str, help_text: str, labels: tuple[str, ...] = ()) -> Gauge:
            # The value last set by any process of the worker is the one that counts.
            return Gauge(name, help_text, labels, multiprocess_mode="mostrecent")

        self._gauge = gauge
        # Validation, as the old validation worker named them.
        self.votes_processed: Counter = Counter(
            "validation_votes_processed", "Votes validated, by outcome", ["status"]
        )
        self.processing_latency: Histogram = Histogram(
            "validation_processing_latency_seconds",
            "Time a vote spent in its validation batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.validation_errors: Counter = Counter(
            "validation_errors", "Validation failures, by type", ["error_type"]
        )
        self.validation_queue_size = gauge(
            "validation_queue_size", "Ready messages in votes.validation"
        )
        self.redis_operations: Counter = Counter(
            "redis_operations", "Redis operations", ["operation", "status"]
        )
        self.database_operations: Counter = Counter(
            "database_operations", "PostgreSQL operations", ["operation", "status"]
        )
        # Aggregation, as the old aggregation service named them: per choice, so withheld
        # unless EXPORT_CHOICE_METRICS turns them on (absent, not zero, when withheld).
        # A closed law's final figures are published whatever the setting says: the series is
        # made the first time there is one to show.
        self.per_choice = per_choice
        self.votes_aggregated: Counter | None = None
        self._current_vote_totals: Gauge | None = None
        if per_choice:
            self.votes_aggregated = Counter(
                "votes_aggregated", "Votes recorded, by law and choice", ["law_id", "choice"]
            )
            self.choice_totals()
        # The same per law, always: they say how many voted, not what.
        self.votes_recorded: Counter = Counter(
            "votes_recorded", "Votes recorded (voter and ballot), by law", ["law_id"]
        )
        self.current_law_totals = gauge(
            "current_law_totals", "Votes counted in vote_results, by law", ("law_id",)
        )
        # The old aggregation service's batches: votes counted into vote_results. Here each
        # tally flush that counted ballots is one such batch.
        self.batch_duration = gauge(
            "batch_processing_duration_seconds",
            "Duration of the last tally flush that counted ballots into vote_results",
        )
        self.batch_size_processed: Counter = Counter(
            "batch_size_processed", "Votes counted into vote_results by tally flushes"
        )
        self.aggregation_errors: Counter = Counter(
            "aggregation_errors", "Aggregation and tally flush failures, by type", ["error_type"]
        )
        # What this design adds.
        self.validation_batch_duration: Histogram = Histogram(
            "validation_batch_duration_seconds",
            "Duration of each validation batch (its count: batches validated)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.queue_depth = gauge("votes_queue_depth", "Ready messages per queue", ("queue",))
        self.votes_held: Counter = Counter(
            "votes_held", "Votes held back because the voter roll is missing"
        )
        self.voter_roll_missing = gauge(
            "voter_roll_missing", "1 while an open law has no voter roll in Redis"
        )
        self.voter_roll_size = gauge(
            "voter_roll_size", "Hashes on the voter rolls of the open laws"
        )
        self.dead_letters: Counter = Counter(
            "dead_letters", "Messages this worker sent to votes.dead", ["reason"]
        )
        self.flush_lag = gauge(
            "tally_flush_lag_seconds",
            "How long the ballots waiting for a flush can have waited (0: none waits)",
        )
        self.last_flush = gauge(
            "last_flush_timestamp_seconds", "When the last flush finished (unix time)"
        )
        # The voter rolls' Redis runs with maxmemory and noeviction: full, it refuses writes.
        self.redis_memory_used = gauge(
            "redis_memory_used_bytes", "Memory Redis uses (INFO memory: used_memory)"
        )
        self.redis_memory_max = gauge(
            "redis_memory_max_bytes", "Redis maxmemory (INFO memory: maxmemory; 0: no limit)"
        )
        # Series with a known set of labels exist from the start, at zero: a rate() or an
        # alert on them works before the first event (Prometheus: "Avoid missing metrics").
        for status in OUTCOMES:
            self.votes_processed.labels(status=status)
        for kind in DEAD_LETTER_KINDS:
            self.dead_letters.labels(reason=kind)
        for kind, operations in _OPERATIONS.items():
            counter: Counter = getattr(self, kind)
            for operation in operations:
                for status in ("ok", "error"):
                    counter.labels(operation=operation, status=status)
        self.expect_errors(validation=("voter_roll_missing",))

    def show_seed_gauges(self) -> None:
        """Give the old services' gauges their first value, 0, as those services did: a
        gauge that keeps its most recent value across processes is not exported until set.
        Once per worker, before its first task: a later 0 would hide a real value."""
        self.validation_queue_size.set(0)
        self.batch_duration.set(0)

    def expect_errors(
        self, *, validation: Iterable[str] = (), aggregation: Iterable[str] = ()
    ) -> None:
        """Start these `error_type` series of validation_errors_total and
        aggregation_errors_total at zero: the errors that can be named in advance."""
        for error_type in validation:
            self.validation_errors.labels(error_type=error_type)
        for error_type in aggregation:
            self.aggregation_errors.labels(error_type=error_type)

    def choice_totals(self) -> Gauge:
        """`current_vote_totals{law_id,choice}`, made on first use."""
        if self._current_vote_totals is None:
            self._current_vote_totals = self._gauge(
                "current_vote_totals", "Votes counted in vote_results", ("law_id", "choice")
            )
        return self._current_vote_totals


@lru_cache
def get() -> Metrics:
    return Metrics(per_choice=get_settings().export_choice_metrics)


def _tracked(kind: str, operation: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    _OPERATIONS[kind].add(operation)

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @wraps(function)
        def tracked(*args: P.args, **kwargs: P.kwargs) -> R:
            counter: Counter = getattr(get(), kind)
            try:
                result = function(*args, **kwargs)
            except Exception:
                counter.labels(operation=operation, status="error").inc()
                raise
            counter.labels(operation=operation, status="ok").inc()
            return result

        return tracked

    return decorate


def redis_operation(operation: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Count calls of the decorated function in redis_operations_total{operation,status}."""
    return _tracked("redis_operations", operation)


def database_operation(operation: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Count calls of the decorated function in database_operations_total{operation,status}."""
    return _tracked("database_operations", operation)


@contextmanager
def counting_errors(counter: Counter) -> Iterator[None]:
    """Count an exception leaving the block by its class name, then let it go on."""
    try:
        yield
    except Exception as exc:
        counter.labels(error_type=type(exc).__name__).inc()
        raise


# --- the worker's side: where the files live and who serves them -----------------------


def multiprocess_directory() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def use_multiprocess_storage() -> None:
    """Keep values in PROMETHEUS_MULTIPROC_DIR from now on, starting from an empty directory.

    prometheus_client reads the variable when first imported, and the `celery` command
    imports it before the worker starts (Flower's command plugin does): choose again.
    Metrics created after this call (ours are created on first use) store their values
    in files.
    """
    from prometheus_client import values

    directory = multiprocess_directory()
    if directory is None:
        return
    # prometheus_client: "the directory must be wiped between process runs".
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def serve(address: str, port: int) -> None:
    """Serve the metrics of every process of this worker at http://address:port/metrics."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

    directory = multiprocess_directory()
    if directory is None:
        start_http_server(port, addr=address, registry=REGISTRY)
        return
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    start_http_server(port, addr=address, registry=registry)
