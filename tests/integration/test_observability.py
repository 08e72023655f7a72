"""What operators watch: a worker's /metrics against what happened, Flower's API, `votes health`."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from base64 import b64encode
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.support import (
    TIMESTAMP,
    Samples,
    load_roll,
    publish,
    register_laws,
    results,
    run_votes,
    scrape,
    value,
    vote,
    voter_hash,
)
from tests.unit.test_deploy_files import (
    APP_METRICS,
    alert_rules,
    dashboard_expressions,
    metric_names,
)
from votes_app import metrics
from votes_app.celery import AGGREGATION, REVIEW, VALIDATION, app
from votes_app.config import get_settings
from votes_app.resources import TRANSIENT_ERRORS, get_redis
from votes_app.status import queue_depths
from votes_tools.polling import wait_for
from votes_tools.processes import Beat, CeleryProcess, Worker, free_port, stop_all

LAWS = ("law-001", "law-002")


def env_with(**overrides: str) -> dict[str, str]:
    return {**os.environ, **overrides}


def present(samples: Samples, name: str, **labels: str) -> bool:
    return (name, tuple(sorted(labels.items()))) in samples


def flower_get(port: int, path: str, auth: str | None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1).close()
    except OSError:
        return False
    return True


# The seed services' series with the labels known in advance: at zero before any vote.
SEED_SERIES_AT_START: list[tuple[str, dict[str, str]]] = [
    *(("validation_votes_processed_total", {"status": status}) for status in metrics.OUTCOMES),
    ("validation_processing_latency_seconds_count", {}),
    ("validation_queue_size", {}),
    *(
        (counter, {"error_type": error.__name__})
        for counter in ("validation_errors_total", "aggregation_errors_total")
        for error in TRANSIENT_ERRORS
    ),
    ("validation_errors_total", {"error_type": "voter_roll_missing"}),
    ("aggregation_errors_total", {"error_type": "ValidationError"}),
    *(
        ("redis_operations_total", {"operation": op, "status": status})
        for op in ("claim", "release", "adopt", "forget_claims", "count_duplicates")
        for status in ("ok", "error")
    ),
    *(
        ("database_operations_total", {"operation": op, "status": status})
        for op in ("record_votes", "lookup_recorders", "apply_tallies", "record_review")
        for status in ("ok", "error")
    ),
    ("batch_processing_duration_seconds", {}),
    ("batch_size_processed_total", {}),
]


# Each flush runs it, with or without ballots to count.
FLUSHES_RUN = ("database_operations_total", {"operation": "apply_tallies", "status": "ok"})


def test_split_deployment_counts_and_shows_what_happened(tmp_path: Path) -> None:
    """The design's deployment: a worker on votes.validation alone, one on votes.aggregation and
    votes.review, one beat, and Flower. Each worker's /metrics holds the seed series from the
    start and counts what happened; Flower's history holds the vote batches, not the flushes."""
    # More votes than the validation worker's prefetch window (the default settings'), so
    # that some wait in the queue while its pool is stopped.
    concurrency = 2
    window = get_settings().worker_prefetch_multiplier * concurrency
    valid = [(voter_hash(n, LAWS[n % 2]), LAWS[n % 2]) for n in range(window + 20)]
    load_roll(h for h, _ in valid)
    seconds = [vote(h, law, "oui") for h, law in valid[:10]]
    not_on_roll = [vote(voter_hash(10_000 + n, LAWS[0]), LAWS[0], "oui") for n in range(7)]
    malformed = [
        {"vote_hash": "nothex", "law_id": LAWS[0], "choice": "oui", "timestamp": TIMESTAMP}
    ] * 4
    mix = [vote(h, law, "oui") for h, law in valid] + seconds + not_on_roll + malformed
    expected_statuses = dict.fromkeys(metrics.OUTCOMES, 0) | {
        "valid": len(valid),
        "duplicate": len(seconds),
        "invalid": len(not_on_roll),
        "malformed": len(malformed),
    }
    v_port, a_port, f_port, auth = free_port(), free_port(), free_port(), "operator:s3cret"
    validation = Worker(
        tmp_path / "validation.log",
        name="validation@%h",
        queues=[VALIDATION],
        concurrency=concurrency,
        env=env_with(METRICS_PORT=str(v_port)),
    )
    aggregation = Worker(
        tmp_path / "aggregation.log",
        name="aggregation@%h",
        queues=[AGGREGATION, REVIEW],
        env=env_with(METRICS_PORT=str(a_port)),
    )
    flower = CeleryProcess(
        ["flower", f"--port={f_port}", f"--basic-auth={auth}", f"--db={tmp_path / 'flower.db'}"],
        tmp_path / "flower.log",
    )
    beat = Beat(tmp_path)
    with ExitStack() as stack:
        # Started together, stopped together: warm shutdowns in parallel.
        stack.callback(stop_all, [validation, aggregation, flower, beat])
        for child in (validation, aggregation, flower, beat):
            child.launch() if isinstance(child, Worker) else child.start()
        validation.wait_ready()
        aggregation.wait_ready()
        wait_for(lambda: _answers(f_port), timeout=30, what="Flower to listen")

        # Before any vote: every seed series, at zero, on both workers (flushes run already).
        for port in (v_port, a_port):
            samples = scrape(port)
            absent = [s for s in SEED_SERIES_AT_START if not present(samples, s[0], **s[1])]
            assert not absent, f"absent at start on :{port}: {absent}"
            moved = [s for s in SEED_SERIES_AT_START if value(samples, s[0], **s[1]) != 0]
            assert moved in ([], [FLUSHES_RUN]), f"not zero at start on :{port}: {moved}"

        # validation_queue_size follows the queue on the validation-only worker. Its pool
        # stopped, the worker holds a prefetch window of votes and the rest wait in the queue,
        # as they would behind a slow PostgreSQL.
        pool = validation.children()
        for pid in pool:
            os.kill(pid, signal.SIGSTOP)
        try:
            publish(mix)
            waiting = wait_for(
                lambda: queue_depths()[VALIDATION] == len(mix) - window and len(mix) - window,
                timeout=15,
                what="the prefetch window to fill",
            )
            wait_for(
                lambda: value(scrape(v_port), "validation_queue_size") == waiting,
                timeout=15,
                interval=0.2,
                what="validation_queue_size to count the waiting votes",
            )
        finally:
            for pid in pool:
                os.kill(pid, signal.SIGCONT)
        # An aggregation message that can never be processed: an error and a dead letter.
        app.send_task("votes_app.aggregate_vote", kwargs={"recorded": {"law 001": {"oui": 1}}})

        def settled() -> list[Samples]:
            v, a = scrape(v_port), scrape(a_port)
            statuses = {
                s: value(v, "validation_votes_processed_total", status=s) for s in expected_statuses
            }
            done = (
                statuses == expected_statuses
                and value(v, "validation_queue_size") == 0
                and value(a, "batch_size_processed_total") == len(valid)
                and value(a, "aggregation_errors_total", error_type="ValidationError") == 1
            )
            return [v, a] if done else []

        v, a = wait_for(settled, timeout=60, interval=0.3, what="both workers to count the mix")
        assert sum(results().values()) == len(valid)

        def shown_by_flower() -> Counter[str]:
            """Tasks per name in Flower's history, once the last of the chain is in it."""
            tasks = flower_get(f_port, "/api/tasks?limit=10000", auth)
            names = Counter(str(task.get("name")) for task in tasks.values())
            return names if names["votes_app.record_review"] else Counter()

        shown = wait_for(
            shown_by_flower,
            timeout=20,
            interval=0.5,
            what="Flower to show the vote batches",
        )
        workers = flower_get(f_port, "/api/workers?refresh=1", auth)
        try:
            flower_get(f_port, "/api/workers", None)
        except urllib.error.HTTPError as refused:
            assert refused.code == 401
        else:
            raise AssertionError("Flower answered without credentials")

    # The validation worker counted each vote by the seed's status, and nothing else failed.
    total = sum(expected_statuses.values())
    assert value(v, "validation_processing_latency_seconds_count") == total
    assert 1 <= value(v, "validation_batch_duration_seconds_count") <= total
    assert value(v, "redis_operations_total", operation="claim", status="ok") >= 1
    assert value(v, "database_operations_total", operation="record_votes", status="ok") >= 1
    assert value(v, "redis_operations_total", operation="claim", status="error") == 0
    for name, labels in SEED_SERIES_AT_START:
        if name == "validation_errors_total":
            assert value(v, name, **labels) == 0, labels
    # The aggregation worker counted the ballots into vote_results in batches (flushes).
    assert value(a, "batch_processing_duration_seconds") > 0
    assert value(a, "database_operations_total", operation="apply_tallies", status="ok") >= 1
    assert value(a, "dead_letters_total", reason="failed") == 1
    for law, count in Counter(law for _, law in valid).items():
        assert value(a, "current_law_totals", law_id=law) == count
        assert value(a, "votes_recorded_total", law_id=law) == count
    # Per-choice series are withheld while the laws are open: absent, not a misleading zero.
    for samples in (v, a):
        assert not any("choice" in dict(labels) for _, labels in samples)
    # Redis memory, for the alert before the roll's Redis fills.
    info = get_redis().info("memory")
    assert value(a, "redis_memory_used_bytes") > 0
    assert value(a, "redis_memory_max_bytes") == info["maxmemory"]

    # Flower: the vote batches and the tasks they hand on, never the flushes (which ran).
    assert shown["votes_app.validate_vote"] >= 1
    assert shown["votes_app.aggregate_vote"] >= 1
    assert "votes_app.flush_tallies" not in shown
    assert {node.split("@")[0] for node in workers} >= {"validation", "aggregation"}

    # What the dashboard and the alerts read is what the workers export.
    exported = {name for name, _ in v} | {name for name, _ in a}
    wanted = {
        name
        for expr in dashboard_expressions() + [rule["expr"] for rule in alert_rules()]
        for name in metric_names(expr)
        if name in APP_METRICS
    }
    assert wanted, "the dashboard reads no application metric"
    assert wanted <= exported, f"read but not exported: {sorted(wanted - exported)}"


def test_per_choice_series_when_exported(tmp_path: Path) -> None:
    cast = [(voter_hash(n, LAWS[n % 2]), LAWS[n % 2], "oui" if n % 3 else "non") for n in range(40)]
    load_roll(h for h, _, _ in cast)
    port = free_port()
    env = env_with(METRICS_PORT=str(port), EXPORT_CHOICE_METRICS="true")

    def counted() -> Samples:
        samples = scrape(port)
        return samples if value(samples, "batch_size_processed_total") == len(cast) else {}

    with Worker(tmp_path / "worker.log", env=env), Beat(tmp_path, env=env):
        publish(vote(h, law, choice) for h, law, choice in cast)
        samples = wait_for(
            counted,
            timeout=60,
            interval=0.3,
            what="the votes to be counted",
        )
    for (law, choice), count in Counter((law, choice) for _, law, choice in cast).items():
        assert value(samples, "current_vote_totals", law_id=law, choice=choice) == count
        assert value(samples, "votes_aggregated_total", law_id=law, choice=choice) == count


def test_health_reports_each_dependency(tmp_path: Path) -> None:
    register_laws(LAWS[0])  # open, and no roll for it yet
    missing_roll = run_votes("health", "--skip", "workers", "--skip", "beat")
    assert missing_roll.returncode == 1
    assert f"no voter roll for {LAWS[0]}" in missing_roll.stdout

    load_roll([voter_hash(1, LAWS[0])])
    with Worker(tmp_path / "worker.log", name="healthy@%h"), Beat(tmp_path):
        wait_for(
            lambda: run_votes("health").returncode == 0, timeout=30, interval=0.5, what="health"
        )
        report = run_votes("health").stdout
    for name in ("broker", "redis", "postgresql", "workers", "beat"):
        assert f"ok   {name}" in report
    assert "healthy@" in report
