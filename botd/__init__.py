"""botd: a worker daemon on Trio that registers, heartbeats, claims jobs and never loses one."""

from ._version import __version__
from .errors import (
    BotdError,
    CircuitOpen,
    ConfigError,
    JobError,
    JobTimeout,
    PermanentError,
    ProtocolError,
    ServerError,
    ServerUnavailable,
    Unrecoverable,
)

__all__ = [
    "BotdError",
    "CircuitOpen",
    "ConfigError",
    "JobError",
    "JobTimeout",
    "PermanentError",
    "ProtocolError",
    "ServerError",
    "ServerUnavailable",
    "Unrecoverable",
    "__version__",
]
