"""The heartbeat: every HEARTBEAT_INTERVAL_MS, carrying the state and the leases held."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from trio_util import periodic

from .breaker import BreakerState
from .call_policy import CallPolicy
from .client import ServerClient
from .models import HeartbeatRequest, HeartbeatResponse
from .session import Session, SessionLost

__all__ = ["Heartbeat"]


@attrs.define
class Heartbeat:
    """Keeps one session alive and the leases it holds renewed.

    Ends by raising :class:`SessionLost` when the server forgot the bot (404), superseded the
    session (409) or the heartbeat breaker opened (the server has been unreachable for
    ``CIRCUIT_BREAKER_THRESHOLD`` beats). Cancel and lost leases go to ``on_answer``.

    ``calls`` is the heartbeat's call policy: no backoff (the beat keeps its pace) and no
    holding back (a lease must be renewed whatever the breaker says).
    """

    client: ServerClient
    calls: CallPolicy
    interval: float
    leases: Callable[[], list[str]]
    state: Callable[[], str]
    stats: Callable[[], dict[str, Any]]
    on_answer: Callable[[HeartbeatResponse], None]
    #: Heartbeats of this session that got through.
    beats: int = 0

    async def run(self, session: Session) -> None:
        """Beat until cancelled or the session is lost. This function never returns normally."""
        async for _ in periodic(self.effective_interval(session)):
            await self.beat(session)

    def effective_interval(self, session: Session) -> float:
        """Never beat slower than a third of the lease TTL, whatever the config says."""
        return min(self.interval, session.lease_ttl_s / 3)

    async def beat(self, session: Session) -> None:
        request = HeartbeatRequest(
            session_id=session.session_id,
            state=self.state(),
            active_leases=self.leases(),
            stats=self.stats(),
        )
        async with self.calls.call(within=max(self.interval, 1.0) * 2) as call:
            answer = await self.client.heartbeat(session.bot_id, request)
        if not call.ok:
            breaker = self.calls.breaker
            if breaker is not None and breaker.state is not BreakerState.CLOSED:
                raise SessionLost("heartbeat: the server has been unreachable")
            return
        self.beats += 1
        self.on_answer(answer)
