"""Counting moves a ballot: `ballots` partitioned into the ballots waiting and the counted.

- `ballots` becomes a table partitioned by LIST (tally_batch), with the same columns:
  `ballots_uncounted` holds the ballots no flush has counted (tally_batch NULL),
  `ballots_counted` the others. Reading `ballots` reads both; `WHERE tally_batch IS NULL`
  reads the first alone. Every ballot keeps its id, choice and mark: the rows are copied,
  each partition in ballot_id order, and the old table's files go.
- `count_ballots(batch, at_most)`: one flush batch. It deletes up to `at_most` waiting ballots
  and inserts them, marked with `batch`, into `ballots_counted` in ballot_id order, in one
  statement; it returns per law how many `oui` and `non` it moved and their digest. A flush
  (votes_app.tallies) calls it under the flush lock. Moving instead of updating: a row
  deleted from a partition without an index and one inserted into a table nobody updates,
  no row lock, no row trigger; and the counted ballot is written anew by the flush, in an
  order and a transaction of its own, as the update wrote it before.
- Constraints: the law must be registered (foreign key) and well formed where votes enter,
  `ballots_uncounted`; a counted ballot came from there, and `ballots_counted` has the
  primary key on ballot_id, which refuses a ballot counted twice. `ix_ballots_uncounted`
  goes: the waiting ballots are a table of their own.
- Triggers: the law-open check on each INSERT into `ballots` (statement level, as before);
  no role updates a ballot; a certified law's counted ballots are not deleted.
- The role `votes_app` reads the three tables, inserts a ballot's law and choice only (its id
  comes from gen_random_uuid(), and it waits to be counted), may execute count_ballots, and
  no longer updates ballots. No other role may execute count_ballots.

Downgrade: `ballots` becomes one table again, every ballot with its mark, with the indexes,
triggers and grants of 0004; count_ballots goes.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP_ROLE = "votes_app"
LAW_ID_CHECK = "law_id ~ '^[A-Za-z0-9._-]{1,50}$'"
CHOICE_CHECK = "choice IN ('oui', 'non')"
FLUSH_LOCK = 0x766F746573  # votes_app.tallies.FLUSH_LOCK
COLUMNS = "ballot_id, law_id, choice, tally_batch"

# The digest of votes_app.chain.BALLOTS_DIGEST_SQL, over the ballots a batch moved.
COUNT_BALLOTS = """
CREATE FUNCTION count_ballots(batch varchar, at_most integer)
RETURNS TABLE (law_id varchar, oui bigint, non bigint, ballots_digest text)
LANGUAGE sql SECURITY DEFINER
-- "Writing SECURITY DEFINER Functions Safely": no schema others can write ahead of ours.
SET search_path = public, pg_temp
-- A plan compiled by LLVM costs more to build than these few expressions save.
SET jit = off
AS $$
    -- Re-entrant within the flush's transaction, which holds it already.
    SELECT pg_advisory_xact_lock({flush_lock});
    WITH moved AS (
        -- Waiting ballots committed when the statement starts: one committed later waits
        -- for the next batch. No other transaction deletes them (the lock above).
        DELETE FROM public.ballots_uncounted
        WHERE ctid = ANY (ARRAY(SELECT ctid FROM public.ballots_uncounted LIMIT at_most))
        RETURNING ballot_id, law_id, choice
    ), counted AS (
        -- In ballot_id order: neither the place of a counted ballot nor its neighbours tell
        -- in which transaction, or next to which voter, it was recorded.
        INSERT INTO public.ballots_counted (ballot_id, law_id, choice, tally_batch)
        SELECT ballot_id, law_id, choice, batch FROM moved ORDER BY ballot_id
        RETURNING ballot_id, law_id, choice
    )
    SELECT law_id,
           count(*) FILTER (WHERE choice = 'oui'),
           count(*) FILTER (WHERE choice = 'non'),
           encode(sha256(convert_to(coalesce(string_agg(
               ballot_id::text || ':' || choice || E'\\n', '' ORDER BY ballot_id), ''),
               'UTF8')), 'hex')
    FROM counted GROUP BY law_id;
$$;
REVOKE ALL ON FUNCTION count_ballots(varchar, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION count_ballots(varchar, integer) TO {app_role};
"""

# 0003's law-open check, on the table votes are inserted into (through it, into a partition).
ONLY_WHILE_OPEN = """
CREATE TRIGGER ballots_only_while_open AFTER INSERT ON ballots
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION votes_only_while_open();
"""

TRIGGERS = """
CREATE FUNCTION ballots_are_not_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a ballot does not change: a flush counts it by moving it to ballots_counted'
        USING ERRCODE = 'check_violation';
END $$;
-- Cloned to each partition: an UPDATE of either, by its name or through ballots, is refused.
CREATE TRIGGER ballots_are_not_updated BEFORE UPDATE ON ballots
    FOR EACH ROW EXECUTE FUNCTION ballots_are_not_updated();

-- On the counted ballots alone: a certified law has no other, and the flush's deletes from
-- ballots_uncounted do not pay a trigger per row.
CREATE TRIGGER ballots_final BEFORE DELETE ON ballots_counted
    FOR EACH ROW EXECUTE FUNCTION certified_law_is_final();
"""

# 0003's, on the single table the downgrade rebuilds.
TRIGGERS_0004 = """
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

CREATE TRIGGER ballots_final BEFORE DELETE ON ballots
    FOR EACH ROW EXECUTE FUNCTION certified_law_is_final();
"""


def ballot_columns() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "ballot_id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False
        ),
        sa.Column("law_id", sa.String(length=50), nullable=False),
        sa.Column("choice", sa.String(length=3), nullable=False),
        sa.Column("tally_batch", sa.String(length=64), nullable=True),
    ]


def upgrade() -> None:
    # Its constraints and indexes keep their names until it goes; the new ones are new names
    # but for the checks, which are named per table.
    op.rename_table("ballots", "ballots_0004")
    op.create_table(
        "ballots",
        *ballot_columns(),
        sa.CheckConstraint(CHOICE_CHECK, name=op.f("ck_ballots_choice_valid")),
        postgresql_partition_by="LIST (tally_batch)",
    )
    op.execute(
        "CREATE TABLE ballots_uncounted PARTITION OF ballots ("
        f" CONSTRAINT ck_ballots_uncounted_law_id_format CHECK ({LAW_ID_CHECK}),"
        " CONSTRAINT fk_ballots_uncounted_law_id_laws FOREIGN KEY (law_id)"
        " REFERENCES laws (law_id)) FOR VALUES IN (NULL)"
    )
    op.execute(
        "CREATE TABLE ballots_counted PARTITION OF ballots ("
        " CONSTRAINT pk_ballots_counted PRIMARY KEY (ballot_id)) DEFAULT"
    )
    # Written anew in ballot_id order, as count_ballots writes them: every row now has the
    # migration's transaction and a place that follows from its random id.
    for partition, waiting in (
        ("ballots_uncounted", "IS NULL"),
        ("ballots_counted", "IS NOT NULL"),
    ):
        op.execute(
            f"INSERT INTO {partition} ({COLUMNS}) SELECT {COLUMNS} FROM ballots_0004"
            f" WHERE tally_batch {waiting} ORDER BY ballot_id"
        )
    op.drop_table("ballots_0004")
    op.execute("DROP FUNCTION ballots_marked_once()")
    op.execute(ONLY_WHILE_OPEN + TRIGGERS)
    op.execute(COUNT_BALLOTS.format(flush_lock=FLUSH_LOCK, app_role=APP_ROLE))
    # As 0003 made it: the application's role reads every table.
    op.execute(f"GRANT SELECT ON ballots, ballots_uncounted, ballots_counted TO {APP_ROLE}")
    op.execute(f"GRANT INSERT (law_id, choice) ON ballots TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP FUNCTION count_ballots(varchar, integer)")
    op.rename_table("ballots", "ballots_0005")
    op.execute("ALTER TABLE ballots_uncounted RENAME TO ballots_0005_uncounted")
    op.execute("ALTER TABLE ballots_counted RENAME TO ballots_0005_counted")
    op.create_table(
        "ballots",
        *ballot_columns(),
        sa.CheckConstraint(CHOICE_CHECK, name=op.f("ck_ballots_choice_valid")),
        sa.CheckConstraint(LAW_ID_CHECK, name=op.f("ck_ballots_law_id_format")),
        sa.ForeignKeyConstraint(["law_id"], ["laws.law_id"], name=op.f("fk_ballots_law_id_laws")),
        sa.PrimaryKeyConstraint("ballot_id", name=op.f("pk_ballots")),
    )
    op.execute(
        f"INSERT INTO ballots ({COLUMNS}) SELECT {COLUMNS} FROM ballots_0005 ORDER BY ballot_id"
    )
    op.create_index(
        "ix_ballots_uncounted",
        "ballots",
        ["ballot_id"],
        postgresql_where=sa.text("tally_batch IS NULL"),
    )
    op.drop_table("ballots_0005")  # and its partitions
    op.execute("DROP FUNCTION ballots_are_not_updated()")
    op.execute(ONLY_WHILE_OPEN + TRIGGERS_0004)
    op.execute(f"GRANT SELECT, INSERT, UPDATE (tally_batch) ON ballots TO {APP_ROLE}")
