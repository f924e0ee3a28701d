"""Sessions: ``nox`` runs lint, typecheck and tests; ``nox -s bench`` and ``nox -s soak`` on demand.

The tests need a few real components. This file installs them, so that a fresh
machine needs nothing but ``pip install nox && nox``:

- promtool, from Debian's ``prometheus`` package (metrics and alert rules checks);
- chromium, from Debian's ``chromium`` package (the dashboard's browser test);
- systemd-analyze, from Debian's ``systemd`` package (``systemd-analyze verify`` of the units);
- supervisord, from PyPI (``supervisor``, in the test extra);
- haproxy, from Debian's ``haproxy`` package (the tests run ``contrib/haproxy/haproxy.cfg`` in
  front of several server replicas; ``nox -s bench`` too);
- PostgreSQL's server binaries (initdb, pg_ctl, postgres), from Debian's ``postgresql``
  package: the tests start throwaway clusters of their own (``tests/support/postgres.py``),
  and so does ``nox -s bench``. Debian puts them in ``/usr/lib/postgresql/<version>/bin``,
  off PATH; they are looked for there too. psycopg, the client, is a PyPI dependency;
- redis-server, from Debian's ``redis-server`` package (only ``nox -s bench``: the Celery
  baseline's broker).
"""

from __future__ import annotations

import glob
import os
import shutil

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

DEBIAN_TOOLS = {
    "promtool": "prometheus",
    "chromium": "chromium",
    "systemd-analyze": "systemd",
    "redis-server": "redis-server",
    "haproxy": "haproxy",
    "initdb": "postgresql",
}
#: Where Debian installs a tool off PATH (a non-root PATH has no sbin; PostgreSQL's server
#: binaries are in a versioned dir): tests/support/postgres.py and haproxy.py look there too.
OFF_PATH = {
    "initdb": "/usr/lib/postgresql/*/bin/initdb",
    "haproxy": "/usr/sbin/haproxy",
}
LINTED = ["botd", "tests", "benchmarks", "noxfile.py"]


def have_tool(tool: str) -> bool:
    """``tool`` is on PATH, or where Debian puts it off PATH (:data:`OFF_PATH`)."""
    if shutil.which(tool) is not None:
        return True
    pattern = OFF_PATH.get(tool)
    return pattern is not None and bool(glob.glob(pattern))


def ensure_debian_tools(session: nox.Session, *tools: str) -> None:
    """apt-get install the Debian packages behind ``tools`` that are not installed yet."""
    missing = [DEBIAN_TOOLS[t] for t in tools if not have_tool(t)]
    if not missing:
        return
    if os.geteuid() != 0:
        session.error(f"need {' '.join(missing)}: run as root, or apt-get install them first")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    session.run(
        "apt-get",
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        *missing,
        external=True,
        env=env,
    )


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "botd")


@nox.session
def tests(session: nox.Session) -> None:
    ensure_debian_tools(session, "promtool", "chromium", "systemd-analyze", "haproxy", "initdb")
    session.install("-e", ".[test]")
    # Two workers: every test marked slow (real processes, sockets and time) runs on one of
    # them, in order, as in a plain run; the unit tests go beside them (tests/conftest.py).
    session.run("pytest", "-n", "2", "--dist", "loadgroup", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    ensure_debian_tools(session, "redis-server", "haproxy", "initdb")
    session.install("-e", ".[test,bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("pytest", "tests/process/test_chaos.py", "--soak", *session.posargs)
