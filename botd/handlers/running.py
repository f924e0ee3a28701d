"""Running one job: :func:`run_job` calls a handler under the job's timeout; :func:`kinds_of`
tells which job kinds a handler takes.

It returns a :class:`JobOutcome` (``succeeded`` with a JSON result, or ``failed`` with the
FailureInfo of :func:`~botd.handlers.failures.classify_failure`); it never swallows an outer
cancellation (shutdown or a server cancel), so the caller decides how such a job is acked.

A result that can never be delivered fails its job for good (``retryable: false``) before it
is acked, so the ack carries only the small error: :func:`check_result` makes a result over
``BOT_RESULT_MAX_BYTES`` (its compact JSON, as the ack sends it) ``result_too_large``, and one
that is not JSON (NaN, Infinity, a set, a cycle, nested past the encoder) ``result_not_json``.
A job whose ``timeout_s`` is not a finite number > 0 (what a broken server may hand out) is
``invalid_job`` without running.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any, Literal, Protocol

import attrs
import trio

from ..models import Ack, ClaimedJob, FailureInfo
from ..outcomes import FAILED, SUCCEEDED
from .failures import classify_failure, timeout_failure

__all__ = [
    "INVALID_JOB",
    "RESULT_NOT_JSON",
    "RESULT_TOO_LARGE",
    "Handler",
    "JobOutcome",
    "check_result",
    "effective_timeout",
    "kinds_of",
    "run_job",
    "timeout_problem",
]

#: The failure types of a job whose result, or whose claim, can never be used (permanent).
RESULT_TOO_LARGE = "result_too_large"
RESULT_NOT_JSON = "result_not_json"
INVALID_JOB = "invalid_job"


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


def check_result(result: Any, max_bytes: int | None) -> tuple[Any, FailureInfo | None, int]:
    """``(plain JSON data, None, size)`` for a result that can be acked, else ``(None,
    failure, 0)``; ``size`` is its bytes in the ack.

    The result is encoded once, compact and ASCII like the ack's body (so its length is its
    size in bytes), and decoded back into plain JSON data (tuples become lists). Over
    ``max_bytes`` (None: no limit) it is ``result_too_large``, naming both sizes; not JSON, or
    NaN/Infinity, it is ``result_not_json``. Both are permanent: another run would not help.
    """
    try:
        text = json.dumps(result, allow_nan=False, separators=(",", ":"), check_circular=True)
    except (TypeError, ValueError, RecursionError) as exc:
        problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        message = f"result is not JSON-serializable: {problem}"
        return None, FailureInfo(type=RESULT_NOT_JSON, message=message, retryable=False), 0
    if max_bytes is not None and len(text) > max_bytes:
        message = (
            f"the result is {len(text)} bytes of JSON, over BOT_RESULT_MAX_BYTES={max_bytes};"
            " return less (put a large output somewhere else and return its location)"
        )
        return None, FailureInfo(type=RESULT_TOO_LARGE, message=message, retryable=False), 0
    try:
        return json.loads(text), None, len(text)
    except RecursionError:
        message = "result is not JSON-serializable: nested too deeply"
        return None, FailureInfo(type=RESULT_NOT_JSON, message=message, retryable=False), 0


def timeout_problem(job: ClaimedJob) -> str | None:
    """What is wrong with the job's ``timeout_s`` (from the server), or None."""
    value = job.timeout_s
    if value is None or (math.isfinite(value) and value > 0):
        return None
    return f"the server handed out the job with timeout_s {value!r}: it must be a finite number > 0"


@attrs.frozen
class JobOutcome:
    """How one run of a job ended: ``succeeded`` with a result, or ``failed`` with an error."""

    lease_id: str
    job_id: str
    outcome: Literal["succeeded", "failed"]
    result: Any = None
    error: FailureInfo | None = None
    duration_s: float = 0.0
    #: The result's bytes of JSON in the ack (0: none, or not measured).
    result_bytes: int = attrs.field(default=0, eq=False)

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
    result_max_bytes: int | None = None,
    scope: trio.CancelScope | None = None,
) -> JobOutcome:
    """Run ``handler(job)`` under the job's timeout and return its outcome.

    The limit is ``job.timeout_s`` when set, else ``timeout``; it is a cancel scope, and
    expiry gives a failed outcome of type ``timeout`` (retryable). A handler exception
    becomes a failed outcome via :func:`classify_failure`; a result that cannot be acked
    (:func:`check_result`, ``result_max_bytes``) a permanent failure, and so is a
    ``timeout_s`` that is not a finite number > 0 (``invalid_job``, the handler not called).
    An outer cancellation (shutdown, server cancel) is NOT caught: trio.Cancelled propagates
    and the caller decides how to ack the job.

    ``scope``: the caller's own cancel scope for this job, not yet entered (one scope per
    job instead of two: the runner's). run_job enters it around the handler and gives it the
    job's deadline. A cancel of it by the caller is then caught in it: run_job returns, and
    ``scope.cancelled_caught`` tells the caller that its cancel, not the handler, ended
    the job (the outcome returned is then not the job's: the caller acks as it decided).
    """
    problem = timeout_problem(job)
    if problem is not None:
        with scope if scope is not None else contextlib.nullcontext():
            await trio.lowlevel.checkpoint()
        failure = FailureInfo(type=INVALID_JOB, message=problem, retryable=False)
        return JobOutcome.failed(job, failure)
    limit = effective_timeout(job, timeout)
    started = trio.current_time()
    result: Any = None
    error: FailureInfo | None = None
    size = 0
    if scope is None:
        scope = trio.move_on_after(limit)
    else:
        scope.deadline = started + limit
    with scope:
        try:
            raw = await handler(job)
        except Exception as exc:
            error = classify_failure(exc)
        else:
            result, error, size = check_result(raw, result_max_bytes)
    duration = trio.current_time() - started
    if scope.cancelled_caught:
        error = timeout_failure(f"job outlived its timeout of {limit:g}s")
    if error is not None:
        return JobOutcome.failed(job, error, duration_s=duration)
    return JobOutcome(job.lease_id, job.job_id, SUCCEEDED, result, None, duration, size)
