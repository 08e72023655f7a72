"""What a scenario's row says: its counts, what went wrong, and the campaign's table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.table import Table


@dataclass(slots=True)
class Row:
    """One scenario's outcome, as the table prints it."""

    scenario: str
    published: int = 0
    resent: int = 0
    accepted: int = 0  # voters on the roll who voted: each must have one vote counted
    audited: int = 0
    tallied: int = 0
    duplicates: int = 0
    expected_duplicates: int = 0
    invalid: int = 0
    expected_invalid: int = 0
    lost: int = 0
    counted_twice: int = 0
    wrongly_refused: int = 0  # duplicate or invalid verdicts for votes that were neither
    wrongly_accepted: int = 0  # unknown hashes in the audit log
    dead: int = 0
    drained: bool = False
    drain_seconds: float = 0.0
    seconds: float = 0.0
    evidence: dict[str, float] = field(default_factory=dict)  # proof the fault happened
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = [
            f"{count} {what}"
            for count, what in (
                (self.lost, "lost"),
                (self.counted_twice, "counted twice"),
                (self.wrongly_refused, "wrongly refused"),
                (self.wrongly_accepted, "wrongly accepted"),
                (self.dead, "in votes.dead"),
            )
            if count
        ]
        if not self.drained:
            found.append(f"not drained after {self.drain_seconds:.0f}s")
        return found + self.notes

    @property
    def ok(self) -> bool:
        return not self.problems()


def table(rows: Sequence[Row]) -> Table:
    result = Table(title="Fault campaign")
    headers = (
        "scenario", "published", "resent", "accepted", "audited", "tallied", "duplicates",
        "invalid", "lost", "counted twice", "wrongly refused", "dead", "drain s", "result",
    )  # fmt: skip
    for header in headers:
        left = header in ("scenario", "result")
        result.add_column(header, justify="left" if left else "right", no_wrap=left)
    for row in rows:
        result.add_row(
            row.scenario,
            f"{row.published:,}",
            f"{row.resent:,}",
            f"{row.accepted:,}",
            f"{row.audited:,}",
            f"{row.tallied:,}",
            f"{row.duplicates:,}",
            f"{row.invalid:,}",
            f"{row.lost:,}",
            f"{row.counted_twice:,}",
            f"{row.wrongly_refused:,}",
            f"{row.dead:,}",
            f"{row.drain_seconds:.1f}",
            "ok" if row.ok else "[red]FAIL[/red]",
        )
    return result
