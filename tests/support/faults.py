"""A transport that a test can break on command: down, DNS failure, hang, 500s, bad bodies, 409s.

It wraps a real transport (usually ``httpx.ASGITransport`` around the reference server's app),
so everything that is not broken is the real server answering.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import attrs
import httpx
import trio

FAULTS = (
    "ok",
    "down",  # connection refused
    "dns",  # name resolution fails
    "hang",  # accepts and never answers (until the client's read timeout)
    "500",
    "503",
    "garbage",  # 200 with a body that is not JSON
    "wrong_shape",  # 200 with JSON of the wrong shape
    "degraded",  # /v1/health: 503 with a degraded database
    "superseded",  # 409 session_superseded
    "unknown_bot",  # 404 unknown_bot
    "unauthorized",  # 401
)


@attrs.define
class FaultyTransport(httpx.AsyncBaseTransport):
    """Apply ``faults[pattern]`` to requests whose path matches ``pattern`` (a regex).

    ``default`` applies to every request no pattern matches. ``hang_timeout`` is how long a
    hung request takes before it raises ReadTimeout, as httpx's own timeout would.
    """

    inner: httpx.AsyncBaseTransport
    default: str = "ok"
    faults: dict[str, str] = attrs.field(factory=dict)
    hang_timeout: float = 10.0
    log: list[tuple[float, str, str, str]] = attrs.field(factory=list)
    on_request: Callable[[httpx.Request], None] | None = None

    def fault_for(self, path: str) -> str:
        for pattern, fault in self.faults.items():
            if re.search(pattern, path):
                return fault
        return self.default

    def count(self, pattern: str, fault: str | None = None) -> int:
        return sum(
            1 for _, _, p, f in self.log if re.search(pattern, p) and (fault is None or f == fault)
        )

    def times(self, pattern: str) -> list[float]:
        return [t for t, _, p, _ in self.log if re.search(pattern, p)]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        fault = self.fault_for(path)
        self.log.append((trio.current_time(), request.method, path, fault))
        if self.on_request is not None:
            self.on_request(request)
        await trio.lowlevel.checkpoint()
        if fault == "ok":
            return await self.inner.handle_async_request(request)
        if fault == "down":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if fault == "dns":
            raise httpx.ConnectError("[Errno -2] Name or service not known", request=request)
        if fault == "hang":
            await trio.sleep(self.hang_timeout)
            raise httpx.ReadTimeout("timed out", request=request)
        if fault in ("500", "503"):
            return _error(int(fault), "internal", "the server broke")
        if fault == "garbage":
            return httpx.Response(200, content=b"<html>not json</html>")
        if fault == "wrong_shape":
            return httpx.Response(200, json={"jobs": "nope", "session_id": 5})
        if fault == "degraded":
            return httpx.Response(503, json={"status": "degraded", "database": "disk I/O error"})
        if fault == "superseded":
            return _error(409, "session_superseded", "register again")
        if fault == "unknown_bot":
            return _error(404, "unknown_bot", "register again")
        if fault == "unauthorized":
            return _error(401, "unauthorized", "send the token")
        raise AssertionError(f"unknown fault {fault!r}")


def _error(status: int, code: str, message: str) -> httpx.Response:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return httpx.Response(status, content=body, headers={"content-type": "application/json"})
