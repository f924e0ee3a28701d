"""``botd demo``: the reference server and a fleet of bots in one Trio run, with a live view.

::

    demo root nursery (_Demo.run)
    ├── signals          first SIGINT/SIGTERM drains every bot, second skips the drain, third exits
    ├── server           botd.server.run.serve on a SQLite file in the run dir (restartable)
    ├── bot 1..N         botd.agent.Agent, each with its own state dir, metrics and log context
    ├── submitter        POST /v1/jobs/batch, 25 a time (idempotency keys: a retry never duplicates)
    ├── chaos            with --chaos: stops the server once a third of the jobs ended, then
    │                    starts it again on the same port with the same database
    └── monitor (the body) polls /v1/stats, redraws the view, decides when the run is over

Everything lives in a fresh run directory (``--workdir``, a temp dir by default): the
database, one state dir per bot, and ``demo.log``, where every JSON log line goes so that the
live view stays readable. The directory is kept; the summary names it.

The view is ``rich`` on a terminal (imported here lazily, so ``botd run`` never loads it) and
plain progress lines otherwise. The run ends when every job reached a final status
(succeeded, failed, dead or cancelled), on a signal, on ``--timeout``, or when every bot
stopped by itself. Exit codes: 0 every job reached a final status; 1 some did not
(interrupted, timed out, or the server could not be started); 2 bad flags; 70 a bot hit an
internal error.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import math
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

import attrs
import httpx
import trio
from trio_util import AsyncValue

from . import codec, logs
from .agent import Agent, AgentView
from .config import MAX_CONCURRENCY, BotConfig
from .errors import BotdError, ConfigError, leaf_exceptions
from .exit_codes import ExitCode
from .lifecycle import State, Transition
from .models import (
    FINAL_JOB_STATUSES,
    JOB_STATUSES,
    JobBatch,
    JobList,
    JobSubmit,
    JobView,
    Stats,
)
from .server.run import ServerConfig, serve
from .signals import watch_signals
from .wiring import BREAKER_NAMES, open_agent

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = [
    "BotReport",
    "BotRow",
    "DemoOptions",
    "DemoReport",
    "LiveView",
    "PlainView",
    "Snapshot",
    "View",
    "add_demo_arguments",
    "format_summary",
    "run_demo",
    "run_demo_from_args",
]

DEFAULT_BOTS = 3
MAX_BOTS = 100
DEFAULT_JOBS = 200
DEFAULT_FAILURE_RATE = 0.15
DEFAULT_DURATION_MS = 200
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_CHAOS_DOWN_S = 3.0
DEFAULT_TIMEOUT_S = 300.0
JOB_KIND = "simulate"

#: How often the monitor polls /v1/stats and redraws the view.
POLL_INTERVAL_S = 0.2
SUBMIT_BATCH = 25  # jobs per POST /v1/jobs/batch: fast, and the queue still fills visibly
#: How often the plain view prints a progress line.
PLAIN_INTERVAL_S = 1.0
#: The chaos outage starts once this share of the jobs reached a final status.
CHAOS_AT = 1 / 3
#: How long a restart keeps trying to bind the same port again.
RESTART_DEADLINE_S = 10.0
#: How long the demo waits for its bots to stop after the drain began (beyond their timeouts).
STOP_GRACE_S = 5.0
#: The newest this many jobs of each final status are read for the latency figures.
LIST_LIMIT = 1000

# Short timings, so that a lost server is noticed and recovered from within seconds.
BOT_HEARTBEAT_MS = 500
BOT_BREAKER_THRESHOLD = 3
BOT_BREAKER_TIMEOUT_S = 1.5
BOT_RETRY_BASE_S = 0.2
BOT_RETRY_MAX_S = 2.0
BOT_CLAIM_WAIT_S = 5.0
BOT_SHUTDOWN_TIMEOUT_S = 10.0
SERVER_LEASE_TTL_S = 10.0
HTTP_TIMEOUT = httpx.Timeout(3.0, connect=1.0)

_STATUS_ORDER = ("succeeded", "failed", "dead", "cancelled", "leased", "queued")
_STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "dead": "magenta",
    "cancelled": "bright_black",
    "leased": "yellow",
    "queued": "blue",
    "unsubmitted": "bright_black",
}
_STATE_STYLE = {
    "initializing": "bright_black",
    "registering": "yellow",
    "health_check": "yellow",
    "ready": "green",
    "processing": "cyan",
    "error": "bold red",
    "shutting_down": "magenta",
    "stopped": "bright_black",
}
_BREAKER_STYLE = {"closed": "green", "open": "bold red", "half_open": "yellow"}


# --- options and results ----------------------------------------------------------------


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--{attribute.name.replace('_', '-')} must be > 0, got {value!r}")


@attrs.frozen
class DemoOptions:
    """What ``botd demo`` runs. Construction raises ValueError naming the bad flag."""

    bots: int = attrs.field(
        default=DEFAULT_BOTS, validator=[attrs.validators.ge(1), attrs.validators.le(MAX_BOTS)]
    )
    jobs: int = attrs.field(default=DEFAULT_JOBS, validator=attrs.validators.ge(1))
    failure_rate: float = attrs.field(
        default=DEFAULT_FAILURE_RATE,
        validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)],
    )
    duration_ms: int = attrs.field(default=DEFAULT_DURATION_MS, validator=attrs.validators.ge(0))
    concurrency: int = attrs.field(
        default=DEFAULT_CONCURRENCY,
        validator=[attrs.validators.ge(1), attrs.validators.le(MAX_CONCURRENCY)],
    )
    max_attempts: int = attrs.field(
        default=DEFAULT_MAX_ATTEMPTS, validator=[attrs.validators.ge(1), attrs.validators.le(100)]
    )
    chaos: bool = False
    chaos_down: float = attrs.field(default=DEFAULT_CHAOS_DOWN_S, validator=_positive)
    host: str = "127.0.0.1"
    port: int = attrs.field(
        default=0, validator=[attrs.validators.ge(0), attrs.validators.le(65535)]
    )
    timeout: float = attrs.field(default=DEFAULT_TIMEOUT_S, validator=_positive)


@attrs.frozen
class BotReport:
    """One bot at the end: its transitions (by target state), breaker openings, exit code."""

    bot_id: str
    jobs_processed: int
    transitions: Mapping[str, int]
    breaker_openings: Mapping[str, int]
    exit_code: int | None

    @property
    def transition_count(self) -> int:
        return sum(self.transitions.values())

    @property
    def error_transitions(self) -> int:
        return self.transitions.get(State.ERROR.value, 0)


@attrs.frozen
class DemoReport:
    """What happened in one demo run; :func:`format_summary` prints it."""

    jobs: int
    submitted: int
    counts: Mapping[str, int]
    retries: int
    retried_jobs: int
    latencies: tuple[float, ...]
    bots: tuple[BotReport, ...]
    wall_s: float
    chaos: bool
    outage: tuple[float, float] | None  # (down at, back at), seconds since the start
    ended_by: str  # "done", "signal", "timeout", "bots stopped", "server"
    run_dir: Path | None = None
    log_path: Path | None = None

    @property
    def final(self) -> int:
        return sum(n for s, n in self.counts.items() if s in FINAL_JOB_STATUSES)

    @property
    def all_final(self) -> bool:
        return self.submitted == self.jobs and self.final >= self.jobs

    @property
    def error_transitions(self) -> int:
        return sum(b.error_transitions for b in self.bots)

    @property
    def breaker_openings(self) -> int:
        return sum(sum(b.breaker_openings.values()) for b in self.bots)

    @property
    def exit_code(self) -> int:
        if any(b.exit_code == ExitCode.SOFTWARE for b in self.bots):
            return int(ExitCode.SOFTWARE)
        return int(ExitCode.OK if self.all_final else ExitCode.FAILURE)


def percentile(values: Sequence[float], pct: int) -> float:
    """The ``pct``-th percentile (1..99) of ``values`` (inclusive method); NaN when empty."""
    if not values:
        return math.nan
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


# --- what the view shows ----------------------------------------------------------------


@attrs.frozen
class BotRow:
    bot_id: str
    state: str
    running: tuple[str, ...]  # "job_id#attempt" of each running job
    processed: int
    errors: int
    breakers: tuple[tuple[str, str], ...]  # (name, state)


@attrs.frozen
class Snapshot:
    elapsed: float
    jobs: int
    submitted: int
    counts: Mapping[str, int]
    server: str  # "up", "down" or "starting"
    bots: tuple[BotRow, ...]
    notes: tuple[str, ...]


class View(Protocol):
    """Where the demo shows its progress: :class:`LiveView` or :class:`PlainView`."""

    def show(self, snap: Snapshot) -> None: ...

    def note(self, elapsed: float, text: str) -> None: ...

    def close(self) -> None: ...


class PlainView:
    """Plain progress lines (for a pipe, a log or a test): one per ``interval``, and notes."""

    def __init__(self, stream: IO[str] | None = None, *, interval: float = PLAIN_INTERVAL_S):
        self._out = stream if stream is not None else sys.stdout
        self._interval = interval
        self._next = 0.0

    def _write(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def show(self, snap: Snapshot) -> None:
        if snap.elapsed < self._next:
            return
        self._next = snap.elapsed + self._interval
        final = sum(n for s, n in snap.counts.items() if s in FINAL_JOB_STATUSES)
        counts = " ".join(f"{s} {snap.counts.get(s, 0)}" for s in _STATUS_ORDER)
        bots = ", ".join(
            f"{b.bot_id} {b.state}"
            + (f" ({len(b.running)} running)" if b.running else "")
            + "".join(f" {name}:{state}" for name, state in b.breakers if state != "closed")
            for b in snap.bots
        )
        self._write(
            f"[{snap.elapsed:6.1f}s] server {snap.server:<8} jobs {final}/{snap.jobs} final"
            f" (submitted {snap.submitted}): {counts} | {bots}"
        )

    def note(self, elapsed: float, text: str) -> None:
        self._write(f"[{elapsed:6.1f}s] {text}")

    def close(self) -> None:
        pass


class LiveView:
    """A ``rich`` live display: a bar of the jobs by status and a row per bot.

    ``rich`` is imported here, not at module level, so that only the demo pays for it.
    The display is redrawn from the Trio task that calls :meth:`show` (no refresh thread).
    """

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = console if console is not None else Console()
        self._live = Live(
            console=self._console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def show(self, snap: Snapshot) -> None:
        self._live.update(self._render(snap), refresh=True)

    def note(self, elapsed: float, text: str) -> None:
        pass  # notes are part of the snapshot

    def close(self) -> None:
        self._live.stop()

    def _render(self, snap: Snapshot) -> RenderableType:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        width = max(20, min(80, self._console.width - 10))
        final = sum(n for s, n in snap.counts.items() if s in FINAL_JOB_STATUSES)
        bar = Text()
        parts = [(s, snap.counts.get(s, 0)) for s in _STATUS_ORDER]
        parts.append(("unsubmitted", max(0, snap.jobs - snap.submitted)))
        used = 0
        for i, (status, n) in enumerate(parts):
            cells = round(width * n / snap.jobs) if i < len(parts) - 1 else width - used
            cells = max(0, min(cells, width - used))
            used += cells
            bar.append("█" * cells, style=_STATUS_STYLE[status])
        bar.append(f" {final}/{snap.jobs} ended")
        legend = Text("  ")
        for status, n in parts:
            if status == "unsubmitted" and not n:
                continue
            legend.append("■ ", style=_STATUS_STYLE[status])
            legend.append(f"{status} {n}   ")

        table = Table(expand=False, box=None, padding=(0, 2))
        for column in ("bot", "state", "running", "done", "errors", "breakers"):
            table.add_column(column)
        for b in snap.bots:
            running = Text(
                ", ".join(b.running[:2]) + (f" +{len(b.running) - 2}" if len(b.running) > 2 else "")
            )
            breakers = Text()
            for name, state in b.breakers:
                breakers.append(f"{name} ", style=_BREAKER_STYLE.get(state, ""))
            table.add_row(
                b.bot_id,
                Text(b.state, style=_STATE_STYLE.get(b.state, "")),
                running,
                str(b.processed),
                Text(str(b.errors), style="red" if b.errors else ""),
                breakers,
            )
        server_style = {"up": "green", "down": "bold red"}.get(snap.server, "yellow")
        title = Text.assemble(
            "botd demo  ",
            (f"{snap.elapsed:5.1f}s", "bold"),
            "  server ",
            (snap.server, server_style),
        )
        caption = Text(
            "breakers: green closed, red open, yellow half-open   Ctrl-C drains",
            style="bright_black",
        )
        notes = Text("\n".join(snap.notes[-4:]), style="italic") if snap.notes else Text("")
        return Panel(Group(bar, legend, Text(""), table, Text(""), notes, caption), title=title)


# --- the embedded server ----------------------------------------------------------------


class _EmbeddedServer:
    """The reference server in this Trio run: started, stopped and started again on its port."""

    def __init__(self, config: ServerConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.url: str | None = None
        self._nursery = nursery
        self._stop: trio.Event | None = None
        self._done: trio.Event | None = None

    @property
    def up(self) -> bool:
        """True from a start until a stop is asked for."""
        return self._stop is not None and not self._stop.is_set()

    async def start(self) -> str:
        """Serve; return the URL. The first start fixes the port that restarts reuse.

        Errors: OSError (in an exception group) when the port cannot be bound.
        """
        stop, done = trio.Event(), trio.Event()
        url: str = await self._nursery.start(self._serve, stop, done)
        self._stop, self._done = stop, done
        if self.url is None:
            port = httpx.URL(url).port
            if port is not None:
                self.config = attrs.evolve(self.config, port=port)
            self.url = url
        return url

    async def restart(self, deadline_s: float = RESTART_DEADLINE_S) -> None:
        """Start again on the same port, retrying while the old socket lingers."""
        with trio.fail_after(deadline_s):
            while True:
                try:
                    await self.start()
                    return
                except* OSError:
                    pass
                await trio.sleep(0.2)

    async def stop(self) -> None:
        """Stop (long polls answer at once, in-flight requests get hypercorn's grace)."""
        if self._stop is not None and self._done is not None:
            self._stop.set()
            await self._done.wait()

    async def _serve(
        self, stop: trio.Event, done: trio.Event, *, task_status: trio.TaskStatus[str]
    ) -> None:
        try:
            await serve(self.config, shutdown=stop, task_status=task_status)
        finally:
            done.set()


# --- the demo ---------------------------------------------------------------------------


@attrs.define(eq=False)
class _Bot:
    agent: Agent
    transitions: collections.Counter[str] = attrs.field(factory=collections.Counter)
    exit_code: int | None = None
    stopped: trio.Event = attrs.field(factory=trio.Event)

    def on_transition(self, t: Transition) -> None:
        self.transitions[t.to_state.value] += 1

    @property
    def view(self) -> AgentView:
        return self.agent.view

    def row(self) -> BotRow:
        agent = self.view
        running = tuple(f"{job.job_id[:8]}#{job.attempt}" for job in agent.running)
        return BotRow(
            bot_id=agent.bot_id,
            state=agent.state.value,
            running=running,
            processed=agent.total_processed,
            errors=self.transitions[State.ERROR.value],
            breakers=tuple((name, agent.breakers[name].state.value) for name in BREAKER_NAMES),
        )

    def report(self) -> BotReport:
        agent = self.view
        return BotReport(
            bot_id=agent.bot_id,
            jobs_processed=agent.total_processed,
            transitions=dict(self.transitions),
            breaker_openings={
                name: b.opened_count for name, b in agent.breakers.items() if b.opened_count
            },
            exit_code=self.exit_code,
        )


class _Demo:
    def __init__(self, options: DemoOptions, view: View, run_dir: Path) -> None:
        self.options = options
        self.view = view
        self.run_dir = run_dir
        self.bots: list[_Bot] = []
        self.submitted = 0
        self.counts: dict[str, int] = {}
        self.final = AsyncValue(0)
        self.server_state = "starting"
        self.notes: list[str] = []
        self.outage: tuple[float, float] | None = None
        self._down_at: float | None = None
        self.ended_by = "done"
        self.jobs: list[JobView] = []
        self._stop = trio.Event()
        self._skip_drain = False
        self._chaos_done = trio.Event()
        self._run_id = uuid.uuid4().hex[:8]
        self._t0 = 0.0
        self._root: trio.Nursery | None = None

    # -- helpers ---------------------------------------------------------------------------

    def elapsed(self) -> float:
        return trio.current_time() - self._t0

    def note(self, text: str) -> None:
        stamp = f"[{self.elapsed():5.1f}s] {text}"
        self.notes.append(stamp)
        self.view.note(self.elapsed(), text)
        logs.emit("demo", text)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            elapsed=self.elapsed(),
            jobs=self.options.jobs,
            submitted=self.submitted,
            counts=dict(self.counts),
            server=self.server_state,
            bots=tuple(b.row() for b in self.bots),
            notes=tuple(self.notes),
        )

    def bot_config(self, index: int, url: str) -> BotConfig:
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

    # -- signals ---------------------------------------------------------------------------

    def on_signal(self, count: int, name: str) -> None:
        """Like a bot: the first signal drains, the second skips the drain, the third exits."""
        if count == 1:
            self.note(f"{name}: draining the bots (again to skip the drain)")
            self.ended_by = "signal"
            self._stop.set()
        elif count == 2:
            self.note(f"second {name}: skipping the drain")
            self._skip_drain = True
        for bot in self.bots:
            bot.agent.on_signal(min(count, 2), name)
        if count >= 3 and self._root is not None:
            self.note(f"third {name}: exiting now")
            self._root.cancel_scope.cancel()

    # -- the run ---------------------------------------------------------------------------

    async def run(self, *, install_signals: bool) -> DemoReport:
        self._t0 = trio.current_time()
        o = self.options
        server_config = ServerConfig(
            host=o.host,
            port=o.port,
            db=str(self.run_dir / "demo.db"),
            lease_ttl=SERVER_LEASE_TTL_S,
            heartbeat_interval=BOT_HEARTBEAT_MS / 1000,
        )
        async with contextlib.AsyncExitStack() as agents, trio.open_nursery() as root:
            self._root = root
            if install_signals:
                await root.start(watch_signals, self.on_signal)
            server = _EmbeddedServer(server_config, root)
            url = await server.start()
            self.server_state = "up"
            self.note(f"server listening on {url} (database {server_config.db})")
            for i in range(1, o.bots + 1):
                agent = await agents.enter_async_context(open_agent(self.bot_config(i, url)))
                bot = _Bot(agent)
                agent.lifecycle.add_listener(bot.on_transition)
                self.bots.append(bot)
                root.start_soon(self._run_bot, bot)
            self.note(f"{o.bots} bots started, concurrency {o.concurrency} each")
            async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT) as http:
                async with trio.open_nursery() as helpers:
                    helpers.start_soon(self._submit, http)
                    if o.chaos:
                        helpers.start_soon(self._chaos, server)
                    else:
                        self._chaos_done.set()
                    await self._monitor(http)
                    helpers.cancel_scope.cancel()
                # Interrupted during the outage: the bots need the server to drain.
                back = server.up or await self._bring_back(server)
                if back and self.outage is None and self._down_at is not None:
                    self.outage = (self._down_at, self.elapsed())
                    self.note("the server is back (the outage was cut short)")
                await self._stop_bots()
                await self._poll(http)
                await self._collect(http)
                self.view.show(self.snapshot())
            self.server_state = "down"
            await server.stop()
            root.cancel_scope.cancel()
        return self.report()

    async def _run_bot(self, bot: _Bot) -> None:
        try:
            bot.exit_code = await bot.agent.run()
        finally:
            bot.stopped.set()

    async def _submit(self, http: httpx.AsyncClient) -> None:
        """Submit every job in batches; a failed batch is retried with the same idempotency keys."""
        o = self.options
        for start in range(0, o.jobs, SUBMIT_BATCH):
            batch = JobBatch(
                [
                    JobSubmit(
                        kind=JOB_KIND,
                        payload={"n": i},
                        max_attempts=o.max_attempts,
                        idempotency_key=f"demo-{self._run_id}-{i}",
                    )
                    for i in range(start, min(o.jobs, start + SUBMIT_BATCH))
                ]
            )
            body = codec.dumps(batch)
            while True:
                try:
                    resp = await http.post(
                        "/v1/jobs/batch", content=body, headers={"Content-Type": "application/json"}
                    )
                except httpx.HTTPError:
                    resp = None
                if resp is not None and resp.status_code in (200, 201):
                    break
                await trio.sleep(POLL_INTERVAL_S)
            self.submitted = start + len(batch.jobs)
        self.note(f"{o.jobs} jobs submitted")

    async def _chaos(self, server: _EmbeddedServer) -> None:
        o = self.options
        try:
            await self.final.wait_value(lambda n: n >= math.ceil(o.jobs * CHAOS_AT))
            self.note(f"chaos: stopping the server for {o.chaos_down:g}s")
            down_at = self._down_at = self.elapsed()
            self.server_state = "down"
            await server.stop()
            await trio.sleep(o.chaos_down)
            if await self._bring_back(server):
                self.outage = (down_at, self.elapsed())
                self.note("chaos: the server is back on the same port, same database")
            else:
                self.ended_by = "server"
                self._stop.set()
        finally:
            self._chaos_done.set()

    async def _bring_back(self, server: _EmbeddedServer) -> bool:
        """Start the server again on its port; False (and a note) if that keeps failing."""
        self.server_state = "starting"
        try:
            await server.restart()
        except trio.TooSlowError:
            self.server_state = "down"
            self.note(f"the server could not bind {server.config.host}:{server.config.port} again")
            return False
        self.server_state = "up"
        return True

    async def _monitor(self, http: httpx.AsyncClient) -> None:
        """Poll and redraw until every job ended, a signal, the timeout or every bot stopped."""
        deadline = self._t0 + self.options.timeout
        while True:
            if self.server_state == "up":
                await self._poll(http)
            self.view.show(self.snapshot())
            if self._stop.is_set():
                return
            if self._all_final() and self._chaos_done.is_set():
                self.note(f"all {self.options.jobs} jobs reached a final status")
                return
            if all(b.stopped.is_set() for b in self.bots):
                self.ended_by = "bots stopped"
                self.note("every bot stopped by itself (see the log)")
                return
            if trio.current_time() >= deadline:
                self.ended_by = "timeout"
                self.note(f"timed out after {self.options.timeout:g}s")
                return
            with trio.move_on_after(POLL_INTERVAL_S):
                await self._stop.wait()

    def _all_final(self) -> bool:
        return self.submitted == self.options.jobs and self.final.value >= self.options.jobs

    async def _poll(self, http: httpx.AsyncClient) -> None:
        try:
            resp = await http.get("/v1/stats")
            resp.raise_for_status()
            stats = codec.loads(resp.content, Stats)
        except (httpx.HTTPError, BotdError):
            return  # the server is down or restarting: keep the last counts
        self.counts = {s: stats.jobs.get(s, 0) for s in JOB_STATUSES}
        self.final.value = sum(stats.jobs.get(s, 0) for s in FINAL_JOB_STATUSES)

    async def _stop_bots(self) -> None:
        self.note("stopping the bots (drain)")
        for bot in self.bots:
            bot.agent.request_shutdown(skip_drain=self._skip_drain)
        with trio.move_on_after(BOT_SHUTDOWN_TIMEOUT_S + STOP_GRACE_S):
            for bot in self.bots:
                while not bot.stopped.is_set():
                    self.view.show(self.snapshot())
                    with trio.move_on_after(POLL_INTERVAL_S):
                        await bot.stopped.wait()

    async def _collect(self, http: httpx.AsyncClient) -> None:
        """Read the final jobs (the newest LIST_LIMIT of each final status)."""
        jobs: list[JobView] = []
        for status in sorted(FINAL_JOB_STATUSES):
            try:
                resp = await http.get("/v1/jobs", params={"status": status, "limit": LIST_LIMIT})
                resp.raise_for_status()
                jobs += codec.loads(resp.content, JobList).jobs
            except (httpx.HTTPError, BotdError) as exc:
                self.note(f"could not read the {status} jobs: {exc}")
        self.jobs = jobs

    def report(self) -> DemoReport:
        latencies: list[float] = []
        for job in self.jobs:
            if job.finished_at is not None:
                start = datetime.fromisoformat(job.created_at)
                end = datetime.fromisoformat(job.finished_at)
                latencies.append((end - start).total_seconds())
        return DemoReport(
            jobs=self.options.jobs,
            submitted=self.submitted,
            counts=dict(self.counts),
            retries=sum(max(0, j.attempts - 1) for j in self.jobs),
            retried_jobs=sum(1 for j in self.jobs if j.attempts > 1),
            latencies=tuple(sorted(latencies)),
            bots=tuple(b.report() for b in self.bots),
            wall_s=self.elapsed(),
            chaos=self.options.chaos,
            outage=self.outage,
            ended_by=self.ended_by,
            run_dir=self.run_dir,
        )


async def run_demo(
    options: DemoOptions, view: View, run_dir: Path, *, install_signals: bool = False
) -> DemoReport:
    """Run the demo in the current Trio run; return its report.

    Args:
      options: what to run.
      view: where progress goes (:class:`LiveView`, :class:`PlainView`).
      run_dir: an empty directory for the database and the bots' state dirs.
      install_signals: watch SIGINT/SIGTERM (main thread only): the first drains the bots.

    Ends when every job reached a final status, on a signal, on ``options.timeout``, or when
    every bot stopped by itself; the bots are drained and the server stopped in every case.
    Errors: OSError (in an exception group) when the server cannot bind its port.
    """
    demo = _Demo(options, view, run_dir)
    try:
        return await demo.run(install_signals=install_signals)
    finally:
        view.close()


# --- the summary ------------------------------------------------------------------------


def _seconds(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}s"


def format_summary(report: DemoReport) -> str:
    """The end-of-run summary, one fact a line (tests and users read the same text)."""
    lines = [
        f"botd demo: {report.final} of {report.jobs} jobs reached a final status"
        f" in {report.wall_s:.1f}s (ended by: {report.ended_by})"
    ]
    finals = ", ".join(f"{s} {report.counts.get(s, 0)}" for s in _STATUS_ORDER[:4])
    open_jobs = max(0, report.submitted - report.final)
    never = report.jobs - report.submitted
    lines.append(
        f"  jobs:        {finals}"
        + (f"; {open_jobs} not final" if open_jobs else "")
        + (f"; {never} never submitted" if never else "")
    )
    lines.append(
        f"  retries:     {report.retries} ({report.retried_jobs} jobs needed more than one attempt)"
    )
    lines.append(
        f"  latency:     p50 {_seconds(percentile(report.latencies, 50))},"
        f" p99 {_seconds(percentile(report.latencies, 99))}"
        f" (submit -> final status, over {len(report.latencies)} jobs)"
    )
    if report.chaos:
        if report.outage is not None:
            down, up = report.outage
            lines.append(
                f"  chaos:       server down from {down:.1f}s to {up:.1f}s ({up - down:.1f}s)"
            )
        else:
            lines.append("  chaos:       the outage did not happen (the run ended first)")
    lines.append(f"  error transitions: {report.error_transitions}")
    lines.append(f"  breaker openings:  {report.breaker_openings}")
    lines.append("  bots:")
    for b in report.bots:
        order = [s.value for s in State]
        moves = ", ".join(f"{s} {b.transitions[s]}" for s in order if b.transitions.get(s))
        opened = ", ".join(f"{n} {c}" for n, c in b.breaker_openings.items()) or "none"
        lines.append(
            f"    {b.bot_id}: {b.jobs_processed} jobs run; {b.transition_count} transitions"
            f" ({moves}); breakers opened: {opened}; exit {b.exit_code}"
        )
    lines.append(f"  wall time:   {report.wall_s:.1f}s")
    if report.log_path is not None:
        lines.append(f"  logs:        {report.log_path} (JSON lines, every bot and the server)")
    if report.run_dir is not None:
        lines.append(f"  run dir:     {report.run_dir} (database, bots' state; kept)")
    code = report.exit_code
    why = {
        0: "every job reached a final status",
        1: "some jobs did not reach a final status",
        70: "a bot hit an internal error (see the log)",
    }[code]
    lines.append(f"exit {code}: {why}")
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------

EPILOG = """\
exit codes:
  0   every job reached a final status (succeeded, failed, dead or cancelled)
  1   some jobs did not (interrupted, --timeout, or the server could not start)
  2   bad flags
  70  a bot hit an internal error (see the log)

Ctrl-C drains the bots like `botd run` does (again: skip the drain; a third time: exit now).
"""


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``botd demo``'s flags to ``parser``."""
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--bots", type=int, default=DEFAULT_BOTS, help=f"bots in the fleet ({DEFAULT_BOTS})")
    add("--jobs", type=int, default=DEFAULT_JOBS, help=f"jobs to submit ({DEFAULT_JOBS})")
    add(
        "--failure-rate",
        type=float,
        default=DEFAULT_FAILURE_RATE,
        help=f"share of job attempts that fail, so retries show ({DEFAULT_FAILURE_RATE})",
    )
    add(
        "--duration-ms",
        type=int,
        default=DEFAULT_DURATION_MS,
        help=f"simulated job duration in ms ({DEFAULT_DURATION_MS})",
    )
    add(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"jobs each bot runs at once ({DEFAULT_CONCURRENCY})",
    )
    add(
        "--max-attempts",
        type=int,
        default=DEFAULT_MAX_ATTEMPTS,
        help=f"attempts per job before it fails ({DEFAULT_MAX_ATTEMPTS})",
    )
    add(
        "--chaos",
        action="store_true",
        help="stop the server mid-run (once a third of the jobs ended), then start it again",
    )
    add(
        "--chaos-down",
        type=float,
        default=DEFAULT_CHAOS_DOWN_S,
        metavar="SECONDS",
        help=f"how long --chaos keeps the server down ({DEFAULT_CHAOS_DOWN_S:g})",
    )
    add("--port", type=int, default=0, help="the server's port on 127.0.0.1 (0: any free port)")
    add(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up (exit 1) after this long ({DEFAULT_TIMEOUT_S:g})",
    )
    add(
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the run dir (database, state dirs, demo.log) is made (default: the temp dir)",
    )
    add(
        "--view",
        choices=("auto", "live", "plain"),
        default="auto",
        help="live (rich, redrawn in place), plain (progress lines), auto: live on a terminal",
    )


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """The DemoOptions of parsed flags; ValueError/TypeError names the bad one."""
    return DemoOptions(
        bots=args.bots,
        jobs=args.jobs,
        failure_rate=args.failure_rate,
        duration_ms=args.duration_ms,
        concurrency=args.concurrency,
        max_attempts=args.max_attempts,
        chaos=args.chaos,
        chaos_down=args.chaos_down,
        port=args.port,
        timeout=args.timeout,
    )


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Send every log line (bots, server, libraries) to ``path`` while the demo runs."""
    import logging

    with path.open("a", encoding="utf-8") as stream:
        setup = logs.setup_logging(level="INFO", fmt="json", stream=stream)
        httpx_logger = logging.getLogger("httpx")
        old_level = httpx_logger.level
        httpx_logger.setLevel(logging.WARNING)  # one line per request is noise
        try:
            yield
        finally:
            httpx_logger.setLevel(old_level)
            setup.close()


def run_demo_from_args(args: argparse.Namespace) -> int:
    """Run ``botd demo`` with parsed flags; print the summary; return the exit code."""
    try:
        options = options_from_args(args)
    except (TypeError, ValueError, ConfigError) as exc:
        message = str(exc)
        for field in attrs.fields(DemoOptions):
            message = message.replace(f"'{field.name}'", "--" + field.name.replace("_", "-"))
        print(f"botd demo: {message}", file=sys.stderr)
        return 2
    parent = args.workdir
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="botd-demo-", dir=parent))
    log_path = run_dir / "demo.log"
    live = args.view == "live" or (args.view == "auto" and sys.stdout.isatty())
    view: View = LiveView() if live else PlainView(sys.stdout)
    print(f"botd demo: run dir {run_dir}, logs in {log_path}", flush=True)
    report: DemoReport | None = None
    failures: list[str] = []
    with _logs_to(log_path):
        try:
            report = trio.run(
                functools.partial(run_demo, options, view, run_dir, install_signals=True)
            )
        except* OSError as group:
            failures = [str(exc) for exc in leaf_exceptions(group)]
    if report is None:
        where = f"{options.host}:{options.port}"
        print(f"botd demo: cannot serve on {where}: {'; '.join(failures)}", file=sys.stderr)
        return int(ExitCode.FAILURE)
    report = attrs.evolve(report, log_path=log_path)
    print(format_summary(report), flush=True)
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m botd.demo``: the same as ``botd demo``."""
    parser = argparse.ArgumentParser(prog="botd demo", description=__doc__.splitlines()[0])
    add_demo_arguments(parser)
    return run_demo_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
