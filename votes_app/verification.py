"""`votes verify`: a law's count recomputed from its recorded votes and its hash chain.

Every check reads the data as it is, with whichever role: it finds what was done by a role
that may write anything (the owner's), as long as the chain's head or the certification was
published outside the system (docs/AUDIT.md says which checkpoints). The checks, per law:

1. the chain: links numbered 1, 2, ... each naming the previous link's hash, each hash
   recomputed from its fields;
2. each link against the ballots its batch marked for the law: same counts, same digest; no
   counted ballot outside a link;
3. `vote_results` against the sum of the links;
4. as many voters (`vote_audit`) as ballots, and every voter on the law's roll;
5. for a certified law, the certification against the figures recomputed now;
6. the chain against checkpoints published outside the system: it must pass through each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from votes_app import chain, laws
from votes_app.models import Certification, ChainLink, VoteAudit, VoteResult

# Which of these hashes are on the law's roll, in order; None when the roll is not there.
RollCheck = Callable[[str, Sequence[str]], list[bool] | None]
ROLL_CHUNK = 10_000


def _chain_problems(links: Sequence[ChainLink]) -> list[str]:
    problems = []
    prev = chain.GENESIS
    for expected_seq, link in enumerate(links, start=1):
        counted = chain.Counted(link.oui, link.non, link.ballots_digest)
        if link.seq != expected_seq:
            problems.append(f"chain: link {expected_seq} is missing (found {link.seq})")
        if link.prev_hash != prev:
            problems.append(f"chain: link {link.seq} does not follow link {link.seq - 1}")
        if link.link_hash != chain.link_hash(
            link.prev_hash, link.law_id, link.seq, link.batch_id, counted
        ):
            problems.append(f"chain: link {link.seq} was rewritten (its hash does not match)")
        prev = link.link_hash
    return problems


def _batch_problems(session: Session, law_id: str, links: Sequence[ChainLink]) -> list[str]:
    rows = session.execute(
        sa.text(
            "SELECT tally_batch, count(*) FILTER (WHERE choice = 'oui') AS oui,"
            " count(*) FILTER (WHERE choice = 'non') AS non,"
            f" {chain.BALLOTS_DIGEST_SQL} AS digest"
            " FROM ballots WHERE law_id = :law_id AND tally_batch IS NOT NULL"
            " GROUP BY tally_batch"
        ),
        {"law_id": law_id},
    )
    marked = {row.tally_batch: chain.Counted(row.oui, row.non, row.digest) for row in rows}
    problems = []
    for link in links:
        found = marked.pop(link.batch_id, chain.Counted(0, 0, chain.ballots_digest([])))
        if (found.oui, found.non) != (link.oui, link.non):
            problems.append(
                f"ballots: batch of link {link.seq} holds {found.oui} oui / {found.non} non,"
                f" its link says {link.oui} / {link.non}"
            )
        elif found.ballots_digest != link.ballots_digest:
            problems.append(f"ballots: batch of link {link.seq} does not match its digest")
    if marked:
        counted = sum(c.oui + c.non for c in marked.values())
        problems.append(f"ballots: {counted:,} counted ballots belong to no link of the chain")
    return problems


def _tally_problems(session: Session, law_id: str, links: Sequence[ChainLink]) -> list[str]:
    tallied = session.get(VoteResult, law_id)
    counts = (tallied.oui_count, tallied.non_count) if tallied else (0, 0)
    chained = (sum(link.oui for link in links), sum(link.non for link in links))
    if counts != chained:
        return [f"tallies: vote_results holds {counts[0]} oui / {counts[1]} non, the chain"
                f" {chained[0]} / {chained[1]}"]  # fmt: skip
    return []


def _voter_problems(session: Session, law_id: str, roll_check: RollCheck | None) -> list[str]:
    problems = []
    final = laws.final_figures(session=session, law_id=law_id)
    if final.voters != final.oui + final.non:
        problems.append(f"voters: {final.voters:,} voters for {final.oui + final.non:,} ballots")
    if roll_check is None:
        return problems
    hashes = list(session.scalars(sa.select(VoteAudit.vote_hash).where(VoteAudit.law_id == law_id)))
    off_roll = 0
    for start in range(0, len(hashes), ROLL_CHUNK):
        chunk = hashes[start : start + ROLL_CHUNK]
        on_roll = roll_check(law_id, chunk)
        if on_roll is None:
            return [*problems, "roll: the law's voter roll is not loaded: cannot check voters"]
        off_roll += on_roll.count(False)
    if off_roll:
        problems.append(f"roll: {off_roll:,} voters are not on the law's roll")
    return problems


def _certification_problems(session: Session, law: laws.Registered) -> list[str]:
    certified = session.get(Certification, law.law_id)
    if law.state != "certified":
        return (
            ["certification: a certification is recorded for a law not certified"]
            if (certified)
            else []
        )
    if certified is None:
        return ["certification: the law is certified but no certification is recorded"]
    final = laws.final_figures(session=session, law_id=law.law_id)
    recorded = (
        certified.oui_count,
        certified.non_count,
        certified.voters,
        certified.ballots_digest,
        certified.voters_digest,
        certified.chain_head,
    )
    now = (final.oui, final.non, final.voters, final.ballots_digest, final.voters_digest,
           final.chain_head)  # fmt: skip
    names = ("oui", "non", "voters", "ballots digest", "voters digest", "chain head")
    return [
        f"certification: {name} differs from the certified one"
        for name, then, today in zip(names, recorded, now, strict=True)
        if then != today
    ]


def _checkpoint_problems(links: Sequence[ChainLink], checkpoints: Sequence[str]) -> list[str]:
    # Each link's hash covers every link before it: a chain that still passes through a
    # published link hash has kept every link up to it.
    hashes = {link.link_hash for link in links}
    return [
        f"chain: does not pass through the published checkpoint {checkpoint}"
        for checkpoint in checkpoints
        if checkpoint not in hashes
    ]


def verify_law(
    *,
    session: Session,
    law: laws.Registered,
    roll_check: RollCheck | None,
    checkpoints: Sequence[str] = (),
) -> list[str]:
    """What is wrong with the law's count; [] when everything recomputes."""
    links = list(
        session.scalars(
            sa.select(ChainLink).where(ChainLink.law_id == law.law_id).order_by(ChainLink.seq)
        )
    )
    return [
        *_chain_problems(links),
        *_batch_problems(session, law.law_id, links),
        *_tally_problems(session, law.law_id, links),
        *_voter_problems(session, law.law_id, roll_check),
        *_certification_problems(session, law),
        *_checkpoint_problems(links, checkpoints),
    ]
