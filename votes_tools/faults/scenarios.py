"""The scenarios of the campaign, each a plain function of its run that injects one fault
while the votes stream in; `run_scenario` runs one from an empty namespace."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from subprocess import CompletedProcess

import sqlalchemy as sa

from votes_app import laws
from votes_app.celery import DEAD, WORK_QUEUES
from votes_app.models import Certification, VoteResult
from votes_app.resources import session_scope
from votes_app.status import queue_depths
from votes_tools import election, namespace
from votes_tools.counts import Snapshot
from votes_tools.faults.injectors import (
    broker_outage,
    bury_votes,
    database_outage,
    kill_main_process,
    kill_pool_process,
    polled,
    redis_restart_empty,
)
from votes_tools.faults.options import CampaignOptions
from votes_tools.faults.report import Row
from votes_tools.faults.run import ScenarioRun
from votes_tools.polling import wait_for
from votes_tools.processes import run_votes
from votes_tools.workload import Workload, mixed_workload

Scenario = Callable[[ScenarioRun], None]


def kill_workers(run: ScenarioRun) -> None:
    """SIGKILL a worker's pool process (the pool replaces it), then the worker's main
    process (started again), three times, alternating workers."""
    for number, share in enumerate((0.2, 0.4, 0.6)):
        worker = run.workers[number % len(run.workers)]
        run.wait_until_audited(share)
        kill_pool_process(worker)
        run.row.evidence["pool_processes_killed"] = number + 1
        run.wait_until_audited(share + 0.1)
        if kill_main_process(worker):
            run.row.evidence["orphans_killed"] = run.row.evidence.get("orphans_killed", 0) + 1
        run.row.evidence["main_processes_killed"] = number + 1
        run.restart(worker)


def kill_beat(run: ScenarioRun) -> None:
    """SIGKILL beat while flushes are due, three times; each time votes wait uncounted
    until beat is back."""
    for number, share in enumerate((0.25, 0.45, 0.65)):
        run.wait_until_audited(share)
        run.beat.kill()
        run.row.evidence["beat_killed"] = number + 1
        # Down long enough for recorded votes to pile up uncounted.
        wait_for(
            lambda: polled(lambda: Snapshot.take().uncounted, 0) > 0,
            timeout=60,
            what="votes waiting for a flush",
        )
        run.beat.start()


def restart_rabbitmq(run: ScenarioRun) -> None:
    """RabbitMQ goes away mid-stream; workers reconnect on their own, the producer resends."""
    pids = [worker.pid for worker in run.workers]
    # Published, not audited: the producer is often further on than the workers, and a
    # broker that went away after its last publish would leave it nothing to resend.
    run.wait_until_published(1 / 3)
    errors = run.producer.errors
    broker_outage(run.options.broker_restart, run.options.outage_seconds)
    run.row.evidence["broker_outages"] = 1
    for worker in run.workers:
        worker.wait_ready(timeout=120)
    # The same processes answer: they reconnected by themselves, nobody restarted them.
    run.row.evidence["workers_restarted"] = sum(
        worker.pid != pid for worker, pid in zip(run.workers, pids, strict=True)
    )
    run.wait_until_audited(0.6)
    run.row.evidence["publish_errors_during_outage"] = run.producer.errors - errors


def postgresql_outage(run: ScenarioRun) -> None:
    """The database refuses connections for OUTAGE seconds mid-stream: validation and
    review retry with backoff, flushes wait; nothing is dropped or called a duplicate."""
    run.wait_until_audited(1 / 3)
    terminated = database_outage(run.options.outage_seconds)
    run.row.evidence["connections_terminated"] = terminated
    run.row.evidence["outage_seconds"] = run.options.outage_seconds


def redis_restarted_empty(run: ScenarioRun) -> None:
    """Redis forgets everything mid-stream: votes are held, not refused, until the roll is
    loaded again; `voters rebuild-voted` restores the fast duplicate check."""
    run.wait_until_audited(1 / 3)
    run.row.evidence["redis_clients_disconnected"] = redis_restart_empty(run.options.redis_restart)
    wait_for(lambda: "voter roll missing" in run.logs(), timeout=120, what="votes to be held")
    held = wait_for(lambda: run.metric("votes_held_total"), timeout=60, what="held votes metric")
    run.row.evidence["votes_held"] = held
    roll = run.directory / "voter-roll.csv"
    roll.write_text("".join(f"{law},{vote_hash}\n" for law, vote_hash in run.workload.roll))
    # As an operator would: the `votes` command, on this namespace.
    run_votes("voters", "load", str(roll), check=True, timeout=300)
    run_votes("voters", "rebuild-voted", check=True, timeout=300)


def terminate_worker(run: ScenarioRun) -> None:
    """SIGTERM a worker mid-stream (warm shutdown), start it again; then the other one."""
    for number, share in enumerate((1 / 3, 0.6)):
        worker = run.workers[number % len(run.workers)]
        run.wait_until_audited(share)
        assert worker.process is not None
        started = time.monotonic()
        worker.process.terminate()
        code = worker.process.wait(timeout=120)
        run.row.evidence[f"warm_shutdown_{number + 1}_seconds"] = time.monotonic() - started
        run.row.evidence[f"warm_shutdown_{number + 1}_exit_code"] = code
        run.restart(worker)


REPLAYED = 50  # recorded votes of the certified law that come back from votes.dead


def close_and_certify(run: ScenarioRun) -> None:
    """The lifecycle under faults. Beat dies as the stream ends, so votes of the first law wait
    uncounted when `votes close` starts; a worker is SIGKILLed while the close waits for
    them; beat comes back, and a flush counts them during the close. The law is certified;
    then recorded votes of it come back from votes.dead and are replayed. Its certified
    count must not move, and `votes verify` must agree."""
    law = run.workload.laws[0]
    run.wait_until_audited(0.8)
    run.beat.kill()
    wait_for(run.decided, timeout=run.options.drain_timeout, interval=0.5, what="every vote judged")
    run.row.evidence["uncounted_at_close"] = waiting(law)

    closing: list[CompletedProcess[str]] = []
    closer = threading.Thread(
        target=lambda: closing.append(run_votes("close", law, "--now", timeout=600)), daemon=True
    )
    closer.start()
    wait_for(lambda: state(law) == "closed", timeout=60, what=f"{law} closed")
    worker = run.workers[0]
    kill_main_process(worker)
    run.restart(worker)
    run.row.evidence["workers_killed_during_close"] = 1
    run.beat.start()
    closer.join(timeout=600)
    if not closing or closing[0].returncode != 0:
        run.row.notes.append(f"votes close failed: {closing[0].stderr if closing else 'hung'}")
        return
    certified = run_votes("certify", law, timeout=300)
    if certified.returncode != 0:
        run.row.notes.append(f"votes certify failed: {certified.stderr}")
        return
    final = figures(law)
    run.row.evidence["certified_votes"] = final[0] + final[1]

    recorded = [
        (task_id, kwargs)
        for task_id, kwargs in run.workload.messages
        if kwargs["law_id"] == law and kwargs["vote_hash"] in run.workload.accepted
    ]
    run.row.evidence["replayed_after_certification"] = bury_votes(recorded[:REPLAYED])
    run_votes("dead", "replay", "--all", check=True)
    wait_for(
        lambda: polled(queue_depths, {DEAD: 1})[DEAD] == 0 and run.decided(counted=True),
        timeout=run.options.drain_timeout,
        interval=0.5,
        what="the replayed votes judged",
    )
    verified = run_votes("verify", law, timeout=300)
    unchanged = figures(law) == final and verified.returncode == 0
    run.row.evidence["certified_unchanged"] = int(unchanged)
    if not unchanged:
        run.row.notes.append(
            f"{law} changed after certification: {final} then {figures(law)};"
            f" verify: {verified.stderr.strip()}"
        )


def state(law_id: str) -> str:
    with session_scope() as session:
        return laws.get(session=session, law_id=law_id).state


def waiting(law_id: str) -> int:
    with session_scope() as session:
        return laws.waiting(session=session, law_id=law_id)


def figures(law_id: str) -> tuple[int, ...]:
    """The law's tallies, then its certified counts (oui, non each)."""
    with session_scope() as session:
        tally = session.get(VoteResult, law_id)
        certified = session.execute(
            sa.select(Certification.oui_count, Certification.non_count).where(
                Certification.law_id == law_id
            )
        ).one_or_none()
    counts = (tally.oui_count, tally.non_count) if tally else (0, 0)
    return counts + (tuple(certified) if certified else (-1, -1))


SCENARIOS: dict[str, Scenario] = {
    "kill-workers": kill_workers,
    "kill-beat": kill_beat,
    "restart-rabbitmq": restart_rabbitmq,
    "postgresql-outage": postgresql_outage,
    "redis-restarted-empty": redis_restarted_empty,
    "sigterm-worker": terminate_worker,
    "close-and-certify": close_and_certify,
}


def scenario_workload(options: CampaignOptions) -> Workload:
    """The votes every scenario sends: the same for the same options."""
    return mixed_workload(options.votes, laws=options.laws, tag="faults")


def run_scenario(
    name: str, options: CampaignOptions, *, reset: bool = True, inject: Scenario | None = None
) -> Row:
    """Run one scenario from an empty namespace (`reset=False`: the caller emptied it).

    `inject` replaces the scenario's own fault (the tests use it to run without one).
    """
    if reset:
        namespace.reset()
    workload = scenario_workload(options)
    election.open_laws(workload.laws)
    election.load_roll(workload.roll)
    run = ScenarioRun(name, options, workload)
    try:
        run.start()
        (inject or SCENARIOS[name])(run)
        row = run.finish()
    finally:
        run.stop()
    # Messages the stopped workers handed back: held up somewhere, not destroyed.
    depths: dict[str, int] = polled(queue_depths, {})
    row.evidence["ready_after_stop"] = sum(depths.get(queue, 0) for queue in WORK_QUEUES)
    return row
