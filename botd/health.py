"""HEALTH_CHECK and the health monitor: only a healthy bot claims.

While the server is healthy, the health is checked where it matters: before a claim, when the
last check is older than the interval (:meth:`HealthMonitor.ensure_fresh`). An idle bot whose
long poll is open claims every ``BOT_CLAIM_WAIT`` seconds, so it checks that often instead of
every ``BOT_HEALTH_INTERVAL`` (a request less every 5 s). While the server is unhealthy,
:meth:`HealthMonitor.run` checks every interval until it is healthy again.
"""

from __future__ import annotations

import math

import attrs
import trio
from loguru import logger
from trio_util import AsyncBool, periodic

from .call_policy import CallPolicy
from .client import ServerClient
from .events import Event

__all__ = ["HealthMonitor"]


@attrs.define
class HealthMonitor:
    """Checks server connectivity and database health through ``GET /v1/health``.

    ``healthy`` is an AsyncBool the claimer waits on: a degraded or unreachable server
    pauses claiming; running jobs are not touched.
    """

    client: ServerClient
    interval: float
    #: No breaker and no backoff: the monitor keeps its own pace and reports its own way.
    calls: CallPolicy = attrs.field(factory=lambda: CallPolicy("health", loses_session=False))
    healthy: AsyncBool = attrs.field(factory=lambda: AsyncBool(False))
    last_error: str | None = None
    checked_at: float = -math.inf  # Trio time of the last answer (or failure)

    async def check(self) -> bool:
        """One check. Returns whether the server and its database are healthy; never raises
        for an expected failure."""
        try:
            async with self.calls.call() as call:
                health = await self.client.health()
        finally:
            self.checked_at = trio.current_time()
        if not call.ok:
            self._set(False, f"server unreachable: {call.error}")
            return False
        if health.status != "ok":
            self._set(False, f"server degraded: database {health.database}")
            return False
        self._set(True, None)
        return True

    async def wait_healthy(self) -> None:
        """HEALTH_CHECK: check until healthy. The caller's cancel scope is the state's deadline."""
        async for _ in periodic(min(1.0, self.interval)):
            if await self.check():
                return

    async def ensure_fresh(self) -> bool:
        """Before a claim: check unless the last check is younger than the interval.

        Returns whether the server is healthy."""
        if trio.current_time() - self.checked_at >= self.interval:
            await self.check()
        return bool(self.healthy.value)

    async def run(self) -> None:
        """Monitor while the session lives: while the server is unhealthy, check every
        interval until it is healthy (while it is healthy, the claimer calls
        :meth:`ensure_fresh`). This function never returns unless cancelled."""
        while True:
            await self.healthy.wait_value(False)
            await trio.sleep(max(0.0, self.checked_at + self.interval - trio.current_time()))
            await self.check()

    def _set(self, healthy: bool, error: str | None) -> None:
        if healthy != self.healthy.value:
            if healthy:
                logger.bind(event=Event.SERVER_HEALTHY).info("server healthy: claiming resumes")
            else:
                logger.bind(event=Event.SERVER_UNHEALTHY, error=error).warning(
                    "claiming paused: {}", error
                )
        self.healthy.value = healthy
        self.last_error = error
