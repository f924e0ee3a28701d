"""Fixtures that run a test on both job stores: SQLite and a real PostgreSQL.

- ``store_kind``: ``"sqlite"`` or ``"postgres"`` (the test runs once for each);
- ``clock``: ``autojump_clock`` for SQLite (exact, instant); None for PostgreSQL, whose
  deadlines come from the database's own clock, so its tests run on real time;
- ``new_store``: makes fresh, empty stores of that kind (PostgreSQL: on one database of the
  session, emptied before each test: much faster than a new database), all closed at the
  end of the test.

Registered in tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from trio.abc import Clock
from trio.testing import MockClock

from botd.server.store import SqliteStore, Store
from botd.server.store.postgres import PostgresStore
from tests.support.postgres import PostgresServer
from tests.support.server import StoreMaker

STORE_KINDS = ("sqlite", "postgres")


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which store the test runs on."""
    return str(request.param)


@pytest.fixture
def clock(store_kind: str) -> Clock | None:
    """The test's Trio clock: autojump on SQLite, real time on PostgreSQL."""
    return MockClock(autojump_threshold=0) if store_kind == "sqlite" else None


@pytest.fixture(scope="session")
def store_database(pg_server: PostgresServer) -> str:
    """The DSN of the database that the stores of ``new_store`` share, one per session."""
    return pg_server.create_database("stores")


@pytest.fixture
def new_store(store_kind: str, request: pytest.FixtureRequest) -> Iterator[StoreMaker]:
    """A maker of fresh stores of ``store_kind``; each PostgreSQL store shares the test's
    database (as replicas do) and is closed at the end."""
    if store_kind == "sqlite":
        yield lambda: SqliteStore(":memory:")
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    if not server.is_running():
        server.start()
    dsn = str(request.getfixturevalue("store_database"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    made: list[PostgresStore] = []

    def make() -> Store:
        store = PostgresStore(dsn, pool_size=4, statement_timeout_s=10.0)
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in made:
            store.close_sync()
