"""What votes_app shows of a message anywhere but in the message itself: review samples,
dead-letter previews, the argument reprs of task messages and events, and log text.

None of them may put a voter next to a choice (docs/SECRECY.md). A vote's hash, law and
timestamp are shown as sent: an investigator needs them, and none says what was voted. Every
other field, the choice first, is shown by its shape alone (`<str of 3 characters>`), and a
`citizen_id` not at all. Log text is escaped, so that a producer cannot forge or break a line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

SAMPLE_MAX = 1000
# Positional order of `validate_vote(vote_hash, law_id, choice, timestamp, citizen_id=None)`.
POSITIONAL = ("vote_hash", "law_id", "choice", "timestamp", "citizen_id")
SHOWN_AS_SENT = frozenset({"vote_hash", "law_id", "timestamp"})
LEFT_OUT = frozenset({"citizen_id"})  # the voter's identity: not even its shape


# C0 and C1 controls (newline, carriage return, escape, NUL ...), DEL, the Unicode line
# separators and direction overrides that can break or disguise a line, and unpaired
# surrogates (JSON's "\ud800"), which no UTF-8 file or PostgreSQL text can hold.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def shape(value: Any) -> str:
    """A value by its type and size only."""
    if isinstance(value, str):
        return f"<str of {len(value)} characters>"
    if isinstance(value, Mapping):
        return f"<{type(value).__name__} of {len(value)} keys>"
    if isinstance(value, Sequence):
        return f"<{type(value).__name__} of {len(value)} items>"
    return f"<{type(value).__name__}>"


def argument_reprs(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, str]:
    """A task message's `argsrepr` and `kwargsrepr`: each argument by its shape. Celery copies
    them into the message's headers, and task events, Flower and failure logs show them."""
    return (
        repr(tuple(shape(value) for value in args)),
        repr({str(name): shape(value) for name, value in kwargs.items()}),
    )


def _shown(name: str, value: Any) -> Any:
    return value if name in SHOWN_AS_SENT and isinstance(value, str) else shape(value)


def redacted(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A submission's arguments as they may be shown: see the module docstring."""
    shown: dict[str, Any] = {
        str(name): _shown(str(name), value)
        for name, value in kwargs.items()
        if name not in LEFT_OUT
    }
    if args:
        positional = [
            _shown(name, value)
            for name, value in zip(POSITIONAL, args, strict=False)
            if name not in LEFT_OUT
        ]
        shown["positional"] = positional + (["..."] if len(args) > len(POSITIONAL) - 1 else [])
    return shown


def sample_of(args: Sequence[Any], kwargs: Mapping[str, Any], limit: int = SAMPLE_MAX) -> str:
    """`redacted` as bounded JSON: a review record's sample, a dead letter's preview."""
    text = json.dumps(redacted(args, kwargs), default=repr, ensure_ascii=True, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def escape(text: str) -> str:
    """`text` with its control characters written as escapes (`\\n`, `\\x1b`, ...)."""
    return _CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode(), text)


class EscapeControlCharacters(logging.Filter):
    """Escapes control characters in the message of every record a handler writes: task ids
    and field names come from producers, and one of them must not write a line of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True
