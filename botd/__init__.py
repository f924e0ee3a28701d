"""botd: a worker daemon on Trio that registers, heartbeats, claims jobs and never loses one."""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    BotdError,
    CircuitOpen,
    ConfigError,
    JobError,
    JobFinished,
    JobNotFound,
    JobNotRetryable,
    JobTimeout,
    PermanentError,
    ProtocolError,
    RequestRejected,
    ServerError,
    ServerUnavailable,
    Unrecoverable,
    WaitTimeout,
)
from .models import JobSubmit, JobView

if TYPE_CHECKING:
    from .jobs_client import AsyncJobsClient, JobsClient

__all__ = [
    "AsyncJobsClient",
    "BotdError",
    "CircuitOpen",
    "ConfigError",
    "JobError",
    "JobFinished",
    "JobNotFound",
    "JobNotRetryable",
    "JobSubmit",
    "JobTimeout",
    "JobView",
    "JobsClient",
    "PermanentError",
    "ProtocolError",
    "RequestRejected",
    "ServerError",
    "ServerUnavailable",
    "Unrecoverable",
    "WaitTimeout",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The jobs clients (and the admin client under them) load on first use: ``botd run``
    # and ``botd server`` never use them, and importing them took ~15-20 ms of every start.
    if name in ("AsyncJobsClient", "JobsClient"):
        from . import jobs_client

        return getattr(jobs_client, name)
    raise AttributeError(f"module 'botd' has no attribute {name!r}")
