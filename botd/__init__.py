"""botd: a worker daemon on Trio that registers, heartbeats, claims jobs and never loses one."""

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
from .jobs_client import AsyncJobsClient, JobsClient
from .models import JobSubmit, JobView

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
