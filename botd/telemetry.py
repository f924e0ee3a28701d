"""Telemetry: what one bot reports about its own events, as metrics, log lines and systemd
notifications.

The components call back into a :class:`Telemetry` (a transition, a breaker changing state,
a call policy's events, a job finishing, a request answered); it updates the bot's
:class:`~botd.metrics.BotMetrics`, writes the key log lines and tells systemd. It holds no
state of its own beyond what it was given, and it never calls back into the agent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from . import logs
from .breaker import BreakerState, CircuitBreaker
from .events import Event
from .lifecycle import State, Transition
from .metrics import BotMetrics
from .outbox import Outbox

__all__ = ["Telemetry"]


class Telemetry:
    """The bot's reactions to its own events.

    Args:
      metrics: the bot's metrics.
      breakers: the bot's circuit breakers by name (read for a breaker's next probe time).
      outbox: the result outbox (its size is a gauge), or None before it exists.
      notifier: a systemd notifier (``botd.sdnotify.Notifier``), or None.
    """

    def __init__(
        self,
        metrics: BotMetrics,
        breakers: Mapping[str, CircuitBreaker],
        *,
        outbox: Outbox | None = None,
        notifier: Any = None,
    ) -> None:
        self.metrics = metrics
        self.breakers = breakers
        self.outbox = outbox
        self.notifier = notifier

    def on_transition(self, t: Transition) -> None:
        self.metrics.on_transition(t.from_state.value, t.to_state.value)
        logs.emit(
            Event.STATE_TRANSITION,
            f"{t.from_state.value} -> {t.to_state.value}: {t.reason}",
            "INFO" if t.to_state is not State.ERROR else "WARNING",
            from_state=t.from_state.value,
            to_state=t.to_state.value,
            reason=t.reason,
            duration_ms=round(t.duration_s * 1000, 3),
        )
        if self.notifier is not None:
            self.notifier.on_transition(t.from_state.value, t.to_state.value)

    def on_breaker_change(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.metrics.set_breaker(name, new.value)
        if new is BreakerState.OPEN:
            breaker = self.breakers.get(name)
            retry = breaker.open_for if breaker is not None else math.nan
            logs.emit(
                Event.BREAKER_OPENED,
                f"circuit breaker {name} opened; next probe in {retry:.1f}s",
                "WARNING",
                breaker=name,
                from_state=old.value,
            )
        elif new is BreakerState.CLOSED:
            logs.emit(Event.BREAKER_CLOSED, f"circuit breaker {name} closed", breaker=name)
        else:
            logs.emit(Event.BREAKER_HALF_OPEN, f"circuit breaker {name} half-open", breaker=name)

    def on_call(self, name: str, event: str) -> None:
        """The call policies' events: each call's metrics, recorded once."""
        if event == "started":
            if name == "registration":
                self.metrics.registration_attempt()
            return
        if event in ("failed", "unrecoverable") and name in self.breakers:
            self.metrics.breaker_failure(name)
        if name == "heartbeat" and event != "cancelled":
            self.metrics.heartbeat("succeeded" if event == "ok" else "failed")

    def on_request(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.metrics.observe_request(endpoint, outcome, seconds)

    def on_job_finished(self, outcome: str, duration: float | None) -> None:
        self.metrics.job_finished(outcome, duration)
        self.outbox_changed()

    def on_in_flight(self, count: int) -> None:
        self.metrics.set_in_flight(count)
        self.outbox_changed()

    def outbox_changed(self) -> None:
        if self.outbox is not None:
            self.metrics.set_outbox_pending(self.outbox.count)
