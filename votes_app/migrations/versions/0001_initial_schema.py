"""Initial schema: audit log, results, flush batches, duplicates, review, vote_statistics.

Revision ID: 0001
Revises: 
Create Date: 2026-11-27 22:30:11.262154
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


VOTE_STATISTICS = """
CREATE VIEW vote_statistics AS
SELECT
    law_id,
    oui_count,
    non_count,
    oui_count + non_count AS total_votes,
    CASE WHEN oui_count + non_count = 0 THEN 0
         ELSE round(100.0 * oui_count / (oui_count + non_count), 2) END AS oui_percentage,
    CASE WHEN oui_count + non_count = 0 THEN 0
         ELSE round(100.0 * non_count / (oui_count + non_count), 2) END AS non_percentage,
    updated_at
FROM vote_results
"""


def upgrade() -> None:
    op.create_table('duplicate_attempts',
    sa.Column('vote_hash', sa.String(length=64), nullable=False),
    sa.Column('law_id', sa.String(length=50), nullable=False),
    sa.Column('attempt_count', sa.Integer(), nullable=False),
    sa.Column('first_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("vote_hash ~ '^[0-9a-f]{64}$'", name=op.f('ck_duplicate_attempts_vote_hash_hex')),
    sa.CheckConstraint('attempt_count >= 1', name=op.f('ck_duplicate_attempts_attempt_count_positive')),
    sa.PrimaryKeyConstraint('vote_hash', 'law_id', name=op.f('pk_duplicate_attempts'))
    )
    op.create_table('tally_batches',
    sa.Column('batch_id', sa.String(length=64), nullable=False),
    sa.Column('vote_count', sa.BigInteger(), nullable=False),
    sa.Column('applied_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('vote_count >= 0', name=op.f('ck_tally_batches_vote_count_non_negative')),
    sa.PrimaryKeyConstraint('batch_id', name=op.f('pk_tally_batches'))
    )
    op.create_table('vote_audit',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('vote_hash', sa.String(length=64), nullable=False),
    sa.Column('law_id', sa.String(length=50), nullable=False),
    sa.Column('choice', sa.String(length=3), nullable=False),
    sa.Column('voted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('task_id', sa.String(length=255), nullable=False),
    sa.Column('tally_batch', sa.String(length=64), nullable=True),
    sa.CheckConstraint("choice IN ('oui', 'non')", name=op.f('ck_vote_audit_choice_valid')),
    sa.CheckConstraint("law_id ~ '^[A-Za-z0-9._-]{1,50}$'", name=op.f('ck_vote_audit_law_id_format')),
    sa.CheckConstraint("vote_hash ~ '^[0-9a-f]{64}$'", name=op.f('ck_vote_audit_vote_hash_hex')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vote_audit')),
    sa.UniqueConstraint('vote_hash', name=op.f('uq_vote_audit_vote_hash'))
    )
    op.create_index('ix_vote_audit_untallied', 'vote_audit', ['recorded_at'], unique=False, postgresql_where=sa.text('tally_batch IS NULL'))
    op.create_table('vote_results',
    sa.Column('law_id', sa.String(length=50), nullable=False),
    sa.Column('oui_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('non_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("law_id ~ '^[A-Za-z0-9._-]{1,50}$'", name=op.f('ck_vote_results_law_id_format')),
    sa.CheckConstraint('non_count >= 0', name=op.f('ck_vote_results_non_count_non_negative')),
    sa.CheckConstraint('oui_count >= 0', name=op.f('ck_vote_results_oui_count_non_negative')),
    sa.PrimaryKeyConstraint('law_id', name=op.f('pk_vote_results'))
    )
    op.create_table('vote_review',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('vote_hash', sa.String(length=64), nullable=True),
    sa.Column('law_id', sa.String(length=50), nullable=True),
    sa.Column('sample', sa.String(length=1000), nullable=False),
    sa.Column('occurrences', sa.Integer(), nullable=False),
    sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('invalid', 'malformed')", name=op.f('ck_vote_review_kind_valid')),
    sa.CheckConstraint('occurrences >= 1', name=op.f('ck_vote_review_occurrences_positive')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_vote_review')),
    sa.UniqueConstraint('kind', 'fingerprint', name='uq_vote_review_kind_fingerprint')
    )
    op.execute(VOTE_STATISTICS)


def downgrade() -> None:
    op.execute("DROP VIEW vote_statistics")
    op.drop_table('vote_review')
    op.drop_table('vote_results')
    op.drop_index('ix_vote_audit_untallied', table_name='vote_audit', postgresql_where=sa.text('tally_batch IS NULL'))
    op.drop_table('vote_audit')
    op.drop_table('tally_batches')
    op.drop_table('duplicate_attempts')
