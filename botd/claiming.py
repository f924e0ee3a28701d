"""Claiming: long-poll claims sized by free capacity, carrying pending acks.

A claim answered 400/413 while it carried acks cannot tell which of them the server refused:
they go alone from then on (:meth:`~botd.results.ResultReporter.claim_refused`), and the next
claim carries none of them. An answer with more jobs than the claim asked for is a protocol
error of the client (:mod:`botd.client`): none of its jobs starts, nothing of it reaches the
outbox, and the server requeues those leases when no heartbeat lists them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio
from loguru import logger
from trio_util import AsyncBool

from .call_policy import CallPolicy
from .client import ServerClient
from .errors import RequestRejected
from .events import Event
from .models import MAX_CLAIM_JOBS, ClaimedJob, ClaimRequest
from .results import ResultReporter
from .session import Session
from .workers import JobRunner

__all__ = ["Claimer"]

#: How long a busy bot waits for more free slots before it claims.
BATCH_WINDOW_S = 0.005


@attrs.define
class Claimer:
    """Claims jobs for one session and hands them to the runner.

    A claim asks for at most the runner's :attr:`~botd.workers.JobRunner.room` (its free
    slots, plus room to hold up to BOT_PREFETCH more), and only while the server is healthy
    and the outbox has room. Jobs that a claim brings back after the drain began are released at
    once (``on_orphans``), so a long poll never orphans them.
    """

    client: ServerClient
    calls: CallPolicy
    runner: JobRunner
    reporter: ResultReporter
    healthy: AsyncBool
    outbox_full: Callable[[], bool]
    outbox_not_full: Callable[[], Awaitable[None]]
    wait_s: float
    kinds: Sequence[str] | None
    on_orphans: Callable[[list[ClaimedJob]], None]
    draining: Callable[[], bool] = lambda: False
    #: Called before each claim: refreshes the server's health if it is stale; False = unhealthy.
    check_health: Callable[[], Awaitable[bool]] | None = None

    async def run(self, session: Session) -> None:
        """Claim until cancelled. Raises SessionLost on 404/409; the call policy handles
        every other outcome (a failed claim gives its acks back and is retried).

        This function never returns unless cancelled.
        """
        self.reporter.session = session
        # The waits below are skipped when their condition holds already: each checkpoint
        # is a turn of the scheduler in which the jobs just started run a step, and a claim
        # that goes out before they finish overlaps their work (with BOT_PREFETCH, or when
        # slots free one by one). Every turn of the loop still checkpoints: in a wait, in
        # the claim, or in the call policy's backoff after a failed one.
        while True:
            if not self.healthy.value:
                await self.healthy.wait_value(True)
            # A free slot: within the concurrency and, with BOT_ONCE, within the runner's
            # limit (a spent runner never has one again, so no claim goes out any more).
            # With BOT_PREFETCH, room to hold more jobs counts too.
            if self.runner.room <= 0:
                await self.runner.load.wait_value(lambda _: self.runner.room > 0)
            if self.runner.load.value > 0 and not self._half_free(self.runner.load.value):
                # Busy: give a few more slots the chance to free up, so that one round trip
                # carries a batch instead of one job at a time. An idle bot claims at once.
                with trio.move_on_after(BATCH_WINDOW_S):
                    await self.runner.load.wait_value(self._half_free)
            if self.outbox_full():
                logger.bind(event=Event.OUTBOX_FULL).warning("outbox full: claiming paused")
                await self.outbox_not_full()
            if self.check_health is not None and not await self.check_health():
                continue  # degraded: wait for the monitor to see it healthy again
            async with self.calls.call() as call:
                # Built once admitted: the breaker may have held the claim for a while.
                acks = self.reporter.claim_started()
                request = ClaimRequest(
                    bot_id=session.bot_id,
                    session_id=session.session_id,
                    max_jobs=min(self.runner.room, MAX_CLAIM_JOBS),
                    wait_s=self.wait_s,
                    kinds=list(self.kinds) if self.kinds else None,
                    acks=acks,
                )
                try:
                    answer = await self.client.claim(request)
                except BaseException as exc:
                    if acks and isinstance(exc, RequestRejected) and exc.status in (400, 413):
                        self.reporter.claim_refused(acks)
                    self.reporter.give_back(acks)
                    self.reporter.claim_ended(full=False)
                    raise
            if not call.ok:
                continue
            self.reporter.claim_ended(full=0 < request.max_jobs <= len(answer.jobs))
            self._dispatch(answer.jobs)
            await self.reporter.settle(answer.acks, defer=bool(answer.jobs))

    def _half_free(self, load: int) -> bool:
        return load <= self.runner.capacity // 2

    def _dispatch(self, jobs: list[ClaimedJob]) -> None:
        """Start what fits, hold what the prefetch has room for; release the rest.

        Synchronous: there is no checkpoint between the answer and the start of its jobs.
        """
        extra = list(jobs) if self.draining() else self.runner.offer_all(jobs)
        if extra:
            self.on_orphans(extra)
