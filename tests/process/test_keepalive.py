"""Keep-alive that cannot race: the server keeps idle connections longer than a bot does, and
a request that meets a connection the server closed meanwhile is sent again, once, on a new
one. Real sockets and real time: a raw TCP server of the test's own decides, request by
request, whether to answer, to close before answering, to reset, or to answer half.
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio

from botd.client import KEEPALIVE_EXPIRY_S, ServerClient
from botd.config import DEFAULT_CLAIM_TIMEOUT_MARGIN, DEFAULT_HEARTBEAT_INTERVAL_MS
from botd.errors import ServerUnavailable
from botd.models import MAX_WAIT_S
from botd.server.config import ServerConfig
from botd.server.run import KEEP_ALIVE_TIMEOUT_S, serve

pytestmark = pytest.mark.slow

BODY = b'{"status":"ok","database":"ok","version":"t"}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY
)

#: What the server does with request ``n`` (from 1) of connection ``c`` (from 1).
Plan = Callable[[int, int], str]


@attrs.define
class RawServer:
    plan: Plan
    port: int = 0
    connections: int = 0
    requests: list[tuple[int, int]] = attrs.field(factory=list)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = self.connections
        buffer = b""
        n = 0
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                buffer = buffer[length:]
                n += 1
                self.requests.append((conn, n))
                action = self.plan(conn, n)
                if action == "answer":
                    await stream.send_all(ANSWER)
                elif action == "close":  # what a keep-alive timeout does, as the request came
                    await stream.aclose()
                    return
                elif action == "reset":
                    stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    await stream.aclose()
                    return
                elif action == "half":  # the answer's head, half its body, then nothing
                    await stream.send_all(ANSWER[: len(ANSWER) - len(BODY) // 2])
                    await stream.aclose()
                    return
        except trio.BrokenResourceError:
            return


@asynccontextmanager
async def raw_server(plan: Plan) -> AsyncIterator[RawServer]:
    server = RawServer(plan)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
        )
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


def on_second_request_of_the_first_connection(action: str) -> Plan:
    return lambda conn, n: action if (conn, n) == (1, 2) else "answer"


@pytest.mark.parametrize("action", ["close", "reset"])
async def test_a_stale_pooled_connection_is_retried_once_on_a_new_one(action: str) -> None:
    async with raw_server(on_second_request_of_the_first_connection(action)) as server:
        async with ServerClient(f"http://127.0.0.1:{server.port}") as client:
            await client.health()
            health = await client.health()  # the pooled connection is gone: sent again
            assert health.status == "ok"
            await client.health()
        # The request went out twice: on the stale connection, then on a new one.
        assert server.requests[:3] == [(1, 1), (1, 2), (2, 1)]


async def test_an_answer_cut_short_is_not_sent_again() -> None:
    async with raw_server(on_second_request_of_the_first_connection("half")) as server:
        async with ServerClient(f"http://127.0.0.1:{server.port}") as client:
            await client.health()
            with pytest.raises(ServerUnavailable):
                await client.health()
        assert server.requests == [(1, 1), (1, 2)]  # the server saw it: no second try


async def test_a_new_connection_that_fails_is_not_sent_again() -> None:
    async with raw_server(lambda conn, n: "close") as server:
        async with ServerClient(f"http://127.0.0.1:{server.port}") as client:
            with pytest.raises(ServerUnavailable):
                await client.health()
        assert server.requests == [(1, 1)]


def test_the_keep_alive_rule_holds_for_the_defaults() -> None:
    """The server keeps an idle connection longer than a bot waits between two requests on
    it, and longer than the bot keeps one: the bot always closes first."""
    heartbeat = DEFAULT_HEARTBEAT_INTERVAL_MS / 1000
    assert heartbeat < KEEPALIVE_EXPIRY_S  # a heartbeat reuses the connection of the last one
    assert KEEP_ALIVE_TIMEOUT_S > KEEPALIVE_EXPIRY_S
    assert KEEP_ALIVE_TIMEOUT_S > MAX_WAIT_S + DEFAULT_CLAIM_TIMEOUT_MARGIN


async def test_botd_server_keeps_an_idle_connection_past_a_heartbeat_interval() -> None:
    """hypercorn's default keep-alive timeout is 5 s, the heartbeat's default interval: the
    server used to close the connection just as the next heartbeat went out."""
    connects: list[str] = []

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.started":
            connects.append(event)

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        config = ServerConfig(port=0, db=":memory:")
        url = await nursery.start(lambda task_status: serve(
            config, shutdown=stop, task_status=task_status))  # fmt: skip
        limits = httpx.Limits(keepalive_expiry=60)  # the client keeps it: may the server?
        async with httpx.AsyncClient(base_url=url, limits=limits) as http:
            first = await http.get("/v1/health", extensions={"trace": trace})
            await trio.sleep(DEFAULT_HEARTBEAT_INTERVAL_MS / 1000 + 1)
            second = await http.get("/v1/health", extensions={"trace": trace})
        assert first.status_code == second.status_code == 200
        assert len(connects) == 1  # the second request went out on the first connection
        stop.set()
