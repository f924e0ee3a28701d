"""The circuit breaker, on Trio's clock.

::

    CLOSED --threshold consecutive failures--> OPEN --jittered timeout elapses--> HALF_OPEN
      ^                                          ^                                  |
      +------------- probe succeeds -------------|------------- probe fails --------+

- CLOSED lets every call through and counts consecutive failures; a success resets the count.
- OPEN refuses every call for ``timeout * uniform(1 - jitter, 1 + jitter)`` seconds, so a fleet
  that lost the server together does not come back in lockstep.
- HALF_OPEN lets exactly one probe through at a time; the others are refused while it is in
  flight (a forced call, ``guard(force=True)``, goes through all the same). A success closes
  the breaker, a failure reopens it with a fresh jittered timeout.
  A cancelled probe gives its slot back without counting: :meth:`~CircuitBreaker.guard` and
  :meth:`~CircuitBreaker.admitted` do that themselves; a caller that took the slot with
  :meth:`~CircuitBreaker.allow` or :meth:`~CircuitBreaker.check` calls
  :meth:`~CircuitBreaker.release`. botd's loops never take the slot by hand:
  :mod:`botd.call_policy` admits every call with ``admitted()``, or ``guard()`` when the
  call must not wait.

The state is computed on read from the clock: an OPEN breaker whose timeout has passed reads
as HALF_OPEN. Outcomes that arrive while OPEN (late answers to calls let through before it
opened) are counted in the totals but do not change the state; in HALF_OPEN any success
closes the breaker and any failure reopens it, whether or not it came from the probe.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import StrEnum
from types import TracebackType
from typing import Any

import trio

from .errors import CircuitOpen, ServerError

__all__ = [
    "DEFAULT_JITTER",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TIMEOUT",
    "BreakerState",
    "ChangeHook",
    "CircuitBreaker",
]

DEFAULT_THRESHOLD = 5
DEFAULT_TIMEOUT = 30.0
DEFAULT_JITTER = 0.1


class BreakerState(StrEnum):
    """The three breaker states; values as in the seed's metrics document."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


ChangeHook = Callable[[str, BreakerState, BreakerState], object]


class CircuitBreaker:
    """A circuit breaker driven by Trio's clock (or any monotonic ``clock``).

    Args:
        name: the breaker's name, in errors, logs and metrics (``"registration"``).
        threshold: consecutive failures that open it (>= 1).
        timeout: seconds it stays open before a probe, before jitter (> 0).
        jitter: the open time is ``timeout * uniform(1 - jitter, 1 + jitter)`` (0 <= jitter < 1).
        rng: the random source for the jitter.
        clock: monotonic seconds; Trio's clock by default.
        on_change: ``on_change(name, old, new)``, called synchronously on every state change,
            after the breaker is consistent. Exceptions from it propagate.

    Use :meth:`guard` around a call, or :meth:`check`/:meth:`allow` with
    :meth:`record_success`/:meth:`record_failure`/:meth:`release` by hand.
    """

    def __init__(
        self,
        name: str,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        timeout: float = DEFAULT_TIMEOUT,
        jitter: float = DEFAULT_JITTER,
        rng: random.Random | None = None,
        clock: Callable[[], float] = trio.current_time,
        on_change: ChangeHook | None = None,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"breaker threshold must be >= 1, got {threshold}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"breaker timeout must be a finite number > 0, got {timeout!r}")
        if not (0.0 <= jitter < 1.0):
            raise ValueError(f"breaker jitter must be in [0, 1), got {jitter!r}")
        self.name = name
        self.threshold = threshold
        self.timeout = float(timeout)
        self.jitter = float(jitter)
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._open_until = 0.0
        self._open_for = 0.0
        self._probe: int | None = None  # token of the probe in flight, in HALF_OPEN
        self._next_token = 0
        self._changed: trio.Event | None = None
        self.failure_count = 0
        self.total_failures = 0
        self.total_successes = 0
        self.opened_count = 0

    # -- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state; OPEN reads as HALF_OPEN once its timeout has passed."""
        self._refresh()
        return self._state

    @property
    def probe_in_flight(self) -> bool:
        """True while a half-open probe holds the slot."""
        self._refresh()
        return self._probe is not None

    @property
    def open_for(self) -> float:
        """The jittered length of the latest open period, in seconds (0 before it ever opened)."""
        return self._open_for

    def retry_in(self) -> float:
        """Seconds until a call could be let through: 0 unless OPEN."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self._open_until - self._clock())
        return 0.0

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state and counters: the seed's keys first, then extras."""
        state = self.state
        return {
            "state": state.value,
            "failure_count": self.failure_count,
            "total_failures": self.total_failures,
            "total_successes": self.total_successes,
            "opened_count": self.opened_count,
            "retry_in_s": self.retry_in(),
            "probe_in_flight": self._probe is not None,
            "threshold": self.threshold,
            "timeout_s": self.timeout,
        }

    # -- admitting calls -------------------------------------------------------------------

    def allow(self) -> bool:
        """True if a call may go now; in HALF_OPEN this takes the one probe slot."""
        allowed, _ = self._acquire()
        return allowed

    def check(self) -> None:
        """Raise :class:`CircuitOpen` unless a call may go now (see :meth:`allow`)."""
        if not self.allow():
            raise CircuitOpen(self.name, self.retry_in())

    async def wait_ready(self) -> None:
        """Sleep (on Trio's clock) until a call would be let through; never takes the slot.

        Returns at once when CLOSED or HALF_OPEN with the slot free. Several waiters may
        wake together for one probe slot: the one that takes it goes, the others are
        refused (CircuitOpen) and must wait again, which :meth:`admitted` does for them.
        Ends only when ready or cancelled.
        """
        await trio.lowlevel.checkpoint()
        while True:
            state = self.state
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN and self._probe is None:
                return
            if self._changed is None:
                self._changed = trio.Event()
            changed = self._changed
            if state is BreakerState.OPEN:
                with trio.move_on_after(self.retry_in()):
                    await changed.wait()
            else:
                await changed.wait()

    def guard(
        self, *, counts: tuple[type[BaseException], ...] = (ServerError,), force: bool = False
    ) -> _Guard:
        """A context manager: :meth:`check` on entry, then record the outcome on exit.

        An exception matching ``counts`` (also inside an exception group) records a failure;
        a cancellation, or any other BaseException that is not an Exception, gives the probe
        slot back without counting; anything else (no exception, or an exception that is
        not the dependency's fault) records a success. Exceptions always propagate.

        ``force`` lets the call through even when the breaker would refuse it (a heartbeat
        must renew its leases whatever the breaker says); its outcome is recorded all the
        same, by the rules above (an outcome while OPEN changes no state).
        """
        return _Guard(self, counts, force)

    @asynccontextmanager
    async def admitted(
        self, *, counts: tuple[type[BaseException], ...] = (ServerError,)
    ) -> AsyncIterator[None]:
        """``async with breaker.admitted():`` waits until a call may go, then guards it.

        Waiting is :meth:`wait_ready`; the body runs under :meth:`guard`. When several
        waiters wake for one probe slot, the losers wait again here, so no caller has to. A
        CircuitOpen raised by the body itself propagates.
        """
        while True:
            await self.wait_ready()
            entered = False
            try:
                with self.guard(counts=counts):
                    entered = True
                    yield
                return
            except CircuitOpen:
                if entered:
                    raise

    # -- recording outcomes ----------------------------------------------------------------

    def record_success(self) -> None:
        """Count a successful call: resets the failure count; closes a HALF_OPEN breaker."""
        self.total_successes += 1
        state = self.state
        if state is BreakerState.OPEN:
            return
        self.failure_count = 0
        if state is BreakerState.HALF_OPEN:
            self._probe = None
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        """Count a failed call: opens after ``threshold`` in a row; reopens a HALF_OPEN one."""
        self.total_failures += 1
        state = self.state
        if state is BreakerState.OPEN:
            return
        self.failure_count += 1
        if state is BreakerState.HALF_OPEN or self.failure_count >= self.threshold:
            self._open()

    def release(self) -> None:
        """Give the half-open probe slot back without counting an outcome, whoever holds it.

        For a call let through by :meth:`allow` or :meth:`check` that ended without an
        outcome (cancelled); :meth:`guard` gives back only its own slot, by itself.
        """
        self._release(None)

    # -- internals -------------------------------------------------------------------------

    def _acquire(self) -> tuple[bool, int | None]:
        """(allowed, probe token): the token is set when the call took the half-open slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True, None
        if state is BreakerState.OPEN or self._probe is not None:
            return False, None
        self._next_token += 1
        self._probe = self._next_token
        return True, self._probe

    def _release(self, token: int | None) -> None:
        """Free the probe slot: any holder's if ``token`` is None, else only that probe's."""
        if self._probe is not None and (token is None or token == self._probe):
            self._probe = None
            self._wake()

    def _open(self) -> None:
        self._open_for = self.timeout * self._rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        self._open_until = self._clock() + self._open_for
        self._probe = None
        self.opened_count += 1
        self._set(BreakerState.OPEN)

    def _refresh(self) -> None:
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._set(BreakerState.HALF_OPEN)

    def _set(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._wake()
        if old is not new and self._on_change is not None:
            self._on_change(self.name, old, new)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state.value} failures={self.failure_count}>"


class _Guard:
    """The context manager returned by :meth:`CircuitBreaker.guard`."""

    __slots__ = ("_breaker", "_counts", "_force", "_token")

    def __init__(
        self, breaker: CircuitBreaker, counts: tuple[type[BaseException], ...], force: bool
    ) -> None:
        self._breaker = breaker
        self._counts = counts
        self._force = force
        self._token: int | None = None

    def __enter__(self) -> None:
        allowed, self._token = self._breaker._acquire()
        if not allowed and not self._force:
            raise CircuitOpen(self._breaker.name, self._breaker.retry_in())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        breaker = self._breaker
        if exc is None:
            breaker.record_success()
        elif _matches(exc, self._counts):
            breaker.record_failure()
        elif not _is_plain_error(exc):
            if self._token is not None:
                breaker._release(self._token)
        else:
            breaker.record_success()


def _matches(exc: BaseException, counts: tuple[type[BaseException], ...]) -> bool:
    if isinstance(exc, counts):
        return True
    if isinstance(exc, BaseExceptionGroup):
        matched, _ = exc.split(counts)
        return matched is not None
    return False


def _is_plain_error(exc: BaseException) -> bool:
    """True for an Exception (or a group of only Exceptions); False for Cancelled and kin."""
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(Exception)
        return rest is None
    return isinstance(exc, Exception)
