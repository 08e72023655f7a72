"""`votes faults`: the fault campaign against the real services, one table row per scenario.

Kills, restarts and outages while votes stream in; the exit status is non-zero if any vote
is lost, counted twice, wrongly refused or left in votes.dead. Each scenario runs on a
namespace of its own (`votes faults` uses database votes_faults, Redis index 3 and vhost
votes_faults; FAULTS_DATABASE_URL, FAULTS_REDIS_URL and FAULTS_BROKER_URL override them):
two workers and beat run while a stream of votes is published, a fault is injected part-way
through, whatever was killed is started again, and the campaign waits for the pipeline to
drain before it counts. The scenarios are plain functions, so the test suite runs each of
them on a short stream (tests/integration/test_faults.py).

Run as `python -m votes_app.faults [OPTIONS]` with the namespace in the environment
(`votes faults` does that). docs/FAULTS.md describes each scenario.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import click
import redis
import sqlalchemy as sa
from amqp.exceptions import AMQPError
from kombu import Connection
from kombu.exceptions import OperationalError as BrokerError
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from votes_app import reconcile
from votes_app.ballot_box import load_voters
from votes_app.celery import DEAD, REVIEW, VALIDATION, app
from votes_app.config import get_settings
from votes_app.dead_letters import list_dead
from votes_app.harness import (
    REPO,
    WORK_QUEUES,
    Beat,
    CeleryProcess,
    Snapshot,
    Worker,
    queue_depths,
    reset_namespace,
    run_votes,
    voter_hash,
    wait_for,
)
from votes_app.models import DuplicateAttempt, ReviewRecord, VoteAudit
from votes_app.producer import VotePublisher
from votes_app.resources import get_redis, session_scope

# Not votes_app.cli's console: the `votes` command imports this module as it starts.
console = Console()

BrokerRestart = Literal["stop-app", "close-connections"]
RedisRestart = Literal["flush", "shutdown"]

SECOND_VOTE_SHARE = 0.05  # voters who try to vote a second time
UNKNOWN_SHARE = 0.02  # votes from hashes that are not on the voter roll
RESEND_SHARE = 0.02  # votes a producer sends again, with their task ids, after the fault
QUICK_VOTES = 3_000

# Settings of the workers and beat the campaign starts. A vote whose pending tally Redis
# forgot is counted by the flush's straggler sweep once it is this old: 2 s instead of 60
# keeps the Redis scenario's drain short.
CAMPAIGN_ENV = {"TALLY_STRAGGLER_SECONDS": "2"}

# Errors a poll may meet while a service is down on purpose: the poll tries again.
UNAVAILABLE = (
    AMQPError,
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    redis.RedisError,
    BrokerError,
    ConnectionError,
    OSError,
)

# Worker log lines that show a fault was noticed, counted into each row's evidence.
LOG_EVIDENCE = {
    "log_retries": "retrying",
    "log_roll_missing": "voter roll missing",
    "log_broker_lost": "Connection to broker lost",
}


# --- the stream of votes ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    task_id: str
    kwargs: dict[str, str]


@dataclass(frozen=True, slots=True)
class Stream:
    """The votes of one scenario, in publishing order, and what should become of them."""

    messages: list[Message]
    roll: list[str]  # the voter roll: every voter who votes at least once
    second: frozenset[str]  # voters who vote twice
    unknown: frozenset[str]  # hashes not on the roll

    @property
    def accepted(self) -> frozenset[str]:
        """Each voter on the roll has exactly one vote accepted, whichever arrives first."""
        return frozenset(self.roll)

    @property
    def sent_once(self) -> frozenset[str]:
        return self.accepted - self.second


def make_stream(votes: int, *, laws: int = 4, seed: int = 2026) -> Stream:
    """`votes` messages: first votes, ~5% second votes (each well after its voter's first
    one), ~2% unknown hashes, spread through the stream."""
    rng = random.Random(seed)
    law_ids = [f"law-{n:03d}" for n in range(1, laws + 1)]
    stamp = datetime.now(UTC).isoformat()
    unknown_count = max(1, round(votes * UNKNOWN_SHARE))
    second_count = max(1, round(votes * SECOND_VOTE_SHARE))
    first_count = votes - unknown_count - second_count
    gap = max(50, votes // 20)  # messages between a voter's two votes, at least

    keyed: list[tuple[float, dict[str, str]]] = []
    roll = []
    for voter in range(first_count):
        law_id = law_ids[voter % laws]
        ballot = {
            "vote_hash": voter_hash(voter, law_id),
            "law_id": law_id,
            "choice": rng.choice(("oui", "non")),
            "timestamp": stamp,
        }
        roll.append(ballot["vote_hash"])
        keyed.append((float(voter), ballot))
    twice = rng.sample(range(first_count - gap), second_count)
    for voter in twice:
        first = keyed[voter][1]
        again = {**first, "choice": "non" if first["choice"] == "oui" else "oui"}
        keyed.append((rng.uniform(voter + gap, first_count), again))
    unknown = []
    for n in range(unknown_count):
        vote_hash = voter_hash(10**8 + n, "not-on-the-roll")
        unknown.append(vote_hash)
        ballot = {
            "vote_hash": vote_hash,
            "law_id": law_ids[n % laws],
            "choice": "oui",
            "timestamp": stamp,
        }
        keyed.append((rng.uniform(0, first_count), ballot))
    keyed.sort(key=lambda pair: pair[0])
    return Stream(
        messages=[Message(str(uuid.uuid4()), ballot) for _, ballot in keyed],
        roll=roll,
        second=frozenset(roll[voter] for voter in twice),
        unknown=frozenset(unknown),
    )


class StreamPublisher(threading.Thread):
    """Publishes a stream as a producer service would, in order, with publisher confirms.

    When a publish fails (the broker went away), it reconnects and sends the failed vote
    again together with the `resend_window` votes before it, with their original task ids:
    a producer that cannot tell what reached the broker resends, and the resend must be
    harmless.
    """

    def __init__(self, messages: Sequence[Message], *, resend_window: int = 100) -> None:
        super().__init__(name="stream-publisher", daemon=True)
        self.messages = list(messages)
        self.resend_window = resend_window
        self.published = 0  # messages of the stream confirmed at least once
        self.sends = 0  # publish calls that succeeded, resends included
        self.errors = 0
        self.failure: BaseException | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        try:
            self.send(self.messages, track=True)
        except BaseException as exc:  # reported by Run.finish, not lost with the thread
            self.failure = exc

    def stop(self) -> None:
        self._stopping.set()

    def send(self, messages: Sequence[Message], *, track: bool = False) -> None:
        """Publish `messages` in order, resending after errors; `track`: the stream itself."""
        position = 0
        publisher: VotePublisher | None = None
        try:
            while position < len(messages) and not self._stopping.is_set():
                message = messages[position]
                try:
                    if publisher is None:
                        publisher = VotePublisher().__enter__()
                    publisher.publish(message.kwargs, task_id=message.task_id)
                except Exception:
                    self.errors += 1
                    if publisher is not None:
                        with contextlib.suppress(Exception):
                            publisher.__exit__(None, None, None)
                        publisher = None
                    position = max(0, position - self.resend_window)
                    # A producer's back-off before it reconnects: not a wait for a condition.
                    self._stopping.wait(0.5)
                    continue
                self.sends += 1
                position += 1
                if track:
                    self.published = max(self.published, position)
        finally:
            if publisher is not None:
                with contextlib.suppress(Exception):
                    publisher.__exit__(None, None, None)


# --- one scenario's processes and measurements ------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """How a scenario runs; `quick()` is the short version the test suite uses."""

    directory: Path  # worker and beat logs
    votes: int = 20_000
    laws: int = 4
    workers: int = 2
    concurrency: int = 2
    outage_seconds: float = 10.0
    broker_restart: BrokerRestart = "stop-app"
    redis_restart: RedisRestart = "flush"
    drain_timeout: float = 300.0
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def quick(cls, directory: Path, votes: int = QUICK_VOTES) -> Options:
        return cls(
            directory=directory,
            votes=votes,
            outage_seconds=5.0,
            broker_restart="close-connections",
            drain_timeout=180.0,
        )


@dataclass(slots=True)
class Row:
    """One scenario's outcome, as the table prints it."""

    scenario: str
    published: int = 0
    resent: int = 0
    accepted: int = 0  # voters on the roll who voted: each must have one vote counted
    audited: int = 0
    tallied: int = 0
    duplicates: int = 0
    expected_duplicates: int = 0
    invalid: int = 0
    expected_invalid: int = 0
    lost: int = 0
    counted_twice: int = 0
    wrongly_refused: int = 0  # duplicate or invalid verdicts for votes that were neither
    wrongly_accepted: int = 0  # unknown hashes in the audit log
    dead: int = 0
    drained: bool = False
    drain_seconds: float = 0.0
    seconds: float = 0.0
    evidence: dict[str, float] = field(default_factory=dict)  # proof the fault happened
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = [
            f"{count} {what}"
            for count, what in (
                (self.lost, "lost"),
                (self.counted_twice, "counted twice"),
                (self.wrongly_refused, "wrongly refused"),
                (self.wrongly_accepted, "wrongly accepted"),
                (self.dead, "in votes.dead"),
            )
            if count
        ]
        if not self.drained:
            found.append(f"not drained after {self.drain_seconds:.0f}s")
        return found + self.notes

    @property
    def ok(self) -> bool:
        return not self.problems()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def polled(read: Callable[[], Any], default: Any) -> Any:
    """`read()`, or `default` while the service it reads is down on purpose."""
    try:
        return read()
    except UNAVAILABLE:
        return default


class Run:
    """The workers, beat and publisher of one scenario, and what they did."""

    def __init__(self, name: str, options: Options, stream: Stream) -> None:
        self.name = name
        self.options = options
        self.stream = stream
        self.directory = options.directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.env = os.environ | CAMPAIGN_ENV | options.env
        self.workers = [self._worker(n) for n in range(options.workers)]
        self.beat = Beat(self.directory, env=self.env)
        self.publisher = StreamPublisher(stream.messages)
        self.row = Row(
            scenario=name,
            accepted=len(stream.accepted),
            expected_duplicates=len(stream.second),
            expected_invalid=len(stream.unknown),
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

    # processes

    def start(self) -> None:
        for process in (*self.workers, self.beat):
            CeleryProcess.start(process)
        for worker in self.workers:
            worker.wait_ready()
        self.publisher.start()

    def stop(self) -> None:
        self.publisher.stop()
        stop_all([*self.workers, self.beat])

    def restart(self, worker: Worker) -> None:
        """Start a worker again: on a fresh port, since its old one may not be free yet."""
        assert worker.env is not None
        worker.env = worker.env | {"METRICS_PORT": str(free_port())}
        worker.start()

    # progress

    def audited(self) -> int:
        return int(polled(lambda: Snapshot.take().audited, 0))

    def wait_until_audited(self, share: float, timeout: float | None = None) -> None:
        """Until `share` of the accepted votes are in the audit log: a point mid-stream."""
        target = int(share * self.row.accepted)
        wait_for(
            lambda: self.audited() >= target,
            timeout=timeout or self.options.drain_timeout,
            interval=0.2,
            what=f"{target:,} votes audited",
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
        self.publisher.join(timeout=self.options.drain_timeout)
        if self.publisher.failure is not None:
            row.notes.append(f"publisher failed: {self.publisher.failure!r}")
        # Producers that are unsure resend with the same task ids: it must change nothing.
        rng = random.Random(len(self.stream.messages))
        self.publisher.send(rng.sample(self.stream.messages, self.resend_count))
        published_at = time.monotonic()
        try:
            wait_for(
                self.drained, timeout=self.options.drain_timeout, interval=0.5, what="the drain"
            )
            row.drained = True
        except TimeoutError:
            row.drained = False
        row.drain_seconds = time.monotonic() - published_at
        row.published = self.publisher.sends
        row.resent = self.publisher.sends - len(self.stream.messages)
        row.evidence["publish_errors"] = self.publisher.errors
        logs = self.logs()
        for key, line in LOG_EVIDENCE.items():
            row.evidence[key] = logs.count(line)
        measure(self.stream, row)
        row.seconds = time.monotonic() - self.started
        return row

    @property
    def resend_count(self) -> int:
        return max(1, int(RESEND_SHARE * len(self.stream.messages)))

    def drained(self) -> bool:
        """Every vote decided and counted, nothing left to do in the work queues."""
        now: Snapshot | None = polled(Snapshot.take, None)
        if now is None or now.uncounted or now.audited < self.row.accepted:
            return False
        if now.duplicates < self.row.expected_duplicates:
            return False
        if polled(invalid_hashes, set()) < self.stream.unknown:
            return False
        depths = polled(queue_depths, None)
        if depths is None or any(depths[queue] for queue in WORK_QUEUES):
            return False
        # Ready messages are not all: a worker may hold some unacknowledged (retries
        # waiting for their countdown). Ask the broker for those too.
        return not polled(lambda: in_flight((VALIDATION, REVIEW)), 1)


def measure(stream: Stream, row: Row) -> None:
    """Fill in what the namespace holds now: counts, and the votes lost, counted twice,
    refused or accepted wrongly."""
    now = Snapshot.take()
    row.audited, row.tallied, row.duplicates = now.audited, now.tallied, now.duplicates
    with session_scope() as session:
        lines = reconcile.compare(session=session)
    with session_scope() as session:
        audited = set(session.scalars(sa.select(VoteAudit.vote_hash)))
        duplicated = set(session.scalars(sa.select(DuplicateAttempt.vote_hash)))
    refused_invalid = invalid_hashes()
    row.invalid = len(refused_invalid & stream.unknown)
    # Lost: never recorded, or recorded and never counted.
    row.lost = len(stream.accepted - audited) + sum(max(0, -line.drift) for line in lines)
    row.counted_twice = sum(max(0, line.drift) for line in lines)
    row.wrongly_refused = len(duplicated & stream.sent_once) + len(
        refused_invalid & stream.accepted
    )
    row.wrongly_accepted = len(audited & stream.unknown)
    missing = stream.accepted - audited
    if missing:
        # The task ids to look for in the worker logs.
        tasks = [m.task_id for m in stream.messages if m.kwargs["vote_hash"] in missing]
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


def stop_all(processes: Sequence[CeleryProcess], timeout: float = 90) -> None:
    """SIGTERM them all at once (warm shutdowns in parallel), SIGKILL what hangs."""
    running = [p for p in processes if p.running()]
    for process in running:
        assert process.process is not None
        process.process.terminate()
    deadline = time.monotonic() + timeout
    for process in running:
        assert process.process is not None
        try:
            process.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


# --- the services -----------------------------------------------------------------------


def broker_vhost() -> str:
    return str(Connection(get_settings().broker_url).virtual_host)


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    return subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=timeout
    ).stdout


def in_flight(queues: Sequence[str]) -> int:
    """Messages ready or delivered-but-unacknowledged in `queues`, as the broker counts them."""
    out = rabbitmqctl(
        "list_queues", "-q", "-p", broker_vhost(), "name", "messages_ready",
        "messages_unacknowledged",
    )  # fmt: skip
    total = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in queues:
            total += int(parts[1]) + int(parts[2])
    return total


def broker_outage(mode: BrokerRestart, seconds: float) -> None:
    """RabbitMQ goes away: for everyone (`stop_app`: the node stops serving for `seconds`)
    or for our vhost only (its connections closed at once). The node is always started
    again."""
    if mode == "close-connections":
        rabbitmqctl("close_all_connections", "--vhost", broker_vhost(), "fault campaign")
        return
    rabbitmqctl("stop_app")
    try:
        # The outage lasts this long by design: there is nothing to poll for.
        time.sleep(seconds)
    finally:
        for attempt in range(5):
            try:
                rabbitmqctl("start_app")
                rabbitmqctl("await_startup")
                break
            except subprocess.SubprocessError:
                if attempt == 4:
                    raise


def database_name() -> str:
    name = make_url(get_settings().database_url.get_secret_value()).database
    # The name goes into ALTER DATABASE, which takes no bound parameters.
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise click.ClickException(f"database name {name!r} is not a plain identifier")
    return name


def database_outage(seconds: float) -> int:
    """Our database refuses connections and loses the ones it had, for `seconds`: what the
    application sees of a PostgreSQL restart, without stopping anyone else's database.
    Returns the number of connections terminated."""
    url = make_url(get_settings().database_url.get_secret_value())
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    name = database_name()
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            try:
                terminated = connection.scalar(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": name},
                )
                # The outage lasts this long by design: there is nothing to poll for.
                time.sleep(seconds)
            finally:
                connection.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    finally:
        admin.dispose()
    return int(terminated or 0)


def redis_restart_empty(mode: RedisRestart) -> int:
    """Redis comes back empty. `flush`: our index is emptied and its clients disconnected,
    as a restart would (other indexes untouched). `shutdown`: the real thing, for everyone.
    Returns the number of clients disconnected."""
    if mode == "shutdown":
        subprocess.run(["redis-cli", "shutdown", "nosave"], check=False, capture_output=True)
        # scripts/services.sh starts whatever is down, with this machine's own command.
        subprocess.run(["bash", str(REPO / "scripts" / "services.sh")], check=True)
        return -1
    client = get_redis()
    database = int(client.connection_pool.connection_kwargs.get("db", 0))
    client.flushdb()
    me = int(client.client_id())
    killed = 0
    for entry in client.client_list():
        if int(entry["db"]) == database and int(entry["id"]) != me:
            killed += int(client.client_kill_filter(_id=entry["id"]))
    return killed


# --- the scenarios ------------------------------------------------------------------------

Scenario = Callable[[Run], None]


def kill_workers(run: Run) -> None:
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


def kill_pool_process(worker: Worker) -> None:
    """SIGKILL one pool process; returns once the pool has replaced it."""
    before = worker.children()
    os.kill(before[0], signal.SIGKILL)

    def replaced() -> bool:
        now = worker.children()
        return len(now) == len(before) and before[0] not in now

    wait_for(replaced, timeout=60, what="the pool to replace its process")


def kill_main_process(worker: Worker) -> bool:
    """SIGKILL the worker's main process alone; True if its pool processes outlived it
    and had to be killed too."""
    orphans = worker.children()
    os.kill(worker.pid, signal.SIGKILL)
    assert worker.process is not None
    worker.process.wait(timeout=30)
    # A supervisor such as systemd kills what is left of the group; so does this, if the
    # pool processes have not noticed by then that their parent is gone.
    try:
        wait_for(
            lambda: not any(alive(pid) for pid in orphans),
            timeout=10,
            what="orphaned pool processes to exit",
        )
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        return True
    return False


def wait_answering(worker: Worker, timeout: float) -> None:
    """Like `Worker.wait_ready`, through the broker's own outage: a ping that fails because
    our connection was closed too is asked again."""
    prefix = worker.name.split("@")[0] + "@"

    def answered() -> bool:
        if not worker.running():
            raise RuntimeError(f"worker {worker.name} exited; see {worker.log}")
        replies = polled(lambda: app.control.ping(timeout=0.5) or [], [])
        return any(node.startswith(prefix) for reply in replies for node in reply)

    wait_for(answered, timeout=timeout, what=f"worker {worker.name} to answer ping")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead: it only waits for its parent to read its status.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_beat(run: Run) -> None:
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


def restart_rabbitmq(run: Run) -> None:
    """RabbitMQ goes away mid-stream; workers reconnect on their own, the producer resends."""
    pids = [worker.pid for worker in run.workers]
    run.wait_until_audited(1 / 3)
    errors = run.publisher.errors
    broker_outage(run.options.broker_restart, run.options.outage_seconds)
    run.row.evidence["broker_outages"] = 1
    for worker in run.workers:
        wait_answering(worker, timeout=120)
    # The same processes answer: they reconnected by themselves, nobody restarted them.
    run.row.evidence["workers_restarted"] = sum(
        worker.pid != pid for worker, pid in zip(run.workers, pids, strict=True)
    )
    run.wait_until_audited(0.6)
    run.row.evidence["publish_errors_during_outage"] = run.publisher.errors - errors


def postgresql_outage(run: Run) -> None:
    """The database refuses connections for OUTAGE seconds mid-stream: validation and
    review retry with backoff, flushes wait; nothing is dropped or called a duplicate."""
    run.wait_until_audited(1 / 3)
    terminated = database_outage(run.options.outage_seconds)
    run.row.evidence["connections_terminated"] = terminated
    run.row.evidence["outage_seconds"] = run.options.outage_seconds


def redis_restarted_empty(run: Run) -> None:
    """Redis forgets everything mid-stream: votes are held, not refused, until the roll is
    loaded again; `voters rebuild-voted` restores the fast duplicate check."""
    run.wait_until_audited(1 / 3)
    run.row.evidence["redis_clients_disconnected"] = redis_restart_empty(run.options.redis_restart)
    wait_for(lambda: "voter roll missing" in run.logs(), timeout=120, what="votes to be held")
    held = wait_for(lambda: run.metric("votes_held_total"), timeout=60, what="held votes metric")
    run.row.evidence["votes_held"] = held
    roll = run.directory / "voter-roll.txt"
    roll.write_text("\n".join(run.stream.roll) + "\n")
    votes_command("voters", "load", str(roll))
    votes_command("voters", "rebuild-voted")


def votes_command(*args: str) -> str:
    """The `votes` command, as an operator runs it, on this namespace."""
    return run_votes(*args, check=True, timeout=300).stdout


def terminate_worker(run: Run) -> None:
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


SCENARIOS: dict[str, Scenario] = {
    "kill-workers": kill_workers,
    "kill-beat": kill_beat,
    "restart-rabbitmq": restart_rabbitmq,
    "postgresql-outage": postgresql_outage,
    "redis-restarted-empty": redis_restarted_empty,
    "sigterm-worker": terminate_worker,
}


def run_scenario(
    name: str, options: Options, *, reset: bool = True, inject: Scenario | None = None
) -> Row:
    """Run one scenario from an empty namespace (`reset=False`: the caller emptied it).

    `inject` replaces the scenario's own fault (the tests use it to run without one).
    """
    if reset:
        reset_namespace()
    stream = make_stream(options.votes, laws=options.laws)
    for _ in load_voters(get_redis(), stream.roll):
        pass
    run = Run(name, options, stream)
    try:
        run.start()
        (inject or SCENARIOS[name])(run)
        row = run.finish()
    finally:
        run.stop()
    # Messages the stopped workers handed back: held up somewhere, not destroyed.
    depths = polled(queue_depths, {})
    row.evidence["ready_after_stop"] = sum(depths.get(queue, 0) for queue in WORK_QUEUES)
    return row


# --- the campaign -------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> Table:
    result = Table(title="Fault campaign")
    headers = (
        "scenario", "published", "resent", "accepted", "audited", "tallied", "duplicates",
        "invalid", "lost", "counted twice", "wrongly refused", "dead", "drain s", "result",
    )  # fmt: skip
    for header in headers:
        left = header in ("scenario", "result")
        result.add_column(header, justify="left" if left else "right", no_wrap=left)
    for row in rows:
        result.add_row(
            row.scenario,
            f"{row.published:,}",
            f"{row.resent:,}",
            f"{row.accepted:,}",
            f"{row.audited:,}",
            f"{row.tallied:,}",
            f"{row.duplicates:,}",
            f"{row.invalid:,}",
            f"{row.lost:,}",
            f"{row.counted_twice:,}",
            f"{row.wrongly_refused:,}",
            f"{row.dead:,}",
            f"{row.drain_seconds:.1f}",
            "ok" if row.ok else "[red]FAIL[/red]",
        )
    return result


def run_campaign(names: Sequence[str], options: Options) -> int:
    rows = []
    for name in names:
        console.print(f"[bold]{name}[/bold]: {options.votes:,} votes ...")
        try:
            row = run_scenario(name, options)
        except Exception as exc:
            console.print_exception()
            row = Row(scenario=name, notes=[f"scenario failed: {exc!r}"])
        rows.append(row)
        evidence = ", ".join(f"{key}={value:g}" for key, value in sorted(row.evidence.items()))
        console.print(
            f"  {'ok' if row.ok else 'FAIL: ' + '; '.join(row.problems())}"
            f" in {row.seconds:.0f}s ({evidence})"
        )
    # Wide enough for every column, even when the output is not a terminal.
    Console(width=max(console.width, 200)).print(table(rows))
    console.print(f"logs in {options.directory}")
    return 0 if all(row.ok for row in rows) else 1


def campaign_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options of `votes faults` and of `python -m votes_app.faults`, defined once."""
    decorators = [
        click.option("--votes", type=click.IntRange(min=1_000), help="Votes per scenario."),
        click.option(
            "--scenario",
            "scenarios",
            multiple=True,
            type=click.Choice(list(SCENARIOS)),
            help="Run only this scenario (repeatable).",
        ),
        click.option(
            "--quick",
            is_flag=True,
            help=f"{QUICK_VOTES:,} votes per scenario, 5 s outages, RabbitMQ connections"
            " closed instead of the broker stopped (the short version `make test` runs).",
        ),
        click.option(
            "--rabbitmq-restart",
            type=click.Choice(["stop-app", "close-connections"]),
            help="stop-app (default; stops the whole broker for everyone) or"
            " close-connections (only this namespace's vhost).",
        ),
        click.option(
            "--real-restarts",
            is_flag=True,
            help="Restart RabbitMQ (stop_app/start_app) and Redis (shutdown nosave, then start)"
            " for real: every user of this machine's services sees them go.",
        ),
        click.option(
            "--redis-restart",
            type=click.Choice(["flush", "shutdown"]),
            default="flush",
            show_default=True,
            help="flush: empty this namespace's Redis index and drop its clients;"
            " shutdown: `redis-cli shutdown nosave` and start it again (for everyone).",
        ),
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


def build_options(
    directory: Path,
    votes: int | None,
    quick: bool,
    rabbitmq_restart: str | None,
    redis_restart: str,
) -> Options:
    options = Options.quick(directory) if quick else Options(directory=directory)
    changes: dict[str, Any] = {"redis_restart": redis_restart}
    if votes:
        changes["votes"] = votes
    if rabbitmq_restart:
        changes["broker_restart"] = rabbitmq_restart
    return replace(options, **changes)


@click.command()
@campaign_options
def faults(
    votes: int | None,
    scenarios: tuple[str, ...],
    quick: bool,
    real_restarts: bool,
    rabbitmq_restart: str | None,
    redis_restart: str,
) -> None:
    """The fault campaign: kills, restarts and outages while votes stream in.

    One table row per scenario; exit code 1 if any vote is lost, counted twice, wrongly
    refused or left in votes.dead. Runs on a namespace of its own: FAULTS_DATABASE_URL
    (default database votes_faults), FAULTS_REDIS_URL (Redis index 3), FAULTS_BROKER_URL
    (vhost votes_faults), wiped before each scenario.
    """
    from votes_app.cli import run_in_namespace

    args = [f"--redis-restart={redis_restart}"]
    args += [f"--votes={votes}"] if votes else []
    args += [f"--scenario={name}" for name in scenarios]
    args += ["--quick"] if quick else []
    args += ["--real-restarts"] if real_restarts else []
    args += [f"--rabbitmq-restart={rabbitmq_restart}"] if rabbitmq_restart else []
    run_in_namespace("faults", redis_index=3, module="votes_app.faults", args=args)


@click.command()
@campaign_options
def campaign(
    votes: int | None,
    scenarios: tuple[str, ...],
    quick: bool,
    real_restarts: bool,
    rabbitmq_restart: str | None,
    redis_restart: str,
) -> None:
    """The campaign itself, on whatever namespace the environment names."""
    directory = Path(tempfile.mkdtemp(prefix="faults-campaign-"))
    if real_restarts:
        rabbitmq_restart, redis_restart = "stop-app", "shutdown"
    options = build_options(directory, votes, quick, rabbitmq_restart, redis_restart)
    sys.exit(run_campaign(scenarios or list(SCENARIOS), options))


def _stop(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds through the `finally` blocks that bring services back.
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    campaign()
