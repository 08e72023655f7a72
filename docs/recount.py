"""Recount and verify a law from its export (`votes export LAW DIR`), with Python alone.

    python docs/recount.py DIR [ROLL]

DIR is the export; ROLL, if given, is the law's voter roll as its issuer published it (one
hash per line): every voter must be on it. Prints the recount and each check; exits 1 if
anything does not match. The formats are in docs/AUDIT.md.
"""

import argparse
import csv
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path


def sha256_of_lines(lines):
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()


def ballots_digest(ballots):
    return sha256_of_lines(sorted(f"{ballot_id}:{choice}" for ballot_id, choice in ballots))


def link_hash(link):
    fields = ("prev_hash", "law_id", "seq", "batch_id", "oui", "non", "ballots_digest")
    return sha256_of_lines(str(link[field]) for field in fields)


def main(directory, roll_file=None):
    export = Path(directory)
    law = json.loads((export / "law.json").read_text())
    law_id = law["law"]["law_id"]
    with (export / "ballots.csv").open() as f:
        ballots = list(csv.DictReader(f))
    with (export / "voters.csv").open() as f:
        voters = [row["vote_hash"] for row in csv.DictReader(f)]
    with (export / "chain.csv").open() as f:
        links = list(csv.DictReader(f))

    counted = Counter(b["choice"] for b in ballots)
    print(f"{law_id}: {counted['oui']} oui, {counted['non']} non, {len(voters)} voters")

    checks = {}
    checks["as many voters as ballots"] = len(voters) == len(ballots)
    checks["every ballot counted by a flush"] = all(b["tally_batch"] for b in ballots)

    # The chain: each link follows the one before, and its hash is its fields' hash.
    prev, chain_ok = "0" * 64, True
    for seq, link in enumerate(links, start=1):
        link = {**link, "law_id": law_id}
        chain_ok &= int(link["seq"]) == seq and link["prev_hash"] == prev
        chain_ok &= link_hash(link) == link["link_hash"]
        prev = link["link_hash"]
    checks["the chain links up"] = chain_ok

    # Each link holds exactly the ballots of its flush batch.
    batches = {}
    for b in ballots:
        batches.setdefault(b["tally_batch"], []).append((b["ballot_id"], b["choice"]))
    linked = {
        link["batch_id"]: (int(link["oui"]), int(link["non"]), link["ballots_digest"])
        for link in links
    }
    recomputed = {
        batch: (
            sum(c == "oui" for _, c in held),
            sum(c == "non" for _, c in held),
            ballots_digest(held),
        )
        for batch, held in batches.items()
    }
    checks["each link holds its batch's ballots"] = linked == recomputed

    figures = {
        "oui": counted["oui"],
        "non": counted["non"],
        "voters": len(voters),
        "ballots_digest": ballots_digest((b["ballot_id"], b["choice"]) for b in ballots),
        "voters_digest": sha256_of_lines(sorted(voters)),
        "chain_head": prev,
    }
    checks["the export's figures recompute"] = figures == law["figures"]
    certified = law["certification"]
    if certified is not None:
        checks["the certification recomputes"] = all(
            certified[name] == value for name, value in figures.items()
        )
    if roll_file is not None:
        roll = {line.strip().lower() for line in Path(roll_file).read_text().split()}
        checks["every voter is on the roll"] = set(voters) <= roll
        if law["roll"] is not None:
            checks["the roll is the one exported"] = (
                sha256_of_lines(sorted(roll)) == (law["roll"]["digest"])
            )

    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(f"chain head {prev}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Recount and verify a law from its export.")
    parser.add_argument("directory", help="what `votes export LAW DIR` wrote")
    parser.add_argument("roll", nargs="?", help="the law's voter roll, one hash per line")
    arguments = parser.parse_args()
    if not (Path(arguments.directory) / "law.json").is_file():
        parser.error(f"{arguments.directory} holds no law.json: not an export")
    sys.exit(main(arguments.directory, arguments.roll))
