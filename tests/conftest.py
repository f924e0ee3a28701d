"""Test options (``--soak`` makes the chaos test run longer) and the shared fixtures.

- ``procs``: the real processes a test starts, killed at its end;
- ``pg_server``: one throwaway PostgreSQL cluster for the whole session
  (:class:`tests.support.postgres.PostgresServer`);
- ``pg_dsn``: a fresh database of its own for one test, dropped after it; yields its DSN;
- ``store_kind``, ``clock``, ``new_store``: run a test on both job stores
  (:mod:`tests.support.stores`);
- after every test, the log setup a command run in-process installed is closed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from botd import logs
from tests.support.postgres import PostgresServer
from tests.support.procs import Procs

pytest_plugins = ["tests.support.stores"]


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """The real processes a test starts; every one still running is killed at the end."""
    owner = Procs(tmp_path)
    try:
        yield owner
    finally:
        owner.close()


@pytest.fixture(autouse=True)
def _no_log_setup_left_behind() -> Iterator[None]:
    """A test that runs a command in-process installs logging for the process (the command
    would, as the entry point); it is closed after the test, so the next test on the worker
    starts with the logging it would have had first."""
    yield
    installed = logs.LogSetup.installed()
    if installed is not None:
        installed.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``pytest -n 2 --dist loadgroup`` (what nox runs), every test marked slow runs
    on one worker, one after another: the real-process tests never compete with each other
    for the two cores. Without xdist the mark does nothing."""
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.xdist_group("real"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the chaos test's summary lines (kept in its report, so they reach the
    terminal from an xdist worker too)."""
    for status in ("passed", "failed"):
        for report in terminalreporter.stats.get(status, []):
            for name, text in getattr(report, "user_properties", []):
                if name == "chaos" and report.when == "call":
                    terminalreporter.write_line(text)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the chaos test longer: more jobs and more faults (nox -s soak)",
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A started PostgreSQL cluster, shared by the session; stopped and removed at its end.

    A test may restart or kill it (the chaos test does); ``pg_dsn`` starts it again if needed.
    """
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_dsn(pg_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The DSN of a new, empty database for this test (named after it); dropped afterwards."""
    if not pg_server.is_running():
        pg_server.start()
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:40]
    name = f"t_{stem}_{uuid.uuid4().hex[:8]}"
    dsn = pg_server.create_database(name)
    try:
        yield dsn
    finally:
        if not pg_server.is_running():
            pg_server.start()
        pg_server.drop_database(name)
