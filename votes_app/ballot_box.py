"""The Redis side of validation: the voter rolls, one per law, the atomic claim, duplicate
counters.

A hash counts only for the law it was issued for: the claim checks the roll of the vote's
law (`valid_hashes:{law_id}`). A roll loaded the old way, bare hashes in `valid_hashes`
without a law, is not read: each law's roll is loaded with `votes voters load --law` (or a
`law_id,hash` file), and `votes health` says when only the old roll is there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from itertools import islice
from typing import Any, TypeVar

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from votes_app import metrics, quotas

T = TypeVar("T")

# Key names are shared with the services this project replaces and their tooling; a law's
# roll takes the old roll's name with the law after it.
LEGACY_ROLL = "valid_hashes"
VOTED_HASHES = "voted_hashes"


def roll_key(law_id: str) -> str:
    """The voter roll of one law: the hashes issued for it."""
    return f"{LEGACY_ROLL}:{law_id}"


def duplicate_count_key(vote_hash: str) -> str:
    return f"duplicate_count:{vote_hash}"


def claim_key(vote_hash: str) -> str:
    """The task id that claimed a vote, from the claim until its audit row is committed."""
    return f"vote_claim:{vote_hash}"


def duplicate_seen_key(task_id: str) -> str:
    return f"duplicate_seen:{task_id}"


class Claim(StrEnum):
    CLAIMED = "claimed"  # the vote is ours to record (first time, or our own redelivery)
    TAKEN = "taken"  # the voter has voted: a duplicate, unless PostgreSQL says it is ours
    INVALID = "invalid"  # not on the voter roll


class VoterRollMissing(RuntimeError):
    """Redis has no voter roll (e.g. restarted empty): votes must wait, not be refused."""


# Check and claim in one step, so that two workers can never both claim one voter.
_CLAIM = """
-- KEYS: valid_hashes:{law}, voted_hashes, vote_claim:{hash}; ARGV: hash, task id, claim ttl
if redis.call('EXISTS', KEYS[1]) == 0 then return 'roll_missing' end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 'invalid' end
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
    redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3])
    return 'claimed'
end
if redis.call('GET', KEYS[3]) == ARGV[2] then return 'claimed' end
return 'taken'
"""

# Undo a claim that could not be recorded, but only if it is still ours.
_RELEASE = """
-- KEYS: voted_hashes, vote_claim:{hash}; ARGV: hash, task id
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""

# Take over a claim that nobody holds any more (its claimant died and the claim expired).
_ADOPT = """
-- KEYS: vote_claim:{hash}; ARGV: task id, claim ttl
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
return redis.call('GET', KEYS[1]) == ARGV[1] and 1 or 0
"""

# Once the vote is in the audit log, PostgreSQL says whose it is: the claim can go.
_FORGET = """
-- KEYS: vote_claim:{hash}; ARGV: task id
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# Count each duplicate message once, however often it is redelivered: the first ones of each
# hour (REVIEW_QUOTA_PER_HOUR) get a mark; later ones are counted without one (a redelivery
# of those may count twice), so that a producer resending hashes under new task ids cannot
# make marks without end.
_COUNT_DUPLICATE = """
-- KEYS: duplicate_count:{hash}, duplicate_seen:{task id}, the hour's quota of marks
-- ARGV: mark ttl, marks per hour, quota ttl
if redis.call('EXISTS', KEYS[2]) == 1 then
    return tonumber(redis.call('GET', KEYS[1]) or '1')
end
if redis.call('INCR', KEYS[3]) <= tonumber(ARGV[2]) then
    redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
end
redis.call('EXPIRE', KEYS[3], ARGV[3])
return redis.call('INCR', KEYS[1])
"""


class BallotBox:
    """The claim scripts, registered once per Redis client and run pipelined."""

    def __init__(
        self, client: redis.Redis, *, claim_ttl_seconds: int, duplicate_marks_per_hour: int = 1_000
    ) -> None:
        self.redis = client
        self.claim_ttl = claim_ttl_seconds
        self.marks_per_hour = duplicate_marks_per_hour
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._forget = client.register_script(_FORGET)
        self._adopt = client.register_script(_ADOPT)
        self._count_duplicate = client.register_script(_COUNT_DUPLICATE)

    def _pipelined(self, script: Script, calls: Sequence[tuple[list[str], list[Any]]]) -> Any:
        """Run `script` once per `(keys, args)` in one round trip; the answers in order.

        EVALSHA alone: redis-py's scripts in a pipeline first ask SCRIPT EXISTS, a second
        round trip every time. A Redis that has lost its scripts (restarted) answers
        NOSCRIPT; the script is loaded and the calls run again, which every script here
        allows: run twice with the same arguments, each gives the same answer.
        """
        for attempt in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            try:
                return pipe.execute()
            except NoScriptError:
                if attempt:
                    raise
                self.redis.script_load(script.script)
        raise AssertionError("unreachable")

    @metrics.redis_operation("claim")
    def claim(self, ballots: Sequence[tuple[str, str, str]]) -> list[Claim]:
        """Claim each `(vote_hash, task_id, law_id)` against its law's roll, in one round
        trip; one `Claim` per ballot."""
        answers = self._pipelined(
            self._claim,
            [
                (
                    [roll_key(law_id), VOTED_HASHES, claim_key(vote_hash)],
                    [vote_hash, task_id, self.claim_ttl],
                )
                for vote_hash, task_id, law_id in ballots
            ],
        )
        missing = sorted({law for (_, _, law), a in zip(ballots, answers, strict=True)
                          if a == "roll_missing"})  # fmt: skip
        if missing:
            raise VoterRollMissing(f"no voter roll in Redis for {', '.join(missing)}")
        return [Claim(answer) for answer in answers]

    @metrics.redis_operation("release")
    def release(self, ballots: Sequence[tuple[str, str]]) -> None:
        self._pipelined(
            self._release,
            [
                ([VOTED_HASHES, claim_key(vote_hash)], [vote_hash, task_id])
                for vote_hash, task_id in ballots
            ],
        )

    @metrics.redis_operation("adopt")
    def adopt(self, ballots: Sequence[tuple[str, str]]) -> list[bool]:
        """Claim voters marked as voted whom no claim and no audit row stand behind.

        Call only for hashes PostgreSQL has no vote for: a claim missing there means its
        claimant died before committing and the claim expired. True for each one now ours.
        """
        answers = self._pipelined(
            self._adopt,
            [([claim_key(vote_hash)], [task_id, self.claim_ttl]) for vote_hash, task_id in ballots],
        )
        return [bool(adopted) for adopted in answers]

    @metrics.redis_operation("forget_claims")
    def forget_claims(self, ballots: Sequence[tuple[str, str]]) -> None:
        """Drop the claims of votes now recorded in PostgreSQL (memory, not correctness)."""
        self._pipelined(
            self._forget, [([claim_key(vote_hash)], [task_id]) for vote_hash, task_id in ballots]
        )

    @metrics.redis_operation("count_duplicates")
    def count_duplicates(self, ballots: Sequence[tuple[str, str]]) -> list[int]:
        """Bump `duplicate_count:{hash}` once per duplicate message; the attempt numbers."""
        quota = quotas.quota_key("review:duplicate", datetime.now(UTC))
        answers = self._pipelined(
            self._count_duplicate,
            [
                (
                    [duplicate_count_key(vote_hash), duplicate_seen_key(task_id), quota],
                    [self.claim_ttl, self.marks_per_hour, quotas.COUNTER_TTL_SECONDS],
                )
                for vote_hash, task_id in ballots
            ],
        )
        return [int(count) for count in answers]


def batched(items: Iterable[T], size: int) -> Iterator[tuple[T, ...]]:
    """`itertools.batched` of Python 3.12."""
    iterator = iter(items)
    while chunk := tuple(islice(iterator, size)):
        yield chunk


def add_to_set(
    client: redis.Redis,
    key: str,
    members: Iterable[str],
    *,
    members_per_sadd: int = 1_000,
    sadds_per_trip: int = 10,
) -> Iterator[tuple[int, int]]:
    """Add members to a Redis set: pipelined SADDs, `sadds_per_trip` per round trip.

    Yields `(members sent, members new)` per round trip so that callers can show progress.
    Adding a member twice is harmless: SADD counts only the new ones.
    """
    for trip in batched(batched(members, members_per_sadd), sadds_per_trip):
        pipe = client.pipeline(transaction=False)
        for chunk in trip:
            pipe.sadd(key, *chunk)
        added = pipe.execute()
        yield sum(len(chunk) for chunk in trip), sum(int(n) for n in added)


# Put a roll loaded aside in place: whole, at once. Another load that put its own roll in
# place meanwhile is merged with, not overwritten.
_PUT_ROLL_IN_PLACE = """
-- KEYS: valid_hashes:{law}, the roll loaded aside
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('RENAME', KEYS[2], KEYS[1])
else
    redis.call('SUNIONSTORE', KEYS[1], KEYS[1], KEYS[2])
    redis.call('DEL', KEYS[2])
end
return redis.call('SCARD', KEYS[1])
"""


def load_rolls(
    client: redis.Redis,
    entries: Iterable[tuple[str, str]],
    *,
    entries_per_trip: int = 10_000,
) -> Iterator[tuple[int, int]]:
    """Add `(law_id, vote_hash)` entries to the laws' voter rolls (`valid_hashes:{law_id}`),
    one pipelined round trip per `entries_per_trip`; yields `(sent, new)` per round trip.

    A missing roll (never loaded, or lost with a Redis restart) is loaded aside and appears
    whole, at once, when the load ends: until then its law's votes are held, as for any
    missing roll. Filled in place, a roll half loaded would refuse, as not on the roll,
    voters not loaded yet. Hashes added to a roll that exists go straight in.
    """
    targets: dict[str, str] = {}  # law -> the key its hashes go to
    aside: dict[str, str] = {}  # law -> its roll being loaded aside
    try:
        for trip in batched(entries, entries_per_trip):
            per_law: dict[str, list[str]] = {}
            for law_id, vote_hash in trip:
                per_law.setdefault(law_id, []).append(vote_hash)
            for law_id in per_law.keys() - targets.keys():
                roll = roll_key(law_id)
                if client.exists(roll):
                    targets[law_id] = roll
                else:
                    targets[law_id] = aside[law_id] = f"{roll}:loading:{uuid.uuid4().hex}"
            pipe = client.pipeline(transaction=False)
            for law_id, hashes in per_law.items():
                pipe.sadd(targets[law_id], *hashes)
            added = pipe.execute()
            yield len(trip), sum(int(n) for n in added)
        for law_id, key in aside.items():
            client.eval(_PUT_ROLL_IN_PLACE, 2, roll_key(law_id), key)
    finally:
        if aside:
            client.delete(*aside.values())


def load_voters(
    client: redis.Redis, law_id: str, hashes: Iterable[str]
) -> Iterator[tuple[int, int]]:
    """Add hashes to one law's voter roll; see `load_rolls`."""
    return load_rolls(client, ((law_id, vote_hash) for vote_hash in hashes))


def restore_voted(client: redis.Redis, hashes: Iterable[str]) -> Iterator[tuple[int, int]]:
    """Put recorded voters back into `voted_hashes` (after Redis lost it); see `add_to_set`."""
    return add_to_set(client, VOTED_HASHES, hashes)


def voter_roll_size(client: redis.Redis, law_id: str) -> int:
    return int(client.scard(roll_key(law_id)))


def roll_sizes(client: redis.Redis, law_ids: Iterable[str]) -> dict[str, int]:
    """The hashes on each law's roll (0: no roll), in one round trip."""
    law_ids = list(law_ids)
    pipe = client.pipeline(transaction=False)
    for law_id in law_ids:
        pipe.scard(roll_key(law_id))
    return {law_id: int(size) for law_id, size in zip(law_ids, pipe.execute(), strict=True)}


def on_roll(client: redis.Redis, law_id: str, hashes: Sequence[str]) -> list[bool] | None:
    """Which of `hashes` are on the law's roll, in order; None when the roll is not there."""
    roll = roll_key(law_id)
    if not client.exists(roll):
        return None
    if not hashes:
        return []
    return [bool(found) for found in client.smismember(roll, list(hashes))]


def legacy_roll_size(client: redis.Redis) -> int:
    """Hashes in a roll loaded the old way (`valid_hashes`, no law), which nothing reads."""
    return int(client.scard(LEGACY_ROLL))
