"""The law-open trigger function looks up nothing in a schema others can write.

`votes_only_while_open` (0003) runs as its owner (SECURITY DEFINER) with `search_path =
public`, where PostgreSQL still searches `pg_temp` first for tables and views: a session
could place a temporary `laws` table ahead of the real one. PostgreSQL's "Writing SECURITY
DEFINER Functions Safely" puts `pg_temp` last, as count_ballots (0005) does.

Downgrade: `search_path = public` again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 02:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER FUNCTION votes_only_while_open() SET search_path = public, pg_temp")


def downgrade() -> None:
    op.execute("ALTER FUNCTION votes_only_while_open() SET search_path = public")
