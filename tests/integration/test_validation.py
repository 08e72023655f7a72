"""The validation step itself, on real Redis and PostgreSQL: orphaned claims and resumes."""

from __future__ import annotations

import redis

from tests.support import count_rows, load_roll, validate_now, vote, voter_hash
from votes_app.ballot_box import VOTED_HASHES, BallotBox, claim_key
from votes_app.review import Verdict
from votes_app.schemas import Submission

LAW = "law-007"


def run(box: BallotBox, *submissions: Submission) -> tuple[list[str], list[Verdict]]:
    outcome = validate_now(box, submissions)
    return [b.task_id for b in outcome.recorded], [r.verdict for r in outcome.rejections]


def test_a_voter_whose_claimant_died_long_ago_can_still_vote(redis_client: redis.Redis) -> None:
    box = BallotBox(redis_client, claim_ttl_seconds=3600)
    h = voter_hash(1, LAW)
    load_roll([h])
    # A worker claimed this voter and died before committing; its claim has since expired.
    redis_client.sadd(VOTED_HASHES, h)
    assert not redis_client.exists(claim_key(h))

    recorded, refused = run(box, Submission("the-vote", (), vote(h, LAW, "oui")))

    assert (recorded, refused) == (["the-vote"], [])
    assert count_rows("vote_audit", f"WHERE vote_hash = '{h}' AND task_id = 'the-vote'") == 1


def test_a_live_claim_is_not_taken_over(redis_client: redis.Redis) -> None:
    box = BallotBox(redis_client, claim_ttl_seconds=3600)
    h = voter_hash(2, LAW)
    load_roll([h])
    assert box.claim([(h, "first", LAW)]) == ["claimed"]  # in flight, not yet committed

    recorded, refused = run(box, Submission("second", (), vote(h, LAW, "non")))

    assert (recorded, refused) == ([], [Verdict.DUPLICATE])
    assert redis_client.get(claim_key(h)) == "first"
    assert count_rows("vote_audit") == 0


def test_a_recorded_vote_is_neither_adopted_nor_recorded_twice(redis_client: redis.Redis) -> None:
    box = BallotBox(redis_client, claim_ttl_seconds=3600)
    h = voter_hash(3, LAW)
    load_roll([h])
    assert run(box, Submission("first", (), vote(h, LAW, "oui"))) == (["first"], [])

    # The same message again (a redelivery) finishes its vote; another one is a duplicate.
    assert run(box, Submission("first", (), vote(h, LAW, "oui"))) == (["first"], [])
    assert run(box, Submission("other", (), vote(h, LAW, "non"))) == ([], [Verdict.DUPLICATE])
    assert count_rows("vote_audit") == 1
    assert not redis_client.exists(claim_key(h))
