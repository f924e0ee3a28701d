"""The reference main server: protocol v1 over Starlette, an embedded SQLite store.

``store`` holds the :class:`Store` interface and the stores; ``app`` the routes
(:func:`create_app`), ``wire`` their bodies and error answers, ``core`` what the server
keeps beside its store (:class:`ServerCore`: long polls, timers), ``metrics`` its
Prometheus metrics; ``config`` how to run it (:class:`ServerConfig`), ``run`` hypercorn
and signals (:func:`serve`), ``command`` the ``botd server`` command (its flags).
"""

from .app import core_of, create_app
from .config import ServerConfig
from .core import ServerCore
from .run import serve
from .store import SqliteStore, Store, StoreRejected, StoreUnavailable

__all__ = [
    "ServerConfig",
    "ServerCore",
    "SqliteStore",
    "Store",
    "StoreRejected",
    "StoreUnavailable",
    "core_of",
    "create_app",
    "serve",
]
