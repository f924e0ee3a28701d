"""Wiring: the one place that builds a bot from its config.

:func:`open_agent` makes every component of one bot, opens what must be opened (the client,
the handler, the result outbox in ``BOT_STATE_DIR``), and passes them all to the
:class:`~botd.agent.Agent` constructor: an agent is built in one step and never probed for
parts that may not exist yet. The components do not import each other; each gets what it
needs here, through its constructor. When the block ends, what was opened is closed, each
resource under a shield with a deadline of its own. :func:`run_agent` is what ``botd run``
and the demo use: open, run, return the exit code (78 when the state dir cannot be opened).

Several bots can be open in one Trio run (the demo's fleet): nothing here is global. Each
bot has its own metrics registry, breakers, client, outbox, and its own secrets
(:class:`~botd.redaction.Redactor`) and log context.
"""

from __future__ import annotations

import os
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import trio
from loguru import logger

from . import logs, tls
from ._version import __version__
from .agent import Agent
from .backoff import Backoff
from .breaker import CircuitBreaker
from .call_policy import CallPolicy
from .client import ServerClient
from .config import BotConfig
from .driver import Driver
from .errors import ConfigError, StateDirError
from .events import Event
from .exit_codes import ExitCode
from .handlers import GROUPS_DIR, Handler, build_handler, reap_leftover_groups
from .health import HealthMonitor
from .lifecycle import TRANSITIONS, Lifecycle, State
from .metrics import BREAKERS, BotMetrics
from .outbox import Outbox
from .redaction import Redactor, env_secrets
from .registration import Registrar
from .results import ResultReporter
from .telemetry import Telemetry
from .workers import JobRunner

__all__ = ["open_agent", "run_agent"]

#: How long closing the client, and then the outbox, may take once the bot stopped.
CLOSE_TIMEOUT_S = 5.0


@asynccontextmanager
async def open_agent(
    config: BotConfig,
    *,
    transport: Any = None,
    handler: Handler | None = None,
    outbox: Outbox | None = None,
    install_signals: bool = False,
    rng: random.Random | None = None,
    notifier: Any = None,
) -> AsyncIterator[Agent]:
    """Build one bot in one step; close what it opened when the block ends.

    Args:
      config: the effective configuration.
      transport: an httpx transport to reach the server with (tests, the demo).
      handler: the job handler; built from the config when None.
      outbox: the result outbox; opened from ``config.state_dir`` when None.
      install_signals: watch SIGTERM/SIGINT (only the main thread can).
      rng: the random source for jitter (seed it for reproducible tests).
      notifier: a systemd notifier (``botd.sdnotify.Notifier``), or None.

    Raises :class:`~botd.errors.StateDirError` or :class:`~botd.errors.ConfigError` when the
    state dir or the handler cannot be opened (:func:`run_agent` turns that into exit 78).
    """
    rng = rng or random.Random()
    token = config.token.reveal() if config.token is not None else None
    redactor = _secrets_of(config)
    lifecycle = Lifecycle(history=config.transition_history)

    def logged_as_bot() -> AbstractContextManager[logs.AgentLogContext]:
        return logs.bind_agent(config.bot_id, lambda: lifecycle.state.value, redactor)

    metrics = BotMetrics(
        config.bot_id,
        __version__,
        transitions=[(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets],
        breakers=BREAKERS,
    )
    metrics.set_state(lifecycle.state.value)
    breakers: dict[str, CircuitBreaker] = {}
    telemetry = Telemetry(metrics, breakers, notifier=notifier)
    lifecycle.add_listener(telemetry.on_transition)
    for name in BREAKERS:
        breakers[name] = CircuitBreaker(
            name,
            threshold=config.circuit_breaker_threshold,
            timeout=config.circuit_breaker_timeout,
            jitter=config.circuit_breaker_jitter,
            rng=rng,
            on_change=telemetry.on_breaker_change,
        )
    backoff = Backoff(config.retry_base_delay, config.retry_max_delay, rng=rng)
    calls = _call_policies(breakers, backoff, telemetry)
    async with AsyncExitStack() as opened:
        with logged_as_bot():
            client = ServerClient(
                config.main_server_url,
                token=token,
                connect_timeout=config.connect_timeout,
                request_timeout=config.request_timeout,
                claim_margin=config.claim_timeout_margin,
                response_max_bytes=config.response_max_bytes,
                transport=transport,
                observe=telemetry.on_request,
                ssl_context=_ssl_context_of(config),
                trust=trust_of(config),
            )
            opened.push_async_callback(_closed, client.aclose)
            handler = handler or _build_handler(config)
            if outbox is None:
                outbox = await Outbox.open(config.state_dir, max_pending=config.outbox_max)
            opened.push_async_callback(_closed, outbox.close)
            await _reap_leftovers(config)
            telemetry.outbox = outbox
            health = HealthMonitor(
                client,
                config.health_interval,
                calls=CallPolicy("health", observe=telemetry.on_call, loses_session=False),
            )
            runner = JobRunner(
                handler=handler,
                outbox=outbox,
                concurrency=config.concurrency,
                job_timeout=config.job_timeout,
                on_finished=telemetry.on_job_finished,
                limit=1 if config.once else None,
                prefetch=config.prefetch,
                result_max_bytes=config.result_max_bytes,
            )
            reporter = ResultReporter(
                client=client,
                outbox=outbox,
                calls=calls["results"],
                on_lease_lost=metrics.outbox_lease_lost,
                on_refused=metrics.ack_refused,
            )
            registrar = Registrar(
                client=client,
                calls=calls["registration"],
                bot_id=config.bot_id,
                version=__version__,
                capacity=config.concurrency,
                labels=dict(config.labels),
                max_startup_attempts=config.max_startup_attempts,
                attempt_timeout=config.register_timeout,
                state_dir=config.state_dir,
            )
            driver = Driver(
                config,
                lifecycle=lifecycle,
                registrar=registrar,
                health=health,
                client=client,
                calls=calls,
                runner=runner,
                reporter=reporter,
                outbox=outbox,
                backoff=backoff,
                telemetry=telemetry,
            )
            agent = Agent(
                config,
                lifecycle=lifecycle,
                metrics=metrics,
                breakers=breakers,
                client=client,
                outbox=outbox,
                health=health,
                runner=runner,
                reporter=reporter,
                registrar=registrar,
                driver=driver,
                redactor=redactor,
                install_signals=install_signals,
                notifier=notifier,
            )
            telemetry.outbox_changed()
            if outbox.count:
                logger.bind(event=Event.OUTBOX_RECOVERED, pending=outbox.count).info(
                    "{} result(s) from an earlier run wait to be reported", outbox.count
                )
        # Not bound across the yield: the caller's own lines are not this bot's (Agent.run
        # binds the bot's context around its nursery).
        yield agent


async def run_agent(
    config: BotConfig, *, on_open: Callable[[Agent], None] | None = None, **parts: Any
) -> int:
    """Open a bot (:func:`open_agent`, with ``parts``), run it until it stops, and return its
    exit code; 78 when its state dir or handler cannot be opened. ``on_open`` sees the agent
    before it runs."""
    async with AsyncExitStack() as stack:
        try:
            agent = await stack.enter_async_context(open_agent(config, **parts))
        except (StateDirError, ConfigError) as exc:
            with logs.bind_agent(
                config.bot_id, lambda: State.INITIALIZING.value, _secrets_of(config)
            ):
                logger.bind(event=Event.STARTUP_FAILED, error=str(exc)).error(
                    "cannot start: {}", exc
                )
            return int(ExitCode.CONFIG)
        if on_open is not None:
            on_open(agent)
        return await agent.run()


def _ssl_context_of(config: BotConfig) -> ssl.SSLContext | None:
    """The bot's SSL context (BOT_CA_FILE, BOT_TLS_CERT, BOT_TLS_KEY), None when none is set.

    Raises ConfigError naming the setting whose file cannot be used (exit 78).
    """
    if not (config.ca_file or config.tls_cert or config.tls_key):
        return None
    return tls.client_context(
        ca_file=config.ca_file, cert_file=config.tls_cert, key_file=config.tls_key
    )


def trust_of(config: BotConfig) -> tls.Trust:
    """Where the bot's TLS settings came from, for the message of a failed TLS check."""
    return tls.Trust(
        ca=f"BOT_CA_FILE={config.ca_file}" if config.ca_file else None,
        cert=f"BOT_TLS_CERT={config.tls_cert}" if config.tls_cert else None,
        cert_hint="set BOT_TLS_CERT and BOT_TLS_KEY",
    )


def _secrets_of(config: BotConfig) -> Redactor:
    """A bot's own secrets: its token and the ``*_TOKEN`` variables of the environment."""
    token = config.token.reveal() if config.token is not None else ""
    return Redactor([token, *env_secrets(os.environ)])


def _call_policies(
    breakers: dict[str, CircuitBreaker], backoff: Backoff, telemetry: Telemetry
) -> dict[str, CallPolicy]:
    """One call policy per loop (botd.call_policy): how each loop's server calls go."""

    def policy(
        name: str,
        failed_event: Event,
        *,
        backoff_on: bool = True,
        hold: bool = True,
        loses_session: bool = True,
    ) -> CallPolicy:
        return CallPolicy(
            name,
            breaker=breakers[name],
            backoff=backoff if backoff_on else None,
            failed_event=failed_event,
            hold=hold,
            observe=telemetry.on_call,
            loses_session=loses_session,
        )

    return {
        "registration": policy("registration", Event.REGISTRATION_FAILED, loses_session=False),
        "heartbeat": policy("heartbeat", Event.HEARTBEAT_FAILED, backoff_on=False, hold=False),
        "job_claim": policy("job_claim", Event.CLAIM_FAILED),
        "results": policy("results", Event.ACK_FAILED),
    }


async def _closed(close: Callable[[], Awaitable[None]]) -> None:
    """Close one resource of a bot, shielded, with a deadline of its own."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
        await close()


def _build_handler(cfg: BotConfig) -> Handler:
    return build_handler(
        cfg.handler,
        processing_duration_ms=cfg.processing_duration_ms,
        failure_rate=cfg.failure_rate,
        exec_command=cfg.exec_command,
        exec_shell=cfg.exec_shell,
        exec_kill_grace=cfg.exec_kill_grace,
        python_handler=cfg.python_handler or "",
        state_dir=cfg.state_dir,
    )


async def _reap_leftovers(cfg: BotConfig) -> None:
    """The state dir is ours now (locked): stop what exec jobs of a SIGKILLed run left running."""
    if cfg.state_dir is None or cfg.handler != "exec":
        return
    killed = await trio.to_thread.run_sync(reap_leftover_groups, cfg.state_dir / GROUPS_DIR)
    if killed:
        logs.emit(
            Event.EXEC_LEFTOVERS_KILLED,
            f"killed {killed} process(es) that exec jobs of an earlier run left",
            "WARNING",
            count=killed,
        )
