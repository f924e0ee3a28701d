"""The ``exec`` handler: a command per job, the job's JSON on stdin, the result from stdout.

The command's process group is handled by :mod:`botd.handlers.process_groups`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from .. import codec
from ..errors import ConfigError, JobError
from ..models import ClaimedJob
from ..redaction import without_tokens
from .process_groups import group_alive, remove_record, spawn, stop_group, write_record

__all__ = [
    "DEFAULT_KILL_GRACE",
    "DEFAULT_OUTPUT_CAP",
    "ExecHandler",
    "ExitStatusError",
    "SpawnError",
]

DEFAULT_KILL_GRACE = 5.0
DEFAULT_OUTPUT_CAP = 64 * 1024
STDERR_TAIL = 2048
# After the command's group is gone, how long the pipe readers get to see EOF.
READ_GRACE = 1.0


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
    environment less every ``*_TOKEN`` and ``*_TOKEN_FILE`` variable (a job never sees the
    bot's token), plus ``BOTD_JOB_ID``, ``BOTD_LEASE_ID`` and ``BOTD_ATTEMPT``. With
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
    :func:`~botd.handlers.process_groups.reap_leftover_groups`), so that a restarted bot
    stops what a SIGKILLed one left.
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
        env = without_tokens(os.environ)
        env.update(
            BOTD_JOB_ID=job.job_id, BOTD_LEASE_ID=job.lease_id, BOTD_ATTEMPT=str(job.attempt)
        )
        try:
            process = await spawn(self.argv, shell=self.shell, env=env)
        except OSError as exc:
            raise SpawnError(f"cannot start {self.argv[0]!r}: {exc}") from None

        stdout = _Capture(self.output_cap)
        stderr = _Capture(STDERR_TAIL)
        groups_dir = self.groups_dir
        try:
            if groups_dir is not None:
                await trio.to_thread.run_sync(write_record, groups_dir, process.pid, job.lease_id)
            async with trio.open_nursery() as nursery:
                assert process.stdin is not None
                assert process.stdout is not None
                assert process.stderr is not None
                nursery.start_soon(_feed, process.stdin, codec.dumps(job) + b"\n")
                nursery.start_soon(stdout.drain, process.stdout)
                nursery.start_soon(stderr.drain, process.stderr)
                await process.wait()
                if group_alive(process.pid):
                    logger.warning(
                        "exec job {}: the command left processes behind; stopping them",
                        job.job_id,
                    )
                    await stop_group(process, self.kill_grace)
                # A process that left the group may still hold a pipe open: bound the reads.
                nursery.cancel_scope.deadline = trio.current_time() + READ_GRACE
        finally:
            with trio.CancelScope(shield=True):
                await stop_group(process, self.kill_grace)
                for stream in (process.stdin, process.stdout, process.stderr):
                    if stream is not None:
                        await stream.aclose()
                if groups_dir is not None:
                    await trio.to_thread.run_sync(remove_record, groups_dir, process.pid)

        returncode = process.returncode
        assert returncode is not None
        if returncode != 0:
            tail = bytes(stderr.tail).decode("utf-8", "replace")
            raise ExitStatusError(returncode, tail)
        return _exec_result(stdout)


async def _feed(stream: trio.abc.SendStream, data: bytes) -> None:
    """Write the job to the child's stdin and close it; a child that does not read is fine."""
    try:
        await stream.send_all(data)
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exec_result(stdout: _Capture) -> Any:
    line = stdout.last_line()
    if line:
        try:
            return json.loads(line, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError):
            pass
    return bytes(stdout.head).decode("utf-8", "replace")
