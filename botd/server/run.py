"""Running the reference server: hypercorn's trio worker, the lease-expiry task, signals.

``botd server`` is :func:`add_server_arguments` + :func:`run_server_from_args`;
:func:`serve` is the async entry point for tests and embedding (port 0 is supported: it
reports the real bound URL through ``task_status``). :func:`main` is a standalone entry
point, ``python -c "from botd.server.run import main; ..."``, for process tests.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import re
import signal
import ssl
import sys
import urllib.parse
from collections.abc import Sequence

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from loguru import logger

from .. import logs
from ..errors import ConfigError, leaf_exceptions
from ..events import Event
from ..exit_codes import ExitCode
from ..token_files import loose_permissions, token_flag_warning
from .app import core_of, create_app, gate_of
from .auth import Tokens, TokensFileError, load_tokens
from .core import DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_LEASE_TTL_S
from .store import (
    Store,
    StoreError,
    StoreIncompatible,
    StoreUnavailable,
    is_postgres_url,
    open_store,
)

__all__ = [
    "ServerConfig",
    "add_server_arguments",
    "main",
    "run_server_from_args",
    "serve",
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
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
GRACEFUL_TIMEOUT_S = 5.0
#: How long an idle keep-alive connection stays open. It is longer than anything a bot waits
#: between two requests on one connection (a heartbeat interval, a long poll of at most 30 s
#: plus its margin) and than the bot's own idle expiry (15 s), so the bot, not the server,
#: closes an idle connection, and no request races a close. Hypercorn's default is 5 s, the
#: heartbeat's default interval. docs/deployment.md has the rule for a load balancer.
KEEP_ALIVE_TIMEOUT_S = 75.0


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _db_password(db: str) -> str | None:
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


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number of seconds, or a number with s, m, h or d (``7d``)."""
    raw = text.strip().lower()
    scale = _UNITS.get(raw[-1:]) if raw else None
    number = raw[:-1] if scale is not None else raw
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give seconds, or a number with s, m, h or d (7d)"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be > 0")
    return value


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


def open_to_others(host: str) -> bool:
    """True when ``host`` is reachable beyond this machine (not a loopback address)."""
    if host.strip("[]").lower() == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True  # a host name: it may resolve to anything


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


#: How long closing the store may take at shutdown (PostgreSQL's pool waits at most 5 s).
STORE_CLOSE_TIMEOUT_S = 6.0


async def _close_store(store: Store) -> None:
    """Close ``store`` even while the server is being cancelled, within its own deadline.

    The close runs in a worker thread, which a deadline cannot interrupt: the pool's own
    close timeout bounds it, and this scope only stops the wait from outliving it.
    """
    with trio.move_on_after(STORE_CLOSE_TIMEOUT_S, shield=True):
        with contextlib.suppress(StoreUnavailable):
            await store.aclose()


async def serve(
    config: ServerConfig,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve protocol v1 until ``shutdown`` is set (or until cancelled).

    Opens the store (a corrupt or unwritable database is logged and reported by
    ``/v1/health``; the server still starts), then runs hypercorn and the lease-expiry timer
    in one nursery and calls ``task_status.started(url)`` with the bound URL.
    On ``shutdown``: long polls answer at once, hypercorn stops accepting and finishes
    in-flight requests (at most 5 s), the timer stops and the store is closed.
    With a tokens file, SIGHUP re-reads it (:func:`_reload_tokens_on_sighup`).
    Errors: a port that cannot be bound raises OSError before ``started``; a tokens file
    that cannot be used raises TokensFileError before anything starts.
    """
    tokens = load_server_tokens(config)
    store = config.make_store()
    try:
        await store.open(lease_ttl_s=config.lease_ttl)
    except StoreUnavailable as exc:
        logger.bind(event=Event.STORE_OPEN_FAILED, db=store.where, error=str(exc)).error(
            "the job store failed to open; /v1/health reports degraded until it works"
        )
    except StoreIncompatible:
        await _close_store(store)
        raise
    app = create_app(
        store,
        tokens=tokens,
        lease_ttl_s=config.lease_ttl,
        heartbeat_interval_s=config.heartbeat_interval,
    )
    core = core_of(app)
    hc = HypercornConfig()
    hc.bind = [_bind(config.host, config.port)]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = GRACEFUL_TIMEOUT_S
    hc.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_S
    if config.tls_cert and config.tls_key:
        hc.certfile, hc.keyfile = config.tls_cert, config.tls_key
        if config.tls_client_ca:
            hc.ca_certs = config.tls_client_ca
            hc.verify_mode = ssl.CERT_REQUIRED
    stop = shutdown if shutdown is not None else trio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()
        logger.bind(event=Event.SERVER_STOPPING).info("server stopping")
        core.close()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(core.run_timers)
            await nursery.start(store.watch, core.jobs_may_be_available)
            nursery.start_soon(core.run_pruning, config.retention)
            if config.tokens_file is not None:
                await nursery.start(_reload_tokens_on_sighup, config, app)

            async def http(*, task_status: trio.TaskStatus[list[str]]) -> None:
                await hypercorn_serve(
                    app,  # type: ignore[arg-type]
                    hc,
                    shutdown_trigger=shutdown_trigger,
                    task_status=task_status,
                )
                nursery.cancel_scope.cancel()

            binds: list[str] = await nursery.start(http)
            url = binds[0] if binds else f"http://{_bind(config.host, config.port)}"
            logger.bind(event=Event.SERVER_LISTENING, url=url, db=store.where).info(
                "server listening"
            )
            if config.token is None and open_to_others(config.host):
                logger.bind(event=Event.SERVER_OPEN, host=config.host, url=url).warning(
                    "listening beyond loopback on {} without a token: anyone who reaches"
                    " this port can submit, claim and read jobs; set {} (or --token-file)",
                    config.host,
                    TOKEN_ENV,
                )
            task_status.started(url)
    finally:
        await _close_store(store)
    logger.bind(event=Event.SERVER_STOPPED).info("server stopped")


def load_server_tokens(config: ServerConfig) -> Tokens:
    """The tokens of ``--token`` and ``--tokens-file``; TokensFileError if the file is bad.

    Logs a WARNING when the file is readable by its group or others, and registers every
    token with the log's redactor.
    """
    entries = []
    if config.tokens_file is not None:
        entries = load_tokens(config.tokens_file)
        loose = loose_permissions(config.tokens_file, "--tokens-file")
        if loose is not None:
            logger.bind(event=Event.TOKENS_FILE_READABLE, path=config.tokens_file).warning(
                "{}", loose
            )
    tokens = Tokens.of(config.token, entries)
    setup = logs.LogSetup.installed()
    if setup is not None:
        for secret in tokens.secrets():
            setup.add_secret(secret)
    return tokens


async def _reload_tokens_on_sighup(
    config: ServerConfig,
    app: object,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Re-read the tokens file at every SIGHUP; a bad file keeps the tokens in force and
    logs an ERROR saying what is wrong (never a token)."""
    from starlette.applications import Starlette

    assert isinstance(app, Starlette)
    with trio.open_signal_receiver(signal.SIGHUP) as hangups:
        task_status.started()
        async for _ in hangups:
            try:
                tokens = load_server_tokens(config)
            except TokensFileError as exc:
                logger.bind(event=Event.TOKENS_RELOAD_FAILED, error=str(exc)).error(
                    "the tokens file was not reloaded; the tokens in force stay: {}", exc
                )
                continue
            gate = gate_of(app)
            was = gate.tokens.summary()
            gate.tokens = tokens
            logger.bind(event=Event.TOKENS_RELOADED, roles=tokens.summary(), was=was).info(
                "tokens reloaded"
            )


SERVER_EXIT_CODES = """\
exit codes:
  0   stopped by SIGTERM or SIGINT (long polls answered, in-flight requests finished)
  1   cannot serve on --host:--port (the port is taken, or the address is not ours)
  2   bad flags
  78  the database cannot be used (written by a newer botd, or not a botd database),
      or the tokens file cannot be read or is not valid (the message names its entry),
      or a --tls-* file cannot be read or used
"""


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``botd server``'s flags and its exit codes to ``parser``."""
    parser.epilog = SERVER_EXIT_CODES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=3001, help="port to bind, 0 for any (3001)")
    parser.add_argument(
        "--db",
        default=os.environ.get(DB_ENV) or DEFAULT_DB,
        help="the job store: a postgresql://user@host/db URL (several replicas share it),"
        f" a SQLite file path, or :memory: (forgets every job on exit)"
        f" (default: env {DB_ENV}, else {DEFAULT_DB} in the working directory)",
    )
    parser.add_argument(
        "--retention",
        type=parse_duration,
        default=DEFAULT_RETENTION_S,
        help="delete finished jobs this long after they end: seconds, or 90s, 30m, 12h, 7d (7d)",
    )
    parser.add_argument(
        "--db-pool-size",
        type=int,
        default=DEFAULT_POOL_SIZE,
        help=f"PostgreSQL connections per server process ({DEFAULT_POOL_SIZE})",
    )
    parser.add_argument(
        "--statement-timeout",
        type=float,
        default=DEFAULT_STATEMENT_TIMEOUT_S,
        help="PostgreSQL: seconds a statement, or the wait for a connection, may take before"
        f" the request answers 503 ({DEFAULT_STATEMENT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' on /v1; an admin token (default: env"
        f" {TOKEN_ENV}; a flag shows in ps: prefer the env or --tokens-file)",
    )
    parser.add_argument(
        "--tokens-file",
        default=os.environ.get(TOKENS_FILE_ENV) or None,
        metavar="FILE",
        help="the server's tokens, one a line (ROLE:TOKEN, role worker, producer or admin;"
        " a bare TOKEN is admin; # comments), or TOML [[tokens]] tables with role, token"
        " and an optional name; re-read on SIGHUP; keep it mode 600"
        f" (default: env {TOKENS_FILE_ENV})",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=os.environ.get(TLS_CERT_ENV) or None,
        help="serve https: the server's PEM certificate (chain); needs --tls-key"
        f" (default: env {TLS_CERT_ENV}, else plain http)",
    )
    parser.add_argument(
        "--tls-key",
        metavar="FILE",
        default=os.environ.get(TLS_KEY_ENV) or None,
        help=f"the PEM private key of --tls-cert (default: env {TLS_KEY_ENV})",
    )
    parser.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        default=os.environ.get(TLS_CLIENT_CA_ENV) or None,
        help="require a client certificate signed by a CA in FILE (PEM) of every connection"
        f" (default: env {TLS_CLIENT_CA_ENV}, else none asked for)",
    )
    parser.add_argument(
        "--lease-ttl", type=float, default=DEFAULT_LEASE_TTL_S, help="lease TTL in seconds (30)"
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=DEFAULT_HEARTBEAT_INTERVAL_S,
        help="heartbeat interval told to bots, in seconds (5)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("BOT_LOG_LEVEL", "INFO"),
        help="lowest level logged: DEBUG, INFO, WARNING, ERROR (default: env BOT_LOG_LEVEL, INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "text"],
        default=os.environ.get("BOT_LOG_FORMAT", "auto"),
        help="json lines, text, or auto: text on a TTY, else json"
        " (default: env BOT_LOG_FORMAT, else auto)",
    )


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig of parsed ``botd server`` flags (token falls back to the env)."""
    token = args.token if args.token else os.environ.get(TOKEN_ENV) or None
    return ServerConfig(
        host=args.host,
        port=args.port,
        db=args.db,
        token=token,
        tokens_file=args.tokens_file,
        lease_ttl=args.lease_ttl,
        heartbeat_interval=args.heartbeat_interval,
        retention=args.retention,
        db_pool_size=args.db_pool_size,
        statement_timeout=args.statement_timeout,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
    )


async def serve_until_signalled(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully; a second signal stops at once."""
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if stop.is_set():
                        logger.bind(event=Event.SIGNAL, signal=name).warning("stopping now")
                        nursery.cancel_scope.cancel()
                        return
                    logger.bind(event=Event.SIGNAL, signal=name).info("stopping gracefully")
                    stop.set()

            nursery.start_soon(watch)
            await serve(config, shutdown=stop)
            nursery.cancel_scope.cancel()


def run_server_from_args(args: argparse.Namespace) -> int:
    """Run ``botd server`` with parsed flags; returns the exit code (0 after a signal)."""
    try:
        config = config_from_args(args)
    except (TypeError, ValueError) as exc:
        print(f"botd server: {exc}", file=sys.stderr)
        return 2
    if args.token:
        warning = token_flag_warning("--token", TOKEN_ENV, None)
        print(f"botd server: warning: {warning}", file=sys.stderr)
    try:
        check_tls(config)
    except ConfigError as exc:
        print(f"botd server: {exc}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    try:
        logs.setup_logging(
            level=str(args.log_level).upper(),
            fmt=args.log_format,
            secrets=[x for x in (config.token, _db_password(config.db)) if x],
        )
    except ValueError as exc:
        print(f"botd server: {exc}", file=sys.stderr)
        return 2
    # psycopg_pool warns on every failed connection attempt of every pooled connection; the
    # store logs an outage itself (store_unavailable, timer_store_unavailable, listen_*).
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    failures: list[str] = []
    refused: list[str] = []
    bad_tokens: list[str] = []
    try:
        trio.run(serve_until_signalled, config)
    except* TokensFileError as group:
        bad_tokens = [str(exc) for exc in leaf_exceptions(group)]
    except* StoreError as group:
        refused = [str(exc) for exc in leaf_exceptions(group)]
    except* OSError as group:
        failures = [str(exc) for exc in leaf_exceptions(group)]
    if bad_tokens:
        for message in bad_tokens:
            logger.bind(event=Event.TOKENS_FILE_INVALID, error=message).error(
                "cannot use the tokens file"
            )
            print(f"botd server: {message}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    if refused:
        for message in refused:
            logger.bind(event=Event.STORE_REFUSED, error=message).error("cannot use the database")
            print(f"botd server: {message}", file=sys.stderr)
        return int(ExitCode.CONFIG)
    if failures:
        where = f"{config.host}:{config.port}"
        print(f"botd server: cannot serve on {where}: {'; '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``botd server`` flags from ``argv`` and run the server."""
    parser = argparse.ArgumentParser(prog="botd server", description="the reference main server")
    add_server_arguments(parser)
    return run_server_from_args(parser.parse_args(argv))
