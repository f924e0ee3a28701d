"""The call policy: how every loop of the bot makes a call to the main server.

Registration, the heartbeat, claiming, result reporting and the health check each own one
:class:`CallPolicy` (with their breaker, if they have one). Every call they make goes
through it, and a loop keeps only what is its own, what to send and what to do with the
answer::

    async with self.calls.call() as call:
        answer = await self.client.claim(request)
    if not call.ok:
        continue  # counted, logged and backed off already

:meth:`CallPolicy.call` waits until the breaker admits the call (a half-open breaker admits
one probe at a time), runs the body under the breaker's guard, and handles each outcome here,
once:

==================================  =============  =========================================
the body ends with                  the breaker    then
==================================  =============  =========================================
an answer                           success        ``call.ok``; the failure streak resets
ServerUnavailable (connect, read    failure        WARNING ``<event>``, a full-jitter backoff
or write error, timeout, 408, 425,                 sleep; the error is kept in ``call.error``
429, 5xx), ProtocolError (a body                   and not raised
we cannot read), the call's own
deadline, or RequestRejected (any
other 4xx: logged as an ERROR), or
TlsFailure (an ERROR too)
404 unknown_bot, 409                success        :class:`~botd.session.SessionLost` is raised
session_superseded                                 (with who holds the bot id now, if known)
401/403 (Unrecoverable)             failure        re-raised: the agent stops the bot, exit 78
a cancellation                      probe slot     re-raised; nothing is counted
                                    given back
any other exception (a bug)         success        re-raised: the agent stops the bot, exit 70
==================================  =============  =========================================

The breaker counts the outcome; ``observe(name, event)`` hears it once per call (``started``,
then one of ``ok``, ``failed``, ``session_lost``, ``unrecoverable``, ``cancelled``), which is
where the agent records the call's metrics. Requests are timed by the client, once each.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from loguru import logger

from .backoff import Backoff
from .breaker import CircuitBreaker
from .errors import (
    BotIdInUse,
    RequestRejected,
    ServerError,
    ServerUnavailable,
    SessionSuperseded,
    SessionTokenRefused,
    TlsFailure,
    UnknownBot,
    Unrecoverable,
)
from .events import Event
from .session import SessionLost

__all__ = ["CALL_EVENTS", "SESSION_LOST_ERRORS", "Call", "CallObserver", "CallPolicy"]

#: What ``observe(name, event)`` is told: once ``started``, then once one of the others.
CALL_EVENTS = ("started", "ok", "failed", "session_lost", "unrecoverable", "cancelled")

#: ``observe(policy_name, event)`` with ``event`` from :data:`CALL_EVENTS`.
CallObserver = Callable[[str, str], None]

#: The server's answers that mean the bot's session is gone: 404 ``unknown_bot``,
#: 409 ``session_superseded``, and a 401 to the session's token.
SESSION_LOST_ERRORS = (UnknownBot, SessionSuperseded, SessionTokenRefused)


@attrs.define
class Call:
    """What became of one call: ``ok``, or the ``error`` that the policy handled."""

    ok: bool = False
    error: ServerError | None = None
    retry_in_s: float = 0.0


@attrs.define
class CallPolicy:
    """The call policy of one loop. See the module docstring for the rules.

    Args:
      name: the loop's name in events and metrics, usually its breaker's
        (``registration``, ``heartbeat``, ``job_claim``, ``results``, ``health``).
      breaker: the loop's circuit breaker, or None for a call that has none (health).
      backoff: the full-jitter backoff slept after a failed call; None sleeps nothing (a
        periodic loop such as the heartbeat keeps its own pace).
      failed_event: the ``event`` of the WARNING logged for a failed call; None logs nothing
        (the health monitor reports its own way).
      hold: wait while the breaker refuses calls. False lets every call through whatever the
        breaker says, and still counts its outcome (the heartbeat must renew its leases).
      observe: hears every call's events (metrics).
      loses_session: 404 unknown_bot and 409 session_superseded mean the session is lost.
        False for the calls that have no session (registration, health): there they are
        one more 4xx.
    """

    name: str
    breaker: CircuitBreaker | None = None
    backoff: Backoff | None = None
    failed_event: Event | None = None
    hold: bool = True
    observe: CallObserver = lambda name, event: None
    loses_session: bool = True
    #: Consecutive failed calls: the backoff's attempt number. A success resets it.
    failures: int = 0

    async def wait_ready(self) -> None:
        """Sleep until the breaker would admit a call, without taking its probe slot."""
        if self.breaker is not None and self.hold:
            await self.breaker.wait_ready()
        else:
            await trio.lowlevel.checkpoint()

    @asynccontextmanager
    async def call(
        self,
        *,
        within: float | None = None,
        backoff: bool = True,
        wait: bool = True,
        **context: Any,
    ) -> AsyncIterator[Call]:
        """Make one call under the policy; the body is the call.

        Args:
          within: the call's own time limit in seconds (a cancel scope); running out of it
            is a retryable failure like a timeout of the request.
          backoff: sleep the backoff after a failure (False: the caller is about to give up).
          wait: wait for the breaker to admit the call; False raises CircuitOpen at once.
          context: extra fields for the failure's log line (``attempt=3``).

        Raises SessionLost, Unrecoverable, CircuitOpen (only with ``wait=False``) and
        whatever the body raises that is not a ServerError. See the module docstring.
        """
        call = Call()
        try:
            async with self._admitted(wait):
                self.observe(self.name, "started")
                try:
                    with _deadline(within, self.name):
                        yield call
                except SESSION_LOST_ERRORS as exc:
                    if not self.loses_session:
                        raise
                    # Inside the guard: the server answered, so its breaker hears a success.
                    holder = exc.holder if isinstance(exc, SessionSuperseded) else None
                    raise SessionLost(f"{self.name}: {exc}", holder=holder) from None
        except SessionLost:
            self.failures = 0
            self.observe(self.name, "session_lost")
            raise
        except Unrecoverable:
            self.observe(self.name, "unrecoverable")
            raise
        except ServerError as exc:
            await self._failed(call, exc, backoff=backoff, context=context)
        except trio.Cancelled:
            self.observe(self.name, "cancelled")
            raise
        else:
            self.failures = 0
            call.ok = True
            self.observe(self.name, "ok")

    @asynccontextmanager
    async def _admitted(self, wait: bool) -> AsyncIterator[None]:
        breaker = self.breaker
        if breaker is None:
            yield
        elif self.hold and wait:
            async with breaker.admitted():
                yield
        else:
            with breaker.guard(force=not self.hold):
                yield

    async def _failed(
        self, call: Call, exc: ServerError, *, backoff: bool, context: dict[str, Any]
    ) -> None:
        self.failures += 1
        call.error = exc
        self.observe(self.name, "failed")
        if backoff and self.backoff is not None:
            call.retry_in_s = self.backoff.delay(self.failures - 1)
        if self.failed_event is not None:
            fields: dict[str, Any] = {
                "event": self.failed_event,
                "error_type": type(exc).__name__,
                "error": str(exc),
                "failures": self.failures,
                "retry_in_s": round(call.retry_in_s, 3),
                **context,
            }
            if self.breaker is not None:
                fields.update(breaker=self.breaker.name, failure_count=self.breaker.failure_count)
            # Another 4xx, or a failed TLS check, will not go away by itself: say so louder
            # than an outage. A bot id in use may (its holder may be a dead predecessor): the
            # registrar names it once.
            loud = isinstance(exc, RequestRejected | TlsFailure) and not isinstance(exc, BotIdInUse)
            level = "ERROR" if loud else "WARNING"
            logger.bind(**fields).log(
                level, "{} failed ({} in a row), retrying in {:.2f}s: {}", self.name,
                self.failures, call.retry_in_s, exc,
            )  # fmt: skip
        if call.retry_in_s > 0:
            await trio.sleep(call.retry_in_s)


@contextlib.contextmanager
def _deadline(seconds: float | None, name: str) -> Iterator[None]:
    """A cancel scope of ``seconds`` around the call; running out is ServerUnavailable."""
    if seconds is None:
        yield
        return
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise ServerUnavailable(f"{name}: no answer within {seconds:g}s") from None
