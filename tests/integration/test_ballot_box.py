"""The Redis side on a real Redis: claim, release, forget, duplicates, voter roll, pending votes."""

from __future__ import annotations

import multiprocessing
import uuid
from collections import Counter
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import pytest
import redis

from tests.conftest import TEST_REDIS_URL
from tests.support import voter_hash
from votes_app.ballot_box import (
    LEGACY_ROLL,
    VOTED_HASHES,
    BallotBox,
    Claim,
    VoterRollMissing,
    add_to_set,
    claim_key,
    duplicate_count_key,
    load_rolls,
    load_voters,
    roll_key,
    voter_roll_size,
)

LAW = "law-001"
ON_ROLL = [voter_hash(n, LAW) for n in range(1, 4)]
OFF_ROLL = voter_hash(999, LAW)
TTL = 3600


@pytest.fixture
def box(redis_client: redis.Redis) -> BallotBox:
    return BallotBox(redis_client, claim_ttl_seconds=TTL)


@pytest.fixture
def roll(redis_client: redis.Redis) -> list[str]:
    for _ in load_voters(redis_client, LAW, ON_ROLL):
        pass
    return ON_ROLL


def voted(client: redis.Redis) -> set[str]:
    return set(client.smembers(VOTED_HASHES))  # type: ignore[arg-type]


# --- claim --------------------------------------------------------------------------------


def test_claim_outcomes(box: BallotBox, roll: list[str], redis_client: redis.Redis) -> None:
    h = roll[0]

    assert box.claim([(OFF_ROLL, "t-off", LAW)]) == [Claim.INVALID]
    assert box.claim([(h, "t1", LAW)]) == [Claim.CLAIMED]
    assert box.claim([(h, "t2", LAW)]) == [Claim.TAKEN]
    # A redelivered message carries the same task id: it finishes its own vote.
    assert box.claim([(h, "t1", LAW)]) == [Claim.CLAIMED]
    assert voted(redis_client) == {h}
    # The claim holds the task id itself, and goes away by itself if nobody records it.
    assert redis_client.get(claim_key(h)) == "t1"
    assert 0 < int(redis_client.ttl(claim_key(h))) <= TTL
    assert not redis_client.exists(claim_key(OFF_ROLL))


def test_claims_in_one_round_trip_keep_their_order(box: BallotBox, roll: list[str]) -> None:
    answers = box.claim(
        [(roll[0], "t1", LAW), (OFF_ROLL, "t2", LAW), (roll[0], "t3", LAW), (roll[1], "t4", LAW)]
    )

    assert answers == [Claim.CLAIMED, Claim.INVALID, Claim.TAKEN, Claim.CLAIMED]


def test_claims_survive_a_redis_that_lost_its_scripts(
    box: BallotBox, roll: list[str], redis_client: redis.Redis
) -> None:
    assert box.claim([(roll[0], "t1", LAW)]) == [Claim.CLAIMED]
    redis_client.script_flush()  # what a restarted Redis knows of them

    answers = box.claim([(roll[0], "t1", LAW), (roll[0], "t2", LAW), (roll[1], "t3", LAW)])

    assert answers == [Claim.CLAIMED, Claim.TAKEN, Claim.CLAIMED]
    assert voted(redis_client) == {roll[0], roll[1]}


def test_missing_roll_raises_and_claims_nothing(box: BallotBox, redis_client: redis.Redis) -> None:
    with pytest.raises(VoterRollMissing):
        box.claim([(ON_ROLL[0], "t1", LAW), (ON_ROLL[1], "t2", LAW)])

    assert voted(redis_client) == set()
    assert not redis_client.exists(claim_key(ON_ROLL[0]), claim_key(ON_ROLL[1]))


# --- release ------------------------------------------------------------------------------


def test_release_undoes_our_own_claim(
    box: BallotBox, roll: list[str], redis_client: redis.Redis
) -> None:
    h = roll[0]
    box.claim([(h, "t1", LAW)])

    box.release([(h, "t1")])

    assert voted(redis_client) == set()
    assert not redis_client.exists(claim_key(h))
    assert box.claim([(h, "t2", LAW)]) == [Claim.CLAIMED]


def test_release_leaves_another_tasks_claim(
    box: BallotBox, roll: list[str], redis_client: redis.Redis
) -> None:
    h = roll[0]
    box.claim([(h, "t1", LAW)])

    box.release([(h, "t2")])

    assert voted(redis_client) == {h}
    assert redis_client.get(claim_key(h)) == "t1"
    assert box.claim([(h, "t2", LAW)]) == [Claim.TAKEN]
    assert box.claim([(h, "t1", LAW)]) == [Claim.CLAIMED]


def test_stale_release_after_a_new_claim_leaves_the_new_claim(
    box: BallotBox, roll: list[str], redis_client: redis.Redis
) -> None:
    h = roll[0]
    box.claim([(h, "t1", LAW)])
    box.release([(h, "t1")])
    box.claim([(h, "t2", LAW)])

    # t1's retry releases again, late: the vote is t2's now.
    box.release([(h, "t1")])

    assert voted(redis_client) == {h}
    assert box.claim([(h, "t3", LAW)]) == [Claim.TAKEN]
    assert box.claim([(h, "t2", LAW)]) == [Claim.CLAIMED]


# --- forget (after the audit row is committed) --------------------------------------------


def test_forget_drops_our_own_claim_and_keeps_the_vote(
    box: BallotBox, roll: list[str], redis_client: redis.Redis
) -> None:
    h = roll[0]
    box.claim([(h, "t1", LAW)])

    box.forget_claims([(h, "t1")])

    assert not redis_client.exists(claim_key(h))
    # The voter has still voted: only the claim's memory is gone.
    assert voted(redis_client) == {h}
    assert box.claim([(h, "t2", LAW)]) == [Claim.TAKEN]
    # Even our own redelivery is TAKEN now: PostgreSQL says whose the vote is (validation).
    assert box.claim([(h, "t1", LAW)]) == [Claim.TAKEN]


def test_forget_leaves_another_tasks_claim(
    box: BallotBox, roll: list[str], redis_client: redis.Redis
) -> None:
    h = roll[0]
    box.claim([(h, "t1", LAW)])

    box.forget_claims([(h, "t2")])

    assert redis_client.get(claim_key(h)) == "t1"
    assert box.claim([(h, "t1", LAW)]) == [Claim.CLAIMED]


def test_stale_forget_after_a_new_claim_leaves_the_new_claim(
    box: BallotBox, roll: list[str], redis_client: redis.Redis
) -> None:
    h = roll[0]
    box.claim([(h, "t1", LAW)])
    box.release([(h, "t1")])
    box.claim([(h, "t2", LAW)])

    box.forget_claims([(h, "t1")])

    assert redis_client.get(claim_key(h)) == "t2"
    assert box.claim([(h, "t2", LAW)]) == [Claim.CLAIMED]


def test_release_after_forget_does_not_undo_the_vote(
    box: BallotBox, roll: list[str], redis_client: redis.Redis
) -> None:
    # A late release (a retry that lost the race with its own commit) must not free a
    # voter whose vote is recorded: without the claim, it has nothing of ours to undo.
    h = roll[0]
    box.claim([(h, "t1", LAW)])
    box.forget_claims([(h, "t1")])

    box.release([(h, "t1")])

    assert voted(redis_client) == {h}
    assert box.claim([(h, "t9", LAW)]) == [Claim.TAKEN]


def test_forget_in_one_round_trip_touches_only_our_claims(
    box: BallotBox, roll: list[str], redis_client: redis.Redis
) -> None:
    box.claim([(roll[0], "t1", LAW), (roll[1], "t2", LAW), (roll[2], "t3", LAW)])

    box.forget_claims([(roll[0], "t1"), (roll[1], "not-t2"), (roll[2], "t3"), (OFF_ROLL, "t4")])

    assert [redis_client.get(claim_key(h)) for h in roll] == [None, "t2", None]
    assert not redis_client.exists(claim_key(OFF_ROLL))
    assert voted(redis_client) == set(roll)


# --- duplicates ---------------------------------------------------------------------------


def test_duplicate_is_counted_once_per_task_id(box: BallotBox, redis_client: redis.Redis) -> None:
    h = ON_ROLL[0]

    first = box.count_duplicates([(h, "d1")])
    redelivered = [box.count_duplicates([(h, "d1")]) for _ in range(3)]
    second = box.count_duplicates([(h, "d2"), (h, "d2")])

    assert first == [1]
    assert redelivered == [[1]] * 3
    assert second == [2, 2]
    assert redis_client.get(duplicate_count_key(h)) == "2"
    assert redis_client.get(duplicate_count_key(ON_ROLL[1])) is None


# --- voter roll ---------------------------------------------------------------------------


def test_adding_to_a_set_counts_new_and_present_per_trip(redis_client: redis.Redis) -> None:
    first = [voter_hash(n, LAW) for n in range(2_500)]
    second = [voter_hash(n, LAW) for n in range(2_000, 3_000)]

    trips = list(
        add_to_set(redis_client, roll_key(LAW), first, members_per_sadd=400, sadds_per_trip=3)
    )
    again = list(
        add_to_set(redis_client, roll_key(LAW), second, members_per_sadd=400, sadds_per_trip=3)
    )

    assert [sent for sent, _ in trips] == [1_200, 1_200, 100]
    assert sum(new for _, new in trips) == len(first)
    assert sum(sent for sent, _ in again) == len(second)
    assert sum(new for _, new in again) == len(set(second) - set(first))
    assert voter_roll_size(redis_client, LAW) == len(set(first) | set(second))
    assert redis_client.sismember(roll_key(LAW), second[-1])


def test_load_voters_fills_the_roll_only(redis_client: redis.Redis) -> None:
    hashes = [voter_hash(n, LAW) for n in range(1_500)]

    loaded = list(load_voters(redis_client, LAW, hashes + hashes[:100]))

    assert sum(sent for sent, _ in loaded) == len(hashes) + 100
    assert sum(new for _, new in loaded) == len(hashes)
    assert voter_roll_size(redis_client, LAW) == len(hashes)
    assert voted(redis_client) == set()


def test_a_missing_roll_appears_whole_at_once(box: BallotBox, redis_client: redis.Redis) -> None:
    hashes = [voter_hash(n, LAW) for n in range(25_000)]  # three round trips of SADDs
    loading = load_voters(redis_client, LAW, hashes)

    next(loading)  # the first round trip is in: the roll is not there yet, votes are held
    assert not redis_client.exists(roll_key(LAW))
    with pytest.raises(VoterRollMissing):
        box.claim([(hashes[0], "task-early", LAW)])
    rest = list(loading)

    assert len(rest) == 2
    assert voter_roll_size(redis_client, LAW) == len(hashes)
    assert set(redis_client.keys("*")) == {roll_key(LAW)}  # nothing left aside
    assert box.claim([(hashes[-1], "task-late", LAW)]) == [Claim.CLAIMED]


def test_hashes_added_to_a_roll_in_place_go_straight_in(redis_client: redis.Redis) -> None:
    first, more = (
        [voter_hash(n, LAW) for n in range(100)],
        [voter_hash(n, LAW) for n in range(100, 20_100)],
    )
    list(load_voters(redis_client, LAW, first))
    loading = load_voters(redis_client, LAW, more)

    next(loading)

    assert voter_roll_size(redis_client, LAW) == len(first) + 10_000
    list(loading)
    assert voter_roll_size(redis_client, LAW) == len(first) + len(more)


def test_a_hash_counts_only_on_the_roll_of_its_law(
    box: BallotBox, redis_client: redis.Redis
) -> None:
    other = "law-002"
    ours, theirs = voter_hash(1, LAW), voter_hash(1, other)
    list(load_rolls(redis_client, [(LAW, ours), (other, theirs)]))

    # The front end sends law A's hash with law B: not on B's roll.
    assert box.claim([(ours, "t1", other)]) == [Claim.INVALID]
    assert voted(redis_client) == set()
    assert box.claim([(ours, "t2", LAW), (theirs, "t3", other)]) == [Claim.CLAIMED] * 2
    assert voter_roll_size(redis_client, LAW) == voter_roll_size(redis_client, other) == 1


def test_a_roll_loaded_the_old_way_is_not_read(box: BallotBox, redis_client: redis.Redis) -> None:
    redis_client.sadd(LEGACY_ROLL, *ON_ROLL)  # bare hashes, no law

    with pytest.raises(VoterRollMissing, match=LAW):
        box.claim([(ON_ROLL[0], "t1", LAW)])
    assert voted(redis_client) == set()


def test_rolls_of_several_laws_load_in_one_pass(redis_client: redis.Redis) -> None:
    laws = ["law-a", "law-b", "law-c"]
    entries = [(law, voter_hash(n, law)) for n in range(4_000) for law in laws]

    loaded = list(load_rolls(redis_client, entries, entries_per_trip=5_000))

    assert sum(new for _, new in loaded) == len(entries)
    assert [voter_roll_size(redis_client, law) for law in laws] == [4_000] * 3
    assert set(redis_client.keys("*")) == {roll_key(law) for law in laws}


# --- one voter, fifty workers -------------------------------------------------------------

CONTENDERS = 50


def claim_after_barrier(
    vote_hash: str, task_id: str, barrier: Barrier, answers: Queue[tuple[str, str]]
) -> None:
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    box = BallotBox(client, claim_ttl_seconds=TTL)
    # Connected, and the script in Redis's cache, before the barrier: then the claims race.
    box.claim([(OFF_ROLL, f"{task_id}-warm-up", LAW)])
    barrier.wait(timeout=30)
    [claim] = box.claim([(vote_hash, task_id, LAW)])
    answers.put((task_id, claim.value))


def test_one_hash_claimed_by_fifty_processes_at_once(
    roll: list[str], redis_client: redis.Redis
) -> None:
    h = roll[0]
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(CONTENDERS)
    answers: Queue[tuple[str, str]] = context.Queue()
    processes = [
        context.Process(
            target=claim_after_barrier, args=(h, f"task-{n}-{uuid.uuid4().hex}", barrier, answers)
        )
        for n in range(CONTENDERS)
    ]
    for process in processes:
        process.start()
    try:
        replies = [answers.get(timeout=60) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)

    assert [process.exitcode for process in processes] == [0] * CONTENDERS
    assert Counter(claim for _, claim in replies) == {"claimed": 1, "taken": CONTENDERS - 1}
    [winner] = [task_id for task_id, claim in replies if claim == "claimed"]
    assert redis_client.get(claim_key(h)) == winner
    assert voted(redis_client) == {h}
    assert redis_client.scard(VOTED_HASHES) == 1
