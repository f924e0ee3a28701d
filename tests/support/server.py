"""Helpers to run the reference server in tests.

- :func:`make_app`: the Starlette app and its in-memory store, for ``httpx.ASGITransport``
  on ``autojump_clock`` (everything inline on the Trio thread, time exact);
- :func:`asgi_client`: an ``httpx.AsyncClient`` on such an app, with the lease-expiry timer
  running in a nursery for as long as the client is open;
- :func:`running_server`: the real server on 127.0.0.1, port 0, inside the current Trio run
  (real sockets, real time); yields its URL;
- :func:`spawn_server_process`: the real server in a child process; returns (Popen, url).
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from starlette.applications import Starlette

from botd.server.app import core_of, create_app
from botd.server.config import ServerConfig
from botd.server.run import serve
from botd.server.store import SqliteStore, Store

__all__ = [
    "StoreMaker",
    "asgi_client",
    "free_port",
    "make_app",
    "running_server",
    "spawn_server_process",
]

BASE_URL = "http://botd.test"

#: Makes a fresh, empty store of the kind a test is parametrized on (the ``new_store``
#: fixture); the fixture closes what it made.
StoreMaker = Callable[[], Store]


def make_app(
    *, db: str = ":memory:", store: Store | None = None, **kw: Any
) -> tuple[Starlette, Store]:
    """An app on ``store``, or on a fresh SQLite store (``:memory:`` by default); ``kw`` goes
    to ``create_app``.

    The store opens lazily on first use. The lease-expiry timer is not running: start
    ``core_of(app).run_timers`` in a nursery, or use :func:`asgi_client`.
    """
    if store is None:
        store = SqliteStore(db)
    return create_app(store, **kw), store


@asynccontextmanager
async def asgi_client(
    app: Starlette, *, token: str | None = None, timers: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on ``app`` through ASGITransport; runs its timer while open."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with trio.open_nursery() as nursery:
        if timers:
            await nursery.start(core_of(app).run_timers)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url=BASE_URL, headers=headers
        ) as client:
            yield client
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_server(**kw: Any) -> AsyncIterator[str]:
    """Serve on 127.0.0.1 port 0 in this Trio run; yields the URL. ``kw`` -> ServerConfig."""
    kw.setdefault("port", 0)
    kw.setdefault("db", ":memory:")
    config = ServerConfig(**kw)
    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(serve, config)
        yield url
        nursery.cancel_scope.cancel()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: Ports a test may pick for a listener: below the kernel's ephemeral range, which every
#: outgoing connection (and every bind to port 0) draws from. A port picked from that range
#: can be taken by a client's source port before the process that should listen on it
#: starts (or restarts, as a SIGKILLed bot does): "Address already in use".
_PICK_FROM = range(10000, max(10001, _ephemeral_low()))


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1, outside the ephemeral range."""
    for _ in range(500):
        port = random.choice(_PICK_FROM)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn_server_process(
    tmp_path: Path, *extra_args: str, timeout: float = 20.0, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``botd server`` in a child process on a free port; wait until /v1/health answers.

    ``extra_args`` are more ``botd server`` flags (``--db``, ``--token``, ``--lease-ttl``...).
    Its stderr goes to ``tmp_path / "server.log"``. The caller terminates the process
    (``proc.terminate(); proc.wait()``). Raises RuntimeError if it exits or never answers.
    """
    port = free_port()
    log = open(tmp_path / "server.log", "ab")  # noqa: SIM115 - the child keeps it
    cmd = [
        sys.executable,
        "-c",
        "import sys; from botd.server.command import main; sys.exit(main(sys.argv[1:]))",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra_args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=log, env={**os.environ, **(env or {})}, cwd=tmp_path
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = (tmp_path / "server.log").read_text(errors="replace")
            raise RuntimeError(f"server exited with {proc.returncode}:\n{text[-3000:]}")
        try:
            httpx.get(f"{url}/v1/health", timeout=1.0)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"server did not answer /v1/health within {timeout}s")
