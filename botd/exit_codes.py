"""Process exit codes of ``botd run`` (sysexits.h values), documented in docs/operations.md."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    OK = 0  # a clean stop (signal, drain complete)
    FAILURE = 1  # a generic failure of a one-shot command (e.g. `botd status`: not ready)
    UNAVAILABLE = 69  # EX_UNAVAILABLE: the server stayed unreachable for MAX_STARTUP_ATTEMPTS
    SOFTWARE = 70  # EX_SOFTWARE: an internal error (a bug); the supervisor restarts the bot
    CONFIG = 78  # EX_CONFIG: bad configuration, an unusable state dir, or a rejected token
