"""How a failed job is reported: the one place that turns an exception into a FailureInfo.

:func:`classify_failure` classifies a handler's exception; :func:`cancelled_failure` and
:func:`timeout_failure` are the failures of a job that was cancelled or outlived its limit.
"""

from __future__ import annotations

import re

from ..errors import JobError, JobTimeout, PermanentError
from ..models import FailureInfo
from ..outcomes import CANCELLED, TIMEOUT

__all__ = ["MESSAGE_CAP", "cancelled_failure", "classify_failure", "timeout_failure"]

MESSAGE_CAP = 2000

_SNAKE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _snake_case(name: str) -> str:
    return _SNAKE.sub("_", name).lower()


def _truncate(text: str, limit: int = MESSAGE_CAP) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _single_leaf(exc: BaseException) -> BaseException:
    """Unwrap exception groups that hold exactly one exception (a nursery's usual shape)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def classify_failure(exc: BaseException) -> FailureInfo:
    """Turn a handler's exception into the FailureInfo that is acked.

    JobTimeout -> ``timeout`` (retryable); PermanentError -> its type, not retryable;
    any other JobError -> its ``type`` and ``retryable``; anything else -> the class name in
    snake_case, retryable. The message is ``str(exc)`` (or the class name) cut to 2000
    characters. An exception group with a single exception is classified by that exception.
    """
    exc = _single_leaf(exc)
    message = _truncate(str(exc) or type(exc).__name__)
    if isinstance(exc, JobTimeout):
        return timeout_failure(message)
    if isinstance(exc, PermanentError):
        return FailureInfo(type=exc.type, message=message, retryable=False)
    if isinstance(exc, JobError):
        return FailureInfo(type=exc.type, message=message, retryable=exc.retryable)
    return FailureInfo(type=_snake_case(type(exc).__name__), message=message, retryable=True)


def timeout_failure(message: str) -> FailureInfo:
    """The FailureInfo for a job that outlived its time limit (type ``timeout``, retryable)."""
    return FailureInfo(type=TIMEOUT, message=_truncate(message), retryable=True)


def cancelled_failure(reason: str = "cancelled by the server") -> FailureInfo:
    """The FailureInfo for a job whose scope was cancelled on purpose (type ``cancelled``)."""
    return FailureInfo(type=CANCELLED, message=_truncate(reason), retryable=False)
