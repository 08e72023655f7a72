"""The election lifecycle on the real services: registered laws, voting windows, per-law rolls,
close, certify, recount, export, and what PostgreSQL refuses once a law is final."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.support import (
    Beat,
    Worker,
    count_rows,
    load_roll,
    publish,
    results,
    run_votes,
    validate_now,
    vote,
    voter_hash,
    wait_for,
)
from votes_app import laws, status
from votes_app.ballot_box import VOTED_HASHES, BallotBox, voter_roll_size
from votes_app.models import Law
from votes_app.resources import (
    get_engine,
    get_owner_engine,
    get_redis,
    owner_session_scope,
    session_scope,
)
from votes_app.review import Verdict
from votes_app.schemas import Submission, utcnow
from votes_app.tallies import flush
from votes_tools.faults.injectors import bury_votes
from votes_tools.processes import REPO

LAW, OTHER = "law-001", "law-002"
TYPO = "law-0O1"  # a producer's typo: not a registered law


def register(law_id: str, *, opens: datetime, closes: datetime) -> None:
    with owner_session_scope() as session:
        laws.register(
            session=session,
            law_id=law_id,
            title=f"Question {law_id}",
            opens_at=opens,
            closes_at=closes,
        )


def stamp(moment: datetime) -> str:
    return moment.isoformat()


def submission(
    task_id: str, vote_hash: str, law_id: str, choice: str, cast_at: datetime
) -> Submission:
    return Submission(
        task_id=task_id,
        args=(),
        kwargs={
            "vote_hash": vote_hash,
            "law_id": law_id,
            "choice": choice,
            "timestamp": stamp(cast_at),
        },
    )


def judge(
    box: BallotBox,
    *submissions: Submission,
    scope: Callable[[], AbstractContextManager[Session]] = session_scope,
) -> tuple[list[str], dict[str, Verdict]]:
    """Validate in this process; the task ids recorded, and the verdict of each refused."""
    outcome = validate_now(box, submissions, scope=scope)
    return (
        [cast.task_id for cast in outcome.recorded],
        {str(r.task_id): r.verdict for r in outcome.rejections},
    )


def state_of(law_id: str) -> str:
    with session_scope() as session:
        return laws.get(session=session, law_id=law_id).state


def voted(client: redis.Redis) -> set[str]:
    return set(client.smembers(VOTED_HASHES))  # type: ignore[arg-type]


@pytest.fixture
def box(redis_client: redis.Redis) -> BallotBox:
    return BallotBox(redis_client, claim_ttl_seconds=3600)


@pytest.fixture
def now() -> datetime:
    return utcnow()


@pytest.fixture
def open_laws(now: datetime) -> dict[str, list[str]]:
    """LAW and OTHER open from an hour ago for an hour more; twenty voters on each roll."""
    rolls = {law: [voter_hash(n, law) for n in range(20)] for law in (LAW, OTHER)}
    for law in rolls:
        register(law, opens=now - timedelta(hours=1), closes=now + timedelta(hours=1))
    load_roll([h for hashes in rolls.values() for h in hashes])
    return rolls


def waiting_on_a_lock(query: str) -> int:
    """How many sessions running a query LIKE `query` wait on a lock."""
    with get_owner_engine().connect() as connection:
        return int(
            connection.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE :query"
                ),
                {"query": query},
            )
        )


def record(box: BallotBox, law: str, voters: list[str], choices: str, now: datetime) -> None:
    """Record one vote per voter (choices: a string of o/n), as validation does."""
    batch = [
        submission(f"{law}-{n}-{voter[:6]}", voter, law, "oui" if c == "o" else "non", now)
        for n, (voter, c) in enumerate(zip(voters, choices, strict=True))
    ]
    recorded, refused = judge(box, *batch)
    assert (len(recorded), refused) == (len(batch), {})


# --- what counts ---------------------------------------------------------------------------


def test_a_vote_for_a_law_not_registered_is_refused_and_marks_no_one(
    box: BallotBox, redis_client: redis.Redis, open_laws: dict[str, list[str]], now: datetime
) -> None:
    h = open_laws[LAW][0]

    recorded, refused = judge(box, submission("typo", h, TYPO, "oui", now))

    assert (recorded, refused) == ([], {"typo": Verdict.UNKNOWN_LAW})
    assert voted(redis_client) == set()
    assert count_rows("vote_audit") == count_rows("vote_results") == 0
    # The voter's vote for the real law is a first vote, not a duplicate.
    assert judge(box, submission("real", h, LAW, "oui", now)) == (["real"], {})


def test_a_vote_counts_by_when_it_was_cast(
    box: BallotBox, redis_client: redis.Redis, now: datetime
) -> None:
    # The window ended ten minutes ago, and nobody has closed the law yet.
    register(LAW, opens=now - timedelta(hours=2), closes=now - timedelta(minutes=10))
    early, late, in_time = (voter_hash(n, LAW) for n in range(3))
    load_roll([early, late, in_time])

    recorded, refused = judge(
        box,
        submission("early", early, LAW, "oui", now - timedelta(hours=3)),
        submission("late", late, LAW, "oui", now - timedelta(minutes=5)),
        # Cast inside the window, still queued when it ended: counted until the law closes.
        submission("in-time", in_time, LAW, "non", now - timedelta(minutes=11)),
    )

    assert recorded == ["in-time"]
    assert refused == {"early": Verdict.OUTSIDE_WINDOW, "late": Verdict.OUTSIDE_WINDOW}
    assert voted(redis_client) == {in_time}


def test_a_hash_counts_only_for_the_law_it_was_issued_for(
    box: BallotBox, redis_client: redis.Redis, open_laws: dict[str, list[str]], now: datetime
) -> None:
    theirs = open_laws[OTHER][0]

    assert judge(box, submission("wrong-law", theirs, LAW, "oui", now)) == (
        [],
        {"wrong-law": Verdict.INVALID},
    )
    assert voted(redis_client) == set()
    assert judge(box, submission("right-law", theirs, OTHER, "oui", now)) == (["right-law"], {})


def test_the_refusals_reach_review_and_the_tallies_only_what_counts(
    tmp_path: Path, now: datetime
) -> None:
    """As a producer would send them: through the broker to a worker, with beat."""
    for law in (LAW, OTHER):
        register(law, opens=now - timedelta(hours=1), closes=now + timedelta(hours=1))
    good = [(voter_hash(n, LAW), LAW, "oui") for n in range(6)]
    good += [(voter_hash(n, OTHER), OTHER, "non") for n in range(4)]
    strays = [voter_hash(100 + n, OTHER) for n in range(3)]
    load_roll([h for h, _, _ in good] + strays)
    with Worker(tmp_path / "worker.log"), Beat(tmp_path):
        publish(vote(h, law, choice, timestamp=stamp(now)) for h, law, choice in good)
        publish([vote(strays[0], TYPO, "oui", timestamp=stamp(now))])
        publish([vote(strays[1], LAW, "oui", timestamp=stamp(now))])  # another law's hash
        publish([vote(strays[2], OTHER, "oui", timestamp=stamp(now - timedelta(hours=2)))])
        wait_for(
            lambda: (
                (results(), count_rows("vote_review")) == ({(LAW, "oui"): 6, (OTHER, "non"): 4}, 3)
            ),
            timeout=60,
            what="the votes counted and the strays reviewed",
        )
    with get_engine().connect() as connection:
        kinds: dict[str, str] = dict(
            connection.execute(sa.text("SELECT kind, law_id FROM vote_review")).all()
        )
    assert kinds == {"unknown_law": TYPO, "invalid": LAW, "outside_window": OTHER}
    assert count_rows("vote_audit") == 10


# --- close ---------------------------------------------------------------------------------


def test_a_law_closed_while_its_votes_were_judged_refuses_them(
    box: BallotBox, redis_client: redis.Redis, open_laws: dict[str, list[str]], now: datetime
) -> None:
    calls = 0

    @contextmanager
    def closing_midway() -> Iterator[Session]:
        # Validation's second transaction (the INSERTs) begins after an operator's close.
        nonlocal calls
        calls += 1
        if calls == 2:
            with owner_session_scope() as owner:
                laws.close(session=owner, law_id=LAW, now=utcnow(), early=True)
        with session_scope() as session:
            yield session

    recorded, refused = judge(
        box,
        submission("a", open_laws[LAW][0], LAW, "oui", now),
        submission("b", open_laws[OTHER][0], OTHER, "oui", now),
        scope=closing_midway,
    )

    assert calls >= 3  # judged again after PostgreSQL refused the closed law's vote
    assert (recorded, refused) == (["b"], {"a": Verdict.OUTSIDE_WINDOW})
    assert voted(redis_client) == {open_laws[OTHER][0]}
    assert count_rows("vote_audit", f"WHERE law_id = '{LAW}'") == 0


def test_a_close_waits_for_the_votes_being_recorded(
    open_laws: dict[str, list[str]], now: datetime
) -> None:
    voter_row = {"vote_hash": open_laws[LAW][0], "law_id": LAW, "voted_at": now, "task_id": "t1"}
    closed = threading.Event()

    def close() -> None:
        with owner_session_scope() as session:
            laws.close(session=session, law_id=LAW, now=utcnow(), early=True)
        closed.set()

    with get_engine().connect() as recording:
        recording.execute(
            sa.text(
                "INSERT INTO vote_audit (vote_hash, law_id, voted_at, task_id)"
                " VALUES (:vote_hash, :law_id, :voted_at, :task_id)"
            ),
            voter_row,
        )
        recording.execute(
            sa.text("INSERT INTO ballots (law_id, choice) VALUES (:law, 'oui')"), {"law": LAW}
        )
        closer = threading.Thread(target=close)
        closer.start()
        # The close is blocked on the law's row, which the uncommitted vote holds. (Only the
        # owner sees the owner's queries in pg_stat_activity.)
        wait_for(
            lambda: waiting_on_a_lock("%FROM laws%") == 1,
            timeout=10,
            what="the close to wait for the vote",
        )
        assert not closed.is_set()
        recording.commit()
    closer.join(timeout=10)

    assert closed.is_set() and state_of(LAW) == "closed"
    assert count_rows("ballots", f"WHERE law_id = '{LAW}'") == 1  # recorded before the close


def test_close_is_refused_while_votes_of_the_law_wait_in_dead_letters(
    open_laws: dict[str, list[str]], now: datetime
) -> None:
    # A vote cast in time that died on the way: refused for good once its law closes.
    bury_votes([("died", vote(open_laws[LAW][0], LAW, "oui", timestamp=stamp(now)))])

    refused = run_votes("close", LAW, "--now")
    assert refused.returncode != 0
    assert f"votes.dead holds 1 vote for {LAW}" in refused.stderr
    assert state_of(LAW) == "scheduled"
    # The other law's close is not held by it.
    assert run_votes("close", OTHER, "--now").returncode == 0
    abandoned = run_votes("close", LAW, "--now", "--abandon-dead-letters")
    assert abandoned.returncode == 0, abandoned.stderr
    assert state_of(LAW) == "closed"


def test_close_is_refused_before_the_window_ends_unless_now(
    box: BallotBox, open_laws: dict[str, list[str]], now: datetime
) -> None:
    record(box, LAW, open_laws[LAW][:3], "oon", now)
    flush(session_scope=session_scope)

    refused = run_votes("close", LAW)
    assert refused.returncode != 0 and "--now" in refused.stderr
    assert state_of(LAW) == "scheduled"

    closed = run_votes("close", LAW, "--now")
    assert closed.returncode == 0, closed.stderr
    assert state_of(LAW) == "closed"
    # From now on, even a vote cast inside the window is refused.
    late = submission("late", open_laws[LAW][5], LAW, "oui", now)
    assert judge(box, late) == ([], {"late": Verdict.OUTSIDE_WINDOW})
    assert state_of(OTHER) == "scheduled"


def test_close_waits_until_every_vote_of_the_law_is_counted(
    box: BallotBox, open_laws: dict[str, list[str]], now: datetime, tmp_path: Path
) -> None:
    record(box, LAW, open_laws[LAW][:5], "ononn", now)  # recorded, not counted: no beat yet

    no_flush = run_votes("close", LAW, "--now", "--timeout", "1")
    assert no_flush.returncode == 1 and "5 votes of law-001 still not counted" in no_flush.stderr
    assert state_of(LAW) == "closed"

    with Worker(tmp_path / "worker.log"), Beat(tmp_path):
        again = run_votes("close", LAW, "--timeout", "60")
    assert again.returncode == 0, again.stderr
    assert results() == {(LAW, "oui"): 2, (LAW, "non"): 3}
    assert "Final result of law-001" in again.stdout


def test_results_and_metrics_publish_a_law_per_choice_once_it_is_closed(
    box: BallotBox, open_laws: dict[str, list[str]], now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the whole table, whatever the terminal
    record(box, LAW, open_laws[LAW][:11], "ooooooooonn", now)  # 9 oui, 2 non
    flush(session_scope=session_scope)

    def row_of_law() -> list[str]:
        table = run_votes("results").stdout
        [row] = [line for line in table.splitlines() if f" {LAW} " in line]
        return [cell.strip() for cell in row.split("│")[1:-1]]

    def metric(choice: str) -> float | None:
        status.refresh_gauges()
        return REGISTRY.get_sample_value("current_vote_totals", {"law_id": LAW, "choice": choice})

    open_row = row_of_law()
    assert open_row[:6] == [LAW, "open", "11", "20", "55.00", "11"]
    assert open_row[6:] == ["-"] * 4
    assert metric("oui") is None

    laws_closed = run_votes("close", LAW, "--now")
    assert laws_closed.returncode == 0, laws_closed.stderr

    assert row_of_law() == [LAW, "closed", "11", "20", "55.00", "11", "9", "2", "81.82", "18.18"]
    assert (metric("oui"), metric("non")) == (9, 2)


# --- certify -------------------------------------------------------------------------------


def test_certify_refuses_a_law_not_closed_or_not_counted(
    box: BallotBox, open_laws: dict[str, list[str]], now: datetime
) -> None:
    record(box, LAW, open_laws[LAW][:2], "on", now)

    still_open = run_votes("certify", LAW)
    assert still_open.returncode != 0 and "only a closed law is certified" in still_open.stderr
    run_votes("close", LAW, "--now", "--timeout", "0")
    uncounted = run_votes("certify", LAW)
    assert uncounted.returncode != 0 and "not counted yet" in uncounted.stderr

    assert state_of(LAW) == "closed"


@pytest.fixture
def certified(box: BallotBox, open_laws: dict[str, list[str]], now: datetime) -> dict[str, int]:
    """LAW closed and certified with 4 oui and 3 non; OTHER still open."""
    record(box, LAW, open_laws[LAW][:7], "oonnoon", now)
    flush(session_scope=session_scope)
    assert run_votes("close", LAW, "--now").returncode == 0
    done = run_votes("certify", LAW)
    assert done.returncode == 0, done.stderr
    return {"oui": 4, "non": 3}


def owner_execute(statement: str) -> None:
    with get_owner_engine().begin() as connection:
        connection.execute(sa.text(statement))


def app_execute(statement: str) -> None:
    with get_engine().begin() as connection:
        connection.execute(sa.text(statement))


FROZEN = {
    "tally raised by the app": (app_execute, "UPDATE vote_results SET oui_count = oui_count + 1"),
    "tally raised by the owner": (
        owner_execute,
        "UPDATE vote_results SET oui_count = oui_count + 1",
    ),
    "tally deleted by the owner": (owner_execute, "DELETE FROM vote_results"),
    "ballot deleted by the owner": (owner_execute, "DELETE FROM ballots"),
    "ballot flipped by the owner": (owner_execute, "UPDATE ballots SET choice = 'non'"),
    "voter deleted by the owner": (owner_execute, "DELETE FROM vote_audit"),
    "chain link deleted by the owner": (owner_execute, "DELETE FROM tally_chain"),
    "certification edited by the owner": (owner_execute, "UPDATE certifications SET oui_count = 0"),
    "law reopened by the owner": (owner_execute, "UPDATE laws SET state = 'scheduled'"),
    "vote added by the app": (
        app_execute,
        "INSERT INTO ballots (law_id, choice) VALUES ('law-001', 'oui')",
    ),
}


@pytest.mark.parametrize(("execute", "statement"), FROZEN.values(), ids=FROZEN.keys())
def test_postgresql_refuses_any_change_to_a_certified_law(
    certified: dict[str, int], execute: Callable[[str], None], statement: str
) -> None:
    law_rows = f"{statement} WHERE law_id = '{LAW}'" if "INSERT" not in statement else statement

    with pytest.raises(DBAPIError):
        execute(law_rows)

    assert results()[(LAW, "oui")] == certified["oui"]
    assert state_of(LAW) == "certified"


def test_nothing_the_application_does_changes_a_certified_law(
    certified: dict[str, int], box: BallotBox, open_laws: dict[str, list[str]], now: datetime
) -> None:
    before = results()

    # A dead letter replayed: a vote cast in time, for the certified law.
    replayed = submission("replayed", open_laws[LAW][15], LAW, "oui", now)
    assert judge(box, replayed) == ([], {"replayed": Verdict.OUTSIDE_WINDOW})
    assert flush(session_scope=session_scope) is None  # a late flush: nothing to count
    recount = run_votes("recount", LAW)
    assert recount.returncode != 0 and "certified" in recount.stderr
    close = run_votes("close", LAW, "--now")
    assert close.returncode != 0

    assert results() == before
    verified = run_votes("verify", LAW)
    assert verified.returncode == 0, verified.stderr


# --- recount and export --------------------------------------------------------------------


def test_recount_rebuilds_the_tallies_from_the_counted_ballots(
    box: BallotBox, open_laws: dict[str, list[str]], now: datetime
) -> None:
    record(box, LAW, open_laws[LAW][:6], "oooonn", now)
    flush(session_scope=session_scope)
    owner_execute(f"UPDATE vote_results SET oui_count = 1 WHERE law_id = '{LAW}'")
    drifting = run_votes("verify", LAW)
    assert drifting.returncode == 1 and LAW in drifting.stderr

    repaired = run_votes("recount", LAW)

    assert repaired.returncode == 0, repaired.stderr
    assert "1 oui / 2 non -> 4 oui / 2 non" in repaired.stdout
    assert results() == {(LAW, "oui"): 4, (LAW, "non"): 2}
    assert run_votes("verify", LAW).returncode == 0


def recount_export(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    script = REPO / "docs" / "recount.py"
    return subprocess.run(
        [sys.executable, str(script), str(directory), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_export_recounts_without_the_system_and_keeps_voters_apart_from_ballots(
    certified: dict[str, int], open_laws: dict[str, list[str]], tmp_path: Path
) -> None:
    export = tmp_path / "export"
    roll = tmp_path / "roll.txt"
    roll.write_text("".join(f"{h}\n" for h in open_laws[LAW]))

    done = run_votes("export", LAW, str(export))
    assert done.returncode == 0, done.stderr

    recounted = recount_export(export, str(roll))
    assert recounted.returncode == 0, recounted.stdout
    assert f"{LAW}: 4 oui, 3 non, 7 voters" in recounted.stdout
    described = json.loads((export / "law.json").read_text())
    assert described["certification"]["oui"] == certified["oui"]
    # Ballots and voters in files apart, neither holding anything of the other.
    ballots = (export / "ballots.csv").read_text().splitlines()
    voters = (export / "voters.csv").read_text().splitlines()
    assert ballots[0] == "ballot_id,choice,tally_batch" and voters[0] == "vote_hash"
    assert sorted(voters[1:]) == voters[1:] and len(voters) == len(ballots) == 8
    assert not any(h in "\n".join(ballots) for h in voters[1:])

    # An export edited after the fact does not recount.
    ballot_id, choice, batch = ballots[1].split(",")
    flipped = f"{ballot_id},{'non' if choice == 'oui' else 'oui'},{batch}"
    (export / "ballots.csv").write_text("\n".join([ballots[0], flipped, *ballots[2:]]) + "\n")
    assert recount_export(export).returncode == 1


def test_laws_add_and_list(now: datetime) -> None:
    added = run_votes(
        "laws", "add", LAW, "--title", "Loi sur la question",
        "--opens", stamp(now - timedelta(hours=1)), "--closes", stamp(now + timedelta(hours=1)),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    twice = run_votes(
        "laws", "add", LAW, "--title", "again",
        "--opens", stamp(now), "--closes", stamp(now + timedelta(hours=1)),
    )  # fmt: skip
    backwards = run_votes(
        "laws", "add", OTHER, "--title", "backwards",
        "--opens", stamp(now), "--closes", stamp(now - timedelta(hours=1)),
    )  # fmt: skip
    naive = run_votes(
        "laws", "add", OTHER, "--title", "no zone",
        "--opens", "2026-12-06T08:00:00", "--closes", "2026-12-06T20:00:00",
    )  # fmt: skip
    listed = run_votes("laws", "list")

    assert "registered already" in twice.stderr and twice.returncode != 0
    assert "closes before it opens" in backwards.stderr and backwards.returncode != 0
    assert "time zone" in naive.stderr and naive.returncode != 0
    assert LAW in listed.stdout and "open" in listed.stdout and OTHER not in listed.stdout
    with session_scope() as session:
        assert [law.law_id for law in session.scalars(sa.select(Law))] == [LAW]


def test_voters_load_takes_the_law_of_each_hash(now: datetime, tmp_path: Path) -> None:
    register(LAW, opens=now, closes=now + timedelta(hours=1))
    register(OTHER, opens=now, closes=now + timedelta(hours=1))
    csv = tmp_path / "roll.csv"
    csv.write_text(
        "law_id,hash\n"
        f"{LAW},{voter_hash(1, LAW)}\n"
        f"{OTHER},{voter_hash(1, OTHER)}\n"
        f"{OTHER},{voter_hash(2, OTHER)}\n"
        f"{TYPO},{voter_hash(1, TYPO)}\n"
        "not a line\n"
    )
    plain = tmp_path / "hashes.txt"
    plain.write_text(f"{voter_hash(3, LAW)}\n")

    from_csv = run_votes("voters", "load", str(csv))
    for_law = run_votes("voters", "load", "--law", LAW, str(plain))
    unknown = run_votes("voters", "load", "--law", TYPO, str(plain))

    assert from_csv.returncode == 1  # two lines rejected, the others loaded
    assert "line 5: law 'law-0O1' is not registered" in from_csv.stderr
    assert "line 6: not `law_id,hash`" in from_csv.stderr
    assert for_law.returncode == 0, for_law.stderr
    assert unknown.returncode != 0 and "not registered" in unknown.stderr
    assert (voter_roll_size(get_redis(), LAW), voter_roll_size(get_redis(), OTHER)) == (2, 2)
    assert not get_redis().exists(f"valid_hashes:{TYPO}")


def test_a_certified_law_stays_registered(certified: dict[str, int]) -> None:
    with pytest.raises(DBAPIError):
        owner_execute(f"DELETE FROM laws WHERE law_id = '{LAW}'")
    with owner_session_scope() as session:
        assert session.get(Law, LAW) is not None
