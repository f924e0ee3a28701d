"""The lifecycle driver: registration, the health check and each session, until the drain.

::

    lifecycle driver   REGISTERING -> HEALTH_CHECK -> READY, ERROR -> REGISTERING ...
    └── session nursery   heartbeat, claimer, health monitor (cancelled on ERROR)

:class:`Driver` owns the session: it registers (through the :class:`~botd.registration.Registrar`),
waits for the server's health, runs one session nursery at a time, and backs off between
sessions that churn. It also keeps READY and PROCESSING in step with the running jobs and
answers the session loops' callbacks (the leases held, the heartbeat's stats, cancelled and
lost leases, jobs to release). The agent (``botd.agent``) builds it and starts it in its root
nursery; :meth:`Driver.begin_drain` is how the shutdown stops it from starting anything new.
"""

from __future__ import annotations

from typing import Any

import trio

from . import logs
from .backoff import Backoff
from .call_policy import CallPolicy
from .claiming import Claimer
from .client import ServerClient
from .config import BotConfig
from .events import Event
from .handlers import kinds_of
from .health import HealthMonitor
from .heartbeat import Heartbeat
from .lifecycle import Lifecycle, State
from .models import Ack, ClaimedJob, HeartbeatResponse, SessionHolder
from .outbox import Outbox
from .outcomes import RELEASED
from .registration import Registrar, StartupExhausted
from .results import ResultReporter
from .session import Session, SessionLost
from .telemetry import Telemetry
from .workers import JobRunner

__all__ = ["IDLE_GRACE_S", "STABLE_SESSION_BEATS", "Driver"]

#: How long a bot stays PROCESSING after its last job ended, waiting for the next one.
IDLE_GRACE_S = 0.25
#: A session that got this many heartbeats through was stable: losing it is not churn.
STABLE_SESSION_BEATS = 3


class Driver:
    """Drives one bot's lifecycle through its sessions (see the module docstring)."""

    def __init__(
        self,
        config: BotConfig,
        *,
        lifecycle: Lifecycle,
        registrar: Registrar,
        health: HealthMonitor,
        client: ServerClient,
        calls: dict[str, CallPolicy],
        runner: JobRunner,
        reporter: ResultReporter,
        outbox: Outbox,
        backoff: Backoff,
        telemetry: Telemetry,
    ) -> None:
        self.config = config
        self.lifecycle = lifecycle
        self.registrar = registrar
        self.health = health
        self.client = client
        self.calls = calls
        self.runner = runner
        self.reporter = reporter
        self._outbox = outbox
        self._backoff = backoff
        self._telemetry = telemetry
        self.session: Session | None = None
        self._draining = False
        self._claim_scope = trio.CancelScope()
        self._conflicts: set[tuple[str, int]] = set()  # other processes seen with our bot id
        self._root: trio.Nursery | None = None
        registrar.on_conflict = self._is_conflict  # a register refused: 409 bot_id_in_use

    @property
    def state(self) -> State:
        return self.lifecycle.state

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self) -> None:
        """No new session or claim from now on; the claim in flight is cancelled, and the
        held (prefetched) jobs are released: none of them starts after the drain began."""
        self._draining = True
        self._claim_scope.cancel()
        self._release_held()

    def _release_held(self) -> None:
        held = self.runner.take_held()
        if held:
            self._release_orphans(held)

    def held_leases(self) -> list[str]:
        """Every lease this bot holds: its running and held (prefetched) jobs and its
        unreported results."""
        return sorted(set(self.runner.leases()) | set(self._outbox.leases()))

    def _transition(self, to: State, reason: str) -> None:
        if self._draining:
            return  # the shutdown owns the lifecycle now
        self.lifecycle.transition(to, reason)

    async def run(self, root: trio.Nursery) -> None:
        """REGISTERING -> HEALTH_CHECK -> READY, and ERROR -> REGISTERING, until the drain.

        The wait in ERROR is a full-jitter backoff on the sessions in a row that churned:
        ended before ``STABLE_SESSION_BEATS`` heartbeats got through, never got ready, or
        were taken by another process with our bot id. A stable session starts it over.
        Raises :class:`~botd.registration.StartupExhausted` when the server stayed
        unavailable for MAX_STARTUP_ATTEMPTS.
        """
        cfg = self.config
        self._root = root
        self._transition(State.REGISTERING, "starting")
        ever_ready = False
        churn = 0
        while True:
            if self._draining:
                await trio.sleep_forever()  # no new session once the drain began
            try:
                session = await self.registrar.register(self.held_leases(), startup=not ever_ready)
            except StartupExhausted as exc:
                logs.emit(Event.STARTUP_EXHAUSTED, str(exc), "ERROR")
                raise
            self.session = session
            self._transition(State.HEALTH_CHECK, "registered")
            with trio.move_on_after(cfg.health_check_timeout) as scope:
                await self.health.wait_healthy()
            if self._draining:
                await trio.sleep_forever()
            if scope.cancelled_caught:
                reason = f"health check timed out after {cfg.health_check_timeout:g}s"
                reason += f": {self.health.last_error}" if self.health.last_error else ""
            else:
                ever_ready = True
                self._transition(State.READY, "healthy")
                self.sync_processing()
                lost, beats = await self._run_session(session)
                reason = str(lost)
                if not self._is_conflict(lost.holder) and beats >= STABLE_SESSION_BEATS:
                    churn = 0
            churn += 1
            self._transition(State.ERROR, reason)
            # ERROR has a deadline too: recovery starts within BOT_ERROR_TIMEOUT.
            await trio.sleep(min(self._backoff.delay(churn - 1), cfg.error_timeout))
            self._transition(State.REGISTERING, "recovering from error")

    async def _run_session(self, session: Session) -> tuple[SessionLost, int]:
        """Run the session nursery until the session is lost; return why, and how many
        heartbeats got through in it."""
        lost = SessionLost("session ended")
        heartbeat = Heartbeat(
            client=self.client,
            calls=self.calls["heartbeat"],
            interval=self.config.heartbeat_interval_ms / 1000,
            leases=self.held_leases,
            state=lambda: self.state.value,
            stats=self._heartbeat_stats,
            on_answer=self._on_heartbeat_answer,
        )
        claimer = Claimer(
            client=self.client,
            calls=self.calls["job_claim"],
            runner=self.runner,
            reporter=self.reporter,
            healthy=self.health.healthy,
            outbox_full=self._outbox_full,
            outbox_not_full=self._outbox_not_full,
            wait_s=self.config.claim_wait,
            kinds=self.claim_kinds(),
            on_orphans=self._release_orphans,
            draining=lambda: self._draining,
            check_health=self.health.ensure_fresh,
        )
        self._claim_scope = trio.CancelScope()

        async def claim() -> None:
            with self._claim_scope:
                await claimer.run(session)

        try:
            async with trio.open_nursery() as session_nursery:
                session_nursery.start_soon(heartbeat.run, session)
                session_nursery.start_soon(claim)
                session_nursery.start_soon(self.health.run)
        except* SessionLost as group:
            first = group.exceptions[0]
            assert isinstance(first, SessionLost)
            lost = first
        # Held jobs do not outlive their session: they go back to the queue (released).
        self._release_held()
        if self._draining:
            await trio.sleep_forever()  # the shutdown cancels the driver when it is done
        return lost, heartbeat.beats

    def claim_kinds(self) -> tuple[str, ...] | None:
        """The job kinds this bot claims: BOT_KINDS, else the kinds its handler takes
        (:func:`~botd.handlers.kinds_of`; None: every kind)."""
        return self.config.kinds or kinds_of(self.runner.handler)

    def _is_conflict(self, holder: SessionHolder | None) -> bool:
        """True when another process holds our bot id; reported once per process."""
        if holder is None:
            return False
        them = (holder.hostname, holder.pid)
        if them == (self.registrar.hostname, self.registrar.pid):
            return False  # our own newer session
        if them not in self._conflicts:
            self._conflicts.add(them)
            logs.emit(
                Event.BOT_ID_CONFLICT,
                f"another process uses BOT_ID {self.config.bot_id!r}: host {holder.hostname!r},"
                f" pid {holder.pid}, registered at {holder.since or 'an unknown time'}; the"
                " server gives the id to one live session at a time (or the two keep replacing"
                " each other's session): give each bot a BOT_ID of its own; this bot keeps"
                " trying to register, and gets the id once that session ends",
                "ERROR",
                holder_hostname=holder.hostname,
                holder_pid=holder.pid,
                holder_since=holder.since,
            )
        return True

    # --- callbacks the session loops call ------------------------------------------------

    def _outbox_full(self) -> bool:
        return self._outbox.full

    async def _outbox_not_full(self) -> None:
        await self._outbox.wait_not_full()

    def _heartbeat_stats(self) -> dict[str, Any]:
        return {
            "jobs_in_flight": len(self.runner.running),
            "total_jobs_processed": self.runner.total_processed,
            "outbox_pending": self._outbox.count,
        }

    def _on_heartbeat_answer(self, answer: HeartbeatResponse) -> None:
        for lease_id in answer.cancel_leases:
            if self.runner.cancel(lease_id, "cancelled"):
                logs.emit(
                    Event.JOB_CANCEL_REQUESTED, "the server cancelled a job", lease_id=lease_id
                )
        for lease_id in answer.lost_leases:
            if self.runner.cancel(lease_id, "lost"):
                logs.emit(
                    Event.LEASE_LOST,
                    "the server gave this job to another bot; stopping it",
                    "WARNING",
                    lease_id=lease_id,
                )

    def _release_orphans(self, jobs: list[ClaimedJob]) -> None:
        """Jobs a claim brought back that will not run here: release them through the outbox."""
        root = self._root
        assert root is not None
        outbox = self._outbox

        async def release() -> None:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                for job in jobs:
                    await outbox.put(job.job_id, Ack(lease_id=job.lease_id, outcome=RELEASED))
                    self._telemetry.on_job_finished(RELEASED, None)
            logs.emit(
                Event.JOBS_RELEASED, f"released {len(jobs)} job(s) not started", count=len(jobs)
            )

        root.start_soon(release)

    async def watch_in_flight(self) -> None:
        """READY <-> PROCESSING follows the number of running jobs.

        Held (prefetched) jobs count too, but need no watch of their own: a job is held only
        while every slot is taken, and starts the moment one frees, so running + held > 0
        exactly when running > 0.

        Back to READY only once no job has run for IDLE_GRACE_S, so a busy bot does not
        flap between the two states between one job and the next.
        """
        async for count in self.runner.in_flight.eventual_values():
            self._telemetry.on_in_flight(count)
            if count == 0:
                with trio.move_on_after(IDLE_GRACE_S):
                    await self.runner.in_flight.wait_value(lambda n: n > 0)
            self.sync_processing()

    def sync_processing(self) -> None:
        busy = bool(self.runner.running or self.runner.held)
        if busy and self.state is State.READY:
            self._transition(State.PROCESSING, "job started")
        elif not busy and self.state is State.PROCESSING:
            self._transition(State.READY, "all jobs done")
