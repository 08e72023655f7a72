"""What operators watch: a worker's /metrics against what happened, Flower's API, `votes health`."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from base64 import b64encode
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    TIMESTAMP,
    load_roll,
    publish,
    register_laws,
    results,
    run_votes,
    vote,
    voter_hash,
)
from tests.unit.test_deploy_files import (
    APP_METRICS,
    alert_rules,
    dashboard_expressions,
    metric_names,
)
from votes_app.celery import app
from votes_tools.polling import wait_for
from votes_tools.processes import Beat, CeleryProcess, Worker, free_port

LAWS = ("law-001", "law-002")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample at /metrics, keyed by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def env_with(**overrides: str) -> dict[str, str]:
    return {**os.environ, **overrides}


@pytest.mark.parametrize("per_choice", [False, True], ids=["default", "per-choice-exported"])
def test_worker_metrics_count_what_happened(tmp_path: Path, per_choice: bool) -> None:
    accepted = [
        (voter_hash(n, LAWS[n % 2]), LAWS[n % 2], "oui" if n % 3 else "non") for n in range(120)
    ]
    load_roll(h for h, _, _ in accepted)
    seconds = [vote(h, law, "oui") for h, law, _ in accepted[:15]]
    # An aggregation message that can never be processed: an error and a dead letter.
    garbage = {"law 001": {"oui": 1}}
    unknown = [vote(voter_hash(10_000 + n, LAWS[0]), LAWS[0], "oui") for n in range(7)]
    malformed = [
        {"vote_hash": "nothex", "law_id": LAWS[0], "choice": "oui", "timestamp": TIMESTAMP}
    ] * 4
    port = free_port()
    env = env_with(METRICS_PORT=str(port), EXPORT_CHOICE_METRICS=str(per_choice).lower())

    with Worker(tmp_path / "worker.log", name="metrics@%h", env=env), Beat(tmp_path, env=env):
        publish(vote(h, law, choice) for h, law, choice in accepted)
        wait_for(lambda: sum(results().values()) == len(accepted), timeout=60, what="tallies")
        publish(seconds + unknown + malformed)
        app.send_task("votes_app.aggregate_vote", kwargs={"recorded": garbage})
        expected_statuses = {
            "accepted": len(accepted),
            "duplicate": len(seconds),
            "invalid": len(unknown),
            "malformed": len(malformed),
        }

        def all_counted() -> Samples:
            samples = scrape(port)
            statuses = {
                s: value(samples, "validation_votes_processed_total", status=s)
                for s in expected_statuses
            }
            totals = sum(value(samples, "current_law_totals", law_id=law) for law in LAWS)
            dead = value(samples, "dead_letters_total", reason="failed")
            counted = statuses == expected_statuses and totals == len(accepted) and dead == 1
            return samples if counted else {}

        samples = wait_for(all_counted, timeout=60, interval=0.5, what="metrics of every vote")

    per_law = Counter(law for _, law, _ in accepted)
    for law, count in per_law.items():
        assert value(samples, "current_law_totals", law_id=law) == count
        assert value(samples, "votes_recorded_total", law_id=law) == count
    per_choice_names = {"current_vote_totals", "votes_aggregated_total"}
    if per_choice:
        per_law_choice = Counter((law, choice) for _, law, choice in accepted)
        for (law, choice), count in per_law_choice.items():
            assert value(samples, "current_vote_totals", law_id=law, choice=choice) == count
            assert value(samples, "votes_aggregated_total", law_id=law, choice=choice) == count
    else:
        # Withheld: absent, not a misleading zero.
        assert per_choice_names & {name for name, _ in samples} == set()
        assert not any("choice" in dict(labels) for _, labels in samples)
    assert value(samples, "tally_flush_votes_total") == len(accepted)
    assert value(samples, "batch_size_processed_total") == sum(expected_statuses.values())
    assert value(samples, "validation_processing_latency_seconds_count") == sum(
        expected_statuses.values()
    )
    assert value(samples, "voter_roll_size") == len(accepted)
    assert value(samples, "voter_roll_missing") == 0
    assert value(samples, "redis_operations_total", operation="claim", status="ok") >= 1
    assert value(samples, "database_operations_total", operation="record_votes", status="ok") >= 1
    assert value(samples, "redis_operations_total", operation="claim", status="error") == 0
    assert value(samples, "dead_letters_total", reason="failed") == 1
    assert value(samples, "aggregation_errors_total", error_type="ValidationError") == 1

    # What the dashboard and the alerts read is what a worker exports.
    exported = {name for name, _ in samples}
    wanted = {
        name
        for expr in dashboard_expressions() + [rule["expr"] for rule in alert_rules()]
        for name in metric_names(expr)
        if name in APP_METRICS
    }
    assert wanted, "the dashboard reads no application metric"
    assert wanted <= exported, f"read but not exported: {sorted(wanted - exported)}"


def flower_get(port: int, path: str, auth: str | None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_flower_shows_the_worker_and_our_tasks(tmp_path: Path) -> None:
    voters = [voter_hash(n, LAWS[0]) for n in range(20)]
    load_roll(voters)
    port, auth = free_port(), "operator:s3cret"
    flower = CeleryProcess(
        ["flower", f"--port={port}", f"--basic-auth={auth}", f"--db={tmp_path / 'flower.db'}"],
        tmp_path / "flower.log",
    )
    with flower, Worker(tmp_path / "worker.log", name="flowered@%h"), Beat(tmp_path):
        wait_for(lambda: _answers(port), timeout=30, what="Flower to listen")
        publish([vote(h, LAWS[0], "non") for h in voters] + [vote(voters[0], LAWS[0], "oui")])
        wait_for(lambda: sum(results().values()) == len(voters), timeout=60, what="tallies")

        def seen() -> set[str]:
            tasks = flower_get(port, "/api/tasks?limit=1000", auth)
            return {task["name"] for task in tasks.values() if task.get("name")}

        wanted = {"votes_app.validate_vote", "votes_app.aggregate_vote", "votes_app.record_review"}
        wait_for(lambda: wanted <= seen(), timeout=30, interval=0.5, what="Flower to see tasks")
        # Beat's flushes ran all along (the tallies are counted), without a task event.
        assert "votes_app.flush_tallies" not in seen()
        workers = flower_get(port, "/api/workers?refresh=1", auth)
        assert any(name.startswith("flowered@") for name in workers)
        try:
            flower_get(port, "/api/workers", None)
        except urllib.error.HTTPError as refused:
            assert refused.code == 401
        else:
            raise AssertionError("Flower answered without credentials")


def _answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1).close()
    except OSError:
        return False
    return True


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
