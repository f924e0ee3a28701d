"""A protocol-v1 server in one function, scripted per request, for the loops' own tests.

:class:`ScriptedServer` is an ``httpx.MockTransport`` handler: every route answers a valid
body of protocol v1 unless its script says otherwise. A script is a list of outcomes taken
one per request of that endpoint (the last one repeats); :data:`OUTCOMES` lists them, one
per class of outcome the call policy tells apart. Nothing is stored: a claim answers the
jobs queued with :meth:`ScriptedServer.queue` and ``recorded`` for every ack it carries.

It can be a broken or hostile server too: ``413`` (an ack's body too large), ``trickle`` (a
valid answer sent one byte every ``trickle_s``), ``endless`` (a body that never ends),
``too_many`` (a claim answered with 5,000 jobs more than it asked for); the register answer's
``heartbeat_interval_s`` and ``lease_ttl_s`` are fields, and a queued job may carry any
``timeout_s``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import httpx
import trio

__all__ = ["ENDPOINTS", "OUTCOMES", "ScriptedServer"]

#: Every outcome a request can be given, by the class the call policy sees.
OUTCOMES = (
    "ok",
    "connect",  # ServerUnavailable: connection refused
    "timeout",  # ServerUnavailable: the read timeout, after ``hang_s``
    "408", "425", "429", "500", "503",  # ServerUnavailable: a retryable status
    "garbage",  # ProtocolError: 200 and not JSON
    "wrong_shape",  # ProtocolError: 200 and JSON of the wrong shape
    "400", "409_other",  # RequestRejected: another 4xx
    "413",  # RequestRejected: 413 payload_too_large (an ack: final)
    "lease_lost", "conflict", "unknown_lease",  # an ack's answer about its lease (409/404)
    "unknown_bot", "superseded",  # SessionLost
    "401", "403",  # Unrecoverable
    "hang",  # never answers (until cancelled)
    "trickle",  # ServerUnavailable: a valid answer, a byte every ``trickle_s`` (the deadline)
    "endless",  # ProtocolError: a body that never ends (the size cap)
    "too_many",  # ProtocolError: a claim answered with 5,000 jobs more than it asked for
)  # fmt: skip

ENDPOINTS = {
    "register": r"^/v1/bots/register$",
    "heartbeat": r"^/v1/bots/[^/]+/heartbeat$",
    "get_bot": r"^/v1/bots/[^/]+$",
    "claim": r"^/v1/jobs/claim$",
    "ack": r"^/v1/leases/[^/]+/ack$",
    "health": r"^/v1/health$",
}


def _error(status: int, code: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": code, **extra}})


@attrs.define
class ScriptedServer:
    """Answers protocol v1; ``scripts[endpoint]`` lists the outcomes of its next requests."""

    scripts: dict[str, list[str]] = attrs.field(factory=dict)
    hang_s: float = 10.0
    #: How long an empty claim waits before it answers ``[]`` (capped by its ``wait_s``).
    long_poll_s: float = 1e9
    session_id: str = "s-1"
    holder: dict[str, Any] | None = None
    heartbeat_interval_s: float = 1.0
    lease_ttl_s: float = 30.0
    #: The pause between two bytes of a ``trickle`` answer.
    trickle_s: float = 2.0
    log: list[tuple[float, str, str]] = attrs.field(factory=list)
    #: Called with the number of requests so far, as each one arrives.
    on_request: Callable[[int], None] | None = None
    acks: list[dict[str, Any]] = attrs.field(factory=list)
    _jobs: list[dict[str, Any]] = attrs.field(factory=list)
    _seq: int = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def queue(self, n: int = 1, **job: Any) -> None:
        for _ in range(n):
            self._seq += 1
            self._jobs.append(
                {"job_id": f"j{self._seq}", "lease_id": f"l{self._seq}", "kind": "test",
                 "payload": None, "attempt": 1, "timeout_s": None,
                 "lease_expires_at": "2030-01-01T00:00:00.000Z", **job}
            )  # fmt: skip

    def count(self, endpoint: str, outcome: str | None = None) -> int:
        return sum(1 for _, e, o in self.log if e == endpoint and outcome in (None, o))

    def times(self, endpoint: str) -> list[float]:
        return [t for t, e, _ in self.log if e == endpoint]

    def _endpoint(self, path: str) -> str:
        for name, pattern in ENDPOINTS.items():
            if re.match(pattern, path):
                return name
        raise AssertionError(f"no endpoint for {path}")

    def __attrs_post_init__(self) -> None:
        self.scripts = {endpoint: list(script) for endpoint, script in self.scripts.items()}

    def _next(self, endpoint: str) -> str:
        script = self.scripts.get(endpoint)
        if not script:
            return "ok"
        return script.pop(0) if len(script) > 1 else script[0]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        endpoint = self._endpoint(request.url.path)
        outcome = self._next(endpoint)
        self.log.append((trio.current_time(), endpoint, outcome))
        if self.on_request is not None:
            self.on_request(len(self.log))
        await trio.lowlevel.checkpoint()
        body = json.loads(request.content) if request.content else None
        if outcome == "ok":
            return await self._ok(endpoint, body)
        if outcome == "connect":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if outcome == "timeout":
            await trio.sleep(self.hang_s)
            raise httpx.ReadTimeout("timed out", request=request)
        if outcome == "hang":
            await trio.sleep_forever()
        if outcome in ("trickle", "endless", "too_many"):
            return await self._hostile(outcome, endpoint, body)
        if outcome == "413":
            return _error(413, "payload_too_large")
        if outcome.isdigit() and outcome[0] in "45" and outcome not in ("400", "401", "403"):
            return _error(int(outcome), "unavailable")
        if outcome == "garbage":
            return httpx.Response(200, content=b"<html>not json</html>")
        if outcome == "wrong_shape":
            return httpx.Response(
                200, json={"jobs": "nope", "session_id": 5, "status": 7, "cancel_leases": 5}
            )
        if outcome == "400":
            return _error(400, "invalid_request")
        if outcome == "409_other":
            return _error(409, "something_else")
        if outcome in ("lease_lost", "conflict"):
            return _error(409, outcome)
        if outcome == "unknown_lease":
            return _error(404, outcome)
        if outcome == "unknown_bot":
            return _error(404, "unknown_bot")
        if outcome == "superseded":
            extra = {"holder": self.holder} if self.holder else {}
            return _error(409, "session_superseded", **extra)
        if outcome in ("401", "403"):
            return _error(int(outcome), "unauthorized")
        raise AssertionError(f"unknown outcome {outcome!r}")

    async def _hostile(self, outcome: str, endpoint: str, body: Any) -> httpx.Response:
        if outcome == "too_many":
            assert endpoint == "claim"
            self.queue(body["max_jobs"] + 5000)
            jobs, self._jobs = self._jobs, []
            return httpx.Response(200, json={"jobs": jobs, "acks": []})
        if outcome == "endless":

            async def endless() -> AsyncIterator[bytes]:
                yield b'{"jobs": ["'
                while True:
                    await trio.lowlevel.checkpoint()
                    yield b"x" * 65536

            return httpx.Response(200, content=endless())
        valid = (await self._ok(endpoint, body)).content

        async def trickle() -> AsyncIterator[bytes]:
            for i in range(len(valid)):
                await trio.sleep(self.trickle_s)
                yield valid[i : i + 1]

        return httpx.Response(200, content=trickle())

    async def _ok(self, endpoint: str, body: Any) -> httpx.Response:
        if endpoint == "register":
            registered = {"bot_id": body["bot_id"], "session_id": self.session_id,
                          "heartbeat_interval_s": self.heartbeat_interval_s,
                          "lease_ttl_s": self.lease_ttl_s, "server_version": "test"}  # fmt: skip
            return httpx.Response(200, content=json.dumps(registered).encode())
        if endpoint == "get_bot":
            info = {"bot_id": "bot-1", "session_id": self.session_id, "status": "active",
                    "last_seen": "2030-01-01T00:00:00.000Z", "capacity": 1,
                    "active_leases": []}  # fmt: skip
            return httpx.Response(200, json=info)
        if endpoint == "heartbeat":
            return httpx.Response(200, json={})
        if endpoint == "health":
            return httpx.Response(200, json={"status": "ok", "database": "ok"})
        if endpoint == "ack":
            self.acks.append(body)
            return httpx.Response(200, json={"status": "recorded"})
        assert endpoint == "claim"
        self.acks += body["acks"]
        results = [{"lease_id": a["lease_id"], "status": "recorded"} for a in body["acks"]]
        if not self._jobs and body["max_jobs"] > 0 and body["wait_s"] > 0:
            await trio.sleep(min(self.long_poll_s, body["wait_s"]))
        jobs, self._jobs = self._jobs[: body["max_jobs"]], self._jobs[body["max_jobs"] :]
        # Not json=: httpx refuses NaN there, and a broken server may send it (timeout_s).
        return httpx.Response(200, content=json.dumps({"jobs": jobs, "acks": results}).encode())
