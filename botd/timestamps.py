"""RFC 3339 UTC timestamps: the one formatter of wall-clock times for display.

Timing never reads the wall clock (Trio's clock does that); these only turn a moment into
text for the protocol, the status page and the log lines.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

__all__ = ["rfc3339", "rfc3339_of"]

Precision = Literal["milliseconds", "microseconds"]


def rfc3339_of(moment: datetime, timespec: Precision = "milliseconds") -> str:
    """Format ``moment`` as RFC 3339 in UTC with a ``Z``; a naive moment is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def rfc3339(wall: float, timespec: Precision = "milliseconds") -> str:
    """Format a wall-clock time (seconds since the epoch) as RFC 3339 UTC."""
    return rfc3339_of(datetime.fromtimestamp(wall, UTC), timespec)
