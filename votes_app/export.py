"""`votes export`: what an auditor needs to recount and verify a law without the system.

Plain files in one directory (docs/AUDIT.md describes them and recounts from them):

- `ballots.csv`: every ballot of the law, `ballot_id,choice,tally_batch`, by ballot_id;
- `voters.csv`: every voter of the law, `vote_hash`, by hash, in a file of its own: nothing
  pairs a voter with a ballot, here as in the database;
- `chain.csv`: the law's hash chain, `seq,batch_id,oui,non,ballots_digest,prev_hash,link_hash`;
- `law.json`: the law, its figures recomputed now, its certification if any, and the digest
  of its voter roll.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from votes_app import chain, laws
from votes_app.models import Ballot, Certification, ChainLink, VoteAudit

FORMAT = "votes_app export 1"
FILES = ("ballots.csv", "voters.csv", "chain.csv", "law.json")


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    written = 0
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            written += 1
    return written


def export_law(
    *, session: Session, law_id: str, directory: Path, roll: Sequence[str] | None
) -> dict[str, Any]:
    """Write the law's files into `directory` (made if missing); what law.json says.
    `roll` is the law's voter roll, for its digest; None when it is not available."""
    law = laws.get(session=session, law_id=law_id)
    directory.mkdir(parents=True, exist_ok=True)
    ballots = session.execute(
        sa.select(Ballot.ballot_id, Ballot.choice, Ballot.tally_batch)
        .where(Ballot.law_id == law_id)
        .order_by(Ballot.ballot_id)
        .execution_options(yield_per=10_000)
    )
    _write_csv(
        directory / "ballots.csv",
        ("ballot_id", "choice", "tally_batch"),
        ((str(b), c, t or "") for b, c, t in ballots),
    )
    voters = session.scalars(
        sa.select(VoteAudit.vote_hash)
        .where(VoteAudit.law_id == law_id)
        .order_by(VoteAudit.vote_hash.collate("C"))
        .execution_options(yield_per=10_000)
    )
    _write_csv(directory / "voters.csv", ("vote_hash",), ((h,) for h in voters))
    links = session.scalars(
        sa.select(ChainLink).where(ChainLink.law_id == law_id).order_by(ChainLink.seq)
    )
    _write_csv(
        directory / "chain.csv",
        ("seq", "batch_id", "oui", "non", "ballots_digest", "prev_hash", "link_hash"),
        (
            (k.seq, k.batch_id, k.oui, k.non, k.ballots_digest, k.prev_hash, k.link_hash)
            for k in links
        ),
    )
    final = laws.final_figures(session=session, law_id=law_id)
    certified = session.get(Certification, law_id)
    described: dict[str, Any] = {
        "format": FORMAT,
        "exported_at": datetime.now(UTC).isoformat(),
        "law": {
            "law_id": law.law_id,
            "title": law.title,
            "opens_at": law.opens_at.isoformat(),
            "closes_at": law.closes_at.isoformat(),
            "state": law.state_at(datetime.now(UTC)),
        },
        "figures": {
            "oui": final.oui,
            "non": final.non,
            "voters": final.voters,
            "ballots_digest": final.ballots_digest,
            "voters_digest": final.voters_digest,
            "chain_head": final.chain_head,
        },
        "certification": None
        if certified is None
        else {
            "oui": certified.oui_count,
            "non": certified.non_count,
            "voters": certified.voters,
            "ballots_digest": certified.ballots_digest,
            "voters_digest": certified.voters_digest,
            "chain_head": certified.chain_head,
            "certified_at": certified.certified_at.isoformat(),
        },
        "roll": None if roll is None else {"size": len(roll), "digest": chain.voters_digest(roll)},
    }
    (directory / "law.json").write_text(json.dumps(described, indent=2) + "\n", encoding="utf-8")
    return described
