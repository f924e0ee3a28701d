"""The ``botd server`` command: its flags (each falls back to an environment variable), the
:class:`~botd.server.config.ServerConfig` they make, and one run from them with its exit
codes. :func:`main` is a standalone entry point,
``python -c "from botd.server.command import main; ..."``, for process tests.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import trio
from loguru import logger

from .. import logs
from ..errors import ConfigError, leaf_exceptions
from ..events import Event
from ..exit_codes import ExitCode
from ..token_files import token_flag_warning
from .auth import TokensFileError
from .config import (
    DB_ENV,
    DEFAULT_DB,
    DEFAULT_POOL_SIZE,
    DEFAULT_RETENTION_S,
    DEFAULT_STATEMENT_TIMEOUT_S,
    TLS_CERT_ENV,
    TLS_CLIENT_CA_ENV,
    TLS_KEY_ENV,
    TOKEN_ENV,
    TOKENS_FILE_ENV,
    ServerConfig,
    check_tls,
    db_password,
)
from .core import DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_LEASE_TTL_S
from .run import serve_until_signalled
from .store import StoreError

__all__ = [
    "SERVER_EXIT_CODES",
    "add_server_arguments",
    "config_from_args",
    "main",
    "parse_duration",
    "run_server_from_args",
]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


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
    _add_file_flag(
        parser,
        "--tokens-file",
        TOKENS_FILE_ENV,
        "the server's tokens, one a line (ROLE:TOKEN, role worker, producer or admin;"
        " a bare TOKEN is admin; # comments), or TOML [[tokens]] tables with role, token"
        " and an optional name; re-read on SIGHUP; keep it mode 600",
    )
    _add_file_flag(
        parser,
        "--tls-cert",
        TLS_CERT_ENV,
        "serve https: the server's PEM certificate (chain); needs --tls-key",
        otherwise="plain http",
    )
    _add_file_flag(parser, "--tls-key", TLS_KEY_ENV, "the PEM private key of --tls-cert")
    _add_file_flag(
        parser,
        "--tls-client-ca",
        TLS_CLIENT_CA_ENV,
        "require a client certificate signed by a CA in FILE (PEM) of every connection",
        otherwise="none asked for",
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


def _add_file_flag(
    parser: argparse.ArgumentParser, flag: str, env: str, help: str, *, otherwise: str = ""
) -> None:
    """Add ``flag``, a FILE that defaults to env ``env``; ``otherwise``: what none means."""
    fallback = f", else {otherwise}" if otherwise else ""
    parser.add_argument(
        flag,
        metavar="FILE",
        default=os.environ.get(env) or None,
        help=f"{help} (default: env {env}{fallback})",
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
            secrets=[x for x in (config.token, db_password(config.db)) if x],
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
