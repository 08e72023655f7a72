"""The fault campaign's short version: each scenario of `votes faults` on a few thousand votes.

Real worker, beat, RabbitMQ, Redis and PostgreSQL; the faults are injected for real (SIGKILL,
SIGTERM, connections closed, the database refusing connections, Redis emptied). Each test
checks the scenario's table row — nothing lost, nothing counted twice, nothing wrongly
refused, nothing in votes.dead — and that the fault did happen. `make faults` runs the same
scenarios on 20,000 votes each.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.support import run_votes
from votes_app.models import DuplicateAttempt, VoteAudit
from votes_app.resources import owner_session_scope
from votes_tools.faults.options import CampaignOptions
from votes_tools.faults.report import Row
from votes_tools.faults.run import ScenarioRun, measure
from votes_tools.faults.scenarios import SCENARIOS, run_scenario, scenario_workload

VOTES = 2_000


def quick(tmp_path: Path, **changes: Any) -> CampaignOptions:
    return replace(CampaignOptions.quick(tmp_path, votes=VOTES), **changes)


def assert_clean(row: Row) -> None:
    assert row.problems() == []
    assert (row.audited, row.tallied) == (row.accepted, row.accepted)
    assert row.duplicates == row.expected_duplicates
    assert row.invalid == row.expected_invalid
    assert row.resent > 0


def test_every_scenario_has_a_test() -> None:
    tested = {name.removeprefix("test_").replace("_", "-") for name in globals()}
    assert set(SCENARIOS) <= tested


def test_kill_workers(tmp_path: Path) -> None:
    row = run_scenario("kill-workers", quick(tmp_path), reset=False)

    assert_clean(row)
    assert row.evidence["pool_processes_killed"] == 3
    assert row.evidence["main_processes_killed"] == 3


def test_kill_beat(tmp_path: Path) -> None:
    row = run_scenario("kill-beat", quick(tmp_path), reset=False)

    assert_clean(row)
    assert row.evidence["beat_killed"] == 3


def test_restart_rabbitmq(tmp_path: Path) -> None:
    # The drain would never come: wait less for it than the other scenarios do.
    row = run_scenario("restart-rabbitmq", quick(tmp_path, drain_timeout=45), reset=False)

    assert row.evidence["broker_outages"] == 1
    assert row.evidence["log_broker_lost"] >= 2  # both workers saw it
    assert row.evidence["workers_restarted"] == 0  # they reconnected by themselves
    # The producer lost its connection mid-stream: it reconnected, or failed and resent.
    assert row.evidence["producer_reconnects"] + row.evidence["publish_errors"] > 0
    assert_clean(row)


def test_postgresql_outage(tmp_path: Path) -> None:
    row = run_scenario("postgresql-outage", quick(tmp_path), reset=False)

    assert_clean(row)
    assert row.evidence["connections_terminated"] > 0
    assert row.evidence["log_retries"] > 0


def test_redis_restarted_empty(tmp_path: Path) -> None:
    row = run_scenario("redis-restarted-empty", quick(tmp_path), reset=False)

    assert_clean(row)
    assert row.evidence["redis_clients_disconnected"] > 0
    assert row.evidence["votes_held"] > 0
    assert row.evidence["log_roll_missing"] > 0


def test_sigterm_worker(tmp_path: Path) -> None:
    row = run_scenario("sigterm-worker", quick(tmp_path), reset=False)

    assert_clean(row)
    for number in (1, 2):
        assert row.evidence[f"warm_shutdown_{number}_exit_code"] == 0
        assert row.evidence[f"warm_shutdown_{number}_seconds"] < 60


def test_close_and_certify(tmp_path: Path) -> None:
    row = run_scenario("close-and-certify", quick(tmp_path), reset=False)

    assert_clean(row)
    assert row.evidence["uncounted_at_close"] > 0  # the close had to wait for a flush
    assert row.evidence["workers_killed_during_close"] == 1
    assert row.evidence["certified_votes"] > 0
    assert row.evidence["replayed_after_certification"] > 0
    assert row.evidence["certified_unchanged"] == 1


def test_the_campaign_sees_lost_double_and_wrongly_refused_votes(tmp_path: Path) -> None:
    """The row's checks can fail: after a clean run, the test loses a voter's record (which
    leaves a ballot without a voter, counted) and invents a duplicate for a voter who voted
    once."""

    def no_fault(run: ScenarioRun) -> None:
        pass

    options = quick(tmp_path, votes=1_000)
    row = run_scenario("no-fault", options, reset=False, inject=no_fault)
    assert row.problems() == []
    workload = scenario_workload(options)
    victim = sorted(workload.sent_once)[0]
    # The owner's role: the application's may not delete a voter.
    with owner_session_scope() as session:
        audit_row = session.scalars(sa.select(VoteAudit).where(VoteAudit.vote_hash == victim))
        vote = audit_row.one()
        session.delete(vote)
        session.add(
            DuplicateAttempt(
                vote_hash=victim,
                law_id=vote.law_id,
                attempt_count=1,
                first_attempt_at=vote.voted_at,
                last_attempt_at=vote.voted_at,
            )
        )

    tampered = Row(scenario="tampered")
    measure(workload, tampered)

    assert (tampered.lost, tampered.counted_twice, tampered.wrongly_refused) == (1, 1, 1)
    assert not tampered.ok


def test_votes_faults_offers_each_scenario() -> None:
    done = run_votes("faults", "--help", check=True)

    for name in SCENARIOS:
        assert name in done.stdout
    for option in ("--votes", "--scenario", "--quick", "--rabbitmq-restart", "--redis-restart"):
        assert option in done.stdout
