"""The job stores of the reference server.

:mod:`.interface` has the :class:`Store` interface, :mod:`.errors` its errors,
:mod:`.rules` the protocol's rules for acks and ended leases, :mod:`.records` the columns and
rows both stores read alike. :mod:`.sqlite` is the embedded store (one process; its SQL in
:mod:`.sqlite_backend`, its tables in :mod:`.sqlite_schema`); :mod:`.postgres` the store
that several server replicas share (its connections in :mod:`.postgres_db`, its tables in
:mod:`.postgres_schema`). :func:`open_store` picks one from ``--db``: a ``postgresql://``
(or ``postgres://``) URL selects PostgreSQL, anything else is a SQLite path (``:memory:``
by name only).
"""

from __future__ import annotations

import re
from typing import Any

from .errors import StoreError, StoreIncompatible, StoreRejected, StoreUnavailable
from .interface import BOT_STATUSES, PRUNE_BATCH, SCHEMA_VERSION, ExpiryReport, Store
from .rules import retry_backoff
from .sqlite import SqliteStore
from .sqlite_backend import Moment, SqliteBackend

__all__ = [
    "BOT_STATUSES",
    "PRUNE_BATCH",
    "SCHEMA_VERSION",
    "ExpiryReport",
    "Moment",
    "SqliteBackend",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreIncompatible",
    "StoreRejected",
    "StoreUnavailable",
    "is_postgres_url",
    "open_store",
    "retry_backoff",
]


_KEYWORD_DSN = re.compile(r"^\s*(host|hostaddr|dbname|user|port|service|password)\s*=")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_postgres_url(db: str) -> bool:
    """True when ``db`` names a PostgreSQL database (a ``postgresql://`` or ``postgres://``
    URL, or a libpq ``key=value`` string) rather than a SQLite file."""
    return db.startswith(("postgresql://", "postgres://")) or bool(_KEYWORD_DSN.match(db))


def open_store(db: str, **postgres: Any) -> Store:
    """The store for ``db``: PostgreSQL for a URL (``postgres`` options go to it), else SQLite.

    Raises StoreError when PostgreSQL is asked for and its driver is not installed, and for
    a URL of another scheme (``postgresql+psycopg://``, ``mysql://``): it is not a file name.
    """
    if not is_postgres_url(db) and _URL.match(db):
        scheme = db.split("://", 1)[0]
        raise StoreError(
            f"--db: {scheme}:// is not a database botd knows; give a postgresql:// URL,"
            " a SQLite file path, or :memory:"
        )
    if is_postgres_url(db):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"--db {db.split('@')[-1]!r} needs the PostgreSQL driver ({exc.name}):"
                " pip install 'botd[postgres]'"
            ) from None
        return PostgresStore(db, **postgres)
    return SqliteStore(db)
