"""The heartbeat: every HEARTBEAT_INTERVAL_MS, carrying the state and the leases held."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio
from loguru import logger
from trio_util import periodic

from .breaker import BreakerState, CircuitBreaker
from .client import ServerClient
from .errors import ServerError, SessionSuperseded, UnknownBot
from .models import HeartbeatRequest, HeartbeatResponse
from .session import Session, SessionLost

__all__ = ["Heartbeat"]


@attrs.define
class Heartbeat:
    """Keeps one session alive and the leases it holds renewed.

    Ends by raising :class:`SessionLost` when the server forgot the bot (404), superseded the
    session (409) or the heartbeat breaker opened (the server has been unreachable for
    ``CIRCUIT_BREAKER_THRESHOLD`` beats). Cancel and lost leases go to ``on_answer``.
    """

    client: ServerClient
    breaker: CircuitBreaker
    interval: float
    leases: Callable[[], list[str]]
    state: Callable[[], str]
    stats: Callable[[], dict[str, Any]]
    on_answer: Callable[[HeartbeatResponse], None]
    on_beat: Callable[[str], None] = lambda outcome: None

    async def run(self, session: Session) -> None:
        """Beat until cancelled or the session is lost. This function never returns normally."""
        # Never beat slower than a third of the lease TTL, whatever the config says.
        interval = min(self.interval, session.lease_ttl_s / 3)
        async for _ in periodic(interval):
            await self.beat(session)

    async def beat(self, session: Session) -> None:
        request = HeartbeatRequest(
            session_id=session.session_id,
            state=self.state(),
            active_leases=self.leases(),
            stats=self.stats(),
        )
        try:
            with trio.fail_after(max(self.interval, 1.0) * 2):
                answer = await self.client.heartbeat(session.bot_id, request)
        except (UnknownBot, SessionSuperseded) as exc:
            self.on_beat("failed")
            raise SessionLost(f"heartbeat: {exc}") from None
        except (ServerError, trio.TooSlowError) as exc:
            self.on_beat("failed")
            self.breaker.record_failure()
            logger.bind(
                event="heartbeat_failed",
                error_type=type(exc).__name__,
                error=str(exc) or "timed out",
                failure_count=self.breaker.failure_count,
            ).warning("heartbeat failed: {}", exc or "timed out")
            if self.breaker.state is not BreakerState.CLOSED:
                raise SessionLost("heartbeat: the server has been unreachable") from None
            return
        self.on_beat("succeeded")
        self.breaker.record_success()
        self.on_answer(answer)
