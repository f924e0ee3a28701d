"""What the server keeps beside its store: :class:`ServerCore`.

It holds the long poll's wake-up event, the waiting GETs of jobs (:mod:`.job_waits`), the
lease-expiry timer, the pruning task and the server's metrics. The routes (:mod:`.app`)
call it; it calls the store only. No HTTP and no SQL live here.
"""

from __future__ import annotations

import collections
import math

import attrs
import trio
from loguru import logger

from ..events import Event
from ..models import Ack, ClaimedJob, ClaimRequest, ClaimResponse, JobView
from .job_waits import JobWaits, first_of
from .metrics import ServerMetrics
from .store import PRUNE_BATCH, Store, StoreUnavailable

__all__ = ["DEFAULT_HEARTBEAT_INTERVAL_S", "DEFAULT_LEASE_TTL_S", "PendingClaim", "ServerCore"]

DEFAULT_LEASE_TTL_S = 30.0
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
_TIMER_MAX_SLEEP_S = 1.0
_PRUNE_EVERY_S = 60.0


@attrs.define(eq=False)
class ServerCore:
    """What the server keeps beside its store: long-poll wake-ups, the timer, metrics.

    Args:
        store: the job store.
        lease_ttl_s: how long a lease lives without a heartbeat (finite, > 0).
        heartbeat_interval_s: told to bots at registration (finite, > 0).
        gone_after_s: silence after which a bot shows as ``gone`` (default
            ``max(lease_ttl_s, 3 * heartbeat_interval_s)``).

    A waiting claim sleeps on :attr:`_available`, an event that is set (and replaced) by
    every change that can make a job claimable: a submit, a release or failure ack, a lease
    expiry, a retry or a delayed job becoming due, a retried job, a deregistration. Waiters
    take the event *before* they query the store, so a wake-up can never slip between their
    query and their wait. A waiting GET of a job is :attr:`waits`'s: acks, expiries to
    dead and cancels wake it (:meth:`jobs_may_have_ended`).
    """

    store: Store
    lease_ttl_s: float = attrs.field(default=DEFAULT_LEASE_TTL_S, kw_only=True)
    heartbeat_interval_s: float = attrs.field(default=DEFAULT_HEARTBEAT_INTERVAL_S, kw_only=True)
    _gone_after_s: float | None = attrs.field(default=None, kw_only=True)
    metrics: ServerMetrics = attrs.field(init=False, factory=ServerMetrics)
    closing: bool = attrs.field(init=False, default=False)
    _available: trio.Event = attrs.field(init=False, factory=trio.Event)
    _schedule: trio.Event = attrs.field(init=False, factory=trio.Event)
    waits: JobWaits = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # Finite too: a register's answer carries both, and must encode (no Infinity).
        if not 0 < self.lease_ttl_s < math.inf or not 0 < self.heartbeat_interval_s < math.inf:
            raise ValueError("lease_ttl_s and heartbeat_interval_s must be finite and > 0")
        self.waits = JobWaits(self.store)

    @property
    def gone_after_s(self) -> float:
        """Silence after which a bot shows as ``gone``."""
        if self._gone_after_s is not None:
            return self._gone_after_s
        return max(self.lease_ttl_s, 3 * self.heartbeat_interval_s)

    def jobs_may_be_available(self) -> None:
        """Wake every waiting claim so it queries the store again."""
        self._available.set()
        self._available = trio.Event()

    def schedule_changed(self) -> None:
        """Wake the timer: a deadline earlier than the one it sleeps towards may exist."""
        self._schedule.set()

    def jobs_may_have_ended(self) -> None:
        """Wake the waiting GETs of jobs that ended (one store query for all of them)."""
        self.waits.may_have_ended()

    def close(self) -> None:
        """Stop long polls: waiting claims and GETs answer at once with what they have."""
        self.closing = True
        self.jobs_may_be_available()
        self.waits.close()

    def after_acks(self, acks: list[Ack]) -> None:
        """Wake waiters and the timer when acks may have requeued or ended a job."""
        if acks:
            self.jobs_may_have_ended()
        if any(a.outcome != "succeeded" for a in acks):
            self.jobs_may_be_available()
            self.schedule_changed()

    async def wait_for_job(self, job_id: str, wait_s: float, *, gone: trio.Event) -> JobView:
        """The job once it is final, or as it is after ``wait_s`` (see :meth:`JobWaits.wait`)."""
        return await self.waits.wait(job_id, wait_s, gone=gone)

    async def claim(
        self, req: ClaimRequest, *, gone: trio.Event | None = None, owner: str | None = None
    ) -> ClaimResponse:
        """Apply the acks and claim; if nothing is due, wait up to wait_s for a job.

        ``owner``: acks of leases another bot id claimed reject the claim (Store.claim).

        Ends when: jobs were leased, ``wait_s`` passed, the server is closing, or ``gone``
        is set (the client went away: a claim that waits for nobody takes no job).
        Errors: StoreRejected/StoreUnavailable from the store, as they come.
        """
        pending = await self.start_claim(req, owner=owner)
        if pending.answer is not None:
            return pending.answer
        return await pending.wait(gone=gone)

    async def start_claim(self, req: ClaimRequest, *, owner: str | None = None) -> PendingClaim:
        """The first pass of :meth:`claim`: apply the acks and claim once.

        Its ``answer`` is set when the claim is over (jobs were leased, or it may not wait);
        else :meth:`PendingClaim.wait` waits for a job. So a route needs what a long poll
        needs (a task that watches for the client going away) only when it will wait.
        """
        deadline = trio.current_time() + req.wait_s
        event = self._available  # taken before the query: no wake-up slips in between
        first = await self.store.claim(req, lease_ttl_s=self.lease_ttl_s, owner=owner)
        self.after_acks(req.acks)
        pending = PendingClaim(self, req, deadline, event, first)
        if first.jobs or req.max_jobs <= 0 or req.wait_s <= 0 or self.closing:
            pending.answer = self._answered(first, first.jobs)
        return pending

    def _answered(self, first: ClaimResponse, jobs: list[ClaimedJob]) -> ClaimResponse:
        """Count a claim's answer in the metrics; the answer of its jobs and first acks."""
        self.metrics.claims.inc()
        if jobs:
            self.metrics.jobs_claimed.inc(len(jobs))
        if first.acks:
            for status, count in collections.Counter(r.status for r in first.acks).items():
                self.metrics.ack_results[status].inc(count)
        return ClaimResponse(jobs=jobs, acks=first.acks)

    async def run_timers(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Expire leases on time and wake waiters when a lease expires or a job (a retry, a
        delayed job) comes due; beside it, run the checker of waiting GETs (:attr:`waits`).

        Sleeps until the store's next deadline (at most 1 s, so silent bots are marked gone),
        or until :meth:`schedule_changed`. This function never returns unless cancelled.
        Errors: a failing store is logged and retried after 1 s. StoreIncompatible (the
        database, reachable at last, has a newer schema) is raised: it stops the server,
        which exits 78.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.waits.run)
            task_status.started()
            await self._expire_on_time()

    async def _expire_on_time(self) -> None:
        down = False  # log the outage once, and its end, not every second of it
        # The earliest deadline seen and not yet passed. It is kept across passes: a store
        # reports only deadlines still ahead, and one that passes while a pass queries the
        # store (a retry due a moment after the 1 s bound) must still wake the waiters.
        pending: float | None = None
        while True:
            self._schedule = trio.Event()
            schedule = self._schedule
            wake_at = trio.current_time() + _TIMER_MAX_SLEEP_S
            try:
                report = await self.store.expire(gone_after_s=self.gone_after_s)
                if report.expired:
                    self.metrics.lease_expiries.inc(report.expired)
                    logger.bind(
                        event=Event.LEASES_EXPIRED,
                        expired=report.expired,
                        requeued=report.requeued,
                        dead=report.dead,
                    ).info("leases expired")
                if report.requeued:
                    self.jobs_may_be_available()
                if report.dead:
                    self.jobs_may_have_ended()
                if report.gone:
                    logger.bind(event=Event.BOTS_GONE, count=report.gone).info("bots went silent")
                nxt = await self.store.next_deadline()
                if down:
                    down = False
                    logger.bind(event=Event.TIMER_STORE_RECOVERED).info(
                        "lease expiry resumed: the store answers again"
                    )
                if nxt is not None:
                    pending = nxt if pending is None else min(pending, nxt)
            except StoreUnavailable as exc:
                if not down:
                    down = True
                    logger.bind(event=Event.TIMER_STORE_UNAVAILABLE, error=str(exc)).warning(
                        "lease expiry paused: the store is unavailable (retried every second)"
                    )
            if pending is not None:
                wake_at = min(wake_at, pending)
            with trio.move_on_at(wake_at):
                await schedule.wait()
            if pending is not None and trio.current_time() >= pending:
                # A lease or retry deadline passed: a retry may have become due.
                pending = None
                self.jobs_may_be_available()

    async def run_pruning(self, retention_s: float) -> None:
        """Delete finished jobs older than ``retention_s``, a batch at a time, every minute.

        Never returns unless cancelled; a failing store is logged and tried again later.
        """
        while True:
            pruned = 0
            try:
                while True:
                    n = await self.store.prune(older_than_s=retention_s)
                    pruned += n
                    if n < PRUNE_BATCH:
                        break
            except StoreUnavailable as exc:
                logger.bind(event=Event.PRUNE_STORE_UNAVAILABLE, error=str(exc)).warning(
                    "pruning skipped: the store is unavailable"
                )
            if pruned:
                self.metrics.jobs_pruned.inc(pruned)
                logger.bind(event=Event.JOBS_PRUNED, count=pruned).info("finished jobs pruned")
            await trio.sleep(_PRUNE_EVERY_S)


@attrs.define(eq=False)
class PendingClaim:
    """A claim after its first pass (:meth:`ServerCore.start_claim`): ``answer`` when it is
    over, else :meth:`wait` long-polls for a job until the claim's deadline."""

    core: ServerCore
    req: ClaimRequest
    deadline: float
    event: trio.Event
    first: ClaimResponse
    answer: ClaimResponse | None = None

    async def wait(self, *, gone: trio.Event | None = None) -> ClaimResponse:
        """Wait for a job until the deadline, the server closing, or ``gone`` (the client
        went away); claim again (without the acks, applied once) at each wake-up."""
        if self.answer is not None:
            return self.answer
        core, event, jobs = self.core, self.event, self.first.jobs
        retry = attrs.evolve(self.req, acks=[])
        while not jobs and not core.closing:
            with trio.move_on_at(self.deadline) as scope:
                await first_of(event, gone)
            if scope.cancelled_caught or core.closing or (gone is not None and gone.is_set()):
                break
            event = core._available
            jobs = (await core.store.claim(retry, lease_ttl_s=core.lease_ttl_s)).jobs
        self.answer = core._answered(self.first, jobs)
        return self.answer
