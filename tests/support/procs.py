"""Real ``botd`` processes for tests: spawn, stop, kill, wait for states, read their JSON logs.

- :class:`Procs`: owns every process a test starts (``botd server``, ``botd run``) and kills
  them all on :meth:`Procs.close` (use it as a fixture, or as a context manager in a
  module-scoped one, so a failing test cleans up too);
- :func:`botd`: a one-shot ``botd`` command (``status``, ``submit``, ``check-config``...) run
  to its end, its output captured;
- :func:`server_args`, :func:`bot_env`: the command line of a server on a given port and
  database, and the environment of a fast bot (short intervals, JSON logs, an ops port);
  :data:`FAST_BREAKERS` makes it faster still, with breakers that open and close in a second;
- :func:`wait_for` (blocking) and :func:`await_for` (in a Trio run, so that a proxy in the
  same run keeps serving): poll until a check returns something, fail with the logs if not;
- :func:`server_up`, :func:`ops_json`, :func:`bot_state`, :func:`get`: small probes over
  loopback;
- :func:`live_with_marker`: processes whose argv holds a marker (no orphan left behind);
- :func:`live_with_env`: processes whose environment holds an entry (everything a
  supervisord started, and their children, inherit its environment).

Every process writes its stdout and stderr to files under the test's ``tmp_path``; a bot's
stdout holds its JSON-lines log (:meth:`Proc.logs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs
import httpx
import pytest
import trio

from tests.support.jobs import live_with_arg
from tests.support.server import free_port

__all__ = [
    "BOTD",
    "BREAKER_OPEN_S",
    "FAST_BREAKERS",
    "Execution",
    "Proc",
    "Procs",
    "await_for",
    "bot_env",
    "bot_state",
    "botd",
    "clean_env",
    "exec_command",
    "free_ports",
    "get",
    "live_with_env",
    "live_with_marker",
    "ops_json",
    "read_executions",
    "server_args",
    "server_up",
    "wait_for",
]

T = TypeVar("T")

_CONSOLE_SCRIPT = Path(sys.executable).parent / "botd"
#: The ``botd`` command of this interpreter.
BOTD = (
    [str(_CONSOLE_SCRIPT)]
    if _CONSOLE_SCRIPT.exists()
    else [sys.executable, "-c", "from botd.cli import entry; entry()"]
)
DEADLINE_S = 20.0


@attrs.define
class Proc:
    """One child process; its stdout and stderr go to ``<tmp>/<name>.stdout|.stderr``.

    A restarted process (same name) appends to the same files, so :meth:`logs` reads the
    log of every incarnation.
    """

    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def out(self) -> str:
        return self.stdout.read_text(errors="replace") if self.stdout.exists() else ""

    def err(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} stdout:\n{self.out()[-chars:]}\n--- stderr:\n{self.err()[-chars:]}"

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines of stdout and stderr (other lines are skipped)."""
        records = []
        for line in (self.out() + "\n" + self.err()).splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by SIGKILL
        return records

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.logs() if r.get("event") == event]

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive():
            self.popen.kill()
        self.popen.wait()

    def wait(self, timeout: float) -> int:
        """Wait for the exit (blocking); fail the test with the logs when it does not come."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout}s\n{self.tail()}")

    async def await_exit(self, timeout: float) -> int:
        """Wait for the exit without blocking the Trio run."""

        async def exited() -> int | None:
            return self.popen.poll()

        return await await_for(f"{self.name} to exit", exited, timeout=timeout)

    def stop(self, timeout: float = DEADLINE_S) -> int:
        """SIGTERM and wait; SIGKILL when the exit does not come in ``timeout``."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@attrs.define
class Procs:
    """Every process one test started. :meth:`close` kills what is still running.

    As a context manager, it closes on the way out.
    """

    tmp: Path
    all: list[Proc] = attrs.field(factory=list)
    #: argv markers of processes a test may leave behind on failure (exec jobs'
    #: grandchildren): :meth:`close` kills them too.
    markers: list[str] = attrs.field(factory=list)
    #: None: :meth:`close` SIGKILLs at once. Seconds: it first stops each process still
    #: running, the newest first, with a SIGTERM and that long to exit (:meth:`Proc.stop`).
    grace: float | None = None

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        """Start ``botd ARGS`` with ``env`` (complete, see :func:`clean_env`) in ``tmp``."""
        stdout, stderr = self.tmp / f"{name}.stdout", self.tmp / f"{name}.stderr"
        with stdout.open("ab") as out, stderr.open("ab") as err:
            popen = subprocess.Popen(
                [*BOTD, *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.tmp,
            )
        proc = Proc(name, popen, stdout, stderr)
        self.all.append(proc)
        return proc

    def server(
        self,
        name: str,
        port: int,
        db: Path | str,
        *,
        lease_ttl: float = 5.0,
        heartbeat: float = 0.3,
        token: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """Start ``botd server`` on 127.0.0.1:``port`` and ``db`` (does not wait for it).

        ``env`` is its whole environment, ``clean_env({})`` when None. ``token`` goes in
        through env BOTD_SERVER_TOKEN, as the docs advise (a ``--token`` shows in ``ps``).
        """
        args = server_args(port, db, lease_ttl=lease_ttl, heartbeat=heartbeat)
        whole = clean_env({}) if env is None else dict(env)
        if token is not None:
            whole["BOTD_SERVER_TOKEN"] = token
        return self.spawn(name, args, whole)

    def bot(self, name: str, env: dict[str, str]) -> Proc:
        """Start ``botd run`` with ``env`` (does not wait for it)."""
        return self.spawn(name, ["run"], env)

    def close(self) -> None:
        """SIGKILL every process still running and reap it; then kill what has a marker.

        With a :attr:`grace`, each one still running is stopped politely first.
        """
        if self.grace is not None:
            for proc in reversed(self.all):
                proc.stop(self.grace)
        for proc in self.all:
            if proc.alive():
                proc.popen.kill()
        for proc in self.all:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=10)
        for marker in self.markers:
            for pid in live_with_marker(marker):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment minus every botd setting and ``*_TOKEN``, plus ``extra``."""
    drop = re.compile(r"^(BOT_|BOTD_|MAIN_SERVER_URL$|NOTIFY_SOCKET$)|_TOKEN$|_TOKEN_FILE$")
    env = {k: v for k, v in os.environ.items() if not drop.search(k)}
    return {**env, **extra}


def botd(
    args: list[str], env: dict[str, str], timeout: float = DEADLINE_S
) -> subprocess.CompletedProcess[str]:
    """Run a one-shot ``botd ARGS`` with ``env`` (complete) to its end; capture its output."""
    return subprocess.run(
        [*BOTD, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def server_args(
    port: int, db: Path | str, *, lease_ttl: float, heartbeat: float, token: str | None = None
) -> list[str]:
    """``botd server`` on 127.0.0.1:``port`` and ``db``; ``token`` adds ``--token``."""
    args = ["server", "--port", str(port), "--db", str(db),
            "--lease-ttl", f"{lease_ttl:g}", "--heartbeat-interval", f"{heartbeat:g}"]  # fmt: skip
    return args if token is None else [*args, "--token", token]


def bot_env(
    bot_id: str, server_url: str, state_dir: Path | None, ops_port: int | None, **extra: str
) -> dict[str, str]:
    """The environment of a fast bot: short intervals and timeouts, JSON logs.

    ``ops_port`` None turns the ops endpoint off; ``extra`` overrides anything.
    """
    env = {
        "MAIN_SERVER_URL": server_url,
        "BOT_ID": bot_id,
        "BOT_OPS_ADDR": f"127.0.0.1:{ops_port}" if ops_port else "off",
        "BOT_LOG_FORMAT": "json",
        "HEARTBEAT_INTERVAL_MS": "300",
        "PROCESSING_DURATION_MS": "50",
        "MAX_STARTUP_ATTEMPTS": "10000",
        "RETRY_BASE_DELAY": "0.1",
        "RETRY_MAX_DELAY": "1",
        "CIRCUIT_BREAKER_THRESHOLD": "3",
        "CIRCUIT_BREAKER_TIMEOUT": "1",
        "BOT_HEALTH_INTERVAL": "0.5",
        "BOT_HEALTH_CHECK_TIMEOUT": "5",
        "BOT_CLAIM_WAIT": "1",
        "BOT_CLAIM_TIMEOUT_MARGIN": "1",
        "BOT_CONNECT_TIMEOUT": "1",
        "BOT_REQUEST_TIMEOUT": "2",
        "BOT_REGISTER_TIMEOUT": "3",
        "BOT_ERROR_TIMEOUT": "1",
        "BOT_SHUTDOWN_TIMEOUT": "5",
        "BOT_EXEC_KILL_GRACE": "1",
    }
    if state_dir is not None:
        env["BOT_STATE_DIR"] = str(state_dir)
    env.update(extra)
    return clean_env(env)


#: How long an open breaker of a bot with :data:`FAST_BREAKERS` waits before its probe.
BREAKER_OPEN_S = 1.0
#: :func:`bot_env` extras for a bot that notices an outage within a second and its end
#: soon after: 100 ms heartbeats, short retries, breakers that open after two failures and
#: probe after :data:`BREAKER_OPEN_S`, without jitter.
FAST_BREAKERS = {
    "HEARTBEAT_INTERVAL_MS": "100",
    "PROCESSING_DURATION_MS": "30",
    "RETRY_BASE_DELAY": "0.05",
    "RETRY_MAX_DELAY": "0.3",
    "CIRCUIT_BREAKER_THRESHOLD": "2",
    "CIRCUIT_BREAKER_TIMEOUT": str(BREAKER_OPEN_S),
    "BOT_CIRCUIT_BREAKER_JITTER": "0",
    "BOT_HEALTH_INTERVAL": "0.3",
    "BOT_REGISTER_TIMEOUT": "2",
}


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago."""
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def _check_alive(what: str, procs: tuple[Proc, ...]) -> None:
    for proc in procs:
        if not proc.alive():
            pytest.fail(f"waiting for {what}: {proc.name} exited with {proc.returncode}\n"
                        f"{proc.tail()}")  # fmt: skip


def wait_for(
    what: str,
    check: Callable[[], T | None],
    procs: tuple[Proc, ...] = (),
    timeout: float = DEADLINE_S,
    interval: float = 0.05,
) -> T:
    """Poll ``check`` until it returns something not None (blocking); fail after ``timeout``.

    Fails at once, with the end of its output, when one of ``procs`` has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(what, procs)
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(p.tail() for p in procs)
            pytest.fail(f"{what}: not within {timeout}s\n{tails}")
        time.sleep(interval)


async def await_for(
    what: str,
    check: Callable[[], Awaitable[T | None]],
    procs: tuple[Proc, ...] = (),
    timeout: float = DEADLINE_S,
    interval: float = 0.05,
) -> T:
    """:func:`wait_for` in a Trio run: ``check`` is async, the waits are ``trio.sleep``."""
    with trio.move_on_after(timeout):
        while True:
            _check_alive(what, procs)
            value = await check()
            if value is not None:
                return value
            await trio.sleep(interval)
    tails = "\n".join(p.tail() for p in procs)
    pytest.fail(f"{what}: not within {timeout}s\n{tails}")


def server_up(url: str) -> bool | None:
    """True when ``url``/v1/health answers 200, else None (for :func:`wait_for`)."""
    try:
        return True if httpx.get(f"{url}/v1/health", timeout=1.0).status_code == 200 else None
    except httpx.HTTPError:
        return None


def get(url: str) -> httpx.Response | None:
    """GET ``url``; None when nothing answers."""
    try:
        return httpx.get(url, timeout=5.0)
    except httpx.TransportError:
        return None


def ops_json(port: int, path: str) -> tuple[int, dict[str, Any]] | None:
    """(status, JSON body) of GET ``path`` on a bot's ops port, or None when it does not answer."""
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1.0)
        return resp.status_code, resp.json()
    except (httpx.HTTPError, ValueError):
        return None


def bot_state(port: int) -> str | None:
    """The bot's lifecycle state from ``/readyz``, or None when the ops port does not answer."""
    got = ops_json(port, "/readyz")
    return str(got[1].get("state")) if got is not None else None


def live_with_marker(marker: str) -> list[int]:
    """Pids of live processes that have ``marker`` as an argument."""
    return live_with_arg(marker)


def live_with_env(entry: str) -> list[int]:
    """Pids of live (non-zombie) processes whose initial environment has ``entry`` (K=V)."""
    found = []
    wanted = entry.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if stat[stat.rfind(")") + 2 :][:1] not in "ZX" and wanted in environ:
            found.append(int(proc.name))
    return found


# --- the exec job script: counts its executions ------------------------------------------

EXEC_SCRIPT = r"""
import json, os, sys, time

log_path = sys.argv[1]
job = json.loads(sys.stdin.read())
payload = job.get("payload") or {}
attempt = int(os.environ["BOTD_ATTEMPT"])
nonce = os.urandom(8).hex()
who = [job["job_id"], str(attempt), os.environ["BOTD_LEASE_ID"], os.environ.get("BOT_ID", "?"),
       str(os.getppid()), nonce]

def note(*words):
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (" ".join(words) + "\n").encode())
    finally:
        os.close(fd)

note("start", *who)
if payload.get("marker"):
    # Grandchildren in our process group, findable by their argv.
    import subprocess

    for _ in range(2):
        subprocess.Popen(["sleep", payload["marker"]])
if payload.get("forever"):
    while True:
        time.sleep(1000)
time.sleep(payload.get("sleep_ms", 0) / 1000)
if attempt <= payload.get("fail_times", 0):
    note("end", *who, "failed")
    sys.stderr.write(f"planned failure on attempt {attempt}\n")
    sys.exit(1)
note("end", *who, "succeeded")
print(json.dumps({"job_id": job["job_id"], "attempt": attempt, "nonce": nonce,
                  "bot": os.environ.get("BOT_ID")}))
"""


@attrs.frozen
class Execution:
    """One run of the exec script, as its log tells it."""

    job_id: str
    attempt: int
    lease_id: str
    bot_id: str
    bot_pid: int
    nonce: str
    outcome: str | None  # succeeded, failed, or None: it never finished


def exec_command(tmp: Path) -> tuple[str, Path]:
    """Write the exec script under ``tmp``; return (BOT_EXEC_COMMAND, the executions log).

    The script appends a ``start`` and an ``end`` line per execution to the log and prints
    ``{"job_id", "attempt", "nonce", "bot"}``. Payload keys: ``sleep_ms``, ``fail_times``
    (exit 1 while attempt <= K), ``forever`` (sleep forever), ``marker`` (two ``sleep MARKER``
    grandchildren).
    """
    script = tmp / "exec_job.py"
    script.write_text(EXEC_SCRIPT)
    log = tmp / "executions.log"
    return f"{sys.executable} -I -S {script} {log}", log


def read_executions(log: Path) -> list[Execution]:
    """Every execution in the log, in start order."""
    started: dict[str, list[str]] = {}
    ended: dict[str, str] = {}
    if not log.exists():
        return []
    for line in log.read_text().splitlines():
        words = line.split()
        if len(words) >= 7 and words[0] == "start":
            started[words[6]] = words[1:7]
        elif len(words) >= 8 and words[0] == "end":
            ended[words[6]] = words[7]
    return [
        Execution(w[0], int(w[1]), w[2], w[3], int(w[4]), w[5], ended.get(nonce))
        for nonce, w in started.items()
    ]
