"""Waiting for jobs to end, for ``GET /v1/jobs/{job_id}?wait_s=N``: :class:`JobWaits`.

A waiting GET sleeps on its job's event. The server's own events that can end a job (an
ack, a lease expiry to ``dead``, a cancel) call :meth:`JobWaits.may_have_ended`; that wakes
one checker task, which asks the store in one query which of the awaited jobs ended
(:meth:`~.store.Store.final_jobs`) and wakes their waiters, who then read their job. So
however many acks arrive and however many GETs wait, at most one such query runs at a
time, and none runs while nobody waits. On a store that other replicas share
(:attr:`~.store.Store.shared`), the checker also looks every 2 s while anyone waits: a job
another replica ended is seen within that bound.
"""

from __future__ import annotations

import collections
import math

import attrs
import trio

from ..models import FINAL_JOB_STATUSES, JobView
from .store import Store, StoreUnavailable

__all__ = ["RECHECK_S", "JobWaits", "first_of"]

#: How often the checker looks for jobs that other replicas ended (shared stores only).
RECHECK_S = 2.0


@attrs.define(eq=False)
class JobWaits:
    """Who waits for which job, and the checker that wakes them when it ends.

    Run :meth:`run` in a nursery (:meth:`~.core.ServerCore.run_timers` does); without it,
    waits end only at their deadline, at :meth:`close`, or when their client goes away.
    """

    store: Store
    closing: bool = attrs.field(init=False, default=False)
    #: Each awaited job's event, set (and dropped) when the checker finds the job ended.
    _events: dict[str, trio.Event] = attrs.field(init=False, factory=dict)
    _waiters: collections.Counter[str] = attrs.field(init=False, factory=collections.Counter)
    _wake: trio.Event = attrs.field(init=False, factory=trio.Event)
    _look: bool = attrs.field(init=False, default=False)

    def may_have_ended(self) -> None:
        """Jobs may have ended: the checker asks the store about the awaited ones."""
        if self._waiters:
            self._look = True
            self._wake.set()

    def close(self) -> None:
        """Answer every waiting GET now, with its job as it is (the server is stopping)."""
        self.closing = True
        for event in self._events.values():
            event.set()

    async def wait(self, job_id: str, wait_s: float, *, gone: trio.Event) -> JobView:
        """The job once it is final, or as it is after ``wait_s``, at :meth:`close`, or when
        ``gone`` is set (its client went away). Errors: the store's, as they come (404
        unknown_job for an unknown job, also one pruned meanwhile)."""
        deadline = trio.current_time() + wait_s
        if not self._waiters:
            self._wake.set()  # the checker's pace depends on whether anyone waits
        self._waiters[job_id] += 1
        try:
            # The event is taken before each read: an end between the read and the wait
            # still sets it.
            event = self._events.setdefault(job_id, trio.Event())
            view = await self.store.get_job(job_id)
            while view.status not in FINAL_JOB_STATUSES and not self.closing:
                with trio.move_on_at(deadline) as waited:
                    await first_of(event, gone)
                if waited.cancelled_caught or self.closing or gone.is_set():
                    break
                event = self._events.setdefault(job_id, trio.Event())
                view = await self.store.get_job(job_id)
            return view
        finally:
            self._waiters[job_id] -= 1
            if not self._waiters[job_id]:
                del self._waiters[job_id]
                self._events.pop(job_id, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The checker: wake the waiters of jobs that ended. Never returns unless cancelled.

        A failing store wakes every waiter: each reads its job and answers what it gets.
        """
        task_status.started()
        while True:
            wake = self._wake
            every = RECHECK_S if self._waiters and self.store.shared else math.inf
            with trio.move_on_after(every) as rechecked:
                await wake.wait()
            self._wake = trio.Event()
            if not (self._look or rechecked.cancelled_caught) or not self._waiters:
                continue
            self._look = False
            awaited = list(self._waiters)
            try:
                ended = await self.store.final_jobs(awaited)
            except StoreUnavailable:
                ended = set(awaited)
            for job_id in ended:
                event = self._events.pop(job_id, None)
                if event is not None:
                    event.set()


async def first_of(event: trio.Event, other: trio.Event | None) -> None:
    """Wait until ``event`` or ``other`` (when given) is set."""
    if other is None:
        await event.wait()
        return
    async with trio.open_nursery() as nursery:

        async def until(which: trio.Event) -> None:
            await which.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(until, event)
        nursery.start_soon(until, other)
