"""A small protocol-v1 server over raw trio sockets (h11), that can turn hostile on cue.

:func:`hostile_server` serves on 127.0.0.1 inside the current Trio run and yields the
:class:`HostileServer` (its ``url``). It answers register, get_bot, heartbeat, health, claim,
ack and deregister validly, hands out the jobs queued with :meth:`HostileServer.queue`, and
records every ack (:attr:`HostileServer.acks`). ``claim_answers`` lists what its next
claims answer, one each: ``"ok"``, ``"trickle"`` (the valid answer, one byte every
``trickle_s``: httpx's per-chunk read timeout never trips), ``"too_many"`` (5,000 jobs more
than asked for, whose leases are kept in :attr:`HostileServer.extra_leases`). A job may be
queued with any ``timeout_s``, ``-5`` included. Real sockets and real time: for
``tests/process``, where a real ``botd run`` talks to it.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio

__all__ = ["HostileServer", "hostile_server"]


@attrs.define
class HostileServer:
    url: str = ""
    claim_answers: list[str] = attrs.field(factory=list)
    trickle_s: float = 2.0
    acks: list[dict[str, Any]] = attrs.field(factory=list)
    claims: list[str] = attrs.field(factory=list)  # the answer each claim got
    extra_leases: set[str] = attrs.field(factory=set)
    #: Every lease any heartbeat listed.
    listed: set[str] = attrs.field(factory=set)
    jobs: list[dict[str, Any]] = attrs.field(factory=list)
    _ids: Any = attrs.field(factory=lambda: itertools.count(1))

    def queue(self, **job: Any) -> str:
        n = next(self._ids)
        self.jobs.append(
            {"job_id": f"j{n}", "lease_id": f"l{n}", "kind": "test", "payload": None,
             "attempt": 1, "timeout_s": None, "lease_expires_at": "2030-01-01T00:00:00.000Z",
             **job}
        )  # fmt: skip
        return f"j{n}"

    def ack_of(self, job_id: str) -> dict[str, Any] | None:
        lease = "l" + job_id[1:]
        return next((a for a in self.acks if a["lease_id"] == lease), None)

    async def answer(self, method: str, path: str, body: Any) -> tuple[int, bytes, str]:
        """(status, body, mode) for one request; mode ``trickle`` sends it slowly."""
        if path == "/v1/health":
            return 200, _json({"status": "ok", "database": "ok"}), "ok"
        if path == "/v1/bots/register":
            return 200, _json({"bot_id": body["bot_id"], "session_id": "s1",
                               "heartbeat_interval_s": 0.3, "lease_ttl_s": 30.0,
                               "server_version": "hostile"}), "ok"  # fmt: skip
        if path.endswith("/heartbeat"):
            self.listed.update(body["active_leases"])
            return 200, _json({}), "ok"
        if method == "DELETE":
            return 204, b"", "ok"
        if path.startswith("/v1/bots/"):
            return 200, _json({"bot_id": path.rsplit("/", 1)[1], "session_id": "s1",
                               "status": "active", "last_seen": "2030-01-01T00:00:00.000Z",
                               "capacity": 1, "active_leases": []}), "ok"  # fmt: skip
        if path.endswith("/ack"):
            self.acks.append(body)
            return 200, _json({"status": "recorded"}), "ok"
        assert path == "/v1/jobs/claim", path
        self.acks += body["acks"]
        acks = [{"lease_id": a["lease_id"], "status": "recorded"} for a in body["acks"]]
        mode = self.claim_answers.pop(0) if self.claim_answers else "ok"
        max_jobs = body["max_jobs"]
        if max_jobs and not self.jobs and mode == "ok":
            with trio.move_on_after(body["wait_s"]):
                while not self.jobs:
                    await trio.sleep(0.02)
        self.claims.append(mode)
        if mode == "too_many":
            extra = [
                {"job_id": f"x{i}", "lease_id": f"xl{i}", "kind": "test", "payload": None,
                 "attempt": 1, "timeout_s": None, "lease_expires_at": "2030-01-01T00:00:00.000Z"}
                for i in range(max_jobs + 5000)
            ]  # fmt: skip
            self.extra_leases |= {job["lease_id"] for job in extra}
            return 200, _json({"jobs": extra, "acks": acks}), "ok"
        jobs, self.jobs = self.jobs[:max_jobs], self.jobs[max_jobs:]
        return 200, _json({"jobs": jobs, "acks": acks}), mode


def _json(data: Any) -> bytes:
    return json.dumps(data).encode()  # NaN allowed: a hostile server may send it


async def _serve_connection(server: HostileServer, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request: h11.Request | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            assert request is not None
            path = request.target.decode().split("?", 1)[0]
            status, content, mode = await server.answer(
                request.method.decode(), path, json.loads(body) if body else None
            )
            headers = [("content-type", "application/json"), ("content-length", str(len(content)))]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            if mode == "trickle":
                for i in range(len(content)):
                    await trio.sleep(server.trickle_s)
                    await stream.send_all(conn.send(h11.Data(data=content[i : i + 1])))
            elif content:
                await stream.send_all(conn.send(h11.Data(data=content)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    finally:
        await stream.aclose()


@asynccontextmanager
async def hostile_server(**options: Any) -> AsyncIterator[HostileServer]:
    """Serve a :class:`HostileServer` (``options`` are its fields) on 127.0.0.1."""
    server = HostileServer(**options)
    async with trio.open_nursery() as nursery:

        async def handle(stream: trio.SocketStream) -> None:
            await _serve_connection(server, stream)

        serve = functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
        (listener,) = await nursery.start(serve)
        server.url = f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
        yield server
        nursery.cancel_scope.cancel()
