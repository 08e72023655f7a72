"""Roles: a read-only role for results and dashboards; the application's role kept plain.

- The role `votes_reader` (LOGIN), for `votes results` (READER_DATABASE_URL) and dashboards: it
  may read the laws, the tallies (`vote_results`, the view `vote_statistics`), the
  certifications, and of `vote_audit` the column `law_id` alone (voters per law, for the
  turnout). Not the ballots, not who voted or when, not the chain, the reviews or the duplicate
  attempts; it writes nothing. Its password is READER_DATABASE_PASSWORD (migrations/env.py), as
  the application's is APP_DATABASE_PASSWORD.
- No default privileges: a table a later migration adds is closed to `votes_app` and
  `votes_reader` until that migration grants them what they need.
- `votes_app` and `votes_reader` are plain roles: an existing one that is a superuser or may
  create databases or roles, replicate or bypass row security loses that.
- Only the schema's owner creates in schema public: PostgreSQL 15 no longer grants CREATE on it
  to PUBLIC, a database created before that still does ("Schemas and Privileges": REVOKE
  CREATE ON SCHEMA public FROM PUBLIC). The migration fails if either role could still create.
- The SECURITY DEFINER trigger function `votes_only_while_open` is executable by no one but its
  owner ("Writing SECURITY DEFINER Functions Safely": revoke PUBLIC's default EXECUTE); a
  trigger runs its function whatever the inserting role may execute.

Downgrade: the reader's grants in this database go (the role stays: roles belong to the whole
server, other databases may grant it too) and PUBLIC may execute the function again. Role
attributes taken away and PUBLIC's CREATE on schema public are not given back.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "votes_app"
READER_ROLE = "votes_reader"

# (table or view, privilege): what `votes results` and a dashboard read, and nothing more.
READER_PRIVILEGES = [
    ("laws", "SELECT"),
    ("vote_results", "SELECT"),
    ("vote_statistics", "SELECT"),
    ("certifications", "SELECT"),
    ("vote_audit", "SELECT (law_id)"),
]

PLAIN_ROLE = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


def create_reader_role() -> None:
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
                CREATE ROLE {READER_ROLE} LOGIN {PLAIN_ROLE};
            END IF;
            EXECUTE format('GRANT CONNECT ON DATABASE %I TO {READER_ROLE}', current_database());
        END $$
        """
    )


def keep_roles_plain() -> None:
    for role in (APP_ROLE, READER_ROLE):
        op.execute(
            f"""
            DO $$ BEGIN
                IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}' AND (rolsuper
                           OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls))
                THEN
                    ALTER ROLE {role} {PLAIN_ROLE};
                END IF;
            END $$
            """
        )


def only_the_owner_creates_in_public() -> None:
    op.execute(
        f"""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM pg_namespace, aclexplode(nspacl) AS acl
                       WHERE nspname = 'public' AND acl.grantee = 0
                       AND acl.privilege_type = 'CREATE') THEN
                REVOKE CREATE ON SCHEMA public FROM PUBLIC;
            END IF;
            IF has_schema_privilege('{APP_ROLE}', 'public', 'CREATE')
               OR has_schema_privilege('{READER_ROLE}', 'public', 'CREATE') THEN
                RAISE EXCEPTION '{APP_ROLE} or {READER_ROLE} may create in schema public'
                    USING HINT = 'have the owner of schema public revoke CREATE from PUBLIC '
                                 'and from those roles, then migrate again';
            END IF;
        END $$
        """
    )


def upgrade() -> None:
    create_reader_role()
    op.execute(f"GRANT USAGE ON SCHEMA public TO {READER_ROLE}")
    for table, privilege in READER_PRIVILEGES:
        op.execute(f"GRANT {privilege} ON {table} TO {READER_ROLE}")
    keep_roles_plain()
    only_the_owner_creates_in_public()
    op.execute("REVOKE EXECUTE ON FUNCTION votes_only_while_open() FROM PUBLIC")


def downgrade() -> None:
    op.execute("GRANT EXECUTE ON FUNCTION votes_only_while_open() TO PUBLIC")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {READER_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {READER_ROLE}")
    op.execute(
        f"DO $$ BEGIN EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM {READER_ROLE}',"
        " current_database()); END $$"
    )
