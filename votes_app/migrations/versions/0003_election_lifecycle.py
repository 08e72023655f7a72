"""Election lifecycle: registered laws, a hash chain per law, certification, the app's role.

- `laws` (window and state), which votes, ballots, tallies and chain links now reference.
  Laws that already have votes are registered with an unbounded window, scheduled: an
  operator closes them.
- `tally_chain`: one link per flush batch and law (votes_app.chain). Ballots already counted
  get their links here, batch by batch in the order the batches were applied.
- `certifications`: a certified law's final counts and digests.
- Review kinds `unknown_law` and `outside_window`.
- The role `votes_app`, which the application connects with: it may read, add votes and
  refusals, mark a ballot counted once and add to the tallies, and nothing else. Triggers,
  for every role, refuse a vote for a law that is not open, a ballot changed other than by
  being marked counted once, a tally lowered by the application, any change to a certified
  law's tallies, chain, voters or ballots, and a law moving back. The owner's role (the one migrating) owns the tables and
  can still disable the triggers: `votes verify` finds what it changed.

Downgrade: the grants and triggers go (the role stays: roles belong to the whole server),
reviews of the new kinds become `malformed`, the tables go.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 16:00:00
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "votes_app"
LAW_ID_CHECK = "law_id ~ '^[A-Za-z0-9._-]{1,50}$'"
GENESIS = "0" * 64
REFERENCING = ("vote_audit", "ballots", "vote_results")

# (table, privileges): everything else of the schema the app may only read.
APP_PRIVILEGES = [
    ("vote_audit", "INSERT"),
    ("ballots", "INSERT, UPDATE (tally_batch)"),
    ("tally_batches", "INSERT"),
    ("tally_chain", "INSERT"),
    ("vote_results", "INSERT, UPDATE (oui_count, non_count, updated_at)"),
    ("duplicate_attempts", "INSERT, UPDATE (attempt_count, first_attempt_at, last_attempt_at)"),
    ("vote_review", "INSERT, UPDATE (occurrences, reason, first_seen_at, last_seen_at)"),
]

TRIGGERS = """
-- Once per statement, on the rows it inserted: validation inserts a batch in one statement,
-- and a lock per row cost a third of the INSERT. SECURITY DEFINER: locking the law's row
-- takes more than the app's SELECT on it.
CREATE FUNCTION votes_only_while_open() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public AS $$
DECLARE
    voted text[] := ARRAY(SELECT DISTINCT law_id FROM inserted ORDER BY law_id);
    open_laws int;
BEGIN
    -- FOR SHARE: a close waits for the votes being recorded, which then come before it.
    -- (In law order: two batches lock their laws in the same order.)
    SELECT count(*) INTO open_laws FROM (
        SELECT 1 FROM laws WHERE law_id = ANY (voted) AND state = 'scheduled'
        ORDER BY law_id FOR SHARE) AS locked;
    IF open_laws < cardinality(voted) THEN
        -- A state of the law's, not of the rows: validation judges the votes again.
        RAISE EXCEPTION 'a law of % is not open: no vote is recorded for it', voted
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER vote_audit_only_while_open AFTER INSERT ON vote_audit
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION votes_only_while_open();
CREATE TRIGGER ballots_only_while_open AFTER INSERT ON ballots
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION votes_only_while_open();

CREATE FUNCTION ballots_marked_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.ballot_id IS DISTINCT FROM OLD.ballot_id OR NEW.law_id IS DISTINCT FROM OLD.law_id
       OR NEW.choice IS DISTINCT FROM OLD.choice OR OLD.tally_batch IS NOT NULL
       OR NEW.tally_batch IS NULL THEN
        RAISE EXCEPTION 'a ballot is marked counted once, and nothing else of it changes'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ballots_marked_once BEFORE UPDATE ON ballots
    FOR EACH ROW EXECUTE FUNCTION ballots_marked_once();

-- A certified law's rows change no more: no tally, link, voter or ballot of it is added,
-- changed or deleted. (Ballots are added only while a law is open and only marked once.)
CREATE FUNCTION certified_law_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM laws WHERE state = 'certified' AND law_id IN (
               CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE OLD.law_id END,
               CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE NEW.law_id END)) THEN
        RAISE EXCEPTION 'law is certified: its count is final'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;
CREATE TRIGGER vote_results_final BEFORE INSERT OR UPDATE OR DELETE ON vote_results
    FOR EACH ROW EXECUTE FUNCTION certified_law_is_final();
CREATE TRIGGER tally_chain_final BEFORE INSERT OR UPDATE OR DELETE ON tally_chain
    FOR EACH ROW EXECUTE FUNCTION certified_law_is_final();
CREATE TRIGGER vote_audit_final BEFORE UPDATE OR DELETE ON vote_audit
    FOR EACH ROW EXECUTE FUNCTION certified_law_is_final();
CREATE TRIGGER ballots_final BEFORE DELETE ON ballots
    FOR EACH ROW EXECUTE FUNCTION certified_law_is_final();

-- The application adds to the tallies; only the owner sets them lower (votes recount).
CREATE FUNCTION tallies_only_grow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_user = '{app_role}' AND (NEW.oui_count < OLD.oui_count
       OR NEW.non_count < OLD.non_count OR NEW.law_id IS DISTINCT FROM OLD.law_id) THEN
        RAISE EXCEPTION 'a tally only grows' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER vote_results_only_grow BEFORE UPDATE ON vote_results
    FOR EACH ROW EXECUTE FUNCTION tallies_only_grow();

CREATE FUNCTION laws_move_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.state <> 'scheduled' THEN
            RAISE EXCEPTION 'law %: a closed law stays registered', OLD.law_id
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.state = 'certified' OR NEW.law_id IS DISTINCT FROM OLD.law_id
       OR (OLD.state = 'closed' AND (NEW.state = 'scheduled'
           OR (NEW.opens_at, NEW.closes_at) IS DISTINCT FROM (OLD.opens_at, OLD.closes_at))) THEN
        RAISE EXCEPTION 'law %: a closed law is not opened again, a certified one not changed',
            OLD.law_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER laws_move_forward BEFORE UPDATE OR DELETE ON laws
    FOR EACH ROW EXECUTE FUNCTION laws_move_forward();

CREATE FUNCTION certifications_are_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a certification is final' USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER certifications_are_final BEFORE UPDATE OR DELETE ON certifications
    FOR EACH ROW EXECUTE FUNCTION certifications_are_final();
"""

DROP_TRIGGERS = """
DROP TRIGGER certifications_are_final ON certifications;
DROP FUNCTION certifications_are_final();
DROP TRIGGER vote_results_only_grow ON vote_results;
DROP FUNCTION tallies_only_grow();
DROP TRIGGER laws_move_forward ON laws;
DROP FUNCTION laws_move_forward();
DROP TRIGGER ballots_final ON ballots;
DROP TRIGGER vote_audit_final ON vote_audit;
DROP TRIGGER tally_chain_final ON tally_chain;
DROP TRIGGER vote_results_final ON vote_results;
DROP FUNCTION certified_law_is_final();
DROP TRIGGER ballots_marked_once ON ballots;
DROP FUNCTION ballots_marked_once();
DROP TRIGGER ballots_only_while_open ON ballots;
DROP TRIGGER vote_audit_only_while_open ON vote_audit;
DROP FUNCTION votes_only_while_open();
"""


def link_hash(
    prev: str, law_id: str, seq: int, batch_id: str, oui: int, non: int, digest: str
) -> str:
    text = f"{prev}\n{law_id}\n{seq}\n{batch_id}\n{oui}\n{non}\n{digest}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def chain_counted_ballots() -> None:
    """Links for the ballots counted before chains existed, batch by batch per law."""
    connection = op.get_bind()
    rows = connection.execute(
        sa.text(
            "SELECT b.law_id, b.tally_batch,"
            " count(*) FILTER (WHERE b.choice = 'oui') AS oui,"
            " count(*) FILTER (WHERE b.choice = 'non') AS non,"
            " encode(sha256(convert_to(coalesce(string_agg(b.ballot_id::text || ':'"
            " || b.choice || E'\\n', '' ORDER BY b.ballot_id), ''), 'UTF8')), 'hex') AS digest"
            " FROM ballots b LEFT JOIN tally_batches t ON t.batch_id = b.tally_batch"
            " WHERE b.tally_batch IS NOT NULL"
            " GROUP BY b.law_id, b.tally_batch, t.applied_at"
            " ORDER BY b.law_id, t.applied_at NULLS FIRST, b.tally_batch"
        )
    ).all()
    heads: dict[str, tuple[int, str]] = {}
    for row in rows:
        seq, prev = heads.get(row.law_id, (0, GENESIS))
        seq += 1
        linked = link_hash(prev, row.law_id, seq, row.tally_batch, row.oui, row.non, row.digest)
        connection.execute(
            sa.text(
                "INSERT INTO tally_chain (law_id, seq, batch_id, oui, non, ballots_digest,"
                " prev_hash, link_hash) VALUES (:law_id, :seq, :batch_id, :oui, :non, :digest,"
                " :prev, :linked)"
            ),
            {
                "law_id": row.law_id,
                "seq": seq,
                "batch_id": row.tally_batch,
                "oui": row.oui,
                "non": row.non,
                "digest": row.digest,
                "prev": prev,
                "linked": linked,
            },
        )
        heads[row.law_id] = (seq, linked)


def grant_app_role() -> None:
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                CREATE ROLE {APP_ROLE} LOGIN;
            END IF;
            EXECUTE format('GRANT CONNECT ON DATABASE %I TO {APP_ROLE}', current_database());
        END $$
        """
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
    for table, privileges in APP_PRIVILEGES:
        op.execute(f"GRANT {privileges} ON {table} TO {APP_ROLE}")


def upgrade() -> None:
    op.create_table(
        "laws",
        sa.Column("law_id", sa.String(length=50), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("opens_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closes_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=12), server_default="scheduled", nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "registered_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(LAW_ID_CHECK, name=op.f("ck_laws_law_id_format")),
        sa.CheckConstraint("closes_at > opens_at", name=op.f("ck_laws_window_not_empty")),
        sa.CheckConstraint(
            "state IN ('scheduled', 'closed', 'certified')", name=op.f("ck_laws_state_valid")
        ),
        sa.PrimaryKeyConstraint("law_id", name=op.f("pk_laws")),
    )
    op.execute(
        "INSERT INTO laws (law_id, title, opens_at, closes_at)"
        " SELECT law_id, law_id, '-infinity', 'infinity' FROM ("
        " SELECT law_id FROM vote_audit UNION SELECT law_id FROM ballots"
        " UNION SELECT law_id FROM vote_results) AS voted"
    )
    for table in REFERENCING:
        op.create_foreign_key(
            op.f(f"fk_{table}_law_id_laws"), table, "laws", ["law_id"], ["law_id"]
        )
    op.create_table(
        "tally_chain",
        sa.Column("law_id", sa.String(length=50), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("oui", sa.BigInteger(), nullable=False),
        sa.Column("non", sa.BigInteger(), nullable=False),
        sa.Column("ballots_digest", sa.String(length=64), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("link_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "linked_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint("seq >= 1", name=op.f("ck_tally_chain_seq_positive")),
        sa.CheckConstraint("oui >= 0 AND non >= 0", name=op.f("ck_tally_chain_counts_non_negative")),
        sa.ForeignKeyConstraint(["law_id"], ["laws.law_id"], name=op.f("fk_tally_chain_law_id_laws")),
        sa.PrimaryKeyConstraint("law_id", "seq", name=op.f("pk_tally_chain")),
    )
    op.create_table(
        "certifications",
        sa.Column("law_id", sa.String(length=50), nullable=False),
        sa.Column("oui_count", sa.BigInteger(), nullable=False),
        sa.Column("non_count", sa.BigInteger(), nullable=False),
        sa.Column("voters", sa.BigInteger(), nullable=False),
        sa.Column("ballots_digest", sa.String(length=64), nullable=False),
        sa.Column("voters_digest", sa.String(length=64), nullable=False),
        sa.Column("chain_head", sa.String(length=64), nullable=False),
        sa.Column(
            "certified_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["law_id"], ["laws.law_id"], name=op.f("fk_certifications_law_id_laws")
        ),
        sa.PrimaryKeyConstraint("law_id", name=op.f("pk_certifications")),
    )
    chain_counted_ballots()
    op.drop_constraint(op.f("ck_vote_review_kind_valid"), "vote_review", type_="check")
    op.create_check_constraint(
        op.f("ck_vote_review_kind_valid"),
        "vote_review",
        "kind IN ('invalid', 'malformed', 'unknown_law', 'outside_window')",
    )
    grant_app_role()
    op.execute(TRIGGERS.replace("{app_role}", APP_ROLE))


def downgrade() -> None:
    op.execute(DROP_TRIGGERS)
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {APP_ROLE}")
    op.execute(
        f"DO $$ BEGIN EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM {APP_ROLE}',"
        " current_database()); END $$"
    )
    op.execute(
        "UPDATE vote_review SET kind = 'malformed', reason = left(kind || ': ' || reason, 500)"
        " WHERE kind IN ('unknown_law', 'outside_window')"
    )
    op.drop_constraint(op.f("ck_vote_review_kind_valid"), "vote_review", type_="check")
    op.create_check_constraint(
        op.f("ck_vote_review_kind_valid"), "vote_review", "kind IN ('invalid', 'malformed')"
    )
    op.drop_table("certifications")
    op.drop_table("tally_chain")
    for table in REFERENCING:
        op.drop_constraint(op.f(f"fk_{table}_law_id_laws"), table, type_="foreignkey")
    op.drop_table("laws")
