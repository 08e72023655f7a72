"""What the tools do before the votes come: register the laws, load their rolls."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from votes_app import laws
from votes_app.ballot_box import load_rolls
from votes_app.models import Law
from votes_app.resources import get_redis, owner_session_scope

# The tools' laws are open from a little before their votes are made until well after any
# run ends: their votes are stamped with the time they are made.
OPEN_BEFORE = timedelta(hours=1)
OPEN_FOR = timedelta(days=1)


def open_laws(law_ids: Iterable[str], *, now: datetime | None = None) -> None:
    """Register the laws not registered yet, open from an hour ago for a day (as the
    owner's role: the application's may not)."""
    opens = (now or datetime.now(UTC)) - OPEN_BEFORE
    with owner_session_scope() as session:
        for law_id in sorted(set(law_ids)):
            if session.get(Law, law_id) is None:
                laws.register(
                    session=session,
                    law_id=law_id,
                    title=f"Question {law_id}",
                    opens_at=opens,
                    closes_at=opens + OPEN_FOR,
                )


def load_roll(
    entries: Iterable[tuple[str, str]], *, on_progress: Callable[[int], None] | None = None
) -> int:
    """Put each `(law_id, vote_hash)` on its law's roll; the hashes new to their roll."""
    added = 0
    for sent, new in load_rolls(get_redis(), entries):
        added += new
        if on_progress is not None:
            on_progress(sent)
    return added
