"""How to run the reference server: :class:`ServerConfig` (frozen, validated on construction),
its defaults and the environment variables ``botd server``'s flags fall back to, and the
checks made before serving (:func:`check_tls`). ``botd server``'s flags make one
(:mod:`botd.server.command`); tests, the demo and embedders build one directly.
"""

from __future__ import annotations

import re
import ssl
import urllib.parse

import attrs

from ..errors import ConfigError
from .core import DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_LEASE_TTL_S
from .store import Store, is_postgres_url, open_store

__all__ = [
    "DB_ENV",
    "DEFAULT_DB",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_RETENTION_S",
    "DEFAULT_STATEMENT_TIMEOUT_S",
    "TLS_CERT_ENV",
    "TLS_CLIENT_CA_ENV",
    "TLS_KEY_ENV",
    "TOKENS_FILE_ENV",
    "TOKEN_ENV",
    "ServerConfig",
    "check_tls",
    "db_password",
]

TOKEN_ENV = "BOTD_SERVER_TOKEN"
TOKENS_FILE_ENV = "BOTD_SERVER_TOKENS_FILE"
DB_ENV = "BOTD_SERVER_DB"
DEFAULT_DB = "botd-server.db"
TLS_CERT_ENV = "BOTD_SERVER_TLS_CERT"
TLS_KEY_ENV = "BOTD_SERVER_TLS_KEY"
TLS_CLIENT_CA_ENV = "BOTD_SERVER_TLS_CLIENT_CA"
DEFAULT_RETENTION_S = 7 * 86400.0
DEFAULT_POOL_SIZE = 10
DEFAULT_STATEMENT_TIMEOUT_S = 5.0


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 < value < float("inf"):  # NaN fails too; an answer cannot carry Infinity
        raise ValueError(f"{attribute.name} must be > 0 and finite, got {value!r}")


def db_password(db: str) -> str | None:
    """The password in a database URL or libpq key=value string, so the logs can hide it."""
    if not is_postgres_url(db):
        return None
    found = re.search(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", db)
    if found:
        return found.group(1).strip("'")
    try:
        return urllib.parse.urlsplit(db).password
    except ValueError:
        return None


@attrs.frozen
class ServerConfig:
    """How to run the reference server. The token is kept out of ``repr``."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=3001, validator=[attrs.validators.ge(0)])
    db: str = attrs.field(default=DEFAULT_DB, repr=False)
    token: str | None = attrs.field(default=None, repr=False)
    #: A file of tokens with roles, one a line or TOML (botd.server.auth), re-read on SIGHUP.
    tokens_file: str | None = None
    lease_ttl: float = attrs.field(default=DEFAULT_LEASE_TTL_S, validator=_positive)
    heartbeat_interval: float = attrs.field(
        default=DEFAULT_HEARTBEAT_INTERVAL_S, validator=_positive
    )
    retention: float = attrs.field(default=DEFAULT_RETENTION_S, validator=_positive)
    db_pool_size: int = attrs.field(default=DEFAULT_POOL_SIZE, validator=[attrs.validators.ge(1)])
    statement_timeout: float = attrs.field(default=DEFAULT_STATEMENT_TIMEOUT_S, validator=_positive)
    #: TLS: the server's certificate chain and key (PEM), and the CA that signs the client
    #: certificates it then requires (None: no client certificate asked for).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None

    def make_store(self) -> Store:
        """The store ``db`` names (PostgreSQL for a URL, else a SQLite file)."""
        if is_postgres_url(self.db):
            return open_store(
                self.db, pool_size=self.db_pool_size, statement_timeout_s=self.statement_timeout
            )
        return open_store(self.db)


def check_tls(config: ServerConfig) -> None:
    """Raise ConfigError, naming the flag, if the TLS files cannot be used (before serving)."""
    given = {"--tls-cert": config.tls_cert, "--tls-key": config.tls_key}
    if config.tls_client_ca and not all(given.values()):
        raise ConfigError("--tls-client-ca: needs --tls-cert and --tls-key (TLS) too")
    if not any(given.values()):
        return
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise ConfigError(f"{missing[0]}: required with {' and '.join(given.keys() - missing)}")
    files = {**given, "--tls-client-ca": config.tls_client_ca}
    for flag, path in files.items():
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot read {path!r}: {exc.strerror or exc}") from None
        except ValueError:  # a NUL in the path: no file can have that name
            raise ConfigError(f"{flag}: {path!r} holds a NUL character; fix the path") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"--tls-cert/--tls-key: not a PEM certificate chain and its key ({exc.reason or exc})"
        ) from None
    if config.tls_client_ca:
        try:
            context.load_verify_locations(config.tls_client_ca)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"--tls-client-ca: {config.tls_client_ca!r} holds no PEM CA certificate"
                f" ({exc.reason or exc})"
            ) from None
