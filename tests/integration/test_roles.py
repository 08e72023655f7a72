"""The database roles on the suite's migrated database, as PostgreSQL grants them: the reader
reads the results and nothing else, the application's role is plain and holds only its grants."""

from __future__ import annotations

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from tests.conftest import TEST_DATABASE_URL
from tests.support import load_roll, validate_now, voter_hash
from votes_app.ballot_box import BallotBox
from votes_app.resources import get_engine, get_owner_engine, session_scope
from votes_app.schemas import Submission, utcnow
from votes_app.tallies import flush
from votes_tools.processes import run_votes

# The suite's PostgreSQL trusts local roles, as for votes_app: no password.
READER_URL = make_url(TEST_DATABASE_URL).set(username="votes_reader", password=None)
LAW = "law-001"
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")

# Each relation of schema public, with each privilege the role holds on it or on any of its
# columns: the whole of what each role may do with the tables.
HELD = sa.text(
    "SELECT c.relname, p.privilege FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'"
    " CROSS JOIN unnest(CAST(:privileges AS text[])) AS p(privilege)"
    " WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')"
    " AND (has_table_privilege(:role, c.oid, p.privilege)"
    "      OR (p.privilege IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')"
    "          AND has_any_column_privilege(:role, c.oid, p.privilege)))"
)
READER_MAY = {
    ("laws", "SELECT"),
    ("vote_results", "SELECT"),
    ("vote_statistics", "SELECT"),
    ("certifications", "SELECT"),
    ("vote_audit", "SELECT"),  # the column law_id alone
}
# Besides SELECT on every table: migration 0003's APP_PRIVILEGES, as 0005 left them (a ballot's
# law and choice inserted; counted by count_ballots, not updated).
APP_MAY_WRITE = {
    ("vote_audit", "INSERT"),
    ("ballots", "INSERT"),
    ("tally_batches", "INSERT"),
    ("tally_chain", "INSERT"),
    ("vote_results", "INSERT"),
    ("vote_results", "UPDATE"),
    ("duplicate_attempts", "INSERT"),
    ("duplicate_attempts", "UPDATE"),
    ("vote_review", "INSERT"),
    ("vote_review", "UPDATE"),
}
REFUSED_TO_READER = [
    "SELECT vote_hash FROM vote_audit",
    "SELECT ctid, xmin FROM vote_audit",
    "SELECT choice FROM ballots",
    "SELECT * FROM tally_chain",
    "SELECT * FROM vote_review",
    "INSERT INTO laws (law_id, title, opens_at, closes_at) VALUES ('x', 'x', now(), 'infinity')",
    "UPDATE vote_results SET oui_count = oui_count + 1",
    "DELETE FROM certifications",
    "TRUNCATE vote_results",
    "CREATE TABLE reader_table (id int)",
]
REFUSED_TO_APP = [
    "CREATE TABLE app_table (id int)",
    "CREATE VIEW app_view AS SELECT 1 AS one",
    "CREATE FUNCTION app_function() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "DELETE FROM ballots",
    "UPDATE ballots SET choice = 'non'",
    "INSERT INTO ballots (law_id, choice, tally_batch) VALUES ('law-001', 'oui', 'forged')",
    "DELETE FROM ballots_uncounted",
    "TRUNCATE vote_audit",
    "ALTER TABLE ballots DISABLE TRIGGER USER",
    "DROP TABLE vote_results",
]


def held(role: str) -> set[tuple[str, str]]:
    with get_owner_engine().connect() as connection:
        rows = connection.execute(HELD, {"role": role, "privileges": list(PRIVILEGES)})
        return {(relation, privilege) for relation, privilege in rows}


def refusals(url: sa.URL | str, statements: list[str]) -> list[str]:
    """The statements PostgreSQL refuses to the role of `url` for want of a privilege (42501)
    or of ownership (42501 too), each tried in a transaction rolled back."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    refused = []
    try:
        for statement in statements:
            with engine.connect() as connection:
                try:
                    connection.execute(sa.text(statement))
                except ProgrammingError as error:
                    if getattr(error.orig, "pgcode", None) == "42501":
                        refused.append(statement)
                connection.rollback()
    finally:
        engine.dispose()
    return refused


@pytest.fixture
def counted(redis_client: redis.Redis) -> None:
    """Votes recorded by the application's role (the law-open trigger fires for it) and
    counted by a flush."""
    roll = [voter_hash(n, LAW) for n in range(5)]
    load_roll(roll)
    now = utcnow().isoformat()
    submissions = [
        Submission(
            task_id=f"task-{n}",
            args=(),
            kwargs={"vote_hash": h, "law_id": LAW, "choice": "oui", "timestamp": now},
        )
        for n, h in enumerate(roll[:3])
    ]
    box = BallotBox(redis_client, claim_ttl_seconds=3600)
    assert len(validate_now(box, submissions).recorded) == 3
    assert flush(session_scope=session_scope) is not None


def test_the_reader_reads_the_results_and_nothing_else(
    counted: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert held("votes_reader") == READER_MAY
    assert refusals(READER_URL, REFUSED_TO_READER) == REFUSED_TO_READER

    monkeypatch.setenv("READER_DATABASE_URL", READER_URL.render_as_string(hide_password=False))
    shown = run_votes("results", "--law", LAW)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if LAW in line)
    cells = [cell.strip() for cell in row.split("│")]
    assert cells[3:7] == ["3", "5", "60.00", "3"]  # voters, roll, turnout, counted

    # The command connects with READER_DATABASE_URL: a role that does not exist fails it.
    monkeypatch.setenv("READER_DATABASE_URL", str(READER_URL.set(username="votes_nobody")))
    refused = run_votes("results", "--law", LAW)
    assert refused.returncode != 0
    assert 'role "votes_nobody" does not exist' in refused.stderr


def test_the_application_role_is_plain_and_holds_its_grants_alone() -> None:
    with get_owner_engine().connect() as connection:
        attributes = connection.execute(
            sa.text(
                "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication,"
                " rolbypassrls, rolcanlogin, EXISTS (SELECT FROM pg_auth_members m"
                " WHERE m.member = r.oid) AS member, has_function_privilege(r.oid,"
                " 'count_ballots(varchar, integer)', 'EXECUTE') AS counts FROM pg_roles r"
                " WHERE rolname IN ('votes_app', 'votes_reader') ORDER BY rolname"
            )
        ).all()
    assert [tuple(row) for row in attributes] == [
        ("votes_app", False, False, False, False, False, True, False, True),
        ("votes_reader", False, False, False, False, False, True, False, False),
    ]
    with get_engine().connect() as connection:
        assert connection.scalar(sa.text("SELECT current_user")) == "votes_app"
    tables = {relation for relation, privilege in held("votes_app") if privilege == "SELECT"}
    assert held("votes_app") == {(table, "SELECT") for table in tables} | APP_MAY_WRITE
    assert refusals(TEST_DATABASE_URL, REFUSED_TO_APP) == REFUSED_TO_APP
