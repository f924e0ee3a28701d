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
  :class:`ServerUnavailable` (5xx, 408, 425, 429), :class:`Unrecoverable` (401/403, saying
  where the token comes from), :class:`RequestRejected` (any other 4xx; for a job's error
  codes its subclass: :class:`JobNotFound`, :class:`JobFinished`, :class:`JobNotRetryable`) or
  :class:`ProtocolError` (any other status), each with the server's error code and message.

httpx's exceptions are translated in :func:`_translated` and the server's error body is
decoded in :meth:`Answer.detail`, nowhere else. Where a producer's server and token come
from when not given (``MAIN_SERVER_URL``; ``BOTD_TOKEN``, ``BOTD_TOKEN_FILE``) is decided in
:func:`server_url` and :func:`resolve_token`.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx

from . import codec, tls
from .errors import (
    JobFinished,
    JobNotFound,
    JobNotRetryable,
    ProtocolError,
    RequestRejected,
    ServerUnavailable,
    Unrecoverable,
)
from .token_files import loose_permissions, read_token_file

__all__ = [
    "CA_FILE_ENV",
    "DEFAULT_SERVER",
    "OK_STATUSES",
    "SERVER_ENV",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "AdminClient",
    "Answer",
    "AsyncAdminClient",
    "resolve_ca_file",
    "resolve_token",
    "server_url",
]

T = TypeVar("T")

#: The statuses of an accepted request.
OK_STATUSES = (200, 201)
#: Statuses that say "not now" rather than "no": :meth:`Answer.expect` raises ServerUnavailable.
RETRYABLE_STATUS = frozenset({408, 425, 429})
_JSON = {"Content-Type": "application/json"}
#: The error codes that have an error class of their own (any other 4xx: RequestRejected).
_REJECTIONS: dict[str, type[RequestRejected]] = {
    "unknown_job": JobNotFound,
    "job_finished": JobFinished,
    "job_not_retryable": JobNotRetryable,
}

#: Where a producer's server URL and token come from when they are not given.
SERVER_ENV = "MAIN_SERVER_URL"
DEFAULT_SERVER = "http://127.0.0.1:3001"
TOKEN_ENV = "BOTD_TOKEN"
TOKEN_FILE_ENV = "BOTD_TOKEN_FILE"
#: The CA file that an https:// server's certificate is verified against (else the system's).
CA_FILE_ENV = "BOTD_CA_FILE"
#: What a 401/403 answer adds: where the token comes from.
TOKEN_HINT = (
    f"botd's commands take the token from --token, --token-file, env {TOKEN_ENV} or "
    f"{TOKEN_FILE_ENV} (Python: JobsClient(token=...))"
)

Params = Mapping[str, str | int]


@contextmanager
def _translated(trust: tls.Trust) -> Iterator[None]:
    """Translate httpx's exceptions into :class:`ServerUnavailable`; the one place that does.

    A failed TLS check says which one failed (:func:`botd.tls.explain`) against ``trust``.
    """
    try:
        yield
    except httpx.HTTPError as exc:
        explained = tls.explain(exc, trust)
        raise ServerUnavailable(explained or str(exc) or type(exc).__name__) from exc


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
            raise Unrecoverable(f"{self.reason()}; {TOKEN_HINT}")
        if not 400 <= self.status < 500:
            raise ProtocolError(self.reason())  # a redirect, or a 2xx of another kind
        code, message = self.detail() or (f"http_{self.status}", "")
        raise _REJECTIONS.get(code, RequestRejected)(self.status, code, message)


def server_url(server: str | None = None, env: Mapping[str, str] = os.environ) -> str:
    """``server``, else env ``MAIN_SERVER_URL``, else ``http://127.0.0.1:3001``; no final ``/``."""
    return (server or env.get(SERVER_ENV) or DEFAULT_SERVER).rstrip("/")


def resolve_token(
    token: str | None = None,
    token_file: str | Path | None = None,
    env: Mapping[str, str] = os.environ,
    *,
    warn: Callable[[str], None] | None = None,
) -> str | None:
    """The bearer token: ``token``, else the file ``token_file``, else env ``BOTD_TOKEN``,
    else the file named by env ``BOTD_TOKEN_FILE``, else None (no token).

    A file's content is stripped of surrounding whitespace. Raises :class:`ConfigError` when
    the file cannot be read, is empty or holds no token (its content is never shown). ``warn``
    hears a warning when the file is readable by other users.
    """
    if token:
        return token
    if token_file:
        return _token_of(Path(token_file), "--token-file", warn)
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV]
    if env.get(TOKEN_FILE_ENV):
        return _token_of(Path(env[TOKEN_FILE_ENV]), TOKEN_FILE_ENV, warn)
    return None


def _token_of(path: Path, where: str, warn: Callable[[str], None] | None) -> str:
    token = read_token_file(path, where)
    loose = loose_permissions(path, where)
    if loose is not None and warn is not None:
        warn(loose)
    return token


def resolve_ca_file(
    ca_file: str | Path | None = None, env: Mapping[str, str] = os.environ
) -> Path | None:
    """The CA file: ``ca_file``, else the file named by env ``BOTD_CA_FILE``, else None (the
    system's CA bundle)."""
    if ca_file:
        return Path(ca_file)
    return Path(env[CA_FILE_ENV]) if env.get(CA_FILE_ENV) else None


def _answer(response: httpx.Response) -> Answer:
    return Answer(response.status_code, response.content)


@attrs.define
class _Settings:
    """What both clients are made of (their Args)."""

    base_url: str = ""
    token: str | None = attrs.field(default=None, kw_only=True, repr=False)
    timeout: float = attrs.field(default=30.0, kw_only=True)
    connect_timeout: float | None = attrs.field(default=None, kw_only=True)
    ca_file: str | Path | None = attrs.field(default=None, kw_only=True)

    def _options(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "headers": {"Authorization": f"Bearer {self.token}"} if self.token else {},
            "timeout": self._timeout(),
            "verify": self._verify(),
        }

    def _verify(self) -> ssl.SSLContext | bool:
        """The CA file's context, or True: the system's bundle. Raises ConfigError when the
        file cannot be used."""
        if self.ca_file is None:
            return True
        return tls.client_context(ca_file=Path(self.ca_file), names=("--ca-file", "", ""))

    @property
    def _trust(self) -> tls.Trust:
        ca = f"--ca-file {self.ca_file}" if self.ca_file is not None else None
        return tls.Trust(ca=ca, cert_hint="botd's commands cannot present one")

    def _timeout(self, longer_by: float = 0.0) -> httpx.Timeout:
        """The request timeout, ``longer_by`` seconds longer for a long poll."""
        connect = self.timeout if self.connect_timeout is None else self.connect_timeout
        return httpx.Timeout(self.timeout + longer_by, connect=connect)


@attrs.define
class AdminClient(_Settings):
    """Requests to one server or ops endpoint, on httpx's sync client.

    Args:
      base_url: e.g. ``http://127.0.0.1:3001``; each request's path is appended to it.
        Empty (the default): each request names an absolute URL.
      token: the bearer token, or None. It goes only into the Authorization header.
      timeout: seconds for each request; connect_timeout: for the connection (default: timeout).
      ca_file: verify an https:// server against the CAs in this PEM file instead of the
        system's bundle (:func:`resolve_ca_file`).
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

    def get(self, path: str, params: Params | None = None, *, wait_s: float = 0.0) -> Answer:
        """``GET path``; raises :class:`ServerUnavailable` when no answer came. ``wait_s``: the
        server may hold the answer that long (a long poll), so the timeout is that much longer."""
        with _translated(self._trust):
            return _answer(self._http.get(path, params=params, timeout=self._timeout(wait_s)))

    def post(self, path: str, body: object) -> Answer:
        """``POST path`` with ``body`` as JSON (:func:`botd.codec.dumps`); see :meth:`get`."""
        with _translated(self._trust):
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

    async def get(self, path: str, params: Params | None = None, *, wait_s: float = 0.0) -> Answer:
        """``GET path``; see :meth:`AdminClient.get`."""
        with _translated(self._trust):
            answer = await self._http.get(path, params=params, timeout=self._timeout(wait_s))
            return _answer(answer)

    async def post(self, path: str, body: object) -> Answer:
        """``POST path`` with ``body`` as JSON (:func:`botd.codec.dumps`); see :meth:`get`."""
        with _translated(self._trust):
            return _answer(await self._http.post(path, content=codec.dumps(body), headers=_JSON))
