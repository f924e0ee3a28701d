"""Protocol v1 over httpx: the bot's only way to talk to the main server.

:class:`ServerClient` turns each protocol call into one HTTP request and its answer into a
model from :mod:`botd.models`. Every failure leaves as a :class:`botd.errors.ServerError`
(an answer classified by :func:`botd.answers.error_of`, httpx's exceptions by
:func:`botd.transport_errors.map_transport_errors`):

- network errors, timeouts, DNS failures, 408, 425, 429 and 5xx -> :class:`ServerUnavailable`
  (retryable); a failed TLS check -> :class:`TlsFailure` (a ServerUnavailable that says
  which check failed, :func:`botd.tls.explain`);
- a body that is not JSON, or JSON of the wrong shape -> :class:`ProtocolError` (retryable);
- 401/403 -> :class:`Unrecoverable`, but a 401 to a session token ->
  :class:`SessionTokenRefused` (the server forgot the session: register again);
- 404 ``unknown_bot`` -> :class:`UnknownBot`;
- 409 ``session_superseded`` -> :class:`SessionSuperseded` (with ``holder``, if the server says);
- 409 ``bot_id_in_use`` -> :class:`BotIdInUse` (with ``holder``);
- any other 4xx -> :class:`RequestRejected` with the server's error code.

Session tokens (an extension of protocol v1): when a register answer carries a
``session_token``, the caller sets :attr:`ServerClient.session_token` and every call of the
session (get_bot, heartbeat, claim, ack, deregister) sends it as the bearer instead of the
bot's token; a register always sends the bot's token. With a server that issues none,
``session_token`` stays None and every call sends the bot's token, as in v1.

Every request is bounded against a broken or hostile server: it ends within its overall
deadline (``connect_timeout + request_timeout``, a claim's plus its ``wait_s`` and
``claim_margin``; one cancel scope around the whole request, the body's read included, since
httpx's read timeout is per chunk and a body trickled a byte at a time never trips it) and its
answer is read up to ``response_max_bytes`` (a claim's: at least :data:`CLAIM_BYTES_PER_JOB` per
job asked for), then refused. Running out of time is :class:`ServerUnavailable`, too large an
answer a :class:`ProtocolError`, and so is a claim answer with more jobs than ``max_jobs``
(the server hands their leases back when no heartbeat lists them): all retryable, with backoff.

httpx exceptions are translated in :func:`~botd.transport_errors.map_transport_errors` and
nowhere else; an answer is read by :func:`botd.answers.read_answer`. Each request is timed
once (``observe``), with its final outcome; a request that met a pooled connection the
server had closed is sent once more on a new one (:meth:`ServerClient._request`).
What a loop does with each outcome is the call policy's business (:mod:`botd.call_policy`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import httpx
import trio

from . import codec, tls
from .answers import Answer, check_claim, error_of, read_answer
from .errors import ProtocolError, RequestRejected, ServerUnavailable, Unrecoverable
from .models import (
    Ack,
    BotInfo,
    ClaimRequest,
    ClaimResponse,
    Health,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
    SingleAckResponse,
)
from .transport_errors import DEFAULT_TRUST, map_transport_errors

__all__ = [
    "CLAIM_BYTES_PER_JOB",
    "DEFAULT_RESPONSE_MAX_BYTES",
    "OUTCOMES",
    "RequestObserver",
    "ServerClient",
    "outcome_of",
]

T = TypeVar("T")

#: ``observe(endpoint, outcome, seconds)``; outcome is one of :data:`OUTCOMES`.
RequestObserver = Callable[[str, str, float], None]

#: How long an idle pooled connection is kept. It must stay below the idle timeout of the
#: server and of every proxy in between (``botd server``: 75 s), so that the client, not
#: the server, closes an idle connection. docs/deployment.md has the rule for a load balancer.
KEEPALIVE_EXPIRY_S = 15.0
#: How many sessions' tokens the client remembers (see ``ServerClient.use_session``).
_KEPT_SESSION_TOKENS = 4
#: The errors of a request on a pooled connection that the server may have closed meanwhile.
_STALE_CONNECTION_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)

#: The largest answer read by default (BOT_RESPONSE_MAX_BYTES).
DEFAULT_RESPONSE_MAX_BYTES = 16 * 1024 * 1024
#: A claim's answer may take this much per job asked for: a payload is under the server's
#: 1 MiB request limit, and at most 3 times that once re-escaped (``\ud83d\ude00``).
CLAIM_BYTES_PER_JOB = 4 * 1024 * 1024

#: ``ok``: an answer the call accepts (a 2xx; also health's 503 and deregister's 404);
#: ``unavailable``: a network error, a timeout, 408, 425, 429 or 5xx; ``rejected``: 401/403 or
#: any other 4xx; ``protocol_error``: an answer we cannot read; ``error``: anything else.
OUTCOMES = ("ok", "unavailable", "rejected", "protocol_error", "error")


def outcome_of(exc: BaseException) -> str:
    """The outcome (from :data:`OUTCOMES`) of a request that raised ``exc``."""
    if isinstance(exc, ServerUnavailable):
        return "unavailable"
    if isinstance(exc, ProtocolError):
        return "protocol_error"
    if isinstance(exc, RequestRejected | Unrecoverable):
        return "rejected"
    return "error"


class _ReuseProbe:
    """An httpcore trace hook that tells whether a request went out on a pooled connection
    and whether the answer's head came back (see :meth:`ServerClient._request`)."""

    __slots__ = ("answered", "connected")

    def __init__(self) -> None:
        self.connected = False
        self.answered = False

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event.startswith("connection.connect_"):
            self.connected = True
        elif event.endswith("receive_response_headers.complete"):
            self.answered = True

    @property
    def stale_connection(self) -> bool:
        """True when a pooled connection failed before the answer's head came back."""
        return not self.connected and not self.answered


@attrs.define
class ServerClient:
    """A protocol v1 client for one bot.

    Args:
      base_url: the main server, e.g. ``http://localhost:3001``.
      token: the bearer token, or None. It goes only into the Authorization header.
      connect_timeout, request_timeout: seconds to connect, and to read, write or wait for a
        pooled connection.
      claim_margin: seconds a long-poll claim may take beyond its ``wait_s``: a claim's
        read timeout is ``wait_s + claim_margin + request_timeout``.
      response_max_bytes: the largest answer read (a claim's: at least
        :data:`CLAIM_BYTES_PER_JOB` per job asked for); a larger one is a ProtocolError.
      transport: an httpx transport to use instead of the network (tests).
      observe: called after every request with the endpoint, outcome and duration.
      ssl_context: the SSL context of an ``https://`` server (:func:`botd.tls.client_context`:
        BOT_CA_FILE, BOT_TLS_CERT, BOT_TLS_KEY); None: the system's CA bundle.
      trust: where ``ssl_context`` came from, for the messages of a failed TLS check.

    Resource handling: owns one ``httpx.AsyncClient``; close it with :meth:`aclose`
    or ``async with``.
    """

    base_url: str
    token: str | None = attrs.field(default=None, repr=False)
    connect_timeout: float = 5.0
    request_timeout: float = 10.0
    claim_margin: float = 5.0
    transport: httpx.AsyncBaseTransport | None = None
    response_max_bytes: int = DEFAULT_RESPONSE_MAX_BYTES
    observe: RequestObserver | None = None
    #: The current session's token, the bearer of the session's calls (None: ``token``).
    session_token: str | None = attrs.field(default=None, repr=False, init=False)
    #: The last sessions' tokens by session id: a call that names a session (a heartbeat,
    #: a claim, a deregister) goes with that session's own token, even while a newer
    #: session is being set up (a results reporter still on the old one).
    _session_tokens: dict[str, str] = attrs.field(factory=dict, init=False, repr=False)
    ssl_context: ssl.SSLContext | None = attrs.field(default=None, repr=False)
    trust: tls.Trust = DEFAULT_TRUST
    _http: httpx.AsyncClient = attrs.field(init=False, repr=False)
    _fresh: httpx.AsyncClient | None = attrs.field(init=False, default=None, repr=False)
    _options: dict[str, Any] = attrs.field(init=False, factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        headers = {"User-Agent": "botd", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        verify: ssl.SSLContext | bool = True if self.ssl_context is None else self.ssl_context
        if self.base_url.lower().startswith("http://"):
            # Plain HTTP never opens TLS (redirects are not followed): do not load the CA
            # bundle (~50 ms at every start). This context trusts no CA, so it fails closed.
            verify = tls.plain_http_context()
        self._options = {
            "base_url": self.base_url.rstrip("/"),
            "headers": headers,
            "verify": verify,
            "timeout": httpx.Timeout(self.request_timeout, connect=self.connect_timeout),
            "transport": self.transport,
        }
        self._http = httpx.AsyncClient(
            **self._options,
            limits=httpx.Limits(max_keepalive_connections=8, keepalive_expiry=KEEPALIVE_EXPIRY_S),
        )

    def use_session(self, session_id: str, token: str | None) -> None:
        """From now on, the session's calls go with ``token`` (None: the bot's token)."""
        self.session_token = token
        if token:
            self._session_tokens[session_id] = token
            while len(self._session_tokens) > _KEPT_SESSION_TOKENS:
                del self._session_tokens[next(iter(self._session_tokens))]

    async def __aenter__(self) -> ServerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await self._http.aclose()
            if self._fresh is not None:
                await self._fresh.aclose()

    # --- the protocol -------------------------------------------------------------------

    async def health(self) -> Health:
        """``GET /v1/health``. A 503 with a readable body is returned, not raised."""
        return await self._call("health", Health, "GET", "/v1/health", ok=(200, 503))

    async def register(self, request: RegisterRequest) -> RegisterResponse:
        return await self._call(
            "register", RegisterResponse, "POST", "/v1/bots/register", body=request
        )

    async def get_bot(self, bot_id: str) -> BotInfo:
        path = f"/v1/bots/{_seg(bot_id)}"
        return await self._call("get_bot", BotInfo, "GET", path, session=True)

    async def heartbeat(self, bot_id: str, request: HeartbeatRequest) -> HeartbeatResponse:
        path = f"/v1/bots/{_seg(bot_id)}/heartbeat"
        return await self._call(
            "heartbeat", HeartbeatResponse, "POST", path, body=request, session=request.session_id
        )

    async def deregister(self, bot_id: str, session_id: str) -> None:
        with self._observed("deregister"):
            await self._send(
                "deregister",
                "DELETE",
                f"/v1/bots/{_seg(bot_id)}",
                params={"session_id": session_id},
                ok=(204, 200, 404),
                session=session_id,
            )

    async def claim(self, request: ClaimRequest) -> ClaimResponse:
        """``POST /v1/jobs/claim``; its timeout is ``wait_s + claim_margin + request_timeout``."""
        waited = request.wait_s + self.claim_margin
        timeout = httpx.Timeout(waited + self.request_timeout, connect=self.connect_timeout)
        with self._observed("claim"):
            response = await self._send(
                "claim",
                "POST",
                "/v1/jobs/claim",
                body=request,
                http_timeout=timeout,
                waited=waited,
                max_bytes=max(self.response_max_bytes, request.max_jobs * CLAIM_BYTES_PER_JOB),
                session=request.session_id,
            )
            answer = codec.loads(response.content, ClaimResponse, what="claim response")
            check_claim(request, answer)
            return answer

    async def ack(self, ack: Ack) -> SingleAckResponse:
        path = f"/v1/leases/{_seg(ack.lease_id)}/ack"
        return await self._call("ack", SingleAckResponse, "POST", path, body=ack, session=True)

    # --- plumbing -----------------------------------------------------------------------

    async def _call(self, endpoint: str, cls: type[T], method: str, path: str, **options: Any) -> T:
        """One request and its decoded answer, observed once with its final outcome."""
        with self._observed(endpoint):
            response = await self._send(endpoint, method, path, **options)
            return codec.loads(response.content, cls, what=f"{endpoint} response")

    @contextmanager
    def _observed(self, endpoint: str) -> Iterator[None]:
        """Tell ``observe`` how a request ended and how long it took (not when cancelled)."""
        started = trio.current_time()
        outcome = "ok"
        try:
            yield
        except Exception as exc:
            outcome = outcome_of(exc)
            raise
        except BaseException:
            outcome = ""
            raise
        finally:
            if self.observe is not None and outcome:
                self.observe(endpoint, outcome, trio.current_time() - started)

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
        session: bool | str = False,
        waited: float = 0.0,
        max_bytes: int | None = None,
    ) -> Answer:
        """One request, its answer read whole: within ``connect_timeout + request_timeout +
        waited`` seconds (ServerUnavailable) and ``max_bytes`` (ProtocolError). ``session``: a
        call of the current session (True) or of the one with that id, sent with its token if
        any."""
        content = codec.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else {}
        session_token = self.session_token if session else None
        if isinstance(session, str):
            session_token = self._session_tokens.get(session, session_token)
        if session_token:
            headers["Authorization"] = f"Bearer {session_token}"
        deadline = self.connect_timeout + self.request_timeout + waited
        cap = self.response_max_bytes if max_bytes is None else max_bytes
        with trio.move_on_after(deadline) as scope, map_transport_errors(endpoint, self.trust):
            response = await self._request(
                method,
                path,
                cap,
                content=content,
                headers=headers or None,
                params=params,
                timeout=http_timeout if http_timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        if scope.cancelled_caught:
            raise ServerUnavailable(
                f"{endpoint}: no whole answer within {deadline:g}s (BOT_CONNECT_TIMEOUT +"
                " BOT_REQUEST_TIMEOUT, a claim's plus wait_s + BOT_CLAIM_TIMEOUT_MARGIN);"
                " the server or the network is too slow"
            )
        if response.status_code not in ok:
            raise error_of(response, endpoint, session=bool(session_token))
        return response

    async def _fetch(
        self, http: httpx.AsyncClient, method: str, path: str, cap: int, **options: Any
    ) -> Answer:
        """Send one request and read its answer, refusing it past ``cap`` bytes."""
        request = http.build_request(method, path, **options)
        response = await http.send(request, stream=True)
        return await read_answer(response, path, cap)

    async def _request(self, method: str, path: str, cap: int, **options: Any) -> Answer:
        """Send one request; retry it once on a fresh connection if a pooled one was stale.

        A server closes an idle keep-alive connection when its timeout runs out; a request
        sent on it at that moment fails before the answer's head came back (``Server
        disconnected without sending a response``, ``Connection reset by peer``). The server
        never handled that request, so sending it again on a new connection is safe (and
        every call of protocol v1 may be repeated). A failure after the answer began, or on
        a new connection, or a timeout, is not retried here: the call policy handles it.
        """
        if self.transport is not None:  # not our pool (tests, the demo): nothing to tell
            return await self._fetch(self._http, method, path, cap, **options)
        probe = _ReuseProbe()
        try:
            return await self._fetch(
                self._http, method, path, cap, extensions={"trace": probe}, **options
            )
        except _STALE_CONNECTION_ERRORS:
            if not probe.stale_connection:
                raise
        if self._fresh is None:
            # No keep-alive: every request of this client opens a connection of its own.
            self._fresh = httpx.AsyncClient(
                **self._options, limits=httpx.Limits(max_keepalive_connections=0)
            )
        return await self._fetch(self._fresh, method, path, cap, **options)


def _seg(value: str) -> str:
    """Quote one path segment (bot ids are user-chosen)."""
    from urllib.parse import quote

    return quote(value, safe="")
