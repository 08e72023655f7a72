"""What `votes bench` can be asked to do: `BenchOptions`, each field with the help text of its
command-line option; the options travel to the measuring process as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from votes_app.config import BULK_LINGER_MS, PUBLISH_WINDOW

# `--quick`: the same phases at sizes that take under three minutes on a 2-core machine.
QUICK_SIZES: dict[str, Any] = {
    "votes": 20_000,
    "latency_seconds": 8.0,
    "voters_load": 200_000,
    "flush_votes": 200_000,
}
MIN_VOTES = 100  # fewer leave the mix without a first half to draw second votes from


def option(default: Any, help: str, *, choices: tuple[str, ...] = ()) -> Any:
    """A field that is also an option of `votes bench` (`--name-with-dashes`)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class BenchOptions:
    votes: int = option(
        100_000, "Votes of each throughput run: one vote per message, then bulk intake."
    )
    rate: float = option(1_000.0, "Votes/s offered in the latency runs of both paths.")
    bulk_rate: float = option(2_500.0, "Votes/s offered in the bulk path's second latency run.")
    producers: int = option(4, "Producer processes.")
    window: int = option(
        PUBLISH_WINDOW,
        "Messages each producer keeps awaiting the broker's confirm (1: wait for each).",
    )
    max_batch: int = option(500, "Bulk intake: votes per validate_votes message at most.")
    linger_ms: float = option(
        BULK_LINGER_MS, "Bulk intake: how long a producer's open batch waits for more votes."
    )
    concurrency: int = option(2, "Prefork processes of the (validation) worker.")
    topology: str = option(
        "single",
        "single: one worker on the three queues; split: a validation worker and an "
        "aggregation + review worker (-c 1).",
        choices=("single", "split"),
    )
    laws: int = option(10, "Laws the votes are spread over.")
    latency_seconds: float = option(30.0, "Length of each latency run.")
    voters_load: int = option(1_000_000, "Hashes loaded by the timed `votes voters load`.")
    flush_votes: int = option(1_000_000, "Pending votes of the timed flush.")
    flush_laws: int = option(100, "Laws of the timed flush.")
    loglevel: str = option(
        "INFO",
        "Of the workers and beat (INFO: as `make worker` runs them).",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    timeout: float = option(600.0, "Seconds per phase.")
    quick: bool = option(
        False,
        "The same phases and figures at small sizes, under three minutes: "
        + ", ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in QUICK_SIZES.items())
        + " unless given.",
    )
    skip_ceiling: bool = option(False, "Leave out the raw kombu ceiling.")
    skip_bulk: bool = option(False, "Leave out the bulk intake runs.")
    skip_latency: bool = option(False, "Leave out the open-loop latency runs.")
    skip_voters_load: bool = option(False, "Leave out the voter roll timing.")
    skip_flush: bool = option(False, "Leave out the large flush timing.")
    output: str | None = option(
        None,
        "JSON file for the figures (default bench/results/bench-<time>.json); "
        "the picture goes beside it, as .png.",
    )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BenchOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})

    def sized(self, given: set[str]) -> BenchOptions:
        """With `quick`, the quick sizes of every size not in `given` (named on the command
        line); otherwise unchanged."""
        if not self.quick:
            return self
        return replace(self, **{k: v for k, v in QUICK_SIZES.items() if k not in given})

    def problems(self, bulk_max: int) -> list[str]:
        """What makes these options unusable, in words; `bulk_max` is VALIDATE_BULK_MAX."""
        found = []
        if self.votes < MIN_VOTES:
            found.append(f"--votes must be at least {MIN_VOTES}")
        for name in ("rate", "bulk_rate", "latency_seconds", "timeout"):
            if getattr(self, name) <= 0:
                found.append(f"--{name.replace('_', '-')} must be above 0")
        for name in ("producers", "window", "concurrency", "laws", "flush_laws"):
            if getattr(self, name) < 1:
                found.append(f"--{name.replace('_', '-')} must be at least 1")
        if not 1 <= self.max_batch <= bulk_max:
            found.append(f"--max-batch must be 1 to {bulk_max} (VALIDATE_BULK_MAX)")
        if self.linger_ms < 0:
            found.append("--linger-ms must not be negative")
        return found
