"""What a live server session is, and how a loop says that it has lost it."""

from __future__ import annotations

import attrs

from .errors import BotdError
from .models import SessionHolder

__all__ = ["Session", "SessionLost"]


@attrs.frozen
class Session:
    """One registration: valid until the server answers 404/409 or the bot re-registers."""

    bot_id: str
    session_id: str
    heartbeat_interval_s: float
    lease_ttl_s: float
    server_version: str


class SessionLost(BotdError):
    """Raised by a session loop when the session is gone and the bot must go to ERROR.

    ``holder`` is who holds the bot id now, when the server said (409 session_superseded).
    """

    def __init__(self, message: str, *, holder: SessionHolder | None = None) -> None:
        super().__init__(message)
        self.holder = holder
