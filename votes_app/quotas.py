"""Hourly quotas in Redis: how many records a producer can make one by one in an hour."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import redis

# A quota's counter outlives its hour, then goes: two keys per quota at most.
COUNTER_TTL_SECONDS = 2 * 3600


def hour_of(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H")


def quota_key(name: str, now: datetime) -> str:
    return f"quota:{name}:{hour_of(now)}"


def take(
    client: redis.Redis, wanted: Mapping[str, int], *, per_hour: int, now: datetime
) -> dict[str, int]:
    """Take `wanted[name]` from each named quota of this hour, in one round trip; how many
    of each fit (the first ones asked for: the rest are over the quota).

    What is taken is not given back when the caller then fails: a quota can only err on the
    side of keeping fewer records one by one, never more.
    """
    names = [name for name, count in wanted.items() if count > 0]
    if not names:
        return dict.fromkeys(wanted, 0)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.incrby(quota_key(name, now), wanted[name])
        pipe.expire(quota_key(name, now), COUNTER_TTL_SECONDS)
    used = pipe.execute()[::2]
    granted = dict.fromkeys(wanted, 0)
    for name, after in zip(names, used, strict=True):
        before = int(after) - wanted[name]
        granted[name] = max(0, min(wanted[name], per_hour - before))
    return granted
