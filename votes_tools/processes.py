"""Child processes, one way: `run` to completion, or `Child` in the background (and the
`celery -A votes_app` worker and beat processes built on it), as an operator starts them."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Self

from kombu.exceptions import OperationalError as BrokerUnavailable

from votes_app.celery import WORK_QUEUES, app
from votes_tools.polling import wait_for

# The checkout: children run there, so that they find alembic.ini, scripts/ and .env.
REPO = Path(__file__).resolve().parent.parent


def python(module: str, *args: str) -> list[str]:
    """The command line of `python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = 120,
    check: bool = False,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command in the checkout and wait for it; its output captured unless told not."""
    return subprocess.run(
        list(argv),
        cwd=REPO,
        env=env,
        capture_output=capture,
        text=True,
        timeout=timeout,
        check=check,
    )


def run_votes(
    *args: str, check: bool = False, timeout: float | None = 120
) -> subprocess.CompletedProcess[str]:
    """The `votes` command of this checkout, as a user runs it, in this process's environment."""
    return run(python("votes_app.cli", *args), check=check, timeout=timeout)


class Child:
    """A background process in its own process group, its output appended to a log file."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env or os.environ.copy(),
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own group: Ctrl-C reaches the caller, which stops it in order.
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[int]:
        """Pids of its child processes (a worker's prefork pool)."""
        out = run(["pgrep", "-P", str(self.pid)]).stdout
        return [int(pid) for pid in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole group: main process and its children, no goodbyes."""
        if self.process is not None and self.running():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (a worker's warm shutdown); SIGKILL if it hangs."""
        stop_all([self], timeout=timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def stop_all(children: Sequence[Child], timeout: float = 90) -> None:
    """SIGTERM them all at once (warm shutdowns in parallel), SIGKILL what hangs."""
    running = [child for child in children if child.running()]
    for child in running:
        assert child.process is not None
        child.process.terminate()
    deadline = time.monotonic() + timeout
    for child in running:
        assert child.process is not None
        try:
            child.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()


class CeleryProcess(Child):
    """`celery -A votes_app ARGV`."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(python("celery", "-A", "votes_app", *argv), log, env)


_worker_numbers = itertools.count(1)


class Worker(CeleryProcess):
    """A worker on the work queues; `start()` returns once it answers a ping.

    Without a `name`, each worker of this process gets a node name of its own.
    """

    def __init__(
        self,
        log: Path,
        *,
        name: str | None = None,
        queues: Sequence[str] = WORK_QUEUES,
        concurrency: int = 2,
        loglevel: str = "INFO",
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name or f"worker{next(_worker_numbers)}-{os.getpid()}@%h"
        argv = ["worker", "-Q", ",".join(queues), "-c", str(concurrency), "-n", self.name]
        super().__init__([*argv, "--without-mingle", "--without-gossip", "-l", loglevel], log, env)

    def launch(self) -> Self:
        """Start the process and return at once (see `start`)."""
        super().start()
        return self

    def start(self) -> Self:
        """Start the process and return once it answers a ping; killed if it never does."""
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def answers_ping(self) -> bool:
        """True once the worker answers; an error if it has exited. A ping that fails on a
        lost broker connection (the broker restarted) is asked again on the next call."""
        if not self.running():
            raise RuntimeError(f"worker {self.name} exited; see {self.log}")
        prefix = self.name.split("@")[0] + "@"
        lost: tuple[type[BaseException], ...] = (
            *app.connection_for_write().connection_errors,
            BrokerUnavailable,
        )
        try:
            replies = app.control.ping(timeout=0.5) or []
        except lost:
            return False
        return any(node.startswith(prefix) for reply in replies for node in reply)

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(self.answers_ping, timeout=timeout, what=f"worker {self.name} to answer ping")


class Beat(CeleryProcess):
    """`celery beat`, its schedule file and log in `directory`."""

    def __init__(
        self, directory: Path, *, loglevel: str = "INFO", env: dict[str, str] | None = None
    ) -> None:
        schedule = directory / "beat-schedule"
        super().__init__(["beat", "-s", str(schedule), "-l", loglevel], directory / "beat.log", env)


def free_port() -> int:
    """A TCP port free on this machine right now (for a worker's metrics server)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie, which only waits for its parent, is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that `finally` blocks stop children and bring
    services back before the process goes."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
