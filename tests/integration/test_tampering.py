"""Tamper evidence: what the application's role may not do, and what `votes verify` finds when
the owner's role does it anyway, on a real database, through the real command."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from tests.support import load_roll, register_laws, run_votes, validate_now, voter_hash
from votes_app import chain
from votes_app.ballot_box import BallotBox
from votes_app.resources import get_engine, get_owner_engine, session_scope
from votes_app.schemas import Submission, utcnow
from votes_app.tallies import flush

LAW, OTHER = "law-001", "law-002"
ROLL = 40  # voters on each law's roll
ROUNDS = (12, 9)  # votes per law in each of two flushes: two links per chain


@pytest.fixture
def counted(redis_client: redis.Redis) -> None:
    """Both laws open, their rolls loaded, two rounds of votes each counted by a flush."""
    rolls = {law: [voter_hash(n, law) for n in range(ROLL)] for law in (LAW, OTHER)}
    register_laws(LAW, OTHER)
    load_roll([h for hashes in rolls.values() for h in hashes])
    box = BallotBox(redis_client, claim_ttl_seconds=3600)
    start = 0
    for size in ROUNDS:
        submissions = [
            Submission(
                task_id=f"{law}-{n}",
                args=(),
                kwargs={
                    "vote_hash": rolls[law][n],
                    "law_id": law,
                    "choice": "oui" if n % 3 else "non",
                    "timestamp": utcnow().isoformat(),
                },
            )
            for law in rolls
            for n in range(start, start + size)
        ]
        outcome = validate_now(box, submissions)
        assert len(outcome.recorded) == len(submissions)
        assert flush(session_scope=session_scope) is not None
        start += size


def as_owner(*statements: str, without_triggers: tuple[str, ...] = ()) -> None:
    """Run statements in one transaction of the owner's role, which owns the tables: it may
    disable their triggers, as an insider with its password could."""
    with get_owner_engine().begin() as connection:
        for table in without_triggers:
            connection.execute(sa.text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        for statement in statements:
            connection.execute(sa.text(statement))
        for table in without_triggers:
            connection.execute(sa.text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))


ONE_OUI_BALLOT = f"SELECT ballot_id FROM ballots WHERE law_id = '{LAW}' AND choice = 'oui' LIMIT 1"
ONE_VOTER = f"SELECT vote_hash FROM vote_audit WHERE law_id = '{LAW}' LIMIT 1"


def flip_a_choice() -> None:
    as_owner(
        f"UPDATE ballots SET choice = 'non' WHERE ballot_id = ({ONE_OUI_BALLOT})",
        without_triggers=("ballots",),
    )


def delete_a_counted_vote() -> None:
    # Its voter too: voters and ballots still match in number.
    as_owner(
        f"DELETE FROM ballots WHERE ballot_id = ({ONE_OUI_BALLOT})",
        f"DELETE FROM vote_audit WHERE vote_hash = ({ONE_VOTER})",
    )


def insert_a_vote_never_on_the_roll() -> None:
    # Before a flush, as the issue found it: the next flush counts it like any other.
    stranger = voter_hash(999, LAW, "never-on-the-roll")
    as_owner(
        "INSERT INTO vote_audit (vote_hash, law_id, voted_at, task_id)"
        f" VALUES ('{stranger}', '{LAW}', now(), 'forged')",
        f"INSERT INTO ballots (law_id, choice) VALUES ('{LAW}', 'oui')",
    )
    assert flush(session_scope=session_scope) is not None


def edit_a_tally() -> None:
    as_owner(f"UPDATE vote_results SET oui_count = oui_count - 5 WHERE law_id = '{LAW}'")


def edit_a_tally_and_the_votes_to_match() -> None:
    # One `oui` fewer everywhere a count is kept, but in the chain.
    as_owner(
        f"UPDATE vote_results SET oui_count = oui_count - 1 WHERE law_id = '{LAW}'",
        f"DELETE FROM ballots WHERE ballot_id = ({ONE_OUI_BALLOT})",
        f"DELETE FROM vote_audit WHERE vote_hash = ({ONE_VOTER})",
    )


def rewrite_a_chain_link() -> None:
    as_owner(f"UPDATE tally_chain SET oui = oui + 1 WHERE law_id = '{LAW}' AND seq = 1")


TAMPERINGS: dict[str, Callable[[], None]] = {
    "a recorded choice flipped": flip_a_choice,
    "a counted vote deleted": delete_a_counted_vote,
    "a vote never on the roll inserted": insert_a_vote_never_on_the_roll,
    "a tally edited": edit_a_tally,
    "a tally edited with the votes": edit_a_tally_and_the_votes_to_match,
    "a chain link rewritten": rewrite_a_chain_link,
}


def test_an_untouched_count_verifies(counted: None) -> None:
    verified = run_votes("verify")

    assert verified.returncode == 0, verified.stderr
    assert f"ok   {LAW}" in verified.stdout and f"ok   {OTHER}" in verified.stdout


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_verify_names_the_law_whose_count_was_tampered_with(
    counted: None, tamper: Callable[[], None]
) -> None:
    tamper()

    verified = run_votes("verify")

    assert verified.returncode == 1
    assert f"FAIL {LAW}" in verified.stderr and f"does not verify: {LAW}" in verified.stderr
    assert f"ok   {OTHER}" in verified.stdout


def rewrite_everything() -> None:
    """Flip a choice and rewrite the chain and the tally to match, as an insider who knows the
    chain's format would: nothing inside the system disagrees any more."""
    with get_owner_engine().begin() as connection:
        connection.execute(sa.text("ALTER TABLE ballots DISABLE TRIGGER USER"))
        batch = connection.scalar(
            sa.text(
                f"UPDATE ballots SET choice = 'non' WHERE ballot_id = ({ONE_OUI_BALLOT})"
                " RETURNING tally_batch"
            )
        )
        connection.execute(sa.text("ALTER TABLE ballots ENABLE TRIGGER USER"))
        links = connection.execute(
            sa.text(f"SELECT * FROM tally_chain WHERE law_id = '{LAW}' ORDER BY seq")
        ).all()
        prev = chain.GENESIS
        for link in links:
            counted = chain.Counted(link.oui, link.non, link.ballots_digest)
            if link.batch_id == batch:
                ballots = connection.execute(
                    sa.text(
                        "SELECT ballot_id, choice FROM ballots"
                        " WHERE tally_batch = :b AND law_id = :law"
                    ),
                    {"b": batch, "law": LAW},
                ).all()
                counted = chain.Counted(
                    link.oui - 1,
                    link.non + 1,
                    chain.ballots_digest((str(b), c) for b, c in ballots),
                )
            connection.execute(
                sa.text(
                    "UPDATE tally_chain SET oui = :oui, non = :non, ballots_digest = :digest,"
                    " prev_hash = :prev, link_hash = :hash WHERE law_id = :law AND seq = :seq"
                ),
                {
                    "oui": counted.oui,
                    "non": counted.non,
                    "digest": counted.ballots_digest,
                    "prev": prev,
                    "hash": chain.link_hash(prev, LAW, link.seq, link.batch_id, counted),
                    "law": LAW,
                    "seq": link.seq,
                },
            )
            prev = chain.link_hash(prev, LAW, link.seq, link.batch_id, counted)
        connection.execute(
            sa.text(
                "UPDATE vote_results SET oui_count = oui_count - 1, non_count = non_count + 1"
                f" WHERE law_id = '{LAW}'"
            )
        )


def test_a_rewrite_of_everything_is_caught_by_a_published_checkpoint(counted: None) -> None:
    with get_engine().connect() as connection:
        published = connection.scalar(
            sa.text(f"SELECT link_hash FROM tally_chain WHERE law_id = '{LAW}' AND seq = 2")
        )

    rewrite_everything()

    # Inside the system everything agrees: only the checkpoint published outside it tells.
    assert run_votes("verify").returncode == 0
    checked = run_votes("verify", "--published", f"{LAW}={published}")
    assert checked.returncode == 1
    assert f"does not pass through the published checkpoint {published}" in checked.stderr


def test_a_checkpoint_that_was_published_still_verifies(counted: None) -> None:
    with get_engine().connect() as connection:
        first = connection.scalar(
            sa.text(f"SELECT link_hash FROM tally_chain WHERE law_id = '{LAW}' AND seq = 1")
        )

    checked = run_votes("verify", "--published", f"{LAW}={first}")

    assert checked.returncode == 0, checked.stderr


def test_votes_checkpoint_prints_what_verify_then_checks(counted: None) -> None:
    printed = run_votes("checkpoint", LAW, check=True).stdout.split()
    published = printed[-1]  # LAW=HASH, as `--published` takes it
    assert printed[:3] == [LAW, "link", str(len(ROUNDS))]

    assert run_votes("verify", LAW, "--published", published).returncode == 0
    rewrite_everything()
    refused = run_votes("verify", LAW, "--published", published)
    assert refused.returncode == 1 and "does not pass through the published checkpoint" in (
        refused.stderr
    )


def test_verify_refuses_a_checkpoint_of_a_law_it_does_not_verify(counted: None) -> None:
    published = run_votes("checkpoint", OTHER, check=True).stdout.split()[-1]

    refused = run_votes("verify", LAW, "--published", published)

    assert refused.returncode == 2 and OTHER in refused.stderr


APP_MAY_NOT = {
    "flip a choice": "UPDATE ballots SET choice = 'non'",
    "move a ballot to another law": f"UPDATE ballots SET law_id = '{OTHER}'",
    "unmark a counted ballot": "UPDATE ballots SET tally_batch = NULL",
    "delete a ballot": "DELETE FROM ballots",
    "delete a waiting ballot": "DELETE FROM ballots_uncounted",
    "add a ballot counted already": "INSERT INTO ballots (law_id, choice, tally_batch)"
    f" VALUES ('{LAW}', 'oui', 'forged')",
    "delete a voter": "DELETE FROM vote_audit",
    "change a voter's law": f"UPDATE vote_audit SET law_id = '{OTHER}'",
    "lower a tally": "UPDATE vote_results SET oui_count = 0",
    "delete a tally": "DELETE FROM vote_results",
    "rewrite a chain link": "UPDATE tally_chain SET oui = 0",
    "delete a chain link": "DELETE FROM tally_chain",
    "close a law": "UPDATE laws SET state = 'closed'",
    "register a law": "INSERT INTO laws (law_id, title, opens_at, closes_at)"
    " VALUES ('law-009', 'x', now(), now() + interval '1 day')",
    "certify a law": "INSERT INTO certifications (law_id, oui_count, non_count, voters,"
    " ballots_digest, voters_digest, chain_head) VALUES ('law-002', 0, 0, 0, 'x', 'x', 'x')",
}


@pytest.mark.parametrize("statement", APP_MAY_NOT.values(), ids=APP_MAY_NOT.keys())
def test_the_application_role_can_add_votes_and_nothing_else(counted: None, statement: str) -> None:
    scoped = statement if "INSERT" in statement else f"{statement} WHERE law_id = '{LAW}'"

    with pytest.raises(DBAPIError) as refused, get_engine().begin() as connection:
        connection.execute(sa.text(scoped))

    # Insufficient privilege (42501), or a trigger's refusal (23514).
    assert refused.value.orig.pgcode in ("42501", "23514")  # type: ignore[union-attr]
    assert run_votes("verify").returncode == 0
