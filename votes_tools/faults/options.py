"""How a scenario runs: `CampaignOptions`, and the short version the test suite uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

BrokerRestart = Literal["stop-app", "close-connections"]
RedisRestart = Literal["empty", "shutdown"]

QUICK_VOTES = 3_000

# Settings of the workers and beat the campaign starts. A vote whose pending tally Redis
# forgot is counted by the flush's straggler sweep once it is this old: 2 s instead of 60
# keeps the Redis scenario's drain short.
CAMPAIGN_ENV = {"TALLY_STRAGGLER_SECONDS": "2"}


@dataclass(frozen=True, slots=True)
class CampaignOptions:
    directory: Path  # worker and beat logs
    votes: int = 20_000
    laws: int = 4
    workers: int = 2
    concurrency: int = 2
    outage_seconds: float = 10.0
    broker_restart: BrokerRestart = "stop-app"
    redis_restart: RedisRestart = "empty"
    drain_timeout: float = 300.0
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def quick(cls, directory: Path, votes: int = QUICK_VOTES) -> CampaignOptions:
        return cls(
            directory=directory,
            votes=votes,
            outage_seconds=5.0,
            broker_restart="close-connections",
            drain_timeout=180.0,
        )
