"""A throwaway PostgreSQL cluster for tests and benchmarks: :class:`PostgresServer`.

One instance owns one cluster in a temp dir: ``initdb`` on first :meth:`PostgresServer.start`,
``pg_ctl`` for start, stop and restart, a postmaster on 127.0.0.1 and a free TCP port (its
unix socket in the temp dir too, so nothing needs /var/run/postgresql), trust auth for the
``postgres`` role, and its log in ``<tmp>/postgres.log``. The defaults are for tests
(:data:`DEFAULT_SETTINGS`: ``fsync=off``, but durable across a crash of PostgreSQL itself);
``settings`` overrides any of them (a benchmark wants fsync on).

- the binaries: :func:`find_pg_bin` (``initdb`` on PATH, else the newest of Debian's
  ``/usr/lib/postgresql/<version>/bin``);
- as root: initdb and postgres refuse to run as root, so every PostgreSQL command runs as the
  ``postgres`` system user (created with ``useradd --system`` when missing) through
  ``setpriv``, and the temp dir belongs to that user;
- :meth:`PostgresServer.close` stops it (SIGKILLs whatever is left) and removes the temp dir;
  an ``atexit`` hook does the same for a process that exits without calling it.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.support.jobs import children_of
from tests.support.server import free_port

__all__ = ["DEFAULT_SETTINGS", "PostgresServer", "find_pg_bin"]

#: Settings for tests: no flush to disk (``fsync``, ``full_page_writes``: only a crash of
#: the machine, which no test survives anyway, could lose data), room for several server
#: replicas' pools. ``synchronous_commit`` stays on: off, a commit is acknowledged before its
#: WAL leaves shared memory, and ``restart("immediate")`` or :meth:`PostgresServer.kill` then
#: lose acknowledged commits (measured: 10 of 300 and 72 of 300), which a crash test would
#: blame on botd. With fsync off, on costs one write() per commit.
DEFAULT_SETTINGS: dict[str, str | int | bool] = {
    "fsync": False,
    "synchronous_commit": True,
    "full_page_writes": False,
    "max_connections": 300,
    "shared_buffers": "64MB",
}
DEBIAN_PG_GLOB = "/usr/lib/postgresql/*/bin/initdb"
SYSTEM_USER = "postgres"
START_TIMEOUT_S = 60
_BIND_FAILED = re.compile(r"could not bind|Address already in use|could not create listen socket")


def find_pg_bin() -> Path | None:
    """The directory of PostgreSQL's server binaries (``initdb``, ``pg_ctl``, ``postgres``).

    ``initdb`` on PATH wins (its real location, through symlinks); else the newest version
    under Debian's ``/usr/lib/postgresql/<version>/bin``; None when there is neither.
    """
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(on_path).resolve().parent
    found = [Path(p).parent for p in glob.glob(DEBIAN_PG_GLOB)]

    def version(bin_dir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name))

    return max(found, key=version) if found else None


def _conf_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home",
         "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
        check=True, capture_output=True,
    )  # fmt: skip
    return pwd.getpwnam(SYSTEM_USER)


def _traversable_by_others(path: Path) -> bool:
    """True when every directory from / down to ``path`` lets another user through."""
    return all(os.stat(part).st_mode & 0o001 for part in [path, *path.parents])


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :][:1] not in "ZX"


class PostgresServer:
    """One throwaway PostgreSQL cluster on 127.0.0.1 (see the module docstring).

    ``settings`` are added to (and override) :data:`DEFAULT_SETTINGS`; ``base_dir`` is where
    the temp dir goes (the system temp dir by default; when running as root and that is not
    traversable by the ``postgres`` user, ``/tmp``).
    """

    def __init__(
        self,
        settings: Mapping[str, str | int | float | bool] | None = None,
        *,
        base_dir: Path | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        found = bin_dir or find_pg_bin()
        if found is None:
            raise RuntimeError(
                "PostgreSQL's server binaries (initdb) are neither on PATH nor in "
                "/usr/lib/postgresql/*/bin: apt-get install postgresql (nox does it)"
            )
        self.bin_dir: Path = found
        self.settings: dict[str, str | int | float | bool] = {
            **DEFAULT_SETTINGS,
            **(settings or {}),
        }
        self._base_dir = base_dir
        self._as_root = os.geteuid() == 0
        self.tmp: Path | None = None
        self.port: int | None = None
        self._closed = False

    # --- paths ------------------------------------------------------------------------

    def _tmp(self) -> Path:
        if self.tmp is None:
            raise RuntimeError("PostgresServer not started")
        return self.tmp

    @property
    def data_dir(self) -> Path:
        return self._tmp() / "data"

    @property
    def log_path(self) -> Path:
        """The server's log (``pg_ctl -l``)."""
        return self._tmp() / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self._tmp()

    def log_tail(self, chars: int = 4000) -> str:
        if self.tmp is None:
            return ""
        parts = []
        for path in (self.log_path, self._tmp() / "pg_ctl.log"):
            if path.exists():
                parts.append(f"--- {path.name}:\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    # --- commands ---------------------------------------------------------------------

    def _make_tmp(self) -> Path:
        base = self._base_dir or Path(tempfile.gettempdir())
        if self._as_root and not _traversable_by_others(base.resolve()):
            base = Path("/tmp")
        tmp = Path(tempfile.mkdtemp(prefix="botd-pg-", dir=base))
        if self._as_root:
            user = _ensure_system_user()
            os.chown(tmp, user.pw_uid, user.pw_gid)
        tmp.chmod(0o755)  # the socket dir: any local client may connect (trust auth)
        return tmp

    def _run(self, tool: str, *args: str, timeout: float = START_TIMEOUT_S + 30) -> None:
        """Run one of PostgreSQL's tools (as the ``postgres`` user when we are root).

        Its output goes to ``<tmp>/pg_ctl.log``, never to a pipe: a postmaster that pg_ctl
        starts inherits no pipe of ours to hold open.
        """
        argv = [str(self.bin_dir / tool), *args]
        if self._as_root:
            argv = ["setpriv", f"--reuid={SYSTEM_USER}", f"--regid={SYSTEM_USER}",
                    "--init-groups", "--", *argv]  # fmt: skip
        out_path = self._tmp() / "pg_ctl.log"
        with out_path.open("ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._tmp(),
                timeout=timeout,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} exited with {result.returncode}\n{self.log_tail()}"
            )

    def _initdb(self) -> None:
        self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/support/postgres.py\ninclude 'botd_test.conf'\n")

    def _write_settings(self) -> None:
        """Listen address, port and socket dir, then the settings, in ``botd_test.conf``.

        They live in a file (not ``pg_ctl -o``) so that ``pg_ctl restart`` keeps them.
        """
        lines = {
            "listen_addresses": "127.0.0.1",
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            **self.settings,
        }
        text = "".join(f"{key} = {_conf_value(value)}\n" for key, value in lines.items())
        path = self.data_dir / "botd_test.conf"
        path.write_text(text)
        if self._as_root:
            user = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, user.pw_uid, user.pw_gid)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
                  "-t", str(START_TIMEOUT_S), *args)  # fmt: skip

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """initdb (the first time), then start the cluster and wait until it accepts."""
        if self._closed:
            raise RuntimeError("PostgresServer is closed")
        if self.is_running():
            return
        if self.tmp is None:
            self.tmp = self._make_tmp()
            atexit.register(self.close)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        for attempt in range(5):
            if self.port is None or attempt > 0:
                self.port = free_port()
            self._write_settings()
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                self._pg_ctl("start")
                return
            except RuntimeError:
                self.kill()  # a half-started postmaster must not linger
                new_log = self.log_path.read_text(errors="replace")[log_size:]
                if not _BIND_FAILED.search(new_log):  # lost a race for the port: try another
                    raise
        raise RuntimeError(f"PostgreSQL did not get a free port\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode`` (smart, fast, immediate); nothing when it is not running."""
        if self.is_running():
            self._pg_ctl("-m", mode, "stop")

    def restart(self, mode: str = "immediate") -> None:
        """``pg_ctl restart -m mode``: immediate drops every connection without a checkpoint
        (a crash as far as clients and recovery are concerned); waits until it accepts again."""
        if not self.is_running():
            self.start()
            return
        self._pg_ctl("-m", mode, "restart")

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid from ``postmaster.pid``, or None."""
        if self.tmp is None:
            return None
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self.postmaster_pid()
        return pid is not None and _alive(pid)

    def kill(self) -> None:
        """SIGKILL the postmaster and every child of it (a crash); wait until all are gone.

        The children go too: they would exit on their own soon, but a new postmaster refuses
        to start while any of them still holds the old shared memory. :meth:`start` then
        recovers the cluster as after a crash.
        """
        pid = self.postmaster_pid()
        if pid is None or not _alive(pid):
            return
        victims = [pid, *children_of(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(v) for v in victims) and time.monotonic() < deadline:
            for late in children_of(pid):  # forked just before the kill
                with contextlib.suppress(ProcessLookupError):
                    os.kill(late, signal.SIGKILL)
                victims.append(late)
            time.sleep(0.02)
        # A killed process may stay a zombie for a while (pid 1 of a container reaps late),
        # and PostgreSQL takes a lock file whose pid still exists for a live postmaster: the
        # next start would refuse. They are all dead, so their lock files are stale.
        for lock in (self.data_dir / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*.lock")):
            lock.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop (fast, else kill) and remove the temp dir; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        try:
            if self.is_running():
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "10",
                              "-m", "fast", "stop", timeout=20)  # fmt: skip
            self.kill()
        finally:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- clients ----------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        if self.port is None:
            raise RuntimeError("PostgresServer not started")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kw: Any) -> psycopg.Connection[Any]:
        """A psycopg connection (autocommit) to ``dbname``."""
        kw.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn(dbname), autocommit=True, **kw)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; returns its DSN."""
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS ``name`` WITH (FORCE): its open connections are closed."""
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
