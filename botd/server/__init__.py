"""The reference main server: protocol v1 over Starlette, an embedded SQLite store.

``store`` holds the :class:`Store` interface and :class:`SqliteStore`; ``app`` the routes
(:func:`create_app`); ``run`` hypercorn, the lease-expiry task and signals (:func:`serve`).
"""

from .app import ServerCore, core_of, create_app
from .run import ServerConfig, serve
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
