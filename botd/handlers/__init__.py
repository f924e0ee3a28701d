"""Job handlers (``BOT_HANDLER``): ``simulate``, ``exec`` and ``python``, and :func:`run_job`.

A handler is an async callable that takes a :class:`~botd.models.ClaimedJob` and returns a
JSON-able result. It fails by raising:

- :class:`~botd.errors.JobError` (or a subclass with its own ``type``): a retryable failure;
- :class:`~botd.errors.PermanentError`: the job failed and must not be retried;
- anything else: a retryable failure whose type is the exception class in snake_case.

The package, one module a concern:

- :mod:`.failures`: :func:`classify_failure`, the one place that turns an exception into a
  :class:`~botd.models.FailureInfo`, and the failures of a cancelled or timed-out job;
- :mod:`.running`: :func:`run_job` runs a handler under the job's timeout (a cancel scope)
  and returns a :class:`JobOutcome` (a result that can never be acked, too large or not
  JSON, and a job whose ``timeout_s`` is unusable, fail for good: :func:`check_result`); it
  never swallows an outer cancellation (shutdown or a server cancel), so the caller decides
  how such a job is acked. :func:`kinds_of` is the job kinds a handler takes (what a bot
  claims when BOT_KINDS is empty: ``simulate`` for the simulate handler, every kind for the
  others);
- :mod:`.simulate`, :mod:`.exec`, :mod:`.python`: the three handlers;
- :mod:`.process_groups`: the exec command's process group (spawned into a session of its
  own, stopped as a whole) and the records that let a restarted bot reap what a SIGKILLed
  one left (:func:`reap_leftover_groups`);
- :mod:`.factory`: :func:`build_handler`, the handler that ``BOT_HANDLER`` names.

Everything public is imported from here: ``from botd.handlers import run_job``.
"""

from __future__ import annotations

from .exec import DEFAULT_KILL_GRACE, DEFAULT_OUTPUT_CAP, ExecHandler, ExitStatusError, SpawnError
from .factory import HANDLER_NAMES, build_handler
from .failures import cancelled_failure, classify_failure
from .process_groups import GROUPS_DIR, reap_leftover_groups
from .python import PythonHandler
from .running import (
    INVALID_JOB,
    RESULT_NOT_JSON,
    RESULT_TOO_LARGE,
    Handler,
    JobOutcome,
    check_result,
    effective_timeout,
    kinds_of,
    run_job,
)
from .simulate import SimulatedFailure, SimulateHandler, simulated_value

__all__ = [
    "DEFAULT_KILL_GRACE",
    "DEFAULT_OUTPUT_CAP",
    "GROUPS_DIR",
    "HANDLER_NAMES",
    "INVALID_JOB",
    "RESULT_NOT_JSON",
    "RESULT_TOO_LARGE",
    "ExecHandler",
    "ExitStatusError",
    "Handler",
    "JobOutcome",
    "PythonHandler",
    "SimulateHandler",
    "SimulatedFailure",
    "SpawnError",
    "build_handler",
    "cancelled_failure",
    "check_result",
    "classify_failure",
    "effective_timeout",
    "kinds_of",
    "reap_leftover_groups",
    "run_job",
    "simulated_value",
]
