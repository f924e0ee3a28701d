"""Running the reference server: hypercorn's trio worker, the lease-expiry task, signals.

:func:`serve` is the async entry point for ``botd server`` (:mod:`botd.server.command`),
tests and embedding (port 0 is supported: it reports the real bound URL through
``task_status``); :func:`serve_until_signalled` is ``botd server``'s, stopped by SIGTERM or
SIGINT. With a tokens file, SIGHUP re-reads it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import ssl

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from loguru import logger

from .. import logs
from ..events import Event
from ..token_files import loose_permissions
from .app import core_of, create_app, gate_of
from .auth import Tokens, TokensFileError, load_tokens
from .config import TOKEN_ENV, ServerConfig
from .store import Store, StoreIncompatible, StoreUnavailable

__all__ = [
    "GRACEFUL_TIMEOUT_S",
    "KEEP_ALIVE_TIMEOUT_S",
    "load_server_tokens",
    "serve",
    "serve_until_signalled",
]

GRACEFUL_TIMEOUT_S = 5.0
#: How long an idle keep-alive connection stays open. It is longer than anything a bot waits
#: between two requests on one connection (a heartbeat interval, a long poll of at most 30 s
#: plus its margin) and than the bot's own idle expiry (15 s), so the bot, not the server,
#: closes an idle connection, and no request races a close. Hypercorn's default is 5 s, the
#: heartbeat's default interval. docs/deployment.md has the rule for a load balancer.
KEEP_ALIVE_TIMEOUT_S = 75.0


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
            if tokens.open and open_to_others(config.host):
                logger.bind(event=Event.SERVER_OPEN, host=config.host, url=url).warning(
                    "listening beyond loopback on {} without a token: anyone who reaches"
                    " this port can submit, claim and read jobs; set {} or give --tokens-file",
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
