"""The votes the tools send: a voter roll, first votes, second votes and unknown hashes, in
publishing order, with what a correct pipeline makes of them."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# The usual mix: of N messages, 5 % are second votes and 2 % come from hashes not on the roll.
SECOND_VOTE_SHARE = 0.05
UNKNOWN_SHARE = 0.02
# Second votes go out in the last 30 % of the stream, from voters of the first half: far
# enough behind their first vote that the refusal is what is measured, not a race between
# the two (a worker judges a few hundred messages at a time).
SECOND_VOTES_FROM = 0.5
SECOND_VOTES_AT = 0.7

Message = tuple[str, dict[str, str]]  # (task id, validate_vote kwargs)


def voter_hash(voter: int, law_id: str, tag: str = "") -> str:
    """SHA-256 of `nas|CODE|law_id`, as the front end computes it offline; `tag` keeps the
    voters of one workload apart from another's."""
    code = f"{tag}|{voter:09d}" if tag else f"{voter:09d}"
    return hashlib.sha256(f"nas|{code}|{law_id}".encode()).hexdigest()


def law_ids(count: int) -> list[str]:
    return [f"law-{n:03d}" for n in range(1, count + 1)]


@dataclass(frozen=True, slots=True)
class Workload:
    """Messages to publish, in order, and what a correct pipeline makes of them."""

    laws: tuple[str, ...]  # the laws voted on: registered before publishing
    roll: list[tuple[str, str]]  # (law_id, vote_hash) to load before: one first vote each
    messages: list[Message]
    expected: dict[tuple[str, str], int]  # (law, choice) -> votes counted: the first ones
    second: frozenset[str]  # voters who vote twice: refused as duplicates
    unknown: frozenset[str]  # hashes not on the roll: refused as invalid

    @property
    def accepted(self) -> frozenset[str]:
        """Each voter on the roll has exactly one vote accepted."""
        return frozenset(vote_hash for _, vote_hash in self.roll)

    @property
    def sent_once(self) -> frozenset[str]:
        return self.accepted - self.second


def mix(total: int) -> tuple[int, int, int]:
    """(first votes, second votes, unknown hashes) among `total` messages; at least one each."""
    seconds = max(1, round(total * SECOND_VOTE_SHARE))
    unknown = max(1, round(total * UNKNOWN_SHARE))
    return total - seconds - unknown, seconds, unknown


def make_workload(
    voters: int,
    *,
    second_votes: int,
    unknown: int,
    laws: int = 4,
    tag: str = "votes",
    seed: int = 2026,
) -> Workload:
    """`voters` first votes spread over `laws` laws, `second_votes` of their voters voting
    again with the other choice, and `unknown` votes from hashes not on the roll.

    The same arguments give the same voters, choices, order and task ids.
    """
    rng = random.Random(f"{seed}|{tag}")
    laws_voted = law_ids(laws)
    stamp = datetime.now(UTC).isoformat()
    roll: list[tuple[str, str]] = []
    expected: dict[tuple[str, str], int] = {}
    body: list[tuple[bool, dict[str, str]]] = []  # (on the roll, kwargs)
    for voter in range(voters):
        law_id = laws_voted[voter % laws]
        choice = rng.choice(("oui", "non"))
        roll.append((law_id, voter_hash(voter, law_id, tag)))
        body.append((True, ballot(roll[-1][1], law_id, choice, stamp)))
        expected[(law_id, choice)] = expected.get((law_id, choice), 0) + 1
    strangers = [
        hashlib.sha256(f"not-on-the-roll|{tag}|{n}".encode()).hexdigest() for n in range(unknown)
    ]
    body += [
        (False, ballot(h, laws_voted[n % laws], "oui", stamp)) for n, h in enumerate(strangers)
    ]
    rng.shuffle(body)
    early = [kwargs for on_roll, kwargs in body[: int(len(body) * SECOND_VOTES_FROM)] if on_roll]
    again = [
        {**kwargs, "choice": "non" if kwargs["choice"] == "oui" else "oui"}
        for kwargs in rng.sample(early, second_votes)
    ]
    cut = int(len(body) * SECOND_VOTES_AT)
    tail = [kwargs for _, kwargs in body[cut:]] + again
    rng.shuffle(tail)
    ordered = [kwargs for _, kwargs in body[:cut]] + tail
    return Workload(
        laws=tuple(laws_voted),
        roll=roll,
        messages=[(f"{tag}-{n:07d}", kwargs) for n, kwargs in enumerate(ordered)],
        expected=expected,
        second=frozenset(kwargs["vote_hash"] for kwargs in again),
        unknown=frozenset(strangers),
    )


@dataclass(frozen=True, slots=True)
class Strays:
    """Votes the election refuses, a third of each kind: cast before the window opened (by
    voters on their law's roll), for a law that is not registered, and with a hash issued
    for another law. None marks its voter as having voted."""

    roll: list[tuple[str, str]]  # their voters' (law_id, vote_hash), loaded like any other
    messages: list[Message]
    expected: dict[str, int]  # review kind -> refusals


# Not a law the tools register: a typo of theirs, as a producer makes it.
UNKNOWN_LAW = "law-0O1"


def make_strays(
    laws: Sequence[str], count: int, *, opens_at: datetime, tag: str = "strays"
) -> Strays:
    """`count` votes (a multiple of 3) that must not count, over `laws` (at least two).

    Their voters vote only these: each stray's voter is one no other vote comes from.
    """
    if count % 3 or len(laws) < 2:
        raise ValueError("strays come in threes, over two laws at least")
    early = (opens_at - timedelta(hours=1)).isoformat()
    now = datetime.now(UTC).isoformat()
    roll: list[tuple[str, str]] = []
    messages: list[Message] = []
    for n in range(count // 3):
        law, other = laws[n % len(laws)], laws[(n + 1) % len(laws)]
        before = voter_hash(n, law, f"{tag}-early")
        theirs = voter_hash(n, other, f"{tag}-other")
        roll += [(law, before), (other, theirs)]
        messages += [
            (f"{tag}-early-{n:05d}", ballot(before, law, "oui", early)),
            (
                f"{tag}-typo-{n:05d}",
                ballot(voter_hash(n, UNKNOWN_LAW, tag), UNKNOWN_LAW, "oui", now),
            ),
            (f"{tag}-other-{n:05d}", ballot(theirs, law, "non", now)),
        ]
    third = count // 3
    return Strays(
        roll=roll,
        messages=messages,
        expected={"outside_window": third, "unknown_law": third, "invalid": third},
    )


def mixed_workload(total: int, *, laws: int = 4, tag: str = "votes") -> Workload:
    """`total` messages with the usual mix (`mix`)."""
    voters, second_votes, unknown = mix(total)
    return make_workload(voters, second_votes=second_votes, unknown=unknown, laws=laws, tag=tag)


def ballot(vote_hash: str, law_id: str, choice: str, timestamp: str) -> dict[str, str]:
    """The keyword arguments of one `validate_vote` task."""
    return {"vote_hash": vote_hash, "law_id": law_id, "choice": choice, "timestamp": timestamp}


def voter(message: Message) -> str:
    """Whose vote a message carries: a voter's messages keep to one producer, in order."""
    return message[1]["vote_hash"]
