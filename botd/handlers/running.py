"""Running one job: :func:`run_job` calls a handler under the job's timeout; :func:`kinds_of`
tells which job kinds a handler takes.

It returns a :class:`JobOutcome` (``succeeded`` with a JSON result, or ``failed`` with the
FailureInfo of :func:`~botd.handlers.failures.classify_failure`); it never swallows an outer
cancellation (shutdown or a server cancel), so the caller decides how such a job is acked.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Protocol

import attrs
import trio

from ..errors import PermanentError
from ..models import Ack, ClaimedJob, FailureInfo
from ..outcomes import FAILED, SUCCEEDED
from .failures import classify_failure, timeout_failure

__all__ = ["Handler", "JobOutcome", "effective_timeout", "ensure_json", "kinds_of", "run_job"]


class Handler(Protocol):
    """A job handler: ``await handler(job)`` returns a JSON-able result or raises.

    A handler may have a ``kinds`` attribute, the job kinds it takes (see :func:`kinds_of`).
    """

    async def __call__(self, job: ClaimedJob) -> Any: ...


def kinds_of(handler: Handler) -> tuple[str, ...] | None:
    """The job kinds ``handler`` takes: its ``kinds`` attribute, or None (every kind).

    A bot whose BOT_KINDS is empty claims these: the simulate handler takes only
    ``simulate``, so a default bot never runs (and "succeeds") a real job of another kind.
    """
    kinds = getattr(handler, "kinds", None)
    return None if kinds is None else tuple(kinds)


def ensure_json(result: Any) -> Any:
    """Return ``result`` as plain JSON data; PermanentError when it is not JSON-serializable."""
    try:
        return json.loads(json.dumps(result, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"result is not JSON-serializable: {exc}") from None


@attrs.frozen
class JobOutcome:
    """How one run of a job ended: ``succeeded`` with a result, or ``failed`` with an error."""

    lease_id: str
    job_id: str
    outcome: Literal["succeeded", "failed"]
    result: Any = None
    error: FailureInfo | None = None
    duration_s: float = 0.0

    def to_ack(self) -> Ack:
        """The ack that reports this outcome to the server."""
        return Ack(
            lease_id=self.lease_id, outcome=self.outcome, result=self.result, error=self.error
        )

    @classmethod
    def failed(cls, job: ClaimedJob, error: FailureInfo, *, duration_s: float = 0.0) -> JobOutcome:
        """A failed outcome for ``job``.

        For instance with :func:`~botd.handlers.failures.cancelled_failure` after a cancel.
        """
        return cls(job.lease_id, job.job_id, FAILED, None, error, duration_s)


def effective_timeout(job: ClaimedJob, default: float) -> float:
    """The job's own ``timeout_s`` when it has one, else ``default`` (BOT_JOB_TIMEOUT)."""
    return job.timeout_s if job.timeout_s is not None else default


async def run_job(
    handler: Handler,
    job: ClaimedJob,
    *,
    timeout: float,  # noqa: ASYNC109 -- the default limit; applied as a cancel scope inside
) -> JobOutcome:
    """Run ``handler(job)`` under the job's timeout and return its outcome.

    The limit is ``job.timeout_s`` when set, else ``timeout``; it is a cancel scope, and
    expiry gives a failed outcome of type ``timeout`` (retryable). A handler exception
    becomes a failed outcome via :func:`classify_failure`; a result that is not JSON a
    permanent failure. An outer cancellation (shutdown, server cancel) is NOT caught:
    trio.Cancelled propagates and the caller decides how to ack the job.
    """
    limit = effective_timeout(job, timeout)
    started = trio.current_time()
    result: Any = None
    error: FailureInfo | None = None
    with trio.move_on_after(limit) as scope:
        try:
            result = ensure_json(await handler(job))
        except Exception as exc:
            error = classify_failure(exc)
    duration = trio.current_time() - started
    if scope.cancelled_caught:
        error = timeout_failure(f"job outlived its timeout of {limit:g}s")
    if error is not None:
        return JobOutcome.failed(job, error, duration_s=duration)
    return JobOutcome(job.lease_id, job.job_id, SUCCEEDED, result, None, duration)
