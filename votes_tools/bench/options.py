"""What `votes bench` can be asked to do: `BenchOptions`, each field with the help text of its
command-line option; the options travel to the measuring process as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from votes_app.config import PUBLISH_WINDOW


def option(default: Any, help: str, *, choices: tuple[str, ...] = ()) -> Any:
    """A field that is also an option of `votes bench` (`--name-with-dashes`)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class BenchOptions:
    votes: int = option(100_000, "Messages to publish.")
    rate: float = option(1_000.0, "Votes/s offered in the latency run.")
    producers: int = option(4, "Producer processes.")
    window: int = option(
        PUBLISH_WINDOW,
        "Votes each producer keeps awaiting the broker's confirm (1: wait for each).",
    )
    concurrency: int = option(2, "Prefork processes of the (validation) worker.")
    topology: str = option(
        "single",
        "single: one worker on the three queues; split: a validation worker and an "
        "aggregation + review worker (-c 1).",
        choices=("single", "split"),
    )
    laws: int = option(10, "Laws the votes are spread over.")
    latency_seconds: float = option(30.0, "Length of the latency run.")
    voters_load: int = option(1_000_000, "Hashes loaded by the timed `votes voters load`.")
    flush_votes: int = option(1_000_000, "Pending votes of the timed flush.")
    flush_laws: int = option(100, "Laws of the timed flush.")
    loglevel: str = option(
        "INFO",
        "Of the workers and beat (INFO: as `make worker` runs them).",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    timeout: float = option(600.0, "Seconds per phase.")
    skip_ceiling: bool = option(False, "Leave out the raw kombu ceiling.")
    skip_latency: bool = option(False, "Leave out the open-loop latency run.")
    skip_voters_load: bool = option(False, "Leave out the voter roll timing.")
    skip_flush: bool = option(False, "Leave out the large flush timing.")
    output: str | None = option(
        None, "JSON file for the figures (default bench/results/bench-<time>.json)."
    )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BenchOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})
