"""The agent: one bot at run time, the root of its nursery tree.

::

    root nursery (Agent.run)
    ├── signals            first SIGTERM/SIGINT drains, second skips the drain, third exits now
    ├── ops endpoint       /healthz /readyz /metrics /status (if BOT_OPS_ADDR is not "off")
    ├── canary, watchdog   event-loop lag; systemd WATCHDOG=1
    ├── jobs nursery       JobRunner: one cancel scope per job; survives a lost session
    ├── result reporter    sends acks that no claim carried
    ├── in-flight watcher  READY <-> PROCESSING follows the running jobs (botd.driver)
    ├── stop watcher       BOT_ONCE / BOT_DISCONNECT_AFTER_IDLE: drain when done or idle
    └── lifecycle driver   REGISTERING -> HEALTH_CHECK -> READY, ERROR -> REGISTERING ...
        └── session nursery   heartbeat, claimer, health monitor (botd.driver; ends with
                              the session)

An :class:`Agent` is built in one step by :func:`botd.wiring.open_agent`, which makes and
opens every collaborator and passes it to the constructor here. The agent starts the tasks,
guards them (a 401/403 is exit 78, a bug exit 70), and owns the shutdown: the drain, the
release of what still runs, the last acks, the deregistration. An ephemeral bot starts that
same shutdown itself: after its one job (``BOT_ONCE``), or after ``BOT_DISCONNECT_AFTER_IDLE``
seconds without a job. Several agents can run in one
Trio run (the demo does): nothing here is global, and each agent's secrets and log context
are its own (:func:`botd.logs.bind_agent`). Others read a bot through :class:`AgentView`,
which has no way to change it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import trio
from loguru import logger

from . import logs
from ._version import __version__
from .breaker import CircuitBreaker
from .client import ServerClient
from .config import BotConfig, as_data
from .driver import Driver
from .errors import ConfigError, Unrecoverable, leaf_exceptions
from .events import Event
from .exit_codes import ExitCode
from .health import HealthMonitor
from .lifecycle import Lifecycle, State
from .metrics import BotMetrics
from .models import ClaimedJob
from .ops import Canary, OpsServer, build_status_document
from .outbox import Outbox
from .redaction import Redactor
from .registration import Registrar, StartupExhausted
from .results import ResultReporter
from .session import Session
from .signals import watch_signals
from .workers import JobRunner

__all__ = ["Agent", "AgentView"]

#: Of the cleanup after the drain (BOT_CLEANUP_TIMEOUT), deregistering gets at most this long.
DEREGISTER_TIMEOUT_S = 2.0


class AgentView:
    """A read-only view of one bot, for the demo and the ops endpoint (a ``StatusSource``)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    @property
    def bot_id(self) -> str:
        return self._agent.config.bot_id

    @property
    def state(self) -> State:
        return self._agent.state

    @property
    def stopped(self) -> bool:
        return self._agent.stopped

    @property
    def running(self) -> tuple[ClaimedJob, ...]:
        """The jobs running now."""
        return tuple(r.job for r in self._agent.runner.running.values())

    @property
    def total_processed(self) -> int:
        return self._agent.runner.total_processed

    @property
    def breaker_states(self) -> dict[str, str]:
        """Each circuit breaker's state (``"closed"``, ``"open"``, ``"half_open"``)."""
        return {name: b.state.value for name, b in self._agent.breakers.items()}

    @property
    def breaker_openings(self) -> dict[str, int]:
        """How many times each circuit breaker opened."""
        return {name: b.opened_count for name, b in self._agent.breakers.items()}

    def loop_lag(self) -> float:
        return self._agent.loop_lag()

    def status_document(self) -> dict[str, Any]:
        return self._agent.status_document()


class Agent:
    """One bot: its config, its components and its lifecycle. Build it with
    :func:`botd.wiring.open_agent`, which makes and opens every collaborator passed in here.

    :meth:`run` returns the process exit code. Call :meth:`request_shutdown` to drain
    (what a signal does, and what BOT_ONCE and BOT_DISCONNECT_AFTER_IDLE do).
    """

    def __init__(
        self,
        config: BotConfig,
        *,
        lifecycle: Lifecycle,
        metrics: BotMetrics,
        breakers: Mapping[str, CircuitBreaker],
        client: ServerClient,
        outbox: Outbox,
        health: HealthMonitor,
        runner: JobRunner,
        reporter: ResultReporter,
        registrar: Registrar,
        driver: Driver,
        redactor: Redactor,
        install_signals: bool = False,
        notifier: Any = None,
    ) -> None:
        self.config = config
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.breakers = breakers
        self.client = client
        self.health = health
        self.runner = runner
        self.reporter = reporter
        self.registrar = registrar
        self.driver = driver
        self.redactor = redactor
        self.view = AgentView(self)
        self.exit_code: ExitCode = ExitCode.OK
        self.started_wall = time.time()
        self._outbox = outbox
        self._install_signals = install_signals
        self._notifier = notifier
        self._shutdown = trio.Event()
        self._stop_reason = "signal"
        self._skip_drain = trio.Event()
        self._root: trio.Nursery | None = None
        self._canary = Canary()

    # --- public surface -----------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.lifecycle.state

    @property
    def stopped(self) -> bool:
        return self.lifecycle.is_stopped

    @property
    def session(self) -> Session | None:
        """The session the bot holds now (the last one, once it lost it), or None."""
        return self.driver.session

    def request_shutdown(self, *, skip_drain: bool = False, reason: str | None = None) -> None:
        """Begin the drain (idempotent); ``skip_drain`` cancels running jobs at once.

        ``reason`` (the first one given counts; default ``signal``) is what the
        ``shutting_down`` transition and ``shutdown_started`` say, unless the exit code is
        not 0: then they name the exit code.
        """
        if reason is not None and not self._shutdown.is_set():
            self._stop_reason = reason
        self._shutdown.set()
        if skip_drain:
            self._skip_drain.set()

    def on_signal(self, count: int, name: str) -> None:
        """First signal drains, second skips the drain, third stops everything now."""
        if count == 1:
            self.request_shutdown()
        elif count == 2:
            logger.bind(event=Event.DRAIN_SKIPPED).warning("second {}: skipping the drain", name)
            self.request_shutdown(skip_drain=True)
        elif self._root is not None:
            logger.bind(event=Event.EXIT_NOW).error("third {}: exiting without cleanup", name)
            self.exit_code = ExitCode.FAILURE
            self._root.cancel_scope.cancel()

    def loop_lag(self) -> float:
        return self._canary.loop_lag()

    def status_document(self) -> dict[str, Any]:
        """The seed's metrics document (exact keys first) and more, for ``/status``."""
        doc = build_status_document(
            bot_id=self.config.bot_id,
            state=self.state.value,
            version=__version__,
            uptime_seconds=time.time() - self.started_wall,
            startup_attempts=self.registrar.attempts,
            total_jobs_processed=self.runner.total_processed,
            circuit_breakers=self.breakers,
            jobs_in_flight=len(self.runner.running),
            outbox_pending=self._outbox.count,
            transitions=self.lifecycle.history,
            config=as_data(self.config),  # redacted once, by build_status_document
        )
        for name, breaker in self.breakers.items():
            doc["circuit_breakers"][name] = breaker.snapshot()
        doc["server_healthy"] = self.health.healthy.value
        doc["jobs_prefetched"] = len(self.runner.held)  # held for a slot (BOT_PREFETCH)
        doc["server_error"] = self.health.last_error
        doc["time_in_state_s"] = round(self.lifecycle.time_in_state(), 3)
        return doc

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Run the bot until it stops; return the exit code.

        Ends when: a drain completes (0), the server stayed unavailable for
        MAX_STARTUP_ATTEMPTS (69), the server refused the token (78), or a bug in an
        infrastructure task (70, after releasing what it can). A state dir that cannot be
        opened is 78 before anything runs (:func:`botd.wiring.run_agent`).
        """
        with logs.bind_agent(self.config.bot_id, lambda: self.state.value, self.redactor):
            async with trio.open_nursery() as root:
                self._root = root
                await self._start_services(root)
                task_status.started()
                root.start_soon(self._guarded, "driver", lambda: self._drive(root))
                await self._shutdown.wait()
                await self._shut_down()
                root.cancel_scope.cancel()
        return int(self.exit_code)

    # --- wiring -------------------------------------------------------------------------

    async def _start_services(self, root: trio.Nursery) -> None:
        if self._install_signals:
            await root.start(watch_signals, self.on_signal)
        await root.start(self._canary.run)
        if self.config.ops_addr != "off":
            ops = OpsServer(
                self.config.ops_addr, self.view, self.metrics.render, redactor=self.redactor
            )
            await root.start(self._guarded_start, "ops", ops.run)
        if self._notifier is not None:
            root.start_soon(self._guarded, "watchdog", self._notifier.run_watchdog)
        await root.start(self.runner.run)
        root.start_soon(self._guarded, "results", self.reporter.run)
        root.start_soon(self.driver.watch_in_flight)
        if self.config.once:
            root.start_soon(self._guarded, "once", self._stop_after_one_job)
        idle_s = self.config.disconnect_after_idle
        if idle_s is not None:
            root.start_soon(self._guarded, "idle", lambda: self._stop_when_idle(idle_s))

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
        logs.emit(Event.UNRECOVERABLE, f"the server refused this bot: {exc}", "ERROR")
        if self.exit_code == ExitCode.OK:
            self.exit_code = ExitCode.CONFIG
        self.request_shutdown()

    async def _guarded_start(
        self, name: str, fn: Any, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await fn(task_status=task_status)
        except ConfigError as exc:  # e.g. BOT_OPS_ADDR cannot be bound
            logs.emit(Event.STARTUP_FAILED, f"cannot start: {exc}", "ERROR", task=name)
            self.exit_code = ExitCode.CONFIG
            self.request_shutdown(skip_drain=True)
            task_status.started()
        except Exception as exc:
            self._crash(name, exc)

    def _crash(self, name: str, exc: BaseException) -> None:
        logs.emit(
            Event.INTERNAL_ERROR,
            f"internal error in the {name} task: {type(exc).__name__}: {exc}",
            "CRITICAL",
            exc=exc,
            task=name,
        )
        if self.exit_code == ExitCode.OK:
            self.exit_code = ExitCode.SOFTWARE
        self.request_shutdown(skip_drain=True)

    async def _drive(self, root: trio.Nursery) -> None:
        """The lifecycle driver; when the server stayed unavailable for MAX_STARTUP_ATTEMPTS,
        drain and exit 69."""
        try:
            await self.driver.run(root)
        except StartupExhausted:
            self.exit_code = ExitCode.UNAVAILABLE
            self.request_shutdown()

    # --- ephemeral bots: they stop by themselves ------------------------------------------

    async def _stop_after_one_job(self) -> None:
        """BOT_ONCE: the runner starts one job (the driver claims no more); once it ended and
        its outcome is in the outbox, drain as a signal would: report it, deregister, exit 0."""
        await self.runner.wait_spent()
        logs.emit(Event.ONCE_DONE, "the one job (BOT_ONCE) ended: stopping")
        self.request_shutdown(reason="its one job is done (BOT_ONCE)")

    async def _stop_when_idle(self, idle_s: float) -> None:
        """BOT_DISCONNECT_AFTER_IDLE: drain once no job ran for ``idle_s`` seconds, counted
        from the first READY and from the end of each job (a job starting stops the clock)."""
        await self.lifecycle.wait_for(State.READY, State.PROCESSING)
        in_flight = self.runner.in_flight
        while True:
            await in_flight.wait_value(0)
            with trio.move_on_after(idle_s) as idle:
                await in_flight.wait_value(lambda n: n > 0)
            if idle.cancelled_caught:
                break
        logs.emit(
            Event.IDLE_DISCONNECT,
            f"no job for {idle_s:g}s (BOT_DISCONNECT_AFTER_IDLE): stopping",
            idle_s=idle_s,
        )
        self.request_shutdown(reason=f"idle for {idle_s:g}s (BOT_DISCONNECT_AFTER_IDLE)")

    # --- shutdown -----------------------------------------------------------------------

    async def _shut_down(self) -> None:
        """Drain, then clean up; bounded by BOT_SHUTDOWN_TIMEOUT + 5 s in all."""
        cfg = self.config
        deadline = trio.current_time() + cfg.shutdown_timeout + cfg.cleanup_timeout
        reason = (
            self._stop_reason
            if self.exit_code == ExitCode.OK
            else f"exit code {int(self.exit_code)}"
        )
        self.lifecycle.transition(State.SHUTTING_DOWN, reason)
        logs.emit(
            Event.SHUTDOWN_STARTED,
            f"shutting down ({reason}): claiming stopped, "
            f"{len(self.runner.running)} job(s) get {cfg.shutdown_timeout:g}s to finish",
            jobs_in_flight=len(self.runner.running),
        )
        if self._notifier is not None:
            self._notifier.stopping()
        self.driver.begin_drain()
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
            logs.emit(Event.SHUTDOWN_TIMEOUT, "shutdown ran out of time", "WARNING")
        self.lifecycle.transition(State.STOPPED, "shutdown complete")
        logs.emit(
            Event.SHUTDOWN_COMPLETE,
            "stopped",
            exit_code=int(self.exit_code),
            outbox_pending=self._outbox.count,
        )

    async def _deregister(self) -> None:
        session = self.session
        if session is None:
            return
        if self._outbox.count:
            # Deregistering would hand these jobs to another bot: keep the leases, so that
            # the next start reports them with attempt 1.
            logger.bind(event=Event.DEREGISTER_SKIPPED, pending=self._outbox.count).warning(
                "not deregistering: {} result(s) are still unreported", self._outbox.count
            )
            return
        with trio.CancelScope(shield=True), trio.move_on_after(DEREGISTER_TIMEOUT_S):
            try:
                await self.client.deregister(session.bot_id, session.session_id)
                logs.emit(Event.DEREGISTERED, "deregistered from the server")
            except Exception as exc:
                logs.emit(Event.DEREGISTER_FAILED, f"could not deregister: {exc}", "WARNING")


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
