"""Protocol v1 over httpx: the bot's only way to talk to the main server.

:class:`ServerClient` turns each protocol call into one HTTP request and its answer into a
model from :mod:`botd.models`. Every failure leaves as a :class:`botd.errors.ServerError`:

- network errors, timeouts, DNS failures, 429 and 5xx -> :class:`ServerUnavailable` (retryable);
- a body that is not JSON, or JSON of the wrong shape -> :class:`ProtocolError` (retryable);
- 401/403 -> :class:`Unrecoverable`;
- 404 ``unknown_bot`` -> :class:`UnknownBot`;
- 409 ``session_superseded`` -> :class:`SessionSuperseded`;
- any other 4xx -> :class:`RequestRejected` with the server's error code.

httpx exceptions are translated in :func:`map_transport_errors` and nowhere else.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import httpx
import trio

from . import codec
from .errors import (
    ProtocolError,
    RequestRejected,
    ServerUnavailable,
    SessionSuperseded,
    UnknownBot,
    Unrecoverable,
)
from .models import (
    Ack,
    BotInfo,
    ClaimRequest,
    ClaimResponse,
    ErrorBody,
    Health,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
    SingleAckResponse,
)

__all__ = ["RequestObserver", "ServerClient", "map_transport_errors"]

T = TypeVar("T")

#: ``observe(endpoint, outcome, seconds)``; outcome is one of :data:`OUTCOMES`.
RequestObserver = Callable[[str, str, float], None]

RETRYABLE_STATUS = frozenset({408, 425, 429})

#: ``ok``: a 2xx; ``unavailable``: network error, timeout, 429, 5xx; ``rejected``: any other
#: 4xx; ``protocol_error``: an answer we cannot read; ``error``: anything else.
OUTCOMES = ("ok", "unavailable", "rejected", "protocol_error", "error")


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, ServerUnavailable):
        return "unavailable"
    if isinstance(exc, ProtocolError):
        return "protocol_error"
    if isinstance(exc, RequestRejected | Unrecoverable):
        return "rejected"
    return "error"


@contextmanager
def map_transport_errors(endpoint: str) -> Iterator[None]:
    """Translate httpx's exceptions into :class:`ServerUnavailable`; the one place that does."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ServerUnavailable(f"{endpoint}: timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        # ConnectError covers refused connections and DNS failures; the message says which.
        raise ServerUnavailable(f"{endpoint}: {type(exc).__name__}: {exc or 'no detail'}") from None


def _error_of(response: httpx.Response, endpoint: str) -> Exception:
    """Classify a non-2xx answer once, the way every caller sees it."""
    status = response.status_code
    code, message = f"http_{status}", response.reason_phrase
    try:
        detail = codec.structure(json.loads(response.content), ErrorBody).error
        code, message = detail.code, detail.message
    except (ValueError, ProtocolError):
        pass  # a proxy's HTML error page: keep the status line
    where = f"{endpoint}: {status} {code}: {message}"
    if status >= 500 or status in RETRYABLE_STATUS:
        return ServerUnavailable(where)
    if status in (401, 403):
        return Unrecoverable(f"{where} (check BOT_TOKEN / BOT_TOKEN_FILE)")
    if status == 404 and code == "unknown_bot":
        return UnknownBot(status, code, message)
    if status == 409 and code == "session_superseded":
        return SessionSuperseded(status, code, message)
    return RequestRejected(status, code, message)


@attrs.define
class ServerClient:
    """A protocol v1 client for one bot.

    Args:
      base_url: the main server, e.g. ``http://localhost:3001``.
      token: the bearer token, or None. It goes only into the Authorization header.
      connect_timeout, request_timeout: seconds; a long-poll claim gets ``wait_s + claim_margin``.
      transport: an httpx transport to use instead of the network (tests).
      observe: called after every request with the endpoint, outcome and duration.

    Resource handling: owns one ``httpx.AsyncClient``; close it with :meth:`aclose`
    or ``async with``.
    """

    base_url: str
    token: str | None = attrs.field(default=None, repr=False)
    connect_timeout: float = 5.0
    request_timeout: float = 10.0
    claim_margin: float = 5.0
    transport: httpx.AsyncBaseTransport | None = None
    observe: RequestObserver | None = None
    _http: httpx.AsyncClient = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        headers = {"User-Agent": "botd", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        verify: ssl.SSLContext | bool = True
        if self.base_url.lower().startswith("http://"):
            # Plain HTTP never opens TLS (redirects are not followed): do not load the CA
            # bundle (~50 ms at every start). This context trusts no CA, so it fails closed.
            verify = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._http = httpx.AsyncClient(
            base_url=self.base_url.rstrip("/"),
            headers=headers,
            verify=verify,
            timeout=httpx.Timeout(self.request_timeout, connect=self.connect_timeout),
            transport=self.transport,
            limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=30.0),
        )

    async def __aenter__(self) -> ServerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await self._http.aclose()

    # --- the protocol -------------------------------------------------------------------

    async def health(self) -> Health:
        """``GET /v1/health``. A 503 with a readable body is returned, not raised."""
        response = await self._send("health", "GET", "/v1/health", ok=(200, 503))
        return self._decode(response, Health, "health")

    async def register(self, request: RegisterRequest) -> RegisterResponse:
        response = await self._send("register", "POST", "/v1/bots/register", body=request)
        return self._decode(response, RegisterResponse, "register")

    async def get_bot(self, bot_id: str) -> BotInfo:
        response = await self._send("get_bot", "GET", f"/v1/bots/{_seg(bot_id)}")
        return self._decode(response, BotInfo, "get_bot")

    async def heartbeat(self, bot_id: str, request: HeartbeatRequest) -> HeartbeatResponse:
        path = f"/v1/bots/{_seg(bot_id)}/heartbeat"
        response = await self._send("heartbeat", "POST", path, body=request)
        return self._decode(response, HeartbeatResponse, "heartbeat")

    async def deregister(self, bot_id: str, session_id: str) -> None:
        await self._send(
            "deregister",
            "DELETE",
            f"/v1/bots/{_seg(bot_id)}",
            params={"session_id": session_id},
            ok=(204, 200, 404),
        )

    async def claim(self, request: ClaimRequest) -> ClaimResponse:
        """``POST /v1/jobs/claim``; its read timeout covers the long poll plus a margin."""
        timeout = httpx.Timeout(
            request.wait_s + self.claim_margin + self.request_timeout,
            connect=self.connect_timeout,
        )
        response = await self._send(
            "claim", "POST", "/v1/jobs/claim", body=request, http_timeout=timeout
        )
        return self._decode(response, ClaimResponse, "claim")

    async def ack(self, ack: Ack) -> SingleAckResponse:
        path = f"/v1/leases/{_seg(ack.lease_id)}/ack"
        response = await self._send("ack", "POST", path, body=ack)
        return self._decode(response, SingleAckResponse, "ack")

    # --- plumbing -----------------------------------------------------------------------

    async def _send(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        http_timeout: httpx.Timeout | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> httpx.Response:
        started = trio.current_time()
        outcome = "ok"
        try:
            content = codec.dumps(body) if body is not None else None
            headers = {"Content-Type": "application/json"} if content is not None else None
            with map_transport_errors(endpoint):
                response = await self._http.request(
                    method,
                    path,
                    content=content,
                    headers=headers,
                    params=params,
                    timeout=http_timeout if http_timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            if response.status_code not in ok:
                raise _error_of(response, endpoint)
            return response
        except Exception as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            if self.observe is not None:
                self.observe(endpoint, outcome, trio.current_time() - started)

    def _decode(self, response: httpx.Response, cls: type[T], endpoint: str) -> T:
        try:
            return codec.loads(response.content, cls, what=f"{endpoint} response")
        except ProtocolError:
            if self.observe is not None:
                self.observe(endpoint, "protocol_error", 0.0)
            raise


def _seg(value: str) -> str:
    """Quote one path segment (bot ids are user-chosen)."""
    from urllib.parse import quote

    return quote(value, safe="")
