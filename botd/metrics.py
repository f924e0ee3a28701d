"""Every Prometheus metric of one bot, on a registry of its own.

One :class:`BotMetrics` per agent: several agents in one process (the demo's fleet) each have
their own registry, so their series never collide. Names have the ``botd_`` prefix, values are
in base units (seconds), counters end in ``_total``, labels are few and bounded. Every label
value that is known up front is created at zero, so dashboards see zeros, not gaps.

The metrics (``docs/operations.md`` has the full table):

==========================================================  =========  ==========================
``botd_info{version,bot_id}``                               info       always 1
``botd_state{state}``                                       gauge      1 for the current state
``botd_state_transitions_total{from_state,to_state}``       counter
``botd_jobs_total{outcome}``                                counter    see :data:`JOB_OUTCOMES`
``botd_job_duration_seconds``                               histogram
``botd_jobs_in_flight``                                     gauge
``botd_circuit_breaker_state{breaker,state}``               gauge      1 for the current state
``botd_circuit_breaker_failures_total{breaker}``            counter
``botd_registration_attempts_total``                        counter
``botd_heartbeats_total{outcome}``                          counter    succeeded/failed
``botd_server_request_duration_seconds{endpoint,outcome}``  histogram
``botd_outbox_pending``                                     gauge
``botd_outbox_lease_lost_total``                            counter
``botd_acks_refused_total{status}``                         counter    400/413: never resent
``botd_start_time_seconds``                                 gauge      Unix time
``process_*``, ``python_gc_*``                              the process and gc collectors
==========================================================  =========  ==========================
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector

from .breaker import BreakerState
from .client import OUTCOMES
from .lifecycle import State
from .outcomes import JOB_OUTCOMES

__all__ = [
    "BREAKERS",
    "BREAKER_STATES",
    "HEARTBEAT_OUTCOMES",
    "JOB_OUTCOMES",
    "REFUSED_ACK_STATUSES",
    "REQUEST_OUTCOMES",
    "STATES",
    "BotMetrics",
]

#: The lifecycle states' values (``"ready"``), in :class:`~botd.lifecycle.State`'s order.
STATES: tuple[str, ...] = tuple(state.value for state in State)
#: The bot's circuit breakers, one per loop that calls the server (also their label values).
BREAKERS: tuple[str, ...] = ("registration", "heartbeat", "job_claim", "results")
#: The circuit breaker states' values, in :class:`~botd.breaker.BreakerState`'s order.
BREAKER_STATES: tuple[str, ...] = tuple(state.value for state in BreakerState)
HEARTBEAT_OUTCOMES: tuple[str, ...] = ("succeeded", "failed")
#: The HTTP statuses of an ack that the server will never take (botd.results).
REFUSED_ACK_STATUSES: tuple[str, ...] = ("400", "413")
#: The outcomes of a server request, as the client reports them (:data:`botd.client.OUTCOMES`).
REQUEST_OUTCOMES: tuple[str, ...] = OUTCOMES

JOB_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
REQUEST_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _check(what: str, value: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return value


class BotMetrics:
    """The metrics of one bot on its own :class:`~prometheus_client.CollectorRegistry`.

    Args:
        bot_id, version: the ``botd_info`` labels.
        registry: a registry to register on; a new one by default. Two ``BotMetrics`` on one
            registry collide (``ValueError: Duplicated timeseries``): give each bot its own.
        transitions: ``(from_state, to_state)`` pairs to create at zero, e.g. the lifecycle's
            transition table.
        breakers: breaker names to create at zero (closed); others are added when first set.
        endpoints: server endpoints whose request histograms are created at zero.
        process_collectors: register the process and gc collectors on this registry.

    Methods raise ``ValueError`` for a state, breaker state or outcome not in the module's
    constants: a typo there is a bug, and an unbounded label would be worse. Every method is
    cheap and thread-safe (prometheus_client locks), and none touches I/O.
    """

    def __init__(
        self,
        bot_id: str,
        version: str,
        *,
        registry: CollectorRegistry | None = None,
        transitions: Iterable[tuple[str, str]] = (),
        breakers: Iterable[str] = BREAKERS,
        endpoints: Iterable[str] = (),
        process_collectors: bool = True,
    ) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.bot_id = bot_id
        counter = functools.partial(Counter, registry=r)
        gauge = functools.partial(Gauge, registry=r)
        histogram = functools.partial(Histogram, registry=r)
        self.info = Info("botd", "Static facts about this bot.", registry=r)
        self.info.info({"version": version, "bot_id": bot_id})
        self.state = gauge("botd_state", "1 for the bot's current lifecycle state.", ["state"])
        self.state_transitions = counter(
            "botd_state_transitions", "Lifecycle state transitions.", ["from_state", "to_state"]
        )
        self.jobs = counter("botd_jobs", "Jobs finished, by outcome.", ["outcome"])
        self.job_duration = histogram(
            "botd_job_duration_seconds",
            "Time from a job's start to its outcome.",
            buckets=JOB_DURATION_BUCKETS,
        )
        self.jobs_in_flight = gauge(
            "botd_jobs_in_flight", "Jobs running now, and those whose result is being stored."
        )
        self.breaker_state = gauge(
            "botd_circuit_breaker_state",
            "1 for each circuit breaker's current state.",
            ["breaker", "state"],
        )
        self.breaker_failures = counter(
            "botd_circuit_breaker_failures",
            "Failures counted by each circuit breaker.",
            ["breaker"],
        )
        self.registration_attempts = counter("botd_registration_attempts", "Registration attempts.")
        self.heartbeats = counter("botd_heartbeats", "Heartbeats sent, by outcome.", ["outcome"])
        self.request_duration = histogram(
            "botd_server_request_duration_seconds",
            "Requests to the main server, by endpoint and outcome.",
            ["endpoint", "outcome"],
            buckets=REQUEST_DURATION_BUCKETS,
        )
        self.outbox_pending = gauge(
            "botd_outbox_pending", "Results in the outbox not yet acknowledged."
        )
        self.outbox_lease_lost_total = counter(
            "botd_outbox_lease_lost",
            "Outbox results dropped because the server said their lease was lost.",
        )
        self.acks_refused = counter(
            "botd_acks_refused",
            "Results the server refused (400/413): never sent again.",
            ["status"],
        )
        self.start_time = gauge("botd_start_time_seconds", "When this bot started, in Unix time.")
        self.start_time.set(time.time())
        if process_collectors:
            ProcessCollector(registry=r)
            GCCollector(registry=r)

        self._current_state: str | None = None
        self._breakers: dict[str, str] = {}
        # The labelled children of the per-job and per-request series, looked up once: a
        # job or a request then costs a dict lookup and an increment.
        self._jobs_by_outcome = {o: self.jobs.labels(outcome=o) for o in JOB_OUTCOMES}
        self._requests: dict[tuple[str, str], Any] = {}
        for state in STATES:
            self.state.labels(state=state).set(0)
        for from_state, to_state in transitions:
            self.state_transitions.labels(
                from_state=_check("state", from_state, STATES),
                to_state=_check("state", to_state, STATES),
            )
        for outcome in JOB_OUTCOMES:
            self.jobs.labels(outcome=outcome)
        for outcome in HEARTBEAT_OUTCOMES:
            self.heartbeats.labels(outcome=outcome)
        for status in REFUSED_ACK_STATUSES:
            self.acks_refused.labels(status=status)
        for name in breakers:
            self.set_breaker(name, "closed")
        for endpoint in endpoints:
            for outcome in REQUEST_OUTCOMES:
                self.request_duration.labels(endpoint=endpoint, outcome=outcome)

    def set_state(self, state: str) -> None:
        """Make ``state`` the one with ``botd_state`` 1; every other state is 0."""
        state = _check("state", str(state), STATES)
        if self._current_state is not None:
            self.state.labels(state=self._current_state).set(0)
        self.state.labels(state=state).set(1)
        self._current_state = state

    def on_transition(self, from_state: str, to_state: str) -> None:
        """Count one transition and make ``to_state`` the current state."""
        from_state = _check("state", str(from_state), STATES)
        to_state = _check("state", str(to_state), STATES)
        self.state_transitions.labels(from_state=from_state, to_state=to_state).inc()
        self.set_state(to_state)

    def set_breaker(self, name: str, state: str) -> None:
        """Make ``state`` the breaker's current state (1), its other states 0."""
        state = _check("breaker state", str(state), BREAKER_STATES)
        if name not in self._breakers:
            self.breaker_failures.labels(breaker=name)
            for other in BREAKER_STATES:
                self.breaker_state.labels(breaker=name, state=other).set(0)
        else:
            self.breaker_state.labels(breaker=name, state=self._breakers[name]).set(0)
        self.breaker_state.labels(breaker=name, state=state).set(1)
        self._breakers[name] = state

    def breaker_failure(self, name: str) -> None:
        """Count one failure recorded by breaker ``name``."""
        if name not in self._breakers:
            self.set_breaker(name, "closed")
        self.breaker_failures.labels(breaker=name).inc()

    def job_finished(self, outcome: str, duration_s: float | None) -> None:
        """Count one finished job; observe its duration unless it is None."""
        child = self._jobs_by_outcome.get(outcome)
        if child is None:
            child = self.jobs.labels(outcome=_check("job outcome", outcome, JOB_OUTCOMES))
        child.inc()
        if duration_s is not None:
            self.job_duration.observe(max(0.0, duration_s))

    def set_in_flight(self, n: int) -> None:
        """Set the number of jobs running now."""
        self.jobs_in_flight.set(n)

    def observe_request(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Observe one server request; ``outcome`` from :func:`botd.client.outcome_of`."""
        child = self._requests.get((endpoint, outcome))
        if child is None:
            outcome = _check("request outcome", outcome, REQUEST_OUTCOMES)
            child = self.request_duration.labels(endpoint=endpoint, outcome=outcome)
            self._requests[(endpoint, outcome)] = child
        child.observe(max(0.0, seconds))

    def heartbeat(self, outcome: str) -> None:
        """Count one heartbeat, ``succeeded`` or ``failed``."""
        self.heartbeats.labels(
            outcome=_check("heartbeat outcome", outcome, HEARTBEAT_OUTCOMES)
        ).inc()

    def registration_attempt(self) -> None:
        """Count one registration attempt."""
        self.registration_attempts.inc()

    def set_outbox_pending(self, n: int) -> None:
        """Set the number of results waiting in the outbox."""
        self.outbox_pending.set(n)

    def outbox_lease_lost(self, n: int = 1) -> None:
        """Count results dropped from the outbox because their lease was lost."""
        self.outbox_lease_lost_total.inc(n)

    def ack_refused(self, status: int) -> None:
        """Count one ack the server refused with ``status`` (400 or 413)."""
        self.acks_refused.labels(
            status=_check("refused ack status", str(status), REFUSED_ACK_STATUSES)
        ).inc()

    def render(self) -> tuple[bytes, str]:
        """Return the Prometheus text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
