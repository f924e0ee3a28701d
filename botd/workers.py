"""PROCESSING: run claimed jobs, at most ``concurrency`` at once, and keep every outcome.

Each job runs in its own cancel scope inside the jobs nursery, which the agent opens in the
root nursery: a lost server session never cancels a running job. Cancelling a job is always a
cancel of *its* scope with a reason, so the outcome can be told apart:

- ``cancelled``: the server asked (heartbeat ``cancel_leases``) -> failed, type ``cancelled``;
- ``shutdown``: the drain ran out, or a second signal -> ``released`` (no attempt spent);
- ``lost``: the server says another bot holds the lease -> nothing is recorded.

Every outcome is written durably to the outbox *before* the job counts as finished. While a
durable outbox commits it, the job is *storing*: its handler is done, so its slot is free for
the claimer (a claim's round trip overlaps the commit's fsync), but it still counts in
``in_flight``, its lease is still heartbeated, and a drain waits for it. Its ack reaches the
server only once committed (the outbox's mirror holds committed entries only).

Prefetch (``BOT_PREFETCH``, :attr:`JobRunner.prefetch`): a claim may bring up to ``prefetch``
jobs more than the free slots; they wait in ``held`` (FIFO) and start synchronously the moment a
slot frees (so ``held`` is never non-empty while a slot is free). A held job's lease is in
:meth:`JobRunner.leases` (heartbeated); cancelling a held job never runs it: it ends at once
with the same outcome as a running job cancelled for that reason. The drain takes the held jobs
back with :meth:`JobRunner.take_held` (released, no attempt spent).

One bad job never crashes the bot: any exception while one job is prepared or run (a bug, or a
job a broken server handed out that the checks did not foresee) fails that job (type
``bot_error``, logged as an ERROR with the traceback) and the bot goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs
import trio
from loguru import logger
from trio_util import AsyncValue

from . import logs
from .events import Event
from .handlers import Handler, cancelled_failure, run_job
from .handlers.failures import MESSAGE_CAP
from .models import Ack, ClaimedJob, FailureInfo
from .outbox import Outbox
from .outcomes import CANCELLED, FAILED, LEASE_LOST, RELEASED, SUCCEEDED, TIMEOUT

__all__ = ["CancelReason", "JobRunner", "RunningJob"]

CancelReason = Literal["cancelled", "shutdown", "lost"]

_EVENTS = {
    SUCCEEDED: Event.JOB_SUCCEEDED,
    RELEASED: Event.JOB_RELEASED,
    LEASE_LOST: Event.JOB_LEASE_LOST,
}

#: The failure type of a job that botd itself failed to prepare or run (see the docstring).
BOT_ERROR = "bot_error"


@attrs.define(eq=False)
class RunningJob:
    job: ClaimedJob
    scope: trio.CancelScope
    started_at: float
    reason: CancelReason | None = None


@attrs.define
class JobRunner:
    """Starts jobs in the jobs nursery and tracks them by lease id.

    ``in_flight`` (an AsyncValue of the number of running jobs) is what the claimer waits on
    for free slots and what moves the lifecycle between READY and PROCESSING. ``limit`` (None:
    no limit) is the most jobs it starts in all: 1 for ``BOT_ONCE``; once it started that
    many it is :attr:`spent`, has no free slot and starts nothing more.
    """

    handler: Handler
    outbox: Outbox
    concurrency: int
    job_timeout: float
    on_finished: Callable[[str, float], None] = lambda outcome, seconds: None
    limit: int | None = None
    #: BOT_RESULT_MAX_BYTES: a larger result fails its job for good (None: no limit).
    result_max_bytes: int | None = None
    running: dict[str, RunningJob] = attrs.field(factory=dict)
    in_flight: AsyncValue[int] = attrs.field(factory=lambda: AsyncValue(0))
    #: BOT_PREFETCH: most jobs held beyond the free slots (0 in effect with a ``limit``).
    prefetch: int = 0
    #: Claimed jobs waiting for a slot, by lease id, oldest first.
    held: dict[str, ClaimedJob] = attrs.field(factory=dict)
    #: Leases of running jobs whose outcome the outbox is committing (their slot is free).
    storing: set[str] = attrs.field(factory=set)
    #: Running (less storing) + held jobs: what the claimer waits on for :attr:`room`.
    load: AsyncValue[int] = attrs.field(factory=lambda: AsyncValue(0))
    total_processed: int = 0
    started: int = 0
    _nursery: trio.Nursery | None = None
    _batching: bool = False

    @property
    def free_slots(self) -> int:
        """How many more jobs may start now: within ``concurrency`` (jobs storing their
        outcome do not count) and what ``limit`` left."""
        free = self.concurrency - len(self.running) + len(self.storing)
        if self.limit is not None:
            free = min(free, self.limit - self.started)
        return max(0, free)

    @property
    def hold_limit(self) -> int:
        """How many jobs may be held: ``prefetch``, 0 with a ``limit`` (BOT_ONCE)."""
        return 0 if self.limit is not None else self.prefetch

    @property
    def capacity(self) -> int:
        """The most jobs running and held at once."""
        return self.concurrency + self.hold_limit

    @property
    def room(self) -> int:
        """How many jobs a claim may ask for now: the free slots and the room to hold."""
        return self.free_slots + max(0, self.hold_limit - len(self.held))

    @property
    def spent(self) -> bool:
        """True once the runner started its ``limit`` of jobs: it starts no more."""
        return self.limit is not None and self.started >= self.limit

    async def wait_spent(self) -> None:
        """Wait until the runner is :attr:`spent` and none of its jobs runs any more (every
        outcome is in the outbox). Without a ``limit`` this never returns."""
        await self.in_flight.wait_value(lambda n: n == 0 and self.spent)

    def leases(self) -> list[str]:
        """The leases of the running and the held jobs."""
        return [*self.running, *self.held]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the jobs nursery. Ends when cancelled, after every job in it has ended."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def offer(self, job: ClaimedJob) -> bool:
        """Start ``job`` if a slot is free, else hold it if there is room (synchronously).
        False if it will not run here (already known, spent, or no room)."""
        if job.lease_id in self.running or job.lease_id in self.held:
            return False
        if self.free_slots > 0:
            return self.start(job)
        if len(self.held) >= self.hold_limit:
            return False
        self.held[job.lease_id] = job
        self._counted()
        return True

    def offer_all(self, jobs: Iterable[ClaimedJob]) -> list[ClaimedJob]:
        """:meth:`offer` each job, in order (synchronously); return those that will not run
        here. ``in_flight`` and ``load`` (and their waiters) are updated once, at the end."""
        self._batching = True
        try:
            refused = [job for job in jobs if not self.offer(job)]
        finally:
            self._batching = False
            self._counted()
        return refused

    def take_held(self) -> list[ClaimedJob]:
        """Remove and return every held job, oldest first (the drain releases them)."""
        jobs = list(self.held.values())
        self.held.clear()
        self._counted()
        return jobs

    def start(self, job: ClaimedJob, reason: CancelReason | None = None) -> bool:
        """Start ``job`` now (synchronously registered). False if it is already running or
        the runner is :attr:`spent`. With a ``reason`` it is cancelled before it runs: it
        ends with that reason's outcome and its handler is never called."""
        assert self._nursery is not None, "JobRunner.run() must be started first"
        if job.lease_id in self.running or self.spent:
            return False
        self.started += 1
        running = RunningJob(job=job, scope=trio.CancelScope(), started_at=trio.current_time())
        running.reason = reason
        self.running[job.lease_id] = running
        self._counted()
        self._nursery.start_soon(self._run_one, running, name=f"job {job.job_id}")
        return True

    def _counted(self) -> None:
        if self._batching:
            return  # offer_all counts once, at its end
        self.in_flight.value = len(self.running)
        self.load.value = len(self.running) - len(self.storing) + len(self.held)

    def _start_held(self) -> None:
        """Start held jobs, oldest first, while a slot is free (no checkpoint in between)."""
        while self.held and self.free_slots > 0:
            lease_id = next(iter(self.held))
            self.start(self.held.pop(lease_id))

    def cancel(self, lease_id: str, reason: CancelReason) -> bool:
        held = self.held.pop(lease_id, None)
        if held is not None:  # never runs: ends at once with the reason's outcome
            self.start(held, reason)
            return True
        running = self.running.get(lease_id)
        if running is None:
            return False
        if running.reason is None:
            running.reason = reason
        running.scope.cancel()
        return True

    def cancel_all(self, reason: CancelReason) -> int:
        return sum(self.cancel(lease_id, reason) for lease_id in list(self.running))

    async def wait_idle(self) -> None:
        await self.in_flight.wait_value(0)

    async def _run_one(self, running: RunningJob) -> None:
        job = running.job
        ids = {"job_id": job.job_id, "lease_id": job.lease_id, "attempt": job.attempt}
        if running.reason is not None:  # a held job cancelled: it never runs
            running.scope.cancel()
        elif logs.enabled("INFO"):  # the record is not even built when no sink takes it
            logger.bind(**ids, event=Event.JOB_STARTED, kind=job.kind).info(
                "job {} started", job.job_id
            )
        ack: Ack | None = None
        outcome = FAILED
        size = 0
        crash: Exception | None = None
        try:
            try:
                if running.reason is not None:
                    raise _NotRun
                # The job's scope is also its timeout's (run_job sets its deadline).
                result = await run_job(
                    self.handler,
                    job,
                    timeout=self.job_timeout,
                    result_max_bytes=self.result_max_bytes,
                    scope=running.scope,
                )
                if not (running.scope.cancelled_caught and running.reason is not None):
                    ack, size = result.to_ack(), result.result_bytes
                    outcome = result.outcome
                    if result.error is not None and result.error.type == TIMEOUT:
                        outcome = TIMEOUT
            except _NotRun:
                pass
            except Exception as exc:  # one bad job must not crash the bot
                crash, ack, outcome = exc, _bot_error_ack(job, exc), FAILED
            if ack is None and crash is None:  # our scope was cancelled
                ack, outcome = self._cancelled_ack(running)
            duration = trio.current_time() - running.started_at
            if ack is not None and not self.outbox.durable:
                self.outbox.put_nowait(job.job_id, ack, size=size)  # in memory: never waits
            elif ack is not None:
                self.storing.add(job.lease_id)  # its slot is free while the commit runs
                self._start_held()
                self._counted()
                # Shielded inside (a cancel cannot lose a result being stored); it ends when
                # its commit does: a thread's SQLite call cannot be abandoned half-way.
                await self.outbox.put(job.job_id, ack, size=size)
            self.total_processed += 1
            self.on_finished(outcome, duration)
            level = "INFO" if outcome in (SUCCEEDED, RELEASED) else "WARNING"
            if crash is not None:
                level = "ERROR"
            if logs.enabled(level):
                fields: dict[str, Any] = {"event": _EVENTS.get(outcome, Event.JOB_FAILED)}
                if ack is not None and ack.error is not None:
                    fields.update(error_type=ack.error.type, error=ack.error.message)
                log = logger.bind(
                    **ids, **fields, outcome=outcome, duration_ms=round(duration * 1000, 3)
                )
                if crash is not None:
                    log = log.opt(exception=crash)
                log.log(level, "job {} {}", job.job_id, outcome)
        finally:
            self.running.pop(job.lease_id, None)
            self.storing.discard(job.lease_id)
            self._start_held()
            self._counted()

    @staticmethod
    def _cancelled_ack(running: RunningJob) -> tuple[Ack | None, str]:
        lease = running.job.lease_id
        if running.reason == "cancelled":
            return Ack(lease_id=lease, outcome=FAILED, error=cancelled_failure()), CANCELLED
        if running.reason == "lost":
            return None, LEASE_LOST
        return Ack(lease_id=lease, outcome=RELEASED), RELEASED


class _NotRun(Exception):
    """A held job cancelled before it started: its handler is not called."""


def _bot_error_ack(job: ClaimedJob, exc: Exception) -> Ack | None:
    """The ack of a job that botd failed to prepare or run (None: it has no lease to ack)."""
    message = f"botd could not run the job: {type(exc).__name__}: {exc}"[:MESSAGE_CAP]
    if not job.lease_id:
        return None
    error = FailureInfo(type=BOT_ERROR, message=message, retryable=True)
    return Ack(lease_id=job.lease_id, outcome=FAILED, error=error)
