"""One demo run: the server, the fleet, the submitter and the chaos under one root nursery,
and the monitor that polls ``/v1/stats``, redraws the view and decides when the run is over.

:func:`run_demo` runs it in the current Trio run and returns its :class:`DemoReport`.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path

import trio
from trio_util import AsyncValue

from .. import logs
from ..admin_client import AsyncAdminClient
from ..errors import ServerError
from ..events import Event
from ..models import FINAL_JOB_STATUSES, JOB_STATUSES, JobList, JobView, Stats
from ..server.config import ServerConfig
from ..signals import watch_signals
from .chaos import Chaos
from .embedded_server import EmbeddedServer
from .fleet import BOT_HEARTBEAT_MS, Fleet
from .options import POLL_INTERVAL_S, DemoOptions
from .report import DemoReport
from .submitter import Submitter
from .views import Snapshot, View

__all__ = ["run_demo"]

SERVER_LEASE_TTL_S = 10.0
#: The newest this many jobs of each final status are read for the latency figures.
LIST_LIMIT = 1000
#: The monitor's and the submitter's requests: short, so that an outage shows at once.
ADMIN_TIMEOUT_S = 3.0
ADMIN_CONNECT_TIMEOUT_S = 1.0


class _Demo:
    """One run: its parts, the counts the monitor last read, the notes, how it ended."""

    def __init__(self, options: DemoOptions, view: View, run_dir: Path) -> None:
        self.options = options
        self.view = view
        self.run_dir = run_dir
        self.fleet = Fleet(options, run_dir)
        self.submitter = Submitter(options, self.note)
        self.counts: dict[str, int] = {}
        self.final = AsyncValue(0)
        self.notes: list[str] = []
        self.ended_by = "done"
        self.jobs: list[JobView] = []
        self._server: EmbeddedServer | None = None
        self._chaos: Chaos | None = None
        self._stop = trio.Event()
        self._skip_drain = False
        self._t0 = 0.0
        self._root: trio.Nursery | None = None

    # -- helpers ---------------------------------------------------------------------------

    def elapsed(self) -> float:
        return trio.current_time() - self._t0

    def note(self, text: str) -> None:
        stamp = f"[{self.elapsed():5.1f}s] {text}"
        self.notes.append(stamp)
        self.view.note(self.elapsed(), text)
        logs.emit(Event.DEMO, text)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            elapsed=self.elapsed(),
            jobs=self.options.jobs,
            submitted=self.submitter.submitted,
            counts=dict(self.counts),
            server=self._server.state if self._server is not None else "starting",
            bots=self.fleet.rows(),
            notes=tuple(self.notes),
        )

    def _redraw(self) -> None:
        self.view.show(self.snapshot())

    def _end(self, why: str) -> None:
        """End the run now (the monitor returns); ``why`` is the report's ``ended_by``."""
        self.ended_by = why
        self._stop.set()

    # -- signals ---------------------------------------------------------------------------

    def on_signal(self, count: int, name: str) -> None:
        """Like a bot: the first signal drains, the second skips the drain, the third exits."""
        if count == 1:
            self.note(f"{name}: draining the bots (again to skip the drain)")
            self._end("signal")
        elif count == 2:
            self.note(f"second {name}: skipping the drain")
            self._skip_drain = True
        self.fleet.on_signal(count, name)
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
            server = self._server = EmbeddedServer(server_config, root)
            url = await server.start()
            self.note(f"server listening on {url} (database {server_config.db})")
            await self.fleet.start(root, agents, url)
            self.note(f"{o.bots} bots started, concurrency {o.concurrency} each")
            chaos = self._chaos = Chaos(o, server, self.note, self.elapsed)
            admin = AsyncAdminClient(
                url, timeout=ADMIN_TIMEOUT_S, connect_timeout=ADMIN_CONNECT_TIMEOUT_S
            )
            async with admin:
                async with trio.open_nursery() as helpers:
                    helpers.start_soon(self.submitter.run, admin)
                    if o.chaos:
                        helpers.start_soon(chaos.run, self.final, self._end)
                    await self._monitor(admin, server, chaos)
                    helpers.cancel_scope.cancel()
                await chaos.end()
                self.note("stopping the bots (drain)")
                await self.fleet.stop(skip_drain=self._skip_drain, redraw=self._redraw)
                await self._poll(admin)
                await self._collect(admin)
                self._redraw()
            await server.stop()
            root.cancel_scope.cancel()
        return self.report()

    async def _monitor(self, admin: AsyncAdminClient, server: EmbeddedServer, chaos: Chaos) -> None:
        """Poll and redraw until every job ended, a signal, the timeout or every bot stopped."""
        deadline = self._t0 + self.options.timeout
        while True:
            if server.state == "up":
                await self._poll(admin)
            self._redraw()
            if self._stop.is_set():
                return
            if self._all_final() and chaos.done.is_set():
                self.note(f"all {self.options.jobs} jobs reached a final status")
                return
            if self.fleet.all_stopped:
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
        jobs = self.options.jobs
        return self.submitter.submitted == jobs and self.final.value >= jobs

    async def _poll(self, admin: AsyncAdminClient) -> None:
        try:
            stats = (await admin.get("/v1/stats")).expect().decode(Stats)
        except ServerError:
            return  # the server is down or restarting: keep the last counts
        self.counts = {s: stats.jobs.get(s, 0) for s in JOB_STATUSES}
        self.final.value = sum(stats.jobs.get(s, 0) for s in FINAL_JOB_STATUSES)

    async def _collect(self, admin: AsyncAdminClient) -> None:
        """Read the final jobs (the newest LIST_LIMIT of each final status)."""
        jobs: list[JobView] = []
        for status in sorted(FINAL_JOB_STATUSES):
            try:
                answer = await admin.get("/v1/jobs", params={"status": status, "limit": LIST_LIMIT})
                jobs += answer.expect().decode(JobList).jobs
            except ServerError as exc:
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
            submitted=self.submitter.submitted,
            counts=dict(self.counts),
            retries=sum(max(0, j.attempts - 1) for j in self.jobs),
            retried_jobs=sum(1 for j in self.jobs if j.attempts > 1),
            latencies=tuple(sorted(latencies)),
            bots=self.fleet.reports(),
            wall_s=self.elapsed(),
            chaos=self.options.chaos,
            outage=self._chaos.outage if self._chaos is not None else None,
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
