"""What every benchmark shares: processes, ports, submission, /proc readings and statistics.

- :class:`Fleet`: owns every child process a benchmark starts (``botd server``, ``botd run``,
  the minimal loop, redis, celery) and stops them all when its ``async with`` ends, even when
  the benchmark fails;
- :func:`submit_many`: submits jobs in batches (`POST /v1/jobs/batch`);
- :func:`cpu_seconds`, :func:`cpu_over`, :func:`rss_mb`: readings of ``/proc/<pid>``;
- :func:`median`, :func:`percentile`, :func:`ratio`: the statistics that the report prints.

Cross-process times use ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for the whole machine);
Trio's clock has a per-run offset, so it only times spans inside this process.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs
import httpx
import trio

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
BOTD = Path(sys.executable).parent / "botd"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class BenchError(Exception):
    """Raised when a benchmark cannot run (a process died, a deadline passed)."""


def botd_argv(*args: str) -> list[str]:
    """The command line of ``botd ARGS``: the console script beside this interpreter."""
    if BOTD.exists():
        return [str(BOTD), *args]
    return [sys.executable, "-c", "from botd.cli import entry; entry()", *args]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 or either is NaN."""
    if b == 0 or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (not of its children), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu_ns(pid: int) -> dict[int, int]:
    """Nanoseconds on a CPU of each live thread of ``pid``, from
    /proc/<pid>/task/<tid>/schedstat (its first field): precise, where utime+stime come in
    clock ticks (10 ms)."""
    out: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended between the listing and the read
    return out


async def cpu_over(
    pids: Mapping[str, int], seconds: float, *, every: float = 0.5
) -> dict[str, float]:
    """CPU seconds that each of ``pids`` uses over the next ``seconds``, to the nanosecond.

    Reads every thread's schedstat at the start and every ``every`` seconds: a thread that
    ends in the window counts up to its last reading (at most ``every`` of its work is
    missed), one that starts counts from zero.
    """
    first = {name: thread_cpu_ns(pid) for name, pid in pids.items()}
    last = {name: dict(threads) for name, threads in first.items()}
    end = trio.current_time() + seconds
    while (left := end - trio.current_time()) > 0:
        await trio.sleep(min(every, left))
        for name, pid in pids.items():
            last[name].update(thread_cpu_ns(pid))
    return {
        name: sum(ns - first[name].get(tid, 0) for tid, ns in last[name].items()) / 1e9
        for name in pids
    }


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB, from /proc/<pid>/statm."""
    resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident * PAGE_SIZE / 2**20


@attrs.define
class Child:
    """One child process of a :class:`Fleet`."""

    name: str
    process: trio.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 20) -> str:
        """The last lines of its output, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        """Raise BenchError with the output tail when the process has exited."""
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited {self.process.returncode}:\n{self.tail()}")


@attrs.define
class Server:
    """A running ``botd server``: its process and base URL."""

    child: Child
    url: str


@attrs.define
class Bot:
    """A running ``botd run``: its process and ops URL."""

    child: Child
    ops_url: str


class Fleet:
    """Owns the child processes of one benchmark; ``async with`` stops them all at the end.

    Each child writes stdout and stderr to a file in a temporary directory, which is
    removed at the end. Stopping is SIGTERM, then SIGKILL after 5 s.
    """

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.dir = Path(tempfile.mkdtemp(prefix="botd-bench-"))
        self.client = httpx.AsyncClient(timeout=30)

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            for child in reversed(self.children):
                await self.stop(child)
            await self.client.aclose()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def spawn(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> Child:
        """Start ``argv`` with ``env`` added to this environment; output to a log file."""
        log = self.dir / f"{name}-{len(self.children)}.log"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        with log.open("wb") as out:
            process = await trio.lowlevel.open_process(
                list(argv), env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=str(self.dir)
            )
        child = Child(name, process, log)
        self.children.append(child)
        return child

    async def stop(self, child: Child, *, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        """Signal ``child`` and wait for it to exit; SIGKILL after ``grace`` seconds."""
        if child.process.poll() is None:
            child.process.send_signal(sig)
            with trio.move_on_after(grace):
                await child.process.wait()
            if child.process.poll() is None:
                child.process.kill()
                await child.process.wait()
        if child in self.children:
            self.children.remove(child)

    async def wait_http(self, child: Child, url: str, *, within: float = 20.0) -> None:
        """Poll ``url`` every 5 ms until it answers 200; BenchError if ``child`` dies first."""
        with trio.move_on_after(within):
            while True:
                child.check_alive()
                try:
                    if (await self.client.get(url, timeout=2)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.005)
        raise BenchError(f"{url} did not answer 200 within {within} s:\n{child.tail()}")

    async def server(self, *, db: str = ":memory:", extra: Sequence[str] = ()) -> Server:
        """Start ``botd server`` on a free port and wait for /v1/health."""
        port = free_port()
        argv = botd_argv("server", "--port", str(port), "--db", db, *extra)
        child = await self.spawn("server", argv)
        url = f"http://127.0.0.1:{port}"
        await self.wait_http(child, f"{url}/v1/health")
        return Server(child, url)

    async def bot(
        self, server: Server, *, wait_ready: bool = True, **settings: str | int | float
    ) -> Bot:
        """Start ``botd run`` against ``server`` with ``settings`` as environment variables.

        Defaults: a no-op simulate handler, concurrency 1, warnings-only logs, an ops port.
        """
        port = free_port()
        env = {
            "MAIN_SERVER_URL": server.url,
            "BOT_ID": f"bench-{port}",
            "PROCESSING_DURATION_MS": "0",
            "BOT_OPS_ADDR": f"127.0.0.1:{port}",
            "BOT_LOG_LEVEL": "WARNING",
        }
        env.update({k: str(v) for k, v in settings.items()})
        child = await self.spawn("bot", botd_argv("run"), env=env)
        bot = Bot(child, f"http://127.0.0.1:{port}")
        if wait_ready:
            await self.wait_http(child, f"{bot.ops_url}/readyz")
        return bot

    async def stats(self, server: Server) -> dict[str, int]:
        """Job counts by status from ``GET /v1/stats``."""
        response = await self.client.get(f"{server.url}/v1/stats")
        response.raise_for_status()
        jobs: dict[str, int] = response.json()["jobs"]
        return jobs


async def submit_many(
    url: str,
    count: int,
    *,
    kind: str = "simulate",
    payload: Callable[[int], Any] = lambda _i: None,
    batch: int = 1000,
) -> None:
    """Submit ``count`` jobs to ``url`` through ``POST /v1/jobs/batch``, ``batch`` per request.

    The submission is not what is measured: a batch is one transaction on the server, so 20,000
    jobs take about a second instead of a minute of single submits.
    """
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for start in range(0, count, batch):
            jobs = [
                {"kind": kind, "payload": payload(i), "max_attempts": 3}
                for i in range(start, min(count, start + batch))
            ]
            (await client.post("/v1/jobs/batch", json={"jobs": jobs})).raise_for_status()


async def wait_until(
    check: Callable[[], Awaitable[T | None]], *, within: float, every: float = 0.05, what: str
) -> T:
    """Call ``check`` every ``every`` seconds until it returns a value that is not None."""
    with trio.move_on_after(within):
        while True:
            value = await check()
            if value is not None:
                return value
            await trio.sleep(every)
    raise BenchError(f"timed out after {within} s waiting for {what}")


def wall() -> float:
    """The machine-wide monotonic clock, comparable between processes."""
    return time.monotonic()
