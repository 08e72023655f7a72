"""The PostgreSQL tables, as typed SQLAlchemy 2 models. Alembic alone creates them."""

from __future__ import annotations

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Names every constraint the same way in models and migrations (Alembic: "The Importance
# of Naming Constraints"), so that `alembic check` compares like with like.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

HASH_CHECK = "vote_hash ~ '^[0-9a-f]{64}$'"
LAW_ID_CHECK = "law_id ~ '^[A-Za-z0-9._-]{1,50}$'"
CHOICE_CHECK = "choice IN ('oui', 'non')"
REVIEW_KINDS = ("invalid", "malformed", "unknown_law", "outside_window")
# A law's lifecycle as stored: `scheduled` until `votes close`, then `closed`, then
# `certified`. A scheduled law whose window has begun is open (`Law.state_at`).
LAW_STATES = ("scheduled", "closed", "certified")


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def created_now() -> Mapped[datetime]:
    return mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


def law_reference(*, primary_key: bool = False) -> Mapped[str]:
    """A law_id that names a registered law."""
    return mapped_column(sa.String(50), sa.ForeignKey("laws.law_id"), primary_key=primary_key)


class Law(Base):
    """A question on the ballot: its voting window and where it stands in its lifecycle."""

    __tablename__ = "laws"
    __table_args__ = (
        sa.CheckConstraint(LAW_ID_CHECK, name="law_id_format"),
        sa.CheckConstraint("closes_at > opens_at", name="window_not_empty"),
        sa.CheckConstraint("state IN ('scheduled', 'closed', 'certified')", name="state_valid"),
    )

    law_id: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    opens_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    closes_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    state: Mapped[str] = mapped_column(sa.String(12), server_default="scheduled")
    closed_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    registered_at: Mapped[datetime] = created_now()


class VoteAudit(Base):
    """Who has voted on which law: one row per accepted vote, and nothing of what was voted.

    The seeds' audit trail without its `choice`: the ballot is a row of `ballots`, written
    in the same transaction, and nothing but the law and that transaction ties the two.
    """

    __tablename__ = "vote_audit"
    __table_args__ = (
        sa.CheckConstraint(HASH_CHECK, name="vote_hash_hex"),
        sa.CheckConstraint(LAW_ID_CHECK, name="law_id_format"),
    )

    vote_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    law_id: Mapped[str] = law_reference()
    voted_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    recorded_at: Mapped[datetime] = created_now()
    # The Celery task id that recorded the vote: a redelivered message recognises its own row.
    task_id: Mapped[str] = mapped_column(sa.String(255))


class Ballot(Base):
    """What was voted: a law and a choice under a random id, and nothing about the voter.

    Written with its voter's `vote_audit` row, in an order of its own (shuffled within each
    transaction). `tally_batch` is the flush batch that counted it in `vote_results`, NULL
    until then. Partitioned on it (migration 0005): a ballot waits in `ballots_uncounted`
    until a flush moves it, once, into `ballots_counted` (`count_ballots`); reading
    `ballots` reads both.
    """

    __tablename__ = "ballots"
    __table_args__ = (
        sa.CheckConstraint(CHOICE_CHECK, name="choice_valid"),
        {"postgresql_partition_by": "LIST (tally_batch)"},
    )

    ballot_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, server_default=sa.func.gen_random_uuid())
    law_id: Mapped[str] = mapped_column(sa.String(50))
    choice: Mapped[str] = mapped_column(sa.String(3))
    tally_batch: Mapped[str | None] = mapped_column(sa.String(64))

    # Unique in ballots_counted (its primary key); a partitioned table's own unique keys
    # must hold the partition key, which tally_batch is.
    __mapper_args__ = {"primary_key": [ballot_id]}


def ballot_partition(name: str, *constraints: sa.schema.SchemaItem) -> sa.Table:
    """A partition of `ballots`: its columns, with the constraints of its own."""
    return sa.Table(
        name,
        Base.metadata,
        sa.Column("ballot_id", sa.Uuid, server_default=sa.func.gen_random_uuid(), nullable=False),
        sa.Column("law_id", sa.String(50), nullable=False),
        sa.Column("choice", sa.String(3), nullable=False),
        sa.Column("tally_batch", sa.String(64)),
        *constraints,
    )


# The ballots waiting for a flush: where votes enter, so where their law is checked.
ballots_uncounted = ballot_partition(
    "ballots_uncounted",
    sa.CheckConstraint(LAW_ID_CHECK, name="law_id_format"),
    sa.ForeignKeyConstraint(["law_id"], ["laws.law_id"]),
)
# The ballots counted: moved from ballots_uncounted by count_ballots, each once.
ballots_counted = ballot_partition("ballots_counted", sa.PrimaryKeyConstraint("ballot_id"))


class VoteResult(Base):
    """Live tallies per law, advanced only by `flush_tallies`."""

    __tablename__ = "vote_results"
    __table_args__ = (
        sa.CheckConstraint("oui_count >= 0", name="oui_count_non_negative"),
        sa.CheckConstraint("non_count >= 0", name="non_count_non_negative"),
        sa.CheckConstraint(LAW_ID_CHECK, name="law_id_format"),
    )

    law_id: Mapped[str] = law_reference(primary_key=True)
    oui_count: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    non_count: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    updated_at: Mapped[datetime] = created_now()


class TallyBatch(Base):
    """One flush that counted ballots: its id marks them, `vote_count` says how many."""

    __tablename__ = "tally_batches"
    __table_args__ = (sa.CheckConstraint("vote_count >= 0", name="vote_count_non_negative"),)

    batch_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    vote_count: Mapped[int] = mapped_column(sa.BigInteger)
    applied_at: Mapped[datetime] = created_now()


class ChainLink(Base):
    """One link of a law's hash chain: what one flush batch counted for the law.

    `link_hash` covers the previous link's hash and every other field, and
    `ballots_digest` the batch's ballots of the law (`votes_app.chain`): a choice flipped, a
    ballot added or removed, a count or a link rewritten no longer matches.
    """

    __tablename__ = "tally_chain"
    __table_args__ = (
        sa.CheckConstraint("seq >= 1", name="seq_positive"),
        sa.CheckConstraint("oui >= 0 AND non >= 0", name="counts_non_negative"),
    )

    law_id: Mapped[str] = law_reference(primary_key=True)
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    batch_id: Mapped[str] = mapped_column(sa.String(64))
    oui: Mapped[int] = mapped_column(sa.BigInteger)
    non: Mapped[int] = mapped_column(sa.BigInteger)
    ballots_digest: Mapped[str] = mapped_column(sa.String(64))
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    link_hash: Mapped[str] = mapped_column(sa.String(64))
    linked_at: Mapped[datetime] = created_now()


class Certification(Base):
    """A law's final, certified result: counts and digests to publish outside the system."""

    __tablename__ = "certifications"

    law_id: Mapped[str] = law_reference(primary_key=True)
    oui_count: Mapped[int] = mapped_column(sa.BigInteger)
    non_count: Mapped[int] = mapped_column(sa.BigInteger)
    voters: Mapped[int] = mapped_column(sa.BigInteger)
    ballots_digest: Mapped[str] = mapped_column(sa.String(64))
    voters_digest: Mapped[str] = mapped_column(sa.String(64))
    chain_head: Mapped[str] = mapped_column(sa.String(64))
    certified_at: Mapped[datetime] = created_now()


class DuplicateAttempt(Base):
    """Second (third, ...) votes of one voter hash on one law."""

    __tablename__ = "duplicate_attempts"
    __table_args__ = (
        sa.CheckConstraint(HASH_CHECK, name="vote_hash_hex"),
        sa.CheckConstraint("attempt_count >= 1", name="attempt_count_positive"),
    )

    vote_hash: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    law_id: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    attempt_count: Mapped[int] = mapped_column(sa.Integer)
    first_attempt_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    last_attempt_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class ReviewRecord(Base):
    """Invalid and malformed submissions, one row per distinct submission.

    A flood of the same garbage bumps `occurrences` instead of adding rows.
    """

    __tablename__ = "vote_review"
    __table_args__ = (
        sa.UniqueConstraint("kind", "fingerprint", name="uq_vote_review_kind_fingerprint"),
        sa.CheckConstraint(
            "kind IN ('invalid', 'malformed', 'unknown_law', 'outside_window')",
            name="kind_valid",
        ),
        sa.CheckConstraint("occurrences >= 1", name="occurrences_positive"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    reason: Mapped[str] = mapped_column(sa.String(500))
    vote_hash: Mapped[str | None] = mapped_column(sa.String(64))
    law_id: Mapped[str | None] = mapped_column(sa.String(50))
    sample: Mapped[str] = mapped_column(sa.String(1000))
    occurrences: Mapped[int] = mapped_column(sa.Integer)
    first_seen_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


# The view that `votes results` and dashboards read; the initial migration creates it.
vote_statistics = sa.table(
    "vote_statistics",
    sa.column("law_id", sa.String),
    sa.column("oui_count", sa.BigInteger),
    sa.column("non_count", sa.BigInteger),
    sa.column("total_votes", sa.BigInteger),
    sa.column("oui_percentage", sa.Numeric),
    sa.column("non_percentage", sa.Numeric),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
