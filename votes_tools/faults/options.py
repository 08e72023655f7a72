"""How a scenario runs: `CampaignOptions`, and the short version the test suite uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

BrokerRestart = Literal["stop-app", "close-connections"]
RedisRestart = Literal["empty", "shutdown"]

QUICK_VOTES = 3_000


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
    bulk: int = 1  # votes per validate_votes message; 1: a validate_vote message each
    env: dict[str, str] = field(default_factory=dict)  # settings of its workers and beat

    @classmethod
    def quick(cls, directory: Path, votes: int = QUICK_VOTES) -> CampaignOptions:
        return cls(
            directory=directory,
            votes=votes,
            outage_seconds=5.0,
            broker_restart="close-connections",
            drain_timeout=180.0,
        )
