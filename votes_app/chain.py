"""The hash chain over what the flushes counted, one chain per law, and the digests it rests on.

Each flush batch that counted ballots of a law adds a link to the law's chain: the batch id,
how many `oui` and `non` it counted, a digest of those ballots, the previous link's hash and
its own. Recomputed from the recorded ballots (`votes verify`), a flipped choice, a ballot
added or removed, an edited count or a rewritten link no longer matches. A digest covers
ballots (id and choice) or voters (hash), never the two together.

The formats, which an auditor recomputes from an export in a few lines (docs/AUDIT.md):

- a set of ballots: SHA-256 of the lines `<ballot_id>:<choice>\\n`, by ballot_id;
- a set of voters: SHA-256 of the lines `<vote_hash>\\n`, by vote_hash;
- a link: SHA-256 of its fields, one per line, each line ending in `\\n`: prev_hash, law_id,
  seq, batch_id, oui, non, ballots_digest; the first link's prev_hash is 64 zeros.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from votes_app.models import ChainLink

GENESIS = "0" * 64

# The digests, computed by PostgreSQL where the rows are (same bytes as `ballots_digest` and
# `voters_digest` below). ballot_id orders as its text does; hashes in the C collation.
# `count_ballots` (migration 0005) computes the ballots digest of each batch it moves with the
# same expression; `votes verify` recomputes it with this one.
BALLOTS_DIGEST_SQL = (
    "encode(sha256(convert_to(coalesce(string_agg("
    "ballot_id::text || ':' || choice || E'\\n', '' ORDER BY ballot_id), ''), 'UTF8')), 'hex')"
)
VOTERS_DIGEST_SQL = (
    "encode(sha256(convert_to(coalesce(string_agg("
    "vote_hash || E'\\n', '' ORDER BY vote_hash COLLATE \"C\"), ''), 'UTF8')), 'hex')"
)


def ballots_digest(ballots: Iterable[tuple[str, str]]) -> str:
    """The digest of `(ballot_id, choice)` pairs, as `BALLOTS_DIGEST_SQL` computes it."""
    lines = "".join(f"{ballot_id}:{choice}\n" for ballot_id, choice in sorted(ballots))
    return hashlib.sha256(lines.encode()).hexdigest()


def voters_digest(vote_hashes: Iterable[str]) -> str:
    """The digest of voter hashes, as `VOTERS_DIGEST_SQL` computes it."""
    return hashlib.sha256("".join(f"{h}\n" for h in sorted(vote_hashes)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Counted:
    """What one flush batch counted for one law."""

    oui: int
    non: int
    ballots_digest: str


def link_hash(prev_hash: str, law_id: str, seq: int, batch_id: str, counted: Counted) -> str:
    text = (
        f"{prev_hash}\n{law_id}\n{seq}\n{batch_id}\n"
        f"{counted.oui}\n{counted.non}\n{counted.ballots_digest}\n"
    )
    return hashlib.sha256(text.encode()).hexdigest()


def extend(session: Session, *, batch_id: str, per_law: Mapping[str, Counted]) -> None:
    """Add one link per law to the laws' chains. The caller holds the flush lock, so no
    other transaction extends a chain meanwhile."""
    for law_id in sorted(per_law):
        last = session.execute(
            sa.select(ChainLink.seq, ChainLink.link_hash)
            .where(ChainLink.law_id == law_id)
            .order_by(ChainLink.seq.desc())
            .limit(1)
        ).first()
        seq, prev = (last.seq + 1, last.link_hash) if last else (1, GENESIS)
        counted = per_law[law_id]
        session.add(
            ChainLink(
                law_id=law_id,
                seq=seq,
                batch_id=batch_id,
                oui=counted.oui,
                non=counted.non,
                ballots_digest=counted.ballots_digest,
                prev_hash=prev,
                link_hash=link_hash(prev, law_id, seq, batch_id, counted),
            )
        )
    session.flush()


def head(session: Session, law_id: str) -> str:
    """The hash of the law's last link (64 zeros while nothing is counted)."""
    last = session.scalar(
        sa.select(ChainLink.link_hash)
        .where(ChainLink.law_id == law_id)
        .order_by(ChainLink.seq.desc())
        .limit(1)
    )
    return last or GENESIS


def heads(session: Session) -> list[ChainLink]:
    """Each law's last link, by law: the checkpoints to publish during the vote."""
    return list(
        session.scalars(
            sa.select(ChainLink)
            .distinct(ChainLink.law_id)
            .order_by(ChainLink.law_id, ChainLink.seq.desc())
        )
    )
