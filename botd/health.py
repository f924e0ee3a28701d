"""HEALTH_CHECK and the health monitor: only a healthy bot claims."""

from __future__ import annotations

import attrs
import trio
from loguru import logger
from trio_util import AsyncBool, periodic

from .client import ServerClient
from .errors import ServerError

__all__ = ["HealthMonitor"]


@attrs.define
class HealthMonitor:
    """Checks server connectivity and database health through ``GET /v1/health``.

    ``healthy`` is an AsyncBool the claimer waits on: a degraded or unreachable server
    pauses claiming; running jobs are not touched.
    """

    client: ServerClient
    interval: float
    healthy: AsyncBool = attrs.field(factory=lambda: AsyncBool(False))
    last_error: str | None = None

    async def check(self) -> bool:
        """One check. Returns whether the server and its database are healthy; never raises
        for an expected failure."""
        try:
            health = await self.client.health()
        except ServerError as exc:
            self._set(False, f"server unreachable: {exc}")
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

    async def run(self) -> None:
        """Monitor while the session lives. This function never returns unless cancelled."""
        while True:
            await trio.sleep(self.interval)
            await self.check()

    def _set(self, healthy: bool, error: str | None) -> None:
        if healthy != self.healthy.value:
            if healthy:
                logger.bind(event="server_healthy").info("server healthy: claiming resumes")
            else:
                logger.bind(event="server_unhealthy", error=error).warning(
                    "claiming paused: {}", error
                )
        self.healthy.value = healthy
        self.last_error = error
