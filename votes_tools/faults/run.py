"""One scenario's run: its workers, beat and producer, and what became of its votes."""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.request
from collections import Counter
from functools import partial

import sqlalchemy as sa

from votes_app import reconcile
from votes_app.celery import DEAD, REVIEW, VALIDATION, WORK_QUEUES, app
from votes_app.dead_letters import list_dead
from votes_app.models import DuplicateAttempt, ReviewRecord, VoteAudit
from votes_app.producer import VotePublisher
from votes_app.resources import get_redis, session_scope
from votes_app.status import queue_depths
from votes_tools.counts import Snapshot
from votes_tools.faults.injectors import in_flight, polled
from votes_tools.faults.options import CampaignOptions
from votes_tools.faults.report import Row
from votes_tools.polling import wait_for
from votes_tools.processes import Beat, Worker, free_port, stop_all
from votes_tools.publishing import ParallelPublisher, Publication
from votes_tools.workload import Workload

RESEND_SHARE = 0.02  # votes a producer sends again, with their task ids, after the fault
# A producer whose publish failed resends this many votes before it: it cannot tell which
# of them reached the broker.
RESEND_AFTER_ERROR = 100
# With --bulk: how long a vote waits for others to fill its message.
BULK_LINGER_MS = 50.0

# Worker log lines that show a fault was noticed, counted into each row's evidence.
LOG_EVIDENCE = {
    "log_retries": "retrying",
    "log_roll_missing": "voter roll missing",
    "log_broker_lost": "Connection to broker lost",
}


class ScenarioRun:
    """The workers, beat and producer of one scenario, and what they did."""

    def __init__(self, name: str, options: CampaignOptions, workload: Workload) -> None:
        self.name = name
        self.options = options
        self.workload = workload
        self.directory = options.directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.env = os.environ | options.env
        self.workers = [self._worker(n) for n in range(options.workers)]
        self.beat = Beat(self.directory, env=self.env)
        # One producer in order, a message confirmed before the next, as a simple producer
        # service sends them: a vote each, or `bulk` votes each (`votes faults --bulk`).
        opener = (
            partial(VotePublisher, max_batch=options.bulk, linger_ms=BULK_LINGER_MS)
            if options.bulk > 1
            else VotePublisher
        )
        self.producer = ParallelPublisher(
            processes=1, window=1, opener=opener, resend_after_error=RESEND_AFTER_ERROR
        )
        self._stream = threading.Thread(target=self._publish_stream, daemon=True)
        self._publication: Publication | None = None
        self._publish_failure: BaseException | None = None
        self.row = Row(
            scenario=name,
            accepted=len(workload.accepted),
            expected_duplicates=len(workload.second),
            expected_invalid=len(workload.unknown),
        )
        self.started = time.monotonic()

    def _worker(self, number: int) -> Worker:
        # Each worker serves its metrics on a port of its own: the Redis scenario reads them.
        env = self.env | {"METRICS_PORT": str(free_port())}
        return Worker(
            self.directory / f"worker{number}.log",
            name=f"faults{number}-{os.getpid()}@%h",
            concurrency=self.options.concurrency,
            env=env,
        )

    def _publish_stream(self) -> None:
        try:
            self._publication = self.producer.publish(self.workload.messages)
        except BaseException as exc:  # reported by finish, not lost with the thread
            self._publish_failure = exc

    # processes

    def start(self) -> None:
        for worker in self.workers:
            worker.launch()  # all at once: each is waited for below
        self.beat.start()
        for worker in self.workers:
            worker.wait_ready()
        self._stream.start()

    def stop(self) -> None:
        self.producer.stop()
        stop_all([*self.workers, self.beat])

    def restart(self, worker: Worker) -> None:
        """Start a worker again: on a fresh port, since its old one may not be free yet."""
        assert worker.env is not None
        worker.env = worker.env | {"METRICS_PORT": str(free_port())}
        worker.start()

    # progress

    def audited(self) -> int:
        return polled(lambda: Snapshot.take().audited, 0)

    def wait_until_audited(self, share: float, timeout: float | None = None) -> None:
        """Until `share` of the accepted votes are in the audit log: a point mid-stream."""
        target = int(share * self.row.accepted)
        wait_for(
            lambda: self.audited() >= target,
            timeout=timeout or self.options.drain_timeout,
            interval=0.2,
            what=f"{target:,} votes audited",
        )

    def wait_until_published(self, share: float, timeout: float | None = None) -> None:
        """Until the producer has published `share` of the stream: a point mid-stream for
        the producer, which may run well ahead of the audit log."""
        target = int(share * len(self.workload.messages))
        wait_for(
            lambda: self.producer.published >= target,
            timeout=timeout or self.options.drain_timeout,
            interval=0.05,
            what=f"{target:,} messages published",
        )

    def logs(self) -> str:
        return "".join(
            path.read_text(errors="replace") for path in sorted(self.directory.glob("*.log"))
        )

    def metric(self, name: str) -> float:
        """A metric summed over the workers that answer (a worker down adds nothing)."""
        total = 0.0
        for worker in self.workers:
            port = (worker.env or {}).get("METRICS_PORT")
            if not port or not worker.running():
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    # the end

    def finish(self) -> Row:
        """Wait for the stream, resend a slice of it, wait for the drain, then count."""
        row = self.row
        self._stream.join(timeout=self.options.drain_timeout)
        if self._publish_failure is not None:
            row.notes.append(f"publisher failed: {self._publish_failure!r}")
        # Producers that are unsure resend with the same task ids: it must change nothing.
        rng = random.Random(len(self.workload.messages))
        resent = self.producer.publish(rng.sample(self.workload.messages, self.resend_count))
        published_at = time.monotonic()
        try:
            wait_for(
                self.drained, timeout=self.options.drain_timeout, interval=0.5, what="the drain"
            )
            row.drained = True
        except TimeoutError:
            row.drained = False
        row.drain_seconds = time.monotonic() - published_at
        row.published = resent.sends + (self._publication.sends if self._publication else 0)
        row.resent = row.published - len(self.workload.messages)
        row.evidence["publish_errors"] = self.producer.errors
        row.evidence["producer_reconnects"] = resent.reconnects + (
            self._publication.reconnects if self._publication else 0
        )
        logs = self.logs()
        for key, line in LOG_EVIDENCE.items():
            row.evidence[key] = logs.count(line)
        measure(self.workload, row)
        row.seconds = time.monotonic() - self.started
        return row

    @property
    def resend_count(self) -> int:
        return max(1, int(RESEND_SHARE * len(self.workload.messages)))

    def drained(self) -> bool:
        """Every vote decided and counted, nothing left to do in the work queues."""
        return self.decided(counted=True)

    def decided(self, *, counted: bool = False) -> bool:
        """Every vote judged and nothing left to do in the work queues; the recorded votes
        all counted too if `counted`."""
        now: Snapshot | None = polled(Snapshot.take, None)
        if now is None or (counted and now.uncounted) or now.audited < self.row.accepted:
            return False
        if now.duplicates < self.row.expected_duplicates:
            return False
        if polled(invalid_hashes, set[str]()) < self.workload.unknown:
            return False
        depths = polled(queue_depths, None)
        if depths is None or any(depths[queue] for queue in WORK_QUEUES):
            return False
        # Ready messages are not all: a worker may hold some unacknowledged (retries
        # waiting for their countdown). Ask the broker for those too.
        return not polled(lambda: in_flight((VALIDATION, REVIEW)), 1)


def measure(workload: Workload, row: Row) -> None:
    """Fill in what the namespace holds now: counts, and the votes lost, counted twice,
    refused or accepted wrongly."""
    now = Snapshot.take()
    row.audited, row.tallied, row.duplicates = now.audited, now.tallied, now.duplicates
    with session_scope() as session:
        found = reconcile.reconcile(session=session)
    with session_scope() as session:
        audited = set(session.scalars(sa.select(VoteAudit.vote_hash)))
        duplicated = set(session.scalars(sa.select(DuplicateAttempt.vote_hash)))
    refused_invalid = invalid_hashes()
    row.invalid = len(refused_invalid & workload.unknown)
    # Lost: never recorded, a voter without a ballot, or a ballot never counted. Counted
    # twice: a ballot without a voter, or a ballot counted more than once.
    row.lost = (
        len(workload.accepted - audited)
        + sum(max(0, -line.drift) for line in found.lines)
        + sum(max(0, -law.gap) for law in found.turnout)
    )
    row.counted_twice = sum(max(0, line.drift) for line in found.lines) + sum(
        max(0, law.gap) for law in found.turnout
    )
    row.wrongly_refused = len(duplicated & workload.sent_once) + len(
        refused_invalid & workload.accepted
    )
    row.wrongly_accepted = len(audited & workload.unknown)
    missing = workload.accepted - audited
    if missing:
        # The task ids to look for in the worker logs.
        tasks = [task_id for task_id, kwargs in workload.messages if kwargs["vote_hash"] in missing]
        row.notes.append(f"lost votes' task ids include {', '.join(sorted(tasks)[:5])}")
    row.dead = queue_depths()[DEAD]
    if row.dead:
        row.notes.append(f"votes.dead holds: {dead_reasons()}")
    if row.duplicates != row.expected_duplicates:
        row.notes.append(f"duplicates {row.duplicates:,}, expected {row.expected_duplicates:,}")


def dead_reasons() -> str:
    """What `votes dead list` says about the messages in votes.dead, counted by reason."""
    try:
        with app.connection_for_write() as connection:
            letters = list_dead(connection, get_redis())
    except Exception as exc:  # the listing itself can fail; say so rather than hide the row
        return f"(votes dead list failed: {exc!r})"
    reasons = Counter(f"{letter.task} from {letter.queue}: {letter.reason}" for letter in letters)
    return "; ".join(f"{count} x {reason}" for reason, count in reasons.most_common())


def invalid_hashes() -> set[str]:
    with session_scope() as session:
        return set(
            session.scalars(
                sa.select(ReviewRecord.vote_hash).where(
                    ReviewRecord.kind == "invalid", ReviewRecord.vote_hash.is_not(None)
                )
            )
        )
