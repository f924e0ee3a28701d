"""Debian's haproxy for tests, running ``contrib/haproxy/haproxy.cfg``: :class:`Haproxy`.

The tests run the production config itself. :func:`render_config` rewrites only what a
test run must change, and fails on anything it does not expect (so a change to the contrib
file that these rewrites would miss shows up here, not as a silently different proxy):

- the two ``bind`` lines: the frontend's ``*:3000`` and the stats page's ``127.0.0.1:8404``
  become free ports on 127.0.0.1;
- backend ``botd``'s ``server`` lines: one per given backend, named ``botd1``, ``botd2``...
  (the contrib file's scheme), each with the options of the contrib file's first one;
- global's ``log`` lines: haproxy's stdout, which goes to ``<workdir>/haproxy.log``
  (there is no syslog in a test); ``stats socket`` and ``pidfile``: into the work dir;
- not as root: ``chroot``, ``user`` and ``group`` go (only root may use them).

Timeouts, checks, balancing, retries, error pages: everything else is the contrib file's.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.support.server import free_port

__all__ = ["CONTRIB_CONFIG", "Haproxy", "find_haproxy", "render_config"]

CONTRIB_CONFIG = Path(__file__).resolve().parents[2] / "contrib" / "haproxy" / "haproxy.cfg"
#: The ports the contrib file binds: the bots' frontend and the stats page.
FRONTEND_PORT = 3000
STATS_PORT = 8404
BACKEND = "botd"
DEADLINE_S = 20.0
DEBIAN_HAPROXY = "/usr/sbin/haproxy"


def find_haproxy() -> str | None:
    """haproxy on PATH, else Debian's ``/usr/sbin/haproxy`` (a non-root PATH lacks sbin)."""
    found = shutil.which("haproxy")
    if found is None and os.access(DEBIAN_HAPROXY, os.X_OK):
        found = DEBIAN_HAPROXY
    return found


def _address(backend: int | str) -> str:
    """``host:port`` of a backend given as a port, ``host:port`` or a URL."""
    if isinstance(backend, int):
        return f"127.0.0.1:{backend}"
    parts = urlsplit(backend if "//" in backend else f"//{backend}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"backend {backend!r}: need a port, host:port or http://host:port")
    return f"{parts.hostname}:{parts.port}"


def render_config(
    text: str,
    *,
    port: int,
    stats_port: int,
    backends: Sequence[int | str],
    run_dir: Path,
    as_root: bool,
) -> str:
    """The contrib config ``text`` with the rewrites of the module docstring."""
    out: list[str] = []
    section = ""
    servers_done = False
    logged = False
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        if not indent:  # a section header: global, defaults, frontend NAME, backend NAME
            section = " ".join(words)
            out.append(line)
            continue
        key = words[0]
        if section == "global" and key == "log":
            if not logged:  # one line for all levels, to stdout: the log file
                out.append(f"{indent}log stdout format raw local0")
                logged = True
            continue
        if section == "global" and words[:2] == ["stats", "socket"]:
            out.append(f"{indent}stats socket {run_dir / 'admin.sock'} {' '.join(words[3:])}")
            continue
        if section == "global" and key == "pidfile":
            out.append(f"{indent}pidfile {run_dir / 'haproxy.pid'}")
            continue
        if section == "global" and key in ("chroot", "user", "group") and not as_root:
            continue
        if key == "bind":
            bound = words[1].rsplit(":", 1)[-1]
            new_port = {str(FRONTEND_PORT): port, str(STATS_PORT): stats_port}.get(bound)
            if new_port is None:
                raise ValueError(f"unexpected bind in the contrib config: {line.strip()}")
            out.append(f"{indent}bind 127.0.0.1:{new_port} {' '.join(words[2:])}".rstrip())
            continue
        if key == "server":
            if section != f"backend {BACKEND}":
                raise ValueError(f"unexpected server line in [{section}]: {line.strip()}")
            if not servers_done:
                options = " ".join(words[3:])
                for i, backend in enumerate(backends, start=1):
                    entry = f"{indent}server {BACKEND}{i} {_address(backend)} {options}"
                    out.append(entry.rstrip())
                servers_done = True
            continue
        out.append(line)
    if not servers_done:
        raise ValueError(f"no server line in backend {BACKEND} of the contrib config")
    return "\n".join(out) + "\n"


class Haproxy:
    """``haproxy -db`` on loopback with the contrib config; its log in ``<workdir>/haproxy.log``.

    ``start(backends)`` returns the frontend's URL; :meth:`wait_healthy` polls the stats page
    until the checks found the replicas up; :meth:`stop` (or ``with``) ends it.
    """

    def __init__(
        self, workdir: Path, *, config: Path = CONTRIB_CONFIG, binary: str | None = None
    ) -> None:
        self.workdir = workdir
        self.config = config
        self.binary = binary or find_haproxy() or "haproxy"
        self.port: int | None = None
        self.stats_port: int | None = None
        self.backends: list[str] = []
        self.popen: subprocess.Popen[bytes] | None = None
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self._run_dir: Path | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("haproxy not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats_url(self) -> str:
        """The stats page (HTML; append ``;csv`` for CSV)."""
        if self.stats_port is None:
            raise RuntimeError("haproxy not started")
        return f"http://127.0.0.1:{self.stats_port}/stats"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, backends: Sequence[int | str]) -> str:
        """Start haproxy in front of ``backends`` (ports, ``host:port`` or URLs); wait until
        it listens; return the frontend's URL. The servers may still be checking: see
        :meth:`wait_healthy`."""
        if self.alive():
            raise RuntimeError("haproxy already running")
        if shutil.which(self.binary) is None:  # also takes an absolute path
            raise RuntimeError(f"{self.binary} not found: apt-get install haproxy (nox does it)")
        # A unix socket's path has at most 107 bytes; a test's tmp_path may be longer.
        self._run_dir = Path(tempfile.mkdtemp(prefix="botd-haproxy-"))
        self.port, self.stats_port = free_port(), free_port()
        while self.stats_port == self.port:
            self.stats_port = free_port()
        self.backends = [_address(b) for b in backends]
        self.config_path.write_text(
            render_config(
                self.config.read_text(),
                port=self.port,
                stats_port=self.stats_port,
                backends=backends,
                run_dir=self._run_dir,
                as_root=os.geteuid() == 0,
            )
        )
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self._wait("haproxy to listen", self._listening)
        return self.url

    def _listening(self) -> bool:
        try:
            return httpx.get(self.stats_url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait(self, what: str, check: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                code = self.popen.returncode if self.popen else None
                raise RuntimeError(f"waiting for {what}: haproxy exited with {code}\n{self.log()}")
            try:
                if check():
                    return
            except httpx.HTTPError:
                pass  # the stats page did not answer this time: poll again
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{what}: not within {timeout}s\nservers: {self._servers_or_error()}\n"
                    f"{self.log()[-4000:]}"
                )
            time.sleep(0.05)

    def servers(self) -> dict[str, dict[str, str]]:
        """The stats CSV row of each server of backend ``botd``, by server name.

        ``status`` is ``UP``, ``DOWN``, ``UP 1/2`` (going down), ``DOWN 1/2`` (going up),
        ``MAINT``...; ``check_status`` the last check's result (``L7OK``, ``L4CON``...).
        """
        text = httpx.get(f"{self.stats_url};csv", timeout=2.0).text.lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def _servers_or_error(self) -> str:
        try:
            return repr({name: row["status"] for name, row in self.servers().items()})
        except httpx.HTTPError as exc:
            return f"(stats page: {exc!r})"

    def statuses(self) -> dict[str, str]:
        """``{server name: status}``, `` (unchecked)`` appended while no check has run yet."""
        found = {}
        for name, row in self.servers().items():
            check = row.get("check_status", "").lstrip("* ")
            status = row["status"]
            # UP before any check ran (haproxy starts servers up) is not a finding.
            found[name] = status if check not in ("", "INI") else f"{status} (unchecked)"
        return found

    def wait_healthy(self, n: int, timeout: float = DEADLINE_S) -> None:
        """Wait until exactly ``n`` servers are UP and their last health check passed."""

        def healthy() -> bool:
            rows = self.servers().values()
            passed = [r for r in rows if r["status"] == "UP" and "L7OK" in r["check_status"]]
            return len(passed) == n

        self._wait(f"{n} healthy servers", healthy, timeout)

    def wait_status(self, server: str, status: str, timeout: float = DEADLINE_S) -> None:
        """Wait until ``server`` (``botd1``...) has ``status`` (``UP``, ``DOWN``) after a check."""

        def reached() -> bool:
            return self.statuses().get(server) == status

        self._wait(f"{server} {status}", reached, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (haproxy's hard stop), SIGKILL if it lingers; remove its run dir."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    close = stop

    def __enter__(self) -> Haproxy:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
