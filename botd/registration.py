"""REGISTERING: register with the main server, with backoff and a breaker, and verify it."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence

import attrs
import trio
from loguru import logger

from .backoff import Backoff
from .breaker import CircuitBreaker
from .client import ServerClient
from .errors import BotdError, ServerError, Unrecoverable
from .models import RegisterRequest
from .session import Session

__all__ = ["Registrar", "StartupExhausted"]


class StartupExhausted(BotdError):
    """Raised when MAX_STARTUP_ATTEMPTS registrations failed before the bot ever got ready."""


@attrs.define
class Registrar:
    """Registers this bot, retrying with full-jitter backoff behind the registration breaker.

    Each attempt (register, then ``GET /v1/bots/{id}`` to verify) runs under its own cancel scope
    of ``attempt_timeout`` seconds, so a server that accepts and never answers costs one attempt.
    """

    client: ServerClient
    breaker: CircuitBreaker
    backoff: Backoff
    bot_id: str
    version: str
    capacity: int
    labels: dict[str, str]
    max_startup_attempts: int
    attempt_timeout: float
    on_attempt: Callable[[], None] = lambda: None
    attempts: int = 0  # every attempt since the process started (the seed's startup_attempts)

    async def register(self, active_leases: Sequence[str], *, startup: bool) -> Session:
        """Return a verified session. Never returns unless registered or cancelled.

        Error handling: retryable server errors are counted, logged and retried; when
        ``startup`` is true, after ``max_startup_attempts`` failures it raises
        :class:`StartupExhausted`. 401/403 raises :class:`Unrecoverable` at once.
        """
        failures = 0
        while True:
            await self.breaker.wait_ready()
            if not self.breaker.allow():
                continue
            self.attempts += 1
            self.on_attempt()
            try:
                with trio.fail_after(self.attempt_timeout):
                    session = await self._attempt(active_leases)
            except Unrecoverable:
                self.breaker.record_failure()
                raise
            except (ServerError, trio.TooSlowError) as exc:
                self.breaker.record_failure()
                failures += 1
                error = str(exc) or f"attempt timed out after {self.attempt_timeout:g}s"
                delay = self.backoff.delay(failures - 1)
                logger.bind(
                    event="registration_failed",
                    attempt=self.attempts,
                    error_type=type(exc).__name__,
                    error=error,
                    retry_in_s=round(delay, 3),
                ).warning("registration attempt {} failed: {}", self.attempts, error)
                if startup and failures >= self.max_startup_attempts:
                    raise StartupExhausted(
                        f"the main server stayed unavailable for {failures} registration attempts "
                        f"(MAX_STARTUP_ATTEMPTS={self.max_startup_attempts}); last error: {error}"
                    ) from None
                await trio.sleep(delay)
                continue
            self.breaker.record_success()
            logger.bind(
                event="registered",
                session_id=session.session_id,
                attempt=self.attempts,
                active_leases=len(active_leases),
            ).info("registered with {} as {}", self.client.base_url, self.bot_id)
            return session

    async def _attempt(self, active_leases: Sequence[str]) -> Session:
        request = RegisterRequest(
            bot_id=self.bot_id,
            version=self.version,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            capacity=self.capacity,
            labels=dict(self.labels),
            active_leases=list(active_leases),
        )
        answer = await self.client.register(request)
        info = await self.client.get_bot(self.bot_id)
        if info.session_id != answer.session_id:
            from .errors import ProtocolError

            raise ProtocolError(
                f"registration not verified: server reports session {info.session_id!r}, "
                f"expected {answer.session_id!r}"
            )
        return Session(
            bot_id=self.bot_id,
            session_id=answer.session_id,
            heartbeat_interval_s=answer.heartbeat_interval_s,
            lease_ttl_s=answer.lease_ttl_s,
            server_version=answer.server_version,
        )
