"""A fault-injecting TCP proxy on Trio, for the chaos tests: loopback to loopback only.

:class:`ChaosProxy` listens on 127.0.0.1 (port 0 by default) and forwards every connection to
an upstream on loopback. A test switches its mode at run time:

- :meth:`~ChaosProxy.normal`: forward both ways;
- :meth:`~ChaosProxy.latency`: sleep before forwarding each chunk (both ways);
- :meth:`~ChaosProxy.resets`: reset connections (RST: SO_LINGER 0, then close), each new
  connection and each chunk with probability ``p``;
- :meth:`~ChaosProxy.blackhole`: a partition: connections are accepted and kept, nothing is
  forwarded; when the partition ends, the connections it caught are reset (their peers have
  timed out by then, as with a real partition);
- :meth:`~ChaosProxy.truncate`: a server->client chunk is, with probability ``p``, cut to a part
  of it and the connection closed (the client sees a response cut short).

An upstream that refuses (the server is down) resets the client connection, as a refused
connect would. ``counters`` counts what was done (connections, resets, truncations...).
Ends when the nursery that runs :meth:`ChaosProxy.run` is cancelled; it owns every connection
task, so nothing outlives it.
"""

from __future__ import annotations

import contextlib
import functools
import random
import socket
import struct
from collections import Counter
from typing import Literal

import trio

__all__ = ["ChaosProxy", "Mode"]

Mode = Literal["normal", "latency", "reset", "blackhole", "truncate"]
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_CHUNK = 65536


def _rst(stream: trio.SocketStream) -> None:
    """Make the next close send RST instead of FIN."""
    with contextlib.suppress(OSError):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class ChaosProxy:
    """A TCP proxy from 127.0.0.1:``port`` to ``upstream_host``:``upstream_port``.

    Args:
      upstream_port: the port of the real server (it may go away and come back).
      upstream_host: a loopback address; anything else is refused (the proxy is bounded).
      rng: the random source of the probabilistic modes (seed it to reproduce a run).
    """

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        *,
        rng: random.Random | None = None,
    ) -> None:
        if upstream_host not in _LOOPBACK:
            raise ValueError(f"the chaos proxy only talks to loopback, not {upstream_host!r}")
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode: Mode = "normal"
        self.delay = 0.0
        self.p = 1.0
        self.rng = rng or random.Random()
        self.counters: Counter[str] = Counter()
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- switching modes (from the test, at any time) ----------------------------------

    def _set(self, mode: Mode, *, delay: float = 0.0, p: float = 1.0) -> None:
        self.mode, self.delay, self.p = mode, delay, p
        self._changed.set()
        self._changed = trio.Event()

    def normal(self) -> None:
        self._set("normal")

    def latency(self, delay: float) -> None:
        """Sleep ``delay`` seconds before forwarding each chunk, both ways."""
        self._set("latency", delay=delay)

    def resets(self, p: float = 1.0) -> None:
        """Reset new connections and in-flight chunks with probability ``p``."""
        self._set("reset", p=p)

    def blackhole(self) -> None:
        """Forward nothing (a partition) until the mode changes."""
        self._set("blackhole")

    def truncate(self, p: float = 1.0) -> None:
        """Cut server->client chunks short (then close) with probability ``p``."""
        self._set("truncate", p=p)

    # --- serving ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(port)`` once listening."""
        async with trio.open_nursery() as nursery:
            listeners: list[trio.SocketListener] = await nursery.start(
                functools.partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1")
            )
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started(self.port)

    def _hit(self) -> bool:
        return self.p >= 1.0 or self.rng.random() < self.p

    async def _handle(self, client: trio.SocketStream) -> None:
        self.counters["connections"] += 1
        upstream: trio.SocketStream | None = None
        try:
            if self.mode == "reset" and self._hit():
                self.counters["reset"] += 1
                _rst(client)
                return
            if self.mode == "blackhole":
                await self._hold()
                self.counters["partitioned"] += 1
                _rst(client)
                return
            try:
                upstream = await trio.open_tcp_stream(*self.upstream)
            except OSError:
                self.counters["refused"] += 1
                _rst(client)
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, False, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, client, True, nursery.cancel_scope)
        finally:
            with trio.CancelScope(shield=True):
                for stream in (client, upstream):
                    if stream is not None:
                        await stream.aclose()

    async def _hold(self) -> None:
        """Wait while the partition lasts."""
        while self.mode == "blackhole":
            await self._changed.wait()

    async def _pump(
        self,
        src: trio.SocketStream,
        dst: trio.SocketStream,
        to_client: bool,
        done: trio.CancelScope,
    ) -> None:
        """Forward src -> dst chunk by chunk, applying the mode to each chunk."""
        client = dst if to_client else src
        try:
            while True:
                chunk = await src.receive_some(_CHUNK)
                if not chunk:
                    break
                mode = self.mode
                if mode == "blackhole":
                    # A partition: this chunk never arrives; when it heals, the peers have
                    # given up on this connection: reset it.
                    await self._hold()
                    self.counters["partitioned"] += 1
                    _rst(client)
                    break
                if mode == "latency":
                    self.counters["delayed"] += 1
                    await trio.sleep(self.delay)
                elif mode == "reset" and self._hit():
                    self.counters["reset"] += 1
                    _rst(client)
                    break
                elif mode == "truncate" and to_client and self._hit():
                    self.counters["truncated"] += 1
                    keep = self.rng.randrange(0, max(1, len(chunk)))
                    if keep:
                        await dst.send_all(chunk[:keep])
                    break
                await dst.send_all(chunk)
            if not to_client:
                # The client finished sending: half-close towards the server, keep reading.
                try:
                    await dst.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    done.cancel()
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        done.cancel()
