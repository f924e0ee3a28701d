"""Claiming: long-poll claims sized by free capacity, carrying pending acks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio
from loguru import logger
from trio_util import AsyncBool

from .backoff import Backoff
from .breaker import CircuitBreaker
from .client import ServerClient
from .errors import ServerError, SessionSuperseded, UnknownBot
from .models import ClaimedJob, ClaimRequest
from .results import ResultReporter
from .session import Session, SessionLost
from .workers import JobRunner

__all__ = ["Claimer"]

#: How long a busy bot waits for more free slots before it claims.
BATCH_WINDOW_S = 0.005


@attrs.define
class Claimer:
    """Claims jobs for one session and hands them to the runner.

    A claim asks for at most the runner's free slots, and only while the server is healthy and
    the outbox has room. Jobs that a claim brings back after the drain began are released at
    once (``on_orphans``), so a long poll never orphans them.
    """

    client: ServerClient
    breaker: CircuitBreaker
    backoff: Backoff
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
        """Claim until cancelled. Raises SessionLost on 404/409; retries everything else.

        This function never returns unless cancelled.
        """
        failures = 0
        self.reporter.session = session
        while True:
            await self.healthy.wait_value(True)
            await self.runner.in_flight.wait_value(lambda n: n < self.runner.concurrency)
            if self.runner.in_flight.value > 0:
                # Busy: give a few more slots the chance to free up, so that one round trip
                # carries a batch instead of one job at a time. An idle bot claims at once.
                with trio.move_on_after(BATCH_WINDOW_S):
                    await self.runner.in_flight.wait_value(self._half_free)
            if self.outbox_full():
                logger.bind(event="outbox_full").warning("outbox full: claiming paused")
                await self.outbox_not_full()
            if self.check_health is not None and not await self.check_health():
                continue  # degraded: wait for the monitor to see it healthy again
            await self.breaker.wait_ready()
            if not self.breaker.allow():
                continue
            acks = self.reporter.claim_started()
            request = ClaimRequest(
                bot_id=session.bot_id,
                session_id=session.session_id,
                max_jobs=self.runner.free_slots,
                wait_s=self.wait_s,
                kinds=list(self.kinds) if self.kinds else None,
                acks=acks,
            )
            try:
                answer = await self.client.claim(request)
            except (UnknownBot, SessionSuperseded) as exc:
                self.reporter.give_back(acks)
                self.reporter.claim_ended(full=False)
                self.breaker.record_success()
                raise SessionLost(f"claim: {exc}") from None
            except ServerError as exc:
                self.reporter.give_back(acks)
                self.reporter.claim_ended(full=False)
                self.breaker.record_failure()
                failures += 1
                delay = self.backoff.delay(failures - 1)
                logger.bind(
                    event="claim_failed", error_type=type(exc).__name__, error=str(exc)
                ).warning("claim failed, retrying in {:.2f}s: {}", delay, exc)
                await trio.sleep(delay)
                continue
            except BaseException:
                self.reporter.give_back(acks)
                self.reporter.claim_ended(full=False)
                raise
            failures = 0
            self.breaker.record_success()
            self.reporter.claim_ended(full=0 < request.max_jobs <= len(answer.jobs))
            self._dispatch(answer.jobs)
            await self.reporter.settle(answer.acks)

    def _half_free(self, in_flight: int) -> bool:
        return in_flight <= self.runner.concurrency // 2

    def _dispatch(self, jobs: list[ClaimedJob]) -> None:
        """Start what fits; release the rest.

        Synchronous: there is no checkpoint between the answer and the start of its jobs.
        """
        extra: list[ClaimedJob] = []
        for job in jobs:
            if self.draining() or self.runner.free_slots == 0 or not self.runner.start(job):
                extra.append(job)
        if extra:
            self.on_orphans(extra)
