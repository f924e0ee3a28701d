"""The demo's fleet: N :class:`botd.agent.Agent` in one Trio run, each with its own state dir,
metrics and log context, on short timings so that a lost server is noticed within seconds."""

from __future__ import annotations

import collections
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import attrs
import trio

from ..agent import Agent, AgentView
from ..config import BotConfig
from ..lifecycle import State, Transition
from ..metrics import BREAKERS
from ..wiring import open_agent
from .options import POLL_INTERVAL_S, DemoOptions
from .report import BotReport
from .views import BotRow

__all__ = ["BOT_HEARTBEAT_MS", "Fleet", "FleetBot"]

# Short timings, so that a lost server is noticed and recovered from within seconds.
BOT_HEARTBEAT_MS = 500
BOT_BREAKER_THRESHOLD = 3
BOT_BREAKER_TIMEOUT_S = 1.5
BOT_RETRY_BASE_S = 0.2
BOT_RETRY_MAX_S = 2.0
BOT_CLAIM_WAIT_S = 5.0
BOT_SHUTDOWN_TIMEOUT_S = 10.0
#: How long the demo waits for its bots to stop after the drain began (beyond their timeouts).
STOP_GRACE_S = 5.0


@attrs.define(eq=False)
class FleetBot:
    """One bot of the fleet: its agent, its transitions (by target state), how it ended."""

    agent: Agent
    transitions: collections.Counter[str] = attrs.field(factory=collections.Counter)
    exit_code: int | None = None
    stopped: trio.Event = attrs.field(factory=trio.Event)

    def on_transition(self, t: Transition) -> None:
        self.transitions[t.to_state.value] += 1

    @property
    def view(self) -> AgentView:
        """What the demo reads of the bot."""
        return self.agent.view

    def row(self) -> BotRow:
        """This bot's line in the view."""
        agent = self.view
        return BotRow(
            bot_id=agent.bot_id,
            state=agent.state.value,
            running=tuple(f"{job.job_id[:8]}#{job.attempt}" for job in agent.running),
            processed=agent.total_processed,
            errors=self.transitions[State.ERROR.value],
            breakers=tuple((name, agent.breaker_states[name]) for name in BREAKERS),
        )

    def report(self) -> BotReport:
        """This bot's part of the report."""
        agent = self.view
        return BotReport(
            bot_id=agent.bot_id,
            jobs_processed=agent.total_processed,
            transitions=dict(self.transitions),
            breaker_openings={
                name: count for name, count in agent.breaker_openings.items() if count
            },
            exit_code=self.exit_code,
        )

    async def run(self) -> None:
        """Run the agent until it stops; keep its exit code."""
        try:
            self.exit_code = await self.agent.run()
        finally:
            self.stopped.set()


class Fleet:
    """The demo's bots (``bots``), started on a server's URL and stopped together."""

    def __init__(self, options: DemoOptions, run_dir: Path) -> None:
        self.options = options
        self.run_dir = run_dir
        self.bots: list[FleetBot] = []

    async def start(self, nursery: trio.Nursery, agents: AsyncExitStack, url: str) -> None:
        """Open ``options.bots`` bots in ``agents`` and run them in ``nursery``, named
        ``demo-bot-1`` on; they are closed when ``agents`` is."""
        for i in range(1, self.options.bots + 1):
            agent = await agents.enter_async_context(open_agent(self.bot_config(i, url)))
            bot = FleetBot(agent)
            agent.lifecycle.add_listener(bot.on_transition)
            self.bots.append(bot)
            nursery.start_soon(bot.run)

    def bot_config(self, index: int, url: str) -> BotConfig:
        """Bot ``demo-bot-<index>``'s settings: a simulate handler, short timings, no ops port."""
        o = self.options
        bot_id = f"demo-bot-{index}"
        return BotConfig(
            bot_id=bot_id,
            main_server_url=url,
            handler="simulate",
            processing_duration_ms=o.duration_ms,
            failure_rate=o.failure_rate,
            concurrency=o.concurrency,
            heartbeat_interval_ms=BOT_HEARTBEAT_MS,
            circuit_breaker_threshold=BOT_BREAKER_THRESHOLD,
            circuit_breaker_timeout=BOT_BREAKER_TIMEOUT_S,
            retry_base_delay=BOT_RETRY_BASE_S,
            retry_max_delay=BOT_RETRY_MAX_S,
            claim_wait=BOT_CLAIM_WAIT_S,
            claim_timeout_margin=2.0,
            connect_timeout=1.0,
            request_timeout=3.0,
            health_interval=BOT_HEARTBEAT_MS / 1000,
            health_check_timeout=5.0,
            register_timeout=3.0,
            error_timeout=BOT_RETRY_MAX_S,
            shutdown_timeout=BOT_SHUTDOWN_TIMEOUT_S,
            cleanup_timeout=3.0,
            max_startup_attempts=50,
            state_dir=self.run_dir / "bots" / bot_id,
            ops_addr="off",
            log_format="json",
        )

    def on_signal(self, count: int, name: str) -> None:
        """Pass a signal on to every bot (a third counts as a second: the demo exits itself)."""
        for bot in self.bots:
            bot.agent.on_signal(min(count, 2), name)

    @property
    def all_stopped(self) -> bool:
        return all(b.stopped.is_set() for b in self.bots)

    async def stop(self, *, skip_drain: bool, redraw: Callable[[], None]) -> None:
        """Ask every bot to stop and wait for them, calling ``redraw`` every poll interval.

        Gives up after the bots' shutdown timeout plus :data:`STOP_GRACE_S`.
        """
        for bot in self.bots:
            bot.agent.request_shutdown(skip_drain=skip_drain)
        with trio.move_on_after(BOT_SHUTDOWN_TIMEOUT_S + STOP_GRACE_S):
            for bot in self.bots:
                while not bot.stopped.is_set():
                    redraw()
                    with trio.move_on_after(POLL_INTERVAL_S):
                        await bot.stopped.wait()

    def rows(self) -> tuple[BotRow, ...]:
        return tuple(b.row() for b in self.bots)

    def reports(self) -> tuple[BotReport, ...]:
        return tuple(b.report() for b in self.bots)
