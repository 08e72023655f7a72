"""A production worker and beat load the runtime alone: no tool, and no code that can drop a
schema or empty a Redis database. Read from real processes: Python reports every module it
imports (PYTHONPROFILEIMPORTTIME), pool processes included, into the process's log."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from tests.support import load_roll, publish, results, vote, voter_hash, wait_for
from votes_tools.processes import Beat, Worker

# `import time: self [us] | cumulative | imported package`, one line per module imported.
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)\s*$", re.MULTILINE)
# What wipes data: a schema or table dropped, a Redis database emptied.
DESTRUCTIVE = re.compile(r"DROP\s+(SCHEMA|TABLE)|drop_table|flushdb|flushall", re.IGNORECASE)


def imported_modules(log: Path) -> set[str]:
    return set(IMPORTED.findall(log.read_text(errors="replace")))


def test_a_worker_and_beat_import_no_tool_and_nothing_that_wipes_data(tmp_path: Path) -> None:
    env = os.environ | {"PYTHONPROFILEIMPORTTIME": "1"}
    voters = [voter_hash(n, "law-001") for n in range(3)]
    load_roll(voters)
    with Worker(tmp_path / "worker.log", env=env) as worker, Beat(tmp_path, env=env) as beat:
        # Every task runs at least once, so that what a task imports on first use is seen.
        publish([vote(h, "law-001", "oui") for h in voters] + [vote(voters[0], "law-001", "non")])
        publish([{"vote_hash": "not a hash"}])
        wait_for(lambda: sum(results().values()) == len(voters), timeout=60, what="tallies")
    loaded = imported_modules(worker.log) | imported_modules(beat.log)

    # (Celery's loader imports votes_app.tasks in a way that leaves no line of its own; the
    # modules it imports have theirs.)
    assert {"votes_app.batching", "votes_app.validation", "votes_app.tallies"} <= loaded
    assert {"celery.beat", "celery_batches"} <= loaded  # the log did catch both processes
    assert sorted(m for m in loaded if m.split(".")[0] == "votes_tools") == []
    assert sorted(m for m in loaded if m.startswith("votes_app.migrations")) == []
    ours = sorted(m for m in loaded if m.split(".")[0] == "votes_app")
    wiping = []
    for name in ours:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        if DESTRUCTIVE.search(Path(spec.origin).read_text()):
            wiping.append(name)
    assert wiping == []
