"""The admin HTTP client: what ``botd submit``, ``botd status`` and ``botd demo`` send.

A bot's protocol calls go through :class:`botd.client.ServerClient`; every other request a
command makes, to a main server or to a bot's ops endpoint, goes through here:
:class:`AdminClient` (httpx's sync client) for the one-shot commands, :class:`AsyncAdminClient`
for the demo, in its Trio run. Both send the bearer token, when given, and return each answer
as an :class:`Answer`, whatever its status. Every failure leaves as a
:class:`botd.errors.ServerError`:

- no answer (refused, timed out, a name that does not resolve, a scheme httpx cannot send)
  -> :class:`ServerUnavailable`, with httpx's message (its class name when it has none);
- a body that is not JSON, or JSON of the wrong shape (:meth:`Answer.json`,
  :meth:`Answer.decode`) -> :class:`ProtocolError`;
- a status other than 200/201 where one was required (:meth:`Answer.expect`) ->
  :class:`ServerUnavailable` (5xx, 408, 425, 429), :class:`Unrecoverable` (401/403),
  :class:`RequestRejected` (any other 4xx) or :class:`ProtocolError` (any other status),
  each with the server's error code and message.

httpx's exceptions are translated in :func:`_translated` and the server's error body is
decoded in :meth:`Answer.detail`, nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import httpx

from . import codec
from .errors import ProtocolError, RequestRejected, ServerUnavailable, Unrecoverable

__all__ = ["OK_STATUSES", "AdminClient", "Answer", "AsyncAdminClient"]

T = TypeVar("T")

#: The statuses of an accepted request.
OK_STATUSES = (200, 201)
#: Statuses that say "not now" rather than "no": :meth:`Answer.expect` raises ServerUnavailable.
RETRYABLE_STATUS = frozenset({408, 425, 429})
_JSON = {"Content-Type": "application/json"}

Params = Mapping[str, str | int]


@contextmanager
def _translated() -> Iterator[None]:
    """Translate httpx's exceptions into :class:`ServerUnavailable`; the one place that does."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise ServerUnavailable(str(exc) or type(exc).__name__) from exc


@attrs.frozen
class Answer:
    """A status and a body, as they came back."""

    status: int
    content: bytes = attrs.field(repr=False)

    @property
    def ok(self) -> bool:
        """True for 200 and 201 (:data:`OK_STATUSES`)."""
        return self.status in OK_STATUSES

    def json(self) -> Any:
        """The body as JSON; :class:`ProtocolError` when it is not JSON."""
        try:
            return json.loads(self.content)
        except ValueError as exc:
            raise ProtocolError(f"body is not JSON ({exc})") from None

    def decode(self, cls: type[T]) -> T:
        """The body as ``cls`` (:func:`botd.codec.loads`); :class:`ProtocolError` if it is not."""
        return codec.loads(self.content, cls)

    def detail(self) -> tuple[str, str] | None:
        """The server's error ``(code, message)``, or None when the body is not a botd error."""
        try:
            error = json.loads(self.content)["error"]
            return str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            return None  # a proxy's HTML error page, or no body at all

    def reason(self) -> str:
        """``server answered 400 bad_request: <message>``, or ``server answered 502``."""
        detail = self.detail()
        if detail is None:
            return f"server answered {self.status}"
        return f"server answered {self.status} {detail[0]}: {detail[1]}"

    def expect(self) -> Answer:
        """This answer if it is :attr:`ok`, else raise the error it stands for (see the module)."""
        if self.ok:
            return self
        if self.status >= 500 or self.status in RETRYABLE_STATUS:
            raise ServerUnavailable(self.reason())
        if self.status in (401, 403):
            raise Unrecoverable(self.reason())
        if not 400 <= self.status < 500:
            raise ProtocolError(self.reason())  # a redirect, or a 2xx of another kind
        code, message = self.detail() or (f"http_{self.status}", "")
        raise RequestRejected(self.status, code, message)


def _answer(response: httpx.Response) -> Answer:
    return Answer(response.status_code, response.content)


@attrs.define
class _Settings:
    """What both clients are made of (their Args)."""

    base_url: str = ""
    token: str | None = attrs.field(default=None, kw_only=True, repr=False)
    timeout: float = attrs.field(default=30.0, kw_only=True)
    connect_timeout: float | None = attrs.field(default=None, kw_only=True)

    def _options(self) -> dict[str, Any]:
        connect = self.timeout if self.connect_timeout is None else self.connect_timeout
        return {
            "base_url": self.base_url,
            "headers": {"Authorization": f"Bearer {self.token}"} if self.token else {},
            "timeout": httpx.Timeout(self.timeout, connect=connect),
        }


@attrs.define
class AdminClient(_Settings):
    """Requests to one server or ops endpoint, on httpx's sync client.

    Args:
      base_url: e.g. ``http://127.0.0.1:3001``; each request's path is appended to it.
        Empty (the default): each request names an absolute URL.
      token: the bearer token, or None. It goes only into the Authorization header.
      timeout: seconds for each request; connect_timeout: for the connection (default: timeout).
      transport: an httpx transport to use instead of the network (tests).

    Resource handling: owns one ``httpx.Client``; close it with :meth:`close` or ``with``.
    """

    transport: httpx.BaseTransport | None = attrs.field(default=None, kw_only=True)
    _http: httpx.Client = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._http = httpx.Client(**self._options(), transport=self.transport)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, params: Params | None = None) -> Answer:
        """``GET path``; raises :class:`ServerUnavailable` when no answer came."""
        with _translated():
            return _answer(self._http.get(path, params=params))

    def post(self, path: str, body: object) -> Answer:
        """``POST path`` with ``body`` as JSON (:func:`botd.codec.dumps`); see :meth:`get`."""
        with _translated():
            return _answer(self._http.post(path, content=codec.dumps(body), headers=_JSON))


@attrs.define
class AsyncAdminClient(_Settings):
    """:class:`AdminClient` on httpx's async client, for a Trio run (the same arguments).

    Resource handling: owns one ``httpx.AsyncClient``; close it with :meth:`aclose` or
    ``async with``.
    """

    transport: httpx.AsyncBaseTransport | None = attrs.field(default=None, kw_only=True)
    _http: httpx.AsyncClient = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._http = httpx.AsyncClient(**self._options(), transport=self.transport)

    async def __aenter__(self) -> AsyncAdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(self, path: str, params: Params | None = None) -> Answer:
        """``GET path``; raises :class:`ServerUnavailable` when no answer came."""
        with _translated():
            return _answer(await self._http.get(path, params=params))

    async def post(self, path: str, body: object) -> Answer:
        """``POST path`` with ``body`` as JSON (:func:`botd.codec.dumps`); see :meth:`get`."""
        with _translated():
            return _answer(await self._http.post(path, content=codec.dumps(body), headers=_JSON))
