"""The agent: the one place that wires botd's components and opens the nursery tree.

::

    root nursery (Agent.run)
    ├── signals            first SIGTERM/SIGINT drains, second skips the drain, third exits now
    ├── ops endpoint       /healthz /readyz /metrics /status (if BOT_OPS_ADDR is not "off")
    ├── canary, watchdog   event-loop lag; systemd WATCHDOG=1
    ├── jobs nursery       JobRunner: one cancel scope per job; survives a lost session
    ├── result reporter    sends acks that no claim carried
    └── lifecycle driver   REGISTERING -> HEALTH_CHECK -> READY, ERROR -> REGISTERING ...
        └── session nursery   heartbeat, claimer, health monitor (cancelled on ERROR)

Components do not import each other: they get what they need through their constructors
here. Several agents can run in one Trio run (the demo does): nothing here is global.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import trio
from loguru import logger

from . import logs
from ._version import __version__
from .backoff import Backoff
from .breaker import BreakerState, CircuitBreaker
from .call_policy import CallPolicy
from .claiming import Claimer
from .client import ServerClient
from .config import BotConfig, redacted
from .errors import ConfigError, StateDirError, Unrecoverable, leaf_exceptions
from .exit_codes import ExitCode
from .handlers import GROUPS_DIR, Handler, build_handler, reap_leftover_groups
from .health import HealthMonitor
from .heartbeat import Heartbeat
from .lifecycle import TRANSITIONS, Lifecycle, State, Transition
from .metrics import BotMetrics
from .models import Ack, ClaimedJob, HeartbeatResponse, SessionHolder
from .ops import Canary, OpsServer, build_status_document
from .outbox import Outbox
from .registration import Registrar, StartupExhausted
from .results import ResultReporter
from .session import Session, SessionLost
from .signals import watch_signals
from .workers import JobRunner

__all__ = ["BREAKER_NAMES", "Agent"]

BREAKER_NAMES = ("registration", "heartbeat", "job_claim", "results")

#: How long a bot stays PROCESSING after its last job ended, waiting for the next one.
IDLE_GRACE_S = 0.25
#: A session that got this many heartbeats through was stable: losing it is not churn.
STABLE_SESSION_BEATS = 3
#: Of the cleanup after the drain (BOT_CLEANUP_TIMEOUT), deregistering gets at most this long.
DEREGISTER_TIMEOUT_S = 2.0


class Agent:
    """One bot: its config, its components and its lifecycle.

    Args:
      config: the effective configuration.
      transport: an httpx transport to reach the server with (tests, the demo).
      handler: the job handler; built from the config when None.
      outbox: the result outbox; opened from ``config.state_dir`` when None.
      install_signals: watch SIGTERM/SIGINT (only the main thread can).
      rng: the random source for jitter (seed it for reproducible tests).
      notifier: a systemd notifier (``botd.sdnotify.Notifier``), or None.

    :meth:`run` returns the process exit code. Call :meth:`request_shutdown` to drain
    (what a signal does).
    """

    def __init__(
        self,
        config: BotConfig,
        *,
        transport: Any = None,
        handler: Handler | None = None,
        outbox: Outbox | None = None,
        install_signals: bool = False,
        rng: random.Random | None = None,
        notifier: Any = None,
    ) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._install_signals = install_signals
        self._notifier = notifier
        self._outbox = outbox
        self._handler = handler
        self._transport = transport
        self.started_wall = time.time()
        self.lifecycle = Lifecycle(history=config.transition_history)
        self.metrics = BotMetrics(
            config.bot_id,
            __version__,
            transitions=[(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets],
            breakers=BREAKER_NAMES,
        )
        self.metrics.set_state(self.lifecycle.state.value)
        self.breakers = {
            name: CircuitBreaker(
                name,
                threshold=config.circuit_breaker_threshold,
                timeout=config.circuit_breaker_timeout,
                jitter=config.circuit_breaker_jitter,
                rng=self._rng,
                on_change=self._on_breaker_change,
            )
            for name in BREAKER_NAMES
        }
        token = config.token.reveal() if config.token is not None else None
        if token:
            logs.add_secret(token)
        self.client = ServerClient(
            config.main_server_url,
            token=token,
            connect_timeout=config.connect_timeout,
            request_timeout=config.request_timeout,
            claim_margin=config.claim_timeout_margin,
            transport=transport,
            observe=self._observe_request,
        )
        self._backoff = Backoff(config.retry_base_delay, config.retry_max_delay, rng=self._rng)
        #: One call policy per loop (botd.call_policy): how each loop's server calls go.
        self.calls = {
            "registration": self._policy(
                "registration", "registration_failed", loses_session=False
            ),
            "heartbeat": self._policy("heartbeat", "heartbeat_failed", backoff=False, hold=False),
            "job_claim": self._policy("job_claim", "claim_failed"),
            "results": self._policy("results", "ack_failed"),
        }
        self.health = HealthMonitor(
            self.client,
            config.health_interval,
            calls=CallPolicy("health", observe=self._on_call, loses_session=False),
        )
        self.session: Session | None = None
        self.exit_code: ExitCode = ExitCode.OK
        self._shutdown = trio.Event()
        self._skip_drain = trio.Event()
        self._draining = False
        self._root: trio.Nursery | None = None
        self._canary = Canary()
        self._conflicts: set[tuple[str, int]] = set()  # other processes seen with our bot id
        self.lifecycle.add_listener(self._on_transition)
        # Built in run(), once the outbox and the handler exist.
        self.runner: JobRunner
        self.reporter: ResultReporter
        self.registrar: Registrar

    # --- public surface -----------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.lifecycle.state

    @property
    def stopped(self) -> bool:
        return self.lifecycle.is_stopped

    def request_shutdown(self, *, skip_drain: bool = False) -> None:
        """Begin the drain (idempotent); ``skip_drain`` cancels running jobs at once."""
        self._shutdown.set()
        if skip_drain:
            self._skip_drain.set()

    def on_signal(self, count: int, name: str) -> None:
        """First signal drains, second skips the drain, third stops everything now."""
        if count == 1:
            self.request_shutdown()
        elif count == 2:
            logger.bind(event="drain_skipped").warning("second {}: skipping the drain", name)
            self.request_shutdown(skip_drain=True)
        elif self._root is not None:
            logger.bind(event="exit_now").error("third {}: exiting without cleanup", name)
            self.exit_code = ExitCode.FAILURE
            self._root.cancel_scope.cancel()

    def loop_lag(self) -> float:
        return self._canary.loop_lag()

    def status_document(self) -> dict[str, Any]:
        """The seed's metrics document (exact keys first) and more, for ``/status``."""
        runner = getattr(self, "runner", None)
        outbox = self._outbox
        doc = build_status_document(
            bot_id=self.config.bot_id,
            state=self.state.value,
            version=__version__,
            uptime_seconds=time.time() - self.started_wall,
            startup_attempts=self.registrar.attempts if hasattr(self, "registrar") else 0,
            total_jobs_processed=runner.total_processed if runner else 0,
            circuit_breakers=self.breakers,
            jobs_in_flight=len(runner.running) if runner else 0,
            outbox_pending=outbox.count if outbox is not None else 0,
            transitions=self.lifecycle.history,
            config=redacted(self.config),
        )
        for name, breaker in self.breakers.items():
            doc["circuit_breakers"][name] = breaker.snapshot()
        doc["session_id"] = self.session.session_id if self.session else None
        doc["server_healthy"] = self.health.healthy.value
        doc["server_error"] = self.health.last_error
        doc["time_in_state_s"] = round(self.lifecycle.time_in_state(), 3)
        return doc

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Run the bot until it stops; return the exit code.

        Ends when: a drain completes (0), the server stayed unavailable for
        MAX_STARTUP_ATTEMPTS (69), the state dir or the token is unusable (78), or a bug
        in an infrastructure task (70, after releasing what it can).
        """
        with logs.bind_agent(self.config.bot_id, lambda: self.state.value):
            try:
                await self._open_resources()
            except (StateDirError, ConfigError) as exc:
                logger.bind(event="startup_failed", error=str(exc)).error("cannot start: {}", exc)
                self.exit_code = ExitCode.CONFIG
                self.lifecycle.transition(State.SHUTTING_DOWN, f"cannot start: {exc}")
                self.lifecycle.transition(State.STOPPED, "nothing was started")
                return int(self.exit_code)
            try:
                async with trio.open_nursery() as root:
                    self._root = root
                    await self._start_services(root)
                    task_status.started()
                    root.start_soon(self._guarded, "driver", self._drive)
                    await self._shutdown.wait()
                    await self._shut_down()
                    root.cancel_scope.cancel()
            finally:
                await self._close_resources()
        return int(self.exit_code)

    # --- wiring -------------------------------------------------------------------------

    async def _open_resources(self) -> None:
        cfg = self.config
        if self._handler is None:
            self._handler = build_handler(
                cfg.handler,
                processing_duration_ms=cfg.processing_duration_ms,
                failure_rate=cfg.failure_rate,
                exec_command=cfg.exec_command,
                exec_shell=cfg.exec_shell,
                exec_kill_grace=cfg.exec_kill_grace,
                python_handler=cfg.python_handler or "",
                state_dir=cfg.state_dir,
            )
        if self._outbox is None:
            self._outbox = await Outbox.open(cfg.state_dir, max_pending=cfg.outbox_max)
        if cfg.state_dir is not None and cfg.handler == "exec":
            # The state dir is ours now (locked): stop what a SIGKILLed run left running.
            groups = cfg.state_dir / GROUPS_DIR
            killed = await trio.to_thread.run_sync(reap_leftover_groups, groups)
            if killed:
                logs.emit(
                    "exec_leftovers_killed",
                    f"killed {killed} process(es) that exec jobs of an earlier run left",
                    "WARNING",
                    count=killed,
                )
        self.runner = JobRunner(
            handler=self._handler,
            outbox=self._outbox,
            concurrency=cfg.concurrency,
            job_timeout=cfg.job_timeout,
            on_finished=self._on_job_finished,
        )
        self.reporter = ResultReporter(
            client=self.client,
            outbox=self._outbox,
            calls=self.calls["results"],
            on_lease_lost=self.metrics.outbox_lease_lost,
        )
        self.registrar = Registrar(
            client=self.client,
            calls=self.calls["registration"],
            bot_id=cfg.bot_id,
            version=__version__,
            capacity=cfg.concurrency,
            labels=dict(cfg.labels),
            max_startup_attempts=cfg.max_startup_attempts,
            attempt_timeout=cfg.register_timeout,
        )
        self.metrics.set_outbox_pending(self._outbox.count)
        if self._outbox.count:
            logger.bind(event="outbox_recovered", pending=self._outbox.count).info(
                "{} result(s) from an earlier run wait to be reported", self._outbox.count
            )

    async def _close_resources(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.client.aclose()
            if self._outbox is not None:
                await self._outbox.close()

    async def _start_services(self, root: trio.Nursery) -> None:
        if self._install_signals:
            await root.start(watch_signals, self.on_signal)
        await root.start(self._canary.run)
        if self.config.ops_addr != "off":
            ops = OpsServer(self.config.ops_addr, self, self.metrics.render)
            await root.start(self._guarded_start, "ops", ops.run)
        if self._notifier is not None:
            root.start_soon(self._guarded, "watchdog", self._notifier.run_watchdog)
        await root.start(self.runner.run)
        root.start_soon(self._guarded, "results", self.reporter.run)
        root.start_soon(self._watch_in_flight)

    async def _guarded(self, name: str, fn: Callable[[], Any]) -> None:
        """Run an infrastructure task. A 401/403 from the server in it stops the bot with
        exit 78; a bug in it is logged and stops the bot with exit 70."""
        try:
            await fn()
        except Exception as exc:
            refused = _unrecoverable(exc)
            if refused is not None:
                self._refused(refused)
            else:
                self._crash(name, exc)

    def _refused(self, exc: Unrecoverable) -> None:
        """The server refused this bot (401/403): retrying will not help. Drain and exit 78."""
        logs.emit("unrecoverable", f"the server refused this bot: {exc}", "ERROR")
        if self.exit_code == ExitCode.OK:
            self.exit_code = ExitCode.CONFIG
        self.request_shutdown()

    async def _guarded_start(
        self, name: str, fn: Any, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await fn(task_status=task_status)
        except ConfigError as exc:  # e.g. BOT_OPS_ADDR cannot be bound
            logs.emit("startup_failed", f"cannot start: {exc}", "ERROR", task=name)
            self.exit_code = ExitCode.CONFIG
            self.request_shutdown(skip_drain=True)
            task_status.started()
        except Exception as exc:
            self._crash(name, exc)

    def _crash(self, name: str, exc: BaseException) -> None:
        logs.emit(
            "internal_error",
            f"internal error in the {name} task: {type(exc).__name__}: {exc}",
            "CRITICAL",
            exc=exc,
            task=name,
        )
        if self.exit_code == ExitCode.OK:
            self.exit_code = ExitCode.SOFTWARE
        self.request_shutdown(skip_drain=True)

    # --- the lifecycle driver -----------------------------------------------------------

    def _transition(self, to: State, reason: str) -> None:
        if self._draining:
            return  # the shutdown owns the lifecycle now
        self.lifecycle.transition(to, reason)

    async def _drive(self) -> None:
        """REGISTERING -> HEALTH_CHECK -> READY, and ERROR -> REGISTERING, until the drain.

        The wait in ERROR is a full-jitter backoff on the sessions in a row that churned:
        ended before ``STABLE_SESSION_BEATS`` heartbeats got through, never got ready, or
        were taken by another process with our bot id. A stable session starts it over.
        """
        cfg = self.config
        self._transition(State.REGISTERING, "starting")
        ever_ready = False
        churn = 0
        while True:
            if self._draining:
                await trio.sleep_forever()  # no new session once the drain began
            try:
                session = await self.registrar.register(self._held_leases(), startup=not ever_ready)
            except StartupExhausted as exc:
                logs.emit("startup_exhausted", str(exc), "ERROR")
                self.exit_code = ExitCode.UNAVAILABLE
                self.request_shutdown()
                return
            self.session = session
            self._transition(State.HEALTH_CHECK, f"registered, session {session.session_id}")
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
                self._sync_processing()
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
            leases=self._held_leases,
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
            kinds=self.config.kinds or None,
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
        if self._draining:
            await trio.sleep_forever()  # the shutdown cancels the driver when it is done
        return lost, heartbeat.beats

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
                "bot_id_conflict",
                f"another process uses BOT_ID {self.config.bot_id!r}: host {holder.hostname!r},"
                f" pid {holder.pid}, registered at {holder.since or 'an unknown time'}; the two"
                " keep replacing each other's session: give each bot a BOT_ID of its own",
                "ERROR",
                holder_hostname=holder.hostname,
                holder_pid=holder.pid,
                holder_since=holder.since,
            )
        return True

    # --- shutdown -----------------------------------------------------------------------

    async def _shut_down(self) -> None:
        """Drain, then clean up; bounded by BOT_SHUTDOWN_TIMEOUT + 5 s in all."""
        cfg = self.config
        deadline = trio.current_time() + cfg.shutdown_timeout + cfg.cleanup_timeout
        reason = "signal" if self.exit_code == ExitCode.OK else f"exit code {int(self.exit_code)}"
        self.lifecycle.transition(State.SHUTTING_DOWN, reason)
        self._draining = True
        logs.emit(
            "shutdown_started",
            f"shutting down ({reason}): claiming stopped, "
            f"{len(self.runner.running)} job(s) get {cfg.shutdown_timeout:g}s to finish",
            jobs_in_flight=len(self.runner.running),
        )
        if self._notifier is not None:
            self._notifier.stopping()
        claim_scope = getattr(self, "_claim_scope", None)
        if claim_scope is not None:
            claim_scope.cancel()
        with trio.CancelScope(deadline=deadline) as whole:
            # 1. The drain: running jobs get BOT_SHUTDOWN_TIMEOUT; a second signal ends it.
            with trio.move_on_after(cfg.shutdown_timeout):
                async with trio.open_nursery() as drain:
                    drain.start_soon(_cancel_when, self._skip_drain, drain.cancel_scope)
                    await self.runner.wait_idle()
                    drain.cancel_scope.cancel()
            # 2. What is still running is cancelled and released.
            if self.runner.cancel_all("shutdown"):
                await self.runner.wait_idle()
            # 3. Report what we can, then leave the server.
            with trio.move_on_after(
                max(0.5, deadline - trio.current_time() - DEREGISTER_TIMEOUT_S)
            ):
                try:
                    await self.reporter.flush()
                except Unrecoverable as exc:
                    self._refused(exc)
            await self._deregister()
        if whole.cancelled_caught:
            logs.emit("shutdown_timeout", "shutdown ran out of time", "WARNING")
        self.lifecycle.transition(State.STOPPED, "shutdown complete")
        logs.emit(
            "shutdown_complete",
            "stopped",
            exit_code=int(self.exit_code),
            outbox_pending=self._outbox.count if self._outbox is not None else 0,
        )

    async def _deregister(self) -> None:
        session = self.session
        if session is None:
            return
        if self._outbox is not None and self._outbox.count:
            # Deregistering would hand these jobs to another bot: keep the leases, so that
            # the next start reports them with attempt 1.
            logger.bind(event="deregister_skipped", pending=self._outbox.count).warning(
                "not deregistering: {} result(s) are still unreported", self._outbox.count
            )
            return
        with trio.CancelScope(shield=True), trio.move_on_after(DEREGISTER_TIMEOUT_S):
            try:
                await self.client.deregister(session.bot_id, session.session_id)
                logs.emit("deregistered", "deregistered from the server")
            except Exception as exc:
                logs.emit("deregister_failed", f"could not deregister: {exc}", "WARNING")

    # --- callbacks the components call ---------------------------------------------------

    def _outbox_leases(self) -> list[str]:
        return self._outbox.leases() if self._outbox is not None else []

    def _outbox_full(self) -> bool:
        return self._outbox is not None and self._outbox.full

    async def _outbox_not_full(self) -> None:
        if self._outbox is not None:
            await self._outbox.wait_not_full()

    def _held_leases(self) -> list[str]:
        return sorted(set(self.runner.leases()) | set(self._outbox_leases()))

    def _heartbeat_stats(self) -> dict[str, Any]:
        return {
            "jobs_in_flight": len(self.runner.running),
            "total_jobs_processed": self.runner.total_processed,
            "outbox_pending": self._outbox.count if self._outbox is not None else 0,
        }

    def _on_heartbeat_answer(self, answer: HeartbeatResponse) -> None:
        for lease_id in answer.cancel_leases:
            if self.runner.cancel(lease_id, "cancelled"):
                logs.emit("job_cancel_requested", "the server cancelled a job", lease_id=lease_id)
        for lease_id in answer.lost_leases:
            if self.runner.cancel(lease_id, "lost"):
                logs.emit(
                    "lease_lost",
                    "the server gave this job to another bot; stopping it",
                    "WARNING",
                    lease_id=lease_id,
                )

    def _release_orphans(self, jobs: list[ClaimedJob]) -> None:
        """Jobs a claim brought back that will not run here: release them through the outbox."""
        assert self._root is not None
        root = self._root
        outbox = self._outbox
        assert outbox is not None

        async def release() -> None:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                for job in jobs:
                    await outbox.put(job.job_id, Ack(lease_id=job.lease_id, outcome="released"))
                    self.metrics.job_finished("released", None)
            logs.emit("jobs_released", f"released {len(jobs)} job(s) not started", count=len(jobs))

        root.start_soon(release)

    def _on_job_finished(self, outcome: str, duration: float) -> None:
        self.metrics.job_finished(outcome, duration)
        if self._outbox is not None:
            self.metrics.set_outbox_pending(self._outbox.count)

    async def _watch_in_flight(self) -> None:
        """READY <-> PROCESSING follows the number of running jobs.

        Back to READY only once no job has run for IDLE_GRACE_S, so a busy bot does not
        flap between the two states between one job and the next.
        """
        async for count in self.runner.in_flight.eventual_values():
            self.metrics.set_in_flight(count)
            if self._outbox is not None:
                self.metrics.set_outbox_pending(self._outbox.count)
            if count == 0:
                with trio.move_on_after(IDLE_GRACE_S):
                    await self.runner.in_flight.wait_value(lambda n: n > 0)
            self._sync_processing()

    def _sync_processing(self) -> None:
        busy = bool(self.runner.running)
        if busy and self.state is State.READY:
            self._transition(State.PROCESSING, "job started")
        elif not busy and self.state is State.PROCESSING:
            self._transition(State.READY, "all jobs done")

    def _on_transition(self, t: Transition) -> None:
        self.metrics.on_transition(t.from_state.value, t.to_state.value)
        logs.emit(
            "state_transition",
            f"{t.from_state.value} -> {t.to_state.value}: {t.reason}",
            "INFO" if t.to_state is not State.ERROR else "WARNING",
            from_state=t.from_state.value,
            to_state=t.to_state.value,
            reason=t.reason,
            duration_ms=round(t.duration_s * 1000, 3),
        )
        if self._notifier is not None:
            self._notifier.on_transition(t.from_state.value, t.to_state.value)

    def _on_breaker_change(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.metrics.set_breaker(name, new.value)
        if new is BreakerState.OPEN:
            breaker = self.breakers.get(name)
            retry = breaker.open_for if breaker is not None else math.nan
            logs.emit(
                "breaker_opened",
                f"circuit breaker {name} opened; next probe in {retry:.1f}s",
                "WARNING",
                breaker=name,
                from_state=old.value,
            )
        elif new is BreakerState.CLOSED:
            logs.emit("breaker_closed", f"circuit breaker {name} closed", breaker=name)
        else:
            logs.emit("breaker_half_open", f"circuit breaker {name} half-open", breaker=name)

    def _observe_request(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.metrics.observe_request(endpoint, outcome, seconds)

    def _policy(
        self,
        name: str,
        failed_event: str,
        *,
        backoff: bool = True,
        hold: bool = True,
        loses_session: bool = True,
    ) -> CallPolicy:
        return CallPolicy(
            name,
            breaker=self.breakers[name],
            backoff=self._backoff if backoff else None,
            failed_event=failed_event,
            hold=hold,
            observe=self._on_call,
            loses_session=loses_session,
        )

    def _on_call(self, name: str, event: str) -> None:
        """The call policies' events: each call's metrics, recorded once."""
        if event == "started":
            if name == "registration":
                self.metrics.registration_attempt()
            return
        if event in ("failed", "unrecoverable") and name in self.breakers:
            self.metrics.breaker_failure(name)
        if name == "heartbeat" and event != "cancelled":
            self.metrics.heartbeat("succeeded" if event == "ok" else "failed")


def _unrecoverable(exc: BaseException) -> Unrecoverable | None:
    """The Unrecoverable that ended a task, alone or in an exception group of only those."""
    if isinstance(exc, Unrecoverable):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(Unrecoverable)
        if matched is not None and rest is None:
            first = leaf_exceptions(matched)[0]
            assert isinstance(first, Unrecoverable)
            return first
    return None


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
