"""RFC 3339 UTC timestamps: the one formatter of wall-clock times for display, and the
parser of the timestamps a client sends (a job's ``run_at``).

Timing never reads the wall clock (Trio's clock does that); these only turn a moment into
text for the protocol, the status page and the log lines, and such text back into a moment.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

__all__ = ["parse_rfc3339", "rfc3339", "rfc3339_of"]

Precision = Literal["milliseconds", "microseconds"]


def rfc3339_of(moment: datetime, timespec: Precision = "milliseconds") -> str:
    """Format ``moment`` as RFC 3339 in UTC with a ``Z``; a naive moment is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def rfc3339(wall: float, timespec: Precision = "milliseconds") -> str:
    """Format a wall-clock time (seconds since the epoch) as RFC 3339 UTC."""
    return rfc3339_of(datetime.fromtimestamp(wall, UTC), timespec)


def parse_rfc3339(text: str) -> float:
    """A wall-clock time (seconds since the epoch) from RFC 3339 text with a time zone, such
    as ``2026-01-31T12:00:00Z`` or ``2026-01-31T13:00:00.5+01:00``.

    Raises ValueError, saying what is expected, for anything else (no time zone included).
    """
    expected = "must be an RFC 3339 timestamp with a time zone, like 2026-01-31T12:00:00Z"
    try:
        moment = datetime.fromisoformat(text.strip())
    except (ValueError, TypeError):
        raise ValueError(f"{expected}; got {text!r}") from None
    if "t" not in text.lower() or moment.tzinfo is None:
        raise ValueError(f"{expected}; got {text!r}")
    return moment.timestamp()
