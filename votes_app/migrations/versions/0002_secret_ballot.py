"""Secret ballot: who voted (vote_audit) apart from what was voted (ballots).

Upgrade: each audit row's law, choice and counting mark become a row of `ballots` under a
random id, written in random order; `vote_audit` is rebuilt without `id`, `choice` and
`tally_batch` (a new table, so that the old rows, choices included, leave the disk with the
old table's files). Review samples that hold a choice lose their sample.

Downgrade: the old `vote_audit` is rebuilt by pairing, law by law, each voter with a ballot
of the same law drawn at random. Every count stays (per law and choice, counted or not); the
choice a row then shows is not that voter's, since that link no longer exists anywhere.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 14:10:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HASH_CHECK = "vote_hash ~ '^[0-9a-f]{64}$'"
LAW_ID_CHECK = "law_id ~ '^[A-Za-z0-9._-]{1,50}$'"
CHOICE_CHECK = "choice IN ('oui', 'non')"
SAMPLE_REMOVED = "(removed: it held a choice, recorded before ballots were kept apart)"


def voter_columns() -> list[sa.Column[Any] | sa.CheckConstraint]:
    """What `vote_audit` holds before and after this revision, with its checks."""
    return [
        sa.Column("vote_hash", sa.String(length=64), nullable=False),
        sa.Column("law_id", sa.String(length=50), nullable=False),
        sa.Column("voted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.CheckConstraint(LAW_ID_CHECK, name=op.f("ck_vote_audit_law_id_format")),
        sa.CheckConstraint(HASH_CHECK, name=op.f("ck_vote_audit_vote_hash_hex")),
    ]


def upgrade() -> None:
    op.create_table(
        "ballots",
        sa.Column(
            "ballot_id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False
        ),
        sa.Column("law_id", sa.String(length=50), nullable=False),
        sa.Column("choice", sa.String(length=3), nullable=False),
        sa.Column("tally_batch", sa.String(length=64), nullable=True),
        sa.CheckConstraint(CHOICE_CHECK, name=op.f("ck_ballots_choice_valid")),
        sa.CheckConstraint(LAW_ID_CHECK, name=op.f("ck_ballots_law_id_format")),
        sa.PrimaryKeyConstraint("ballot_id", name=op.f("pk_ballots")),
    )
    op.execute(
        "INSERT INTO ballots (law_id, choice, tally_batch)"
        " SELECT law_id, choice, tally_batch FROM vote_audit ORDER BY random()"
    )
    op.create_index(
        "ix_ballots_uncounted",
        "ballots",
        ["ballot_id"],
        postgresql_where=sa.text("tally_batch IS NULL"),
    )
    op.execute(
        "CREATE TABLE voters_moving AS"
        " SELECT vote_hash, law_id, voted_at, recorded_at, task_id FROM vote_audit"
    )
    op.drop_table("vote_audit")
    op.create_table(
        "vote_audit",
        *voter_columns(),
        sa.PrimaryKeyConstraint("vote_hash", name=op.f("pk_vote_audit")),
    )
    op.execute("INSERT INTO vote_audit SELECT * FROM voters_moving")
    op.drop_table("voters_moving")
    op.execute(
        sa.text("UPDATE vote_review SET sample = :removed WHERE sample ~* '\\m(oui|non)\\M'").bindparams(
            removed=SAMPLE_REMOVED
        )
    )


def downgrade() -> None:
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (
                SELECT 1 FROM
                    (SELECT law_id, count(*) AS n FROM vote_audit GROUP BY law_id) v
                    FULL JOIN (SELECT law_id, count(*) AS n FROM ballots GROUP BY law_id) b
                    USING (law_id)
                WHERE v.n IS DISTINCT FROM b.n
            ) THEN
                RAISE EXCEPTION 'voters and ballots differ in number for some law: '
                    'reconcile before downgrading';
            END IF;
        END $$
        """
    )
    op.execute(
        "CREATE TABLE voters_moving AS SELECT v.vote_hash, v.law_id, b.choice, v.voted_at,"
        " v.recorded_at, v.task_id, b.tally_batch"
        " FROM (SELECT *, row_number() OVER (PARTITION BY law_id ORDER BY random()) AS n"
        "       FROM vote_audit) v"
        " JOIN (SELECT *, row_number() OVER (PARTITION BY law_id ORDER BY random()) AS n"
        "       FROM ballots) b USING (law_id, n)"
    )
    op.drop_table("vote_audit")
    op.drop_index(
        "ix_ballots_uncounted", table_name="ballots", postgresql_where=sa.text("tally_batch IS NULL")
    )
    op.drop_table("ballots")
    op.create_table(
        "vote_audit",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        *voter_columns(),
        sa.Column("choice", sa.String(length=3), nullable=False),
        sa.Column("tally_batch", sa.String(length=64), nullable=True),
        sa.CheckConstraint(CHOICE_CHECK, name=op.f("ck_vote_audit_choice_valid")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vote_audit")),
        sa.UniqueConstraint("vote_hash", name=op.f("uq_vote_audit_vote_hash")),
    )
    op.create_index(
        "ix_vote_audit_untallied",
        "vote_audit",
        ["recorded_at"],
        unique=False,
        postgresql_where=sa.text("tally_batch IS NULL"),
    )
    op.execute(
        "INSERT INTO vote_audit (vote_hash, law_id, choice, voted_at, recorded_at, task_id,"
        " tally_batch) SELECT vote_hash, law_id, choice, voted_at, recorded_at, task_id,"
        " tally_batch FROM voters_moving ORDER BY recorded_at"
    )
    op.drop_table("voters_moving")
