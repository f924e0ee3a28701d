"""The bot's 8-state lifecycle: the states, the one transition table, and :class:`Lifecycle`.

::

    INITIALIZING -> REGISTERING -> HEALTH_CHECK -> READY <-> PROCESSING
          \\              \\              \\           \\         /
           +--------------+--------------+-----------+-- ERROR -> REGISTERING (recovery)
    every state but STOPPED -> SHUTTING_DOWN -> STOPPED

Decisions:

- ``HEALTH_CHECK -> REGISTERING`` is not allowed: a failed health check goes through
  ``ERROR``, so every lost session is one visible ERROR transition.
- ``INITIALIZING -> STOPPED`` is not allowed: bad config raises before the lifecycle exists,
  and anything that goes wrong after it exists leaves through ``SHUTTING_DOWN`` so that the
  shutdown path (release, deregister, final log line) always runs.
- ``ERROR -> ERROR`` and every other self-transition are illegal: an illegal transition is a
  bug and raises :class:`~botd.errors.InvalidTransition`.

State values are lowercase strings (``"ready"``), as in the seed's metrics document.
"""

from __future__ import annotations

import collections
import datetime as _dt
from collections.abc import Callable, Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import attrs
import trio
import trio_util

from .errors import InvalidTransition
from .timestamps import rfc3339_of

__all__ = [
    "DEFAULT_HISTORY",
    "TRANSITIONS",
    "WORKING_STATES",
    "Lifecycle",
    "State",
    "Transition",
    "TransitionListener",
]

DEFAULT_HISTORY = 50


class State(StrEnum):
    """The 8 lifecycle states; values are the lowercase names used in logs and metrics."""

    INITIALIZING = "initializing"
    REGISTERING = "registering"
    HEALTH_CHECK = "health_check"
    READY = "ready"
    PROCESSING = "processing"
    ERROR = "error"
    SHUTTING_DOWN = "shutting_down"
    STOPPED = "stopped"


WORKING_STATES: frozenset[State] = frozenset(
    {State.INITIALIZING, State.REGISTERING, State.HEALTH_CHECK, State.READY, State.PROCESSING}
)
"""The states from which ERROR is reachable."""

TRANSITIONS: Mapping[State, frozenset[State]] = MappingProxyType(
    {
        State.INITIALIZING: frozenset({State.REGISTERING, State.ERROR, State.SHUTTING_DOWN}),
        State.REGISTERING: frozenset({State.HEALTH_CHECK, State.ERROR, State.SHUTTING_DOWN}),
        State.HEALTH_CHECK: frozenset({State.READY, State.ERROR, State.SHUTTING_DOWN}),
        State.READY: frozenset({State.PROCESSING, State.ERROR, State.SHUTTING_DOWN}),
        State.PROCESSING: frozenset({State.READY, State.ERROR, State.SHUTTING_DOWN}),
        State.ERROR: frozenset({State.REGISTERING, State.SHUTTING_DOWN}),
        State.SHUTTING_DOWN: frozenset({State.STOPPED}),
        State.STOPPED: frozenset(),
    }
)
"""The one table of allowed transitions: ``to in TRANSITIONS[from]``."""


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


@attrs.frozen
class Transition:
    """One recorded state change.

    ``at`` is Trio time (for arithmetic), ``wall_time`` an RFC 3339 UTC string (for display),
    ``duration_s`` the time spent in ``from_state`` before this transition.
    """

    from_state: State
    to_state: State
    reason: str
    at: float
    wall_time: str
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for logs and the status page."""
        return {
            "from": self.from_state.value,
            "to": self.to_state.value,
            "reason": self.reason,
            "at": self.at,
            "wall_time": self.wall_time,
            "duration_s": self.duration_s,
        }


TransitionListener = Callable[[Transition], object]


class Lifecycle:
    """The current state (in a ``trio_util.AsyncValue``), its legal moves and its history.

    Args:
        history: how many transitions to keep (newest last), >= 1.
        clock: monotonic seconds; Trio's clock by default, so construct it inside ``trio.run``.
        wall_clock: the wall clock for ``Transition.wall_time`` (display only).

    Error handling: an illegal transition raises :class:`InvalidTransition` and changes nothing.
    A listener that raises propagates its exception out of :meth:`transition` after the state
    has changed (a listener bug is a bug, not something to swallow).
    """

    def __init__(
        self,
        *,
        history: int = DEFAULT_HISTORY,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], _dt.datetime] = _utc_now,
    ) -> None:
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self._clock = clock
        self._wall_clock = wall_clock
        self._value: trio_util.AsyncValue = trio_util.AsyncValue(State.INITIALIZING)
        self._history: collections.deque[Transition] = collections.deque(maxlen=history)
        self._listeners: list[TransitionListener] = []
        self.started_at: float = clock()
        self.entered_at: float = self.started_at
        self.transition_count = 0

    @property
    def state(self) -> State:
        """The current state."""
        state: State = self._value.value
        return state

    @property
    def value(self) -> Any:
        """The ``trio_util.AsyncValue[State]``: ``await lifecycle.value.wait_value(...)``."""
        return self._value

    @property
    def history(self) -> list[Transition]:
        """The last ``history`` transitions, newest last."""
        return list(self._history)

    @property
    def is_working(self) -> bool:
        """True in the working states (INITIALIZING..PROCESSING), from which ERROR is reachable."""
        return self.state in WORKING_STATES

    @property
    def is_stopped(self) -> bool:
        """True once STOPPED: no transition leaves it."""
        return self.state is State.STOPPED

    def can_transition(self, to: State) -> bool:
        """True when the table allows ``current -> to``."""
        return to in TRANSITIONS[self.state]

    def time_in_state(self) -> float:
        """Seconds spent in the current state so far, on the lifecycle's clock."""
        return self._clock() - self.entered_at

    def add_listener(self, fn: TransitionListener) -> Callable[[], None]:
        """Call ``fn(transition)`` synchronously after each transition; returns a remover."""
        self._listeners.append(fn)

        def remove() -> None:
            if fn in self._listeners:
                self._listeners.remove(fn)

        return remove

    def transition(self, to: State, reason: str) -> Transition:
        """Move to ``to``, record why, notify listeners; return the recorded transition.

        Raises InvalidTransition (changing nothing) when the table does not allow it,
        including a transition to the current state.
        """
        to = State(to)
        old = self.state
        if to not in TRANSITIONS[old]:
            allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "nothing"
            raise InvalidTransition(
                f"illegal transition {old.value} -> {to.value} ({reason}); "
                f"from {old.value} the table allows: {allowed}"
            )
        now = self._clock()
        record = Transition(
            from_state=old,
            to_state=to,
            reason=reason,
            at=now,
            wall_time=rfc3339_of(self._wall_clock()),
            duration_s=now - self.entered_at,
        )
        self._history.append(record)
        self.entered_at = now
        self.transition_count += 1
        self._value.value = to
        for listener in list(self._listeners):
            listener(record)
        return record

    async def wait_for(self, *states: State) -> State:
        """Wait until the state is one of ``states`` (returns at once if it already is)."""
        if not states:
            raise ValueError("wait_for() needs at least one state")
        wanted = frozenset(states)
        result: State = await self._value.wait_value(lambda s: s in wanted)
        return result

    def snapshot(self) -> dict[str, Any]:
        """JSON-able view for the status page: state, time in it, and the history."""
        return {
            "state": self.state.value,
            "time_in_state_s": self.time_in_state(),
            "transitions": [t.as_dict() for t in self._history],
        }

    def __repr__(self) -> str:
        return f"<Lifecycle {self.state.value} for {self.time_in_state():.3f}s>"
