"""Job handlers (``BOT_HANDLER``): ``simulate``, ``exec`` and ``python``, and :func:`run_job`.

A handler is an async callable that takes a :class:`~botd.models.ClaimedJob` and returns a
JSON-able result. It fails by raising:

- :class:`~botd.errors.JobError` (or a subclass with its own ``type``): a retryable failure;
- :class:`~botd.errors.PermanentError`: the job failed and must not be retried;
- anything else: a retryable failure whose type is the exception class in snake_case.

:func:`classify_failure` is the one place that turns an exception into a
:class:`~botd.models.FailureInfo`. :func:`run_job` runs a handler under the job's timeout
(a cancel scope) and returns a :class:`JobOutcome`; it never swallows an outer cancellation
(shutdown or a server cancel), so the caller decides how such a job is acked.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs
import trio
from loguru import logger

from . import codec
from .errors import ConfigError, JobError, JobTimeout, PermanentError
from .models import Ack, ClaimedJob, FailureInfo

__all__ = [
    "DEFAULT_KILL_GRACE",
    "DEFAULT_OUTPUT_CAP",
    "HANDLER_NAMES",
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
    "classify_failure",
    "effective_timeout",
    "reap_leftover_groups",
    "run_job",
]

HANDLER_NAMES: tuple[str, ...] = ("simulate", "exec", "python")
DEFAULT_KILL_GRACE = 5.0
DEFAULT_OUTPUT_CAP = 64 * 1024
STDERR_TAIL = 2048
MESSAGE_CAP = 2000
# After SIGKILL, how long the (shielded) reaping may take before we give up and log.
REAP_DEADLINE = 5.0
# After the command's group is gone, how long the pipe readers get to see EOF.
READ_GRACE = 1.0
GROUP_POLL_INTERVAL = 0.02
# Under BOT_STATE_DIR: one record per running exec job (file name: the pgid; text: the lease).
GROUPS_DIR = "exec-groups"


class Handler(Protocol):
    """A job handler: ``await handler(job)`` returns a JSON-able result or raises."""

    async def __call__(self, job: ClaimedJob) -> Any: ...


# --- failures ---------------------------------------------------------------------------


class SimulatedFailure(JobError):
    """Raised by the simulate handler when a job fails on purpose (retryable)."""

    type = "simulated_failure"


class ExitStatusError(JobError):
    """Raised by the exec handler when the command exits non-zero (retryable).

    ``returncode`` is the exit status (negative: killed by that signal); ``stderr_tail``
    is the last ~2 KiB of its standard error.
    """

    type = "exit_status"

    def __init__(self, returncode: int, stderr_tail: str) -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        if returncode < 0:
            try:
                how = f"was killed by signal {signal.Signals(-returncode).name}"
            except ValueError:
                how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with status {returncode}"
        tail = stderr_tail.strip()
        super().__init__(f"command {how}" + (f"; stderr: {tail}" if tail else ""))


class SpawnError(JobError):
    """Raised by the exec handler when the command cannot be started (retryable)."""

    type = "spawn_failed"


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
        return FailureInfo(type="timeout", message=message, retryable=True)
    if isinstance(exc, PermanentError):
        return FailureInfo(type=exc.type, message=message, retryable=False)
    if isinstance(exc, JobError):
        return FailureInfo(type=exc.type, message=message, retryable=exc.retryable)
    return FailureInfo(type=_snake_case(type(exc).__name__), message=message, retryable=True)


def cancelled_failure(reason: str = "cancelled by the server") -> FailureInfo:
    """The FailureInfo for a job whose scope was cancelled on purpose (type ``cancelled``)."""
    return FailureInfo(type="cancelled", message=_truncate(reason), retryable=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _ensure_json(result: Any) -> Any:
    """Return ``result`` as plain JSON data; PermanentError when it is not JSON-serializable."""
    try:
        return json.loads(json.dumps(result, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"result is not JSON-serializable: {exc}") from None


# --- simulate ---------------------------------------------------------------------------


def _canonical_json(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def simulated_value(payload: Any) -> int:
    """The seed's deterministic result: sha256 of the canonical JSON payload, mod 1000."""
    return int.from_bytes(hashlib.sha256(_canonical_json(payload)).digest(), "big") % 1000


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class SimulateHandler:
    """The seed's simulated job: sleep, maybe fail, return a result derived from the payload.

    Sleeps ``duration_ms`` on Trio's clock, then fails with probability ``failure_rate``
    (SimulatedFailure, type ``simulated_failure``), else returns ``{"value": N}`` where N is
    :func:`simulated_value` of the payload. A dict payload may steer one job:
    ``{"duration_ms": N}`` overrides the sleep, ``{"permanent": true}`` raises PermanentError,
    ``{"fail": true}`` always fails, ``{"fail_times": K}`` fails while ``job.attempt <= K``.
    Ends when the sleep ends; a cancel ends it early (Cancelled propagates).
    """

    def __init__(
        self, duration_ms: float, failure_rate: float, *, rng: random.Random | None = None
    ) -> None:
        if duration_ms < 0:
            raise ValueError(f"duration_ms must be >= 0, got {duration_ms!r}")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be within [0, 1], got {failure_rate!r}")
        self.duration_ms = duration_ms
        self.failure_rate = failure_rate
        self._rng = rng if rng is not None else random.Random()

    async def __call__(self, job: ClaimedJob) -> Any:
        payload = job.payload
        steer: dict[str, Any] = payload if isinstance(payload, dict) else {}
        duration_ms = _number(steer.get("duration_ms"))
        if duration_ms is None or duration_ms < 0:
            duration_ms = self.duration_ms
        await trio.sleep(duration_ms / 1000.0)
        if steer.get("permanent") is True:
            raise PermanentError("simulated permanent failure")
        if steer.get("fail") is True:
            raise SimulatedFailure("simulated failure (payload asked for it)")
        fail_times = steer.get("fail_times")
        if isinstance(fail_times, int) and not isinstance(fail_times, bool):
            if job.attempt <= fail_times:
                raise SimulatedFailure(
                    f"simulated failure on attempt {job.attempt} of {fail_times} failing"
                )
        elif self.failure_rate > 0 and self._rng.random() < self.failure_rate:
            raise SimulatedFailure(f"simulated failure (FAILURE_RATE={self.failure_rate:g})")
        return {"value": simulated_value(payload)}


# --- exec -------------------------------------------------------------------------------


def _live_members(pgid: int) -> list[int]:
    """Pids of the group's members that are not zombies, from /proc ([] without /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def reap_leftover_groups(groups_dir: Path) -> int:
    """SIGKILL what exec jobs of an earlier run left running; returns how many processes.

    A bot that is SIGKILLed cannot stop its exec jobs: they run in sessions of their own,
    so nothing else stops them either (supervisord's ``stopasgroup`` reaches only the bot's
    group). Each running job leaves a record ``<groups_dir>/<pgid>`` holding its lease id; a
    process of that group whose environment still has ``BOTD_LEASE_ID=<lease>`` is one of
    them (a reused pid does not match) and is killed. The server gives the job to a bot
    again, so the orphan would only duplicate the work. Blocking: call it through
    ``trio.to_thread`` with the state dir locked. Records that cannot be read are removed.
    """
    groups_dir.mkdir(parents=True, exist_ok=True)
    killed = 0
    for record in groups_dir.iterdir():
        try:
            pgid = int(record.name)
            marker = b"BOTD_LEASE_ID=" + record.read_bytes().strip()
        except (ValueError, OSError):
            pgid, marker = 0, b""
        for pid in _live_members(pgid) if pgid > 1 and marker else ():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        with contextlib.suppress(OSError):
            record.unlink()
    return killed


def _group_alive(pgid: int) -> bool:
    """True while the process group has a member that is not a zombie.

    Zombies are ignored: an orphan's zombie waits on its new parent (often a PID 1 that
    never reaps), and it holds no resources but a pid.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path("/proc").is_dir() or bool(_live_members(pgid))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


async def _wait_group_gone(process: trio.Process) -> None:
    await process.wait()
    # No event tells us when the last member of a group is gone: poll /proc.
    while _group_alive(process.pid):  # noqa: ASYNC110
        await trio.sleep(GROUP_POLL_INTERVAL)


class _Capture:
    """Collects a stream: the first ``cap`` bytes and the last ``cap`` bytes."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        while chunk := await stream.receive_some(65536):
            self.total += len(chunk)
            if len(self.head) < self.cap:
                self.head += chunk[: self.cap - len(self.head)]
            self.tail += chunk
            if len(self.tail) > self.cap:
                del self.tail[: len(self.tail) - self.cap]

    def last_line(self) -> bytes:
        lines = [line for line in bytes(self.tail).splitlines() if line.strip()]
        return lines[-1] if lines else b""


class ExecHandler:
    """Runs a command once per job: the job's JSON on stdin, the result from stdout.

    The child starts in a new session (its own process group) with the parent's
    environment plus ``BOTD_JOB_ID``, ``BOTD_LEASE_ID`` and ``BOTD_ATTEMPT``. With
    ``shell=True`` the argv is joined with spaces and run by ``sh -c``.

    Result: the last non-empty line of stdout if it parses as JSON; otherwise stdout itself
    as a string (its first ``output_cap`` bytes). A non-zero exit raises ExitStatusError
    (type ``exit_status``, retryable) with the exit code and the stderr tail; a failure to
    start raises SpawnError (type ``spawn_failed``, retryable).

    Process handling: ends when the command exits; anything it left running in its group is
    then stopped. On cancellation (job timeout, server cancel, shutdown) the whole group gets
    SIGTERM, then SIGKILL after ``kill_grace`` seconds on Trio's clock, and is reaped inside
    a shielded scope with its own deadline; the Cancelled then propagates. No process of the
    group outlives the call.

    With ``groups_dir``, each running job is recorded there (see
    :func:`reap_leftover_groups`), so that a restarted bot stops what a SIGKILLed one left.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        shell: bool = False,
        kill_grace: float = DEFAULT_KILL_GRACE,
        output_cap: int = DEFAULT_OUTPUT_CAP,
        groups_dir: Path | None = None,
    ) -> None:
        if not argv or not all(isinstance(a, str) for a in argv) or not argv[0]:
            raise ConfigError(
                "BOT_EXEC_COMMAND: the exec handler needs a command; set BOT_EXEC_COMMAND "
                "to the program and its arguments"
            )
        if not shell and shutil.which(argv[0]) is None:
            raise ConfigError(
                f"BOT_EXEC_COMMAND: {argv[0]!r} is not an executable on PATH; give its full "
                "path, or set BOT_EXEC_SHELL=true to run the command through sh -c"
            )
        if kill_grace < 0:
            raise ValueError(f"kill_grace must be >= 0, got {kill_grace!r}")
        if output_cap < 1:
            raise ValueError(f"output_cap must be >= 1, got {output_cap!r}")
        self.argv = list(argv)
        self.shell = shell
        self.kill_grace = kill_grace
        self.output_cap = output_cap
        self.groups_dir = groups_dir

    async def __call__(self, job: ClaimedJob) -> Any:
        env = dict(os.environ)
        env.update(
            BOTD_JOB_ID=job.job_id, BOTD_LEASE_ID=job.lease_id, BOTD_ATTEMPT=str(job.attempt)
        )
        pipes: dict[str, Any] = {
            "stdin": subprocess.PIPE,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
            "env": env,
            "start_new_session": True,
        }
        try:
            if self.shell:
                process = await trio.lowlevel.open_process(" ".join(self.argv), shell=True, **pipes)
            else:
                process = await trio.lowlevel.open_process(self.argv, **pipes)
        except OSError as exc:
            raise SpawnError(f"cannot start {self.argv[0]!r}: {exc}") from None

        stdout = _Capture(self.output_cap)
        stderr = _Capture(STDERR_TAIL)
        record = None if self.groups_dir is None else self.groups_dir / str(process.pid)
        try:
            if record is not None:
                await trio.to_thread.run_sync(_write_record, record, job.lease_id)
            async with trio.open_nursery() as nursery:
                assert process.stdin is not None
                assert process.stdout is not None
                assert process.stderr is not None
                nursery.start_soon(_feed, process.stdin, codec.dumps(job) + b"\n")
                nursery.start_soon(stdout.drain, process.stdout)
                nursery.start_soon(stderr.drain, process.stderr)
                await process.wait()
                if _group_alive(process.pid):
                    logger.warning(
                        "exec job {}: the command left processes behind; stopping them",
                        job.job_id,
                    )
                    await self._stop(process)
                # A process that left the group may still hold a pipe open: bound the reads.
                nursery.cancel_scope.deadline = trio.current_time() + READ_GRACE
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(process)
                for stream in (process.stdin, process.stdout, process.stderr):
                    if stream is not None:
                        await stream.aclose()
                if record is not None:
                    await trio.to_thread.run_sync(_remove_record, record)

        returncode = process.returncode
        assert returncode is not None
        if returncode != 0:
            tail = bytes(stderr.tail).decode("utf-8", "replace")
            raise ExitStatusError(returncode, tail)
        return _exec_result(stdout)

    async def _stop(self, process: trio.Process) -> None:
        """SIGTERM the group, SIGKILL it after ``kill_grace``, and wait until it is gone."""
        if process.poll() is not None and not _group_alive(process.pid):
            return
        _signal_group(process.pid, signal.SIGTERM)
        with trio.move_on_after(self.kill_grace):
            await _wait_group_gone(process)
            return
        logger.warning(
            "exec: process group {} outlived SIGTERM by {:g}s; sending SIGKILL",
            process.pid,
            self.kill_grace,
        )
        _signal_group(process.pid, signal.SIGKILL)
        with trio.move_on_after(REAP_DEADLINE):
            await _wait_group_gone(process)
            return
        logger.error(
            "exec: process group {} survived SIGKILL for {:g}s", process.pid, REAP_DEADLINE
        )


def _write_record(record: Path, lease_id: str) -> None:
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(lease_id)
    except OSError as exc:
        logger.warning("exec: cannot record the job's process group in {}: {}", record, exc)


def _remove_record(record: Path) -> None:
    with contextlib.suppress(OSError):
        record.unlink()


async def _feed(stream: trio.abc.SendStream, data: bytes) -> None:
    """Write the job to the child's stdin and close it; a child that does not read is fine."""
    try:
        await stream.send_all(data)
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _exec_result(stdout: _Capture) -> Any:
    line = stdout.last_line()
    if line:
        try:
            return json.loads(line, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError):
            pass
    return bytes(stdout.head).decode("utf-8", "replace")


# --- python -----------------------------------------------------------------------------


def _python_config_error(spec: str, problem: str) -> ConfigError:
    return ConfigError(
        f"BOT_PYTHON_HANDLER={spec!r}: {problem}; set it to 'package.module:function', "
        "an async function that takes the job and returns a JSON-able result"
    )


def _is_async_callable(obj: Any) -> bool:
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(obj, "__call__", None)  # noqa: B004 -- an instance with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


class PythonHandler:
    """Calls ``module:function``, an async callable that takes the job, for each job.

    The function is imported at construction; a bad spec raises ConfigError naming
    BOT_PYTHON_HANDLER. The call ends when the function returns; its result is returned as
    plain JSON data, or PermanentError "result is not JSON-serializable". The function's
    exceptions pass through unchanged (PermanentError means: do not retry).
    """

    def __init__(self, spec: str) -> None:
        module_name, sep, attr_path = spec.partition(":")
        if not sep or not module_name.strip() or not attr_path.strip():
            raise _python_config_error(spec, "expected 'module:function'")
        try:
            target: Any = importlib.import_module(module_name.strip())
        except Exception as exc:
            raise _python_config_error(
                spec, f"cannot import {module_name!r} ({type(exc).__name__}: {exc})"
            ) from None
        for part in attr_path.strip().split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise _python_config_error(spec, f"{module_name} has no {attr_path!r}") from None
        if not callable(target):
            raise _python_config_error(spec, f"{attr_path!r} is not callable")
        if not _is_async_callable(target):
            raise _python_config_error(spec, f"{attr_path!r} is not an async function")
        self.spec = spec
        self._function: Callable[[ClaimedJob], Awaitable[Any]] = target

    async def __call__(self, job: ClaimedJob) -> Any:
        return _ensure_json(await self._function(job))


def build_handler(
    name: str,
    *,
    processing_duration_ms: float = 2000,
    failure_rate: float = 0.0,
    exec_command: Sequence[str] = (),
    exec_shell: bool = False,
    exec_kill_grace: float = DEFAULT_KILL_GRACE,
    python_handler: str = "",
    state_dir: Path | None = None,
) -> Handler:
    """Build the handler that ``BOT_HANDLER`` names; ConfigError when it or its settings are bad.

    With ``state_dir``, the exec handler records its running jobs' process groups there.
    """
    if name == "simulate":
        return SimulateHandler(processing_duration_ms, failure_rate)
    if name == "exec":
        groups = None if state_dir is None else Path(state_dir) / GROUPS_DIR
        return ExecHandler(
            exec_command, shell=exec_shell, kill_grace=exec_kill_grace, groups_dir=groups
        )
    if name == "python":
        return PythonHandler(python_handler)
    raise ConfigError(
        f"BOT_HANDLER: {name!r} is not a handler; use one of {', '.join(HANDLER_NAMES)}"
    )


# --- running one job --------------------------------------------------------------------


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
        """A failed outcome for ``job`` (e.g. with :func:`cancelled_failure` after a cancel)."""
        return cls(job.lease_id, job.job_id, "failed", None, error, duration_s)


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
            result = _ensure_json(await handler(job))
        except Exception as exc:
            error = classify_failure(exc)
    duration = trio.current_time() - started
    if scope.cancelled_caught:
        error = FailureInfo(
            type="timeout", message=f"job outlived its timeout of {limit:g}s", retryable=True
        )
    if error is not None:
        return JobOutcome(job.lease_id, job.job_id, "failed", None, error, duration)
    return JobOutcome(job.lease_id, job.job_id, "succeeded", result, None, duration)
