"""REGISTERING: register with the main server, with backoff and a breaker, and verify it.

The session token of each register answer (an extension of v1) becomes the bearer of the
session's calls (``ServerClient.session_token``) and is sent back at the next register as
``previous_session_token``: the proof that this bot continues its own live session. With
``BOT_STATE_DIR`` it is also kept in ``<state>/session`` (:mod:`botd.session_file`), so a
restarted bot proves it too. A 409 ``bot_id_in_use`` (another live session holds the id)
is retried with the backoff, never counted toward MAX_STARTUP_ATTEMPTS: that holder may
be this bot's own dead predecessor, whose session goes silent in a while.

The register answer's timing is checked before the bot uses it: ``heartbeat_interval_s`` and
``lease_ttl_s`` must be finite and at least :data:`MIN_HEARTBEAT_INTERVAL_S` and
:data:`MIN_LEASE_TTL_S` (the bot beats every ``min(HEARTBEAT_INTERVAL_MS, lease_ttl_s / 3)``,
so never faster than 20 times a second). Anything else is a ProtocolError on that answer: the
attempt failed, and the next one comes after the backoff.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import trio
from loguru import logger

from . import logs
from .call_policy import CallPolicy
from .client import ServerClient
from .errors import BotdError, BotIdInUse, ProtocolError
from .events import Event
from .models import RegisterRequest, RegisterResponse, SessionHolder
from .session import Session
from .session_file import read_token, write_token

__all__ = [
    "MIN_HEARTBEAT_INTERVAL_S",
    "MIN_LEASE_TTL_S",
    "Registrar",
    "StartupExhausted",
    "check_timing",
]

#: The shortest ``heartbeat_interval_s`` a register answer may give.
MIN_HEARTBEAT_INTERVAL_S = 0.05
#: The shortest ``lease_ttl_s``: a beat every third of it is no faster than the floor above.
MIN_LEASE_TTL_S = 3 * MIN_HEARTBEAT_INTERVAL_S


def check_timing(answer: RegisterResponse) -> None:
    """Raise ProtocolError, naming the field, when the answer's timing is unusable."""
    for name, value, floor in (
        ("heartbeat_interval_s", answer.heartbeat_interval_s, MIN_HEARTBEAT_INTERVAL_S),
        ("lease_ttl_s", answer.lease_ttl_s, MIN_LEASE_TTL_S),
    ):
        if not (math.isfinite(value) and value >= floor):
            raise ProtocolError(
                f"register response: {name} must be a finite number >= {floor:g}, got {value!r}"
            )


class StartupExhausted(BotdError):
    """Raised when MAX_STARTUP_ATTEMPTS registrations failed before the bot ever got ready."""


@attrs.define
class Registrar:
    """Registers this bot, retrying with full-jitter backoff behind the registration breaker.

    Each attempt (register, then ``GET /v1/bots/{id}`` to verify) is one call of ``calls``
    (whose ``loses_session`` is False: there is no session yet, so a 404 or 409 is one more
    failed attempt) with a limit of ``attempt_timeout`` seconds, so a server that accepts
    and never answers costs one attempt. ``hostname`` and ``pid`` say who this bot is (the server
    names them to another process that uses the same bot id).
    """

    client: ServerClient
    calls: CallPolicy
    bot_id: str
    version: str
    capacity: int
    labels: dict[str, str]
    max_startup_attempts: int
    attempt_timeout: float
    hostname: str = attrs.field(factory=socket.gethostname)
    pid: int = attrs.field(factory=os.getpid)
    attempts: int = 0  # every attempt since the process started (the seed's startup_attempts)
    #: Where the last session token is kept across restarts (None: in memory only).
    state_dir: Path | None = None
    #: Told who holds the bot id when a register is refused with 409 bot_id_in_use.
    on_conflict: Callable[[SessionHolder], object] | None = None
    _token: str | None = attrs.field(default=None, init=False, repr=False)
    _loaded: bool = attrs.field(default=False, init=False)

    async def register(self, active_leases: Sequence[str], *, startup: bool) -> Session:
        """Return a verified session. Never returns unless registered or cancelled.

        Error handling: retryable server errors are counted, logged and retried (the call
        policy); when ``startup`` is true, after ``max_startup_attempts`` failures in a row it
        raises :class:`StartupExhausted`. 401/403 raises :class:`Unrecoverable` at once.
        """
        await self._load_token()
        counted = 0  # failures in a row toward MAX_STARTUP_ATTEMPTS (a bot id in use is not)
        while True:
            last = startup and counted + 1 >= self.max_startup_attempts
            async with self.calls.call(
                within=self.attempt_timeout, backoff=not last, attempt=self.attempts + 1
            ) as call:
                self.attempts += 1
                session = await self._attempt(active_leases)
            if call.ok:
                break
            if isinstance(call.error, BotIdInUse):
                if call.error.holder is not None and self.on_conflict is not None:
                    self.on_conflict(call.error.holder)
                if not call.retry_in_s and self.calls.backoff is not None:
                    await trio.sleep(self.calls.backoff.delay(self.calls.failures - 1))
                continue
            counted += 1
            if startup and counted >= self.max_startup_attempts:
                raise StartupExhausted(
                    f"the main server stayed unavailable for {self.calls.failures} registration"
                    f" attempts (MAX_STARTUP_ATTEMPTS={self.max_startup_attempts}); last error:"
                    f" {call.error}"
                )
        await self._keep_token()  # outside the attempt's deadline: a write is not cut short
        logger.bind(
            event=Event.REGISTERED,
            attempt=self.attempts,
            active_leases=len(active_leases),
        ).info("registered with {} as {}", self.client.base_url, self.bot_id)
        return session

    async def _attempt(self, active_leases: Sequence[str]) -> Session:
        request = RegisterRequest(
            bot_id=self.bot_id,
            version=self.version,
            hostname=self.hostname,
            pid=self.pid,
            capacity=self.capacity,
            labels=dict(self.labels),
            active_leases=list(active_leases),
            previous_session_token=self._token,
        )
        answer = await self.client.register(request)
        check_timing(answer)
        # The new session's token: the bearer of its calls (the verification's too).
        self.client.use_session(answer.session_id, answer.session_token)
        self._token = answer.session_token
        info = await self.client.get_bot(self.bot_id)
        if info.session_id != answer.session_id:
            raise ProtocolError(
                "registration not verified: GET /v1/bots/{id} reports another session than"
                " the register answered (or none)"
            )
        return Session(
            bot_id=self.bot_id,
            session_id=answer.session_id,
            heartbeat_interval_s=answer.heartbeat_interval_s,
            lease_ttl_s=answer.lease_ttl_s,
            server_version=answer.server_version,
        )

    async def _load_token(self) -> None:
        """Read the session token a previous run kept, once per process."""
        if self._loaded:
            return
        self._loaded = True
        if self.state_dir is None or self._token is not None:
            return
        token, problem = await trio.to_thread.run_sync(read_token, self.state_dir, self.bot_id)
        if problem is not None:
            logs.emit(Event.SESSION_FILE_FAILED, problem, "WARNING")
        self._token = token

    async def _keep_token(self) -> None:
        if self.state_dir is None or self._token is None:
            return
        problem = await trio.to_thread.run_sync(
            write_token, self.state_dir, self.bot_id, self._token
        )
        if problem is not None:
            logs.emit(Event.SESSION_FILE_FAILED, problem, "WARNING")
