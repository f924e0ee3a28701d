"""The conformance suite's HTTP side: send a request, keep what came back, judge it.

:class:`Probe` sends every request of a run through one ``httpx.AsyncClient`` and keeps
each :class:`Exchange` (the request and the answer, as they were), so that a failing check
can show them, and so that the ``errors.body_shape`` check can judge every error answer the
run saw. A check states what it expects with :meth:`Answer.expect` and friends; a mismatch
raises :class:`CheckFailed`, which carries the expectation, what came instead, and the
exchange. :class:`CheckSkipped` says why a check did not run.

Nothing here knows the reference server: the expectations are those of docs/protocol.md.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import httpx
import trio

from .. import codec, tls
from ..errors import BotdError
from ..timestamps import parse_rfc3339

__all__ = [
    "Answer",
    "CheckFailed",
    "CheckSkipped",
    "Exchange",
    "NoAnswer",
    "Probe",
    "shorten",
]

T = TypeVar("T")

#: How much of a body a report shows.
SHOWN_CHARS = 300


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _shown(body: Any) -> str:
    if body is None:
        return ""
    if isinstance(body, bytes):
        return shorten(f"<{len(body)} bytes>" if len(body) > SHOWN_CHARS else repr(body))
    return shorten(json.dumps(body, separators=(",", ":"), default=str))


@attrs.frozen
class Exchange:
    """One request and its answer (``status`` 0 when none came)."""

    method: str
    path: str
    body: Any
    status: int
    content: bytes = attrs.field(repr=False)
    content_type: str
    seconds: float

    def request_line(self) -> str:
        """``POST /v1/jobs {"kind": ...}``, shortened."""
        shown = _shown(self.body)
        return f"{self.method} {self.path}" + (f" {shown}" if shown else "")

    def answer_line(self) -> str:
        """``409 {"error": ...}``, shortened."""
        if self.status == 0:
            return "no answer"
        text = self.content.decode("utf-8", "replace")
        return f"{self.status} {shorten(text)}".rstrip()


class CheckFailed(BotdError):
    """The server did not do what docs/protocol.md says."""

    def __init__(self, expected: str, got: str, exchange: Exchange | None = None) -> None:
        super().__init__(f"expected {expected}; got {got}")
        self.expected = expected
        self.got = got
        self.exchange = exchange


class CheckSkipped(BotdError):
    """The check cannot run against this server or with these options; the message says why."""


class NoAnswer(CheckFailed):
    """The request got no answer (refused, reset, timed out)."""


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None


@attrs.frozen
class Answer:
    """An answer and the exchange it came in. Its methods raise :class:`CheckFailed`."""

    exchange: Exchange

    @property
    def status(self) -> int:
        return self.exchange.status

    @property
    def seconds(self) -> float:
        """How long the request took."""
        return self.exchange.seconds

    def fail(self, expected: str, got: str | None = None) -> CheckFailed:
        """A :class:`CheckFailed` about this answer (``got`` defaults to the answer itself)."""
        return CheckFailed(expected, got or self.exchange.answer_line(), self.exchange)

    def json(self) -> Any:
        """The body as JSON."""
        try:
            return json.loads(self.exchange.content)
        except ValueError:
            raise self.fail("a JSON body") from None

    def expect(self, *statuses: int) -> Answer:
        """This answer, if its status is one of ``statuses``."""
        if self.status not in statuses:
            raise self.fail(" or ".join(str(s) for s in statuses))
        return self

    def expect_body(self, status: int, body: Any) -> None:
        """Require exactly ``status`` with exactly this JSON ``body``."""
        if self.status != status or _json_or_none(self.exchange.content) != body:
            raise self.fail(f"{status} {json.dumps(body)}")

    def decode(self, cls: type[T], *, status: Iterable[int] = (200,)) -> T:
        """The body as ``cls`` (the protocol's model), after :meth:`expect` of ``status``."""
        self.expect(*status)
        try:
            return codec.loads(self.exchange.content, cls)
        except BotdError as exc:
            got = f"{exc}: {self.exchange.answer_line()}"
            raise self.fail(f"a {cls.__name__} body", got) from None

    def error(self, status: int, code: str, *, names: str | None = None) -> str:
        """The error message, if the answer is ``status`` with error ``code``.

        With ``names``, the message must also contain that word: a 400 names its field.
        """
        expected = f"{status} {code}" + (f" naming {names!r}" if names else "")
        if self.status != status:
            raise self.fail(expected)
        body = self.json()
        detail = body.get("error") if isinstance(body, dict) else None
        if not isinstance(detail, dict) or detail.get("code") != code:
            raise self.fail(expected)
        message = detail.get("message")
        if not isinstance(message, str):
            raise self.fail(expected + " with a message")
        if names is not None and names not in message:
            raise self.fail(expected)
        return message

    def timestamp(self, name: str, value: Any) -> float:
        """``value`` as seconds since the epoch, if it is an RFC 3339 timestamp with a zone
        (:func:`botd.timestamps.parse_rfc3339`)."""
        try:
            return parse_rfc3339(value)
        except (ValueError, AttributeError):
            raise self.fail(f"{name} as an RFC 3339 timestamp", f"{name} = {value!r}") from None

    def field(self, body: Any, *path: str | int) -> Any:
        """``body[path[0]][path[1]]...``; a missing step is a failure naming the path."""
        value = body
        for i, step in enumerate(path):
            try:
                value = value[step]
            except (KeyError, IndexError, TypeError):
                where = "".join(f"[{p!r}]" for p in path[: i + 1])
                raise self.fail(f"a body with {where}") from None
        return value


def error_shape_problem(exchange: Exchange) -> str | None:
    """Why an error answer does not have protocol v1's error shape, or None if it does."""
    if "json" not in exchange.content_type:
        return f"Content-Type {exchange.content_type!r}, not application/json"
    body = _json_or_none(exchange.content)
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return 'a body that is not {"error": {"code", "message"}}'
    detail = body["error"]
    for key in ("code", "message"):
        if not isinstance(detail.get(key), str) or not detail[key]:
            return f"error.{key} missing or not a non-empty string"
    return None


@attrs.define
class Probe:
    """Every request of one run: one httpx client, the token, and the exchanges seen."""

    client: httpx.AsyncClient
    token: str | None
    exchanges: list[Exchange] = attrs.field(factory=list)
    #: How an https:// server is verified (the client's own): the system's bundle (True) or
    #: the context of ``--ca-file``; ``trust`` names it in a failed TLS check's message.
    verify: ssl.SSLContext | bool = attrs.field(default=True, kw_only=True, repr=False)
    trust: tls.Trust = attrs.field(factory=tls.Trust, kw_only=True)

    def last(self) -> Answer:
        """The latest exchange, as an :class:`Answer`."""
        return Answer(self.exchanges[-1])

    @asynccontextmanager
    async def sibling(self) -> AsyncIterator[Probe]:
        """A probe on a client of its own (same server and token), closed on the way out:
        for a request whose connection a check drops on purpose."""
        async with httpx.AsyncClient(base_url=self.client.base_url, verify=self.verify) as client:
            sibling = Probe(client, self.token, verify=self.verify, trust=self.trust)
            try:
                yield sibling
            finally:
                self.exchanges.extend(sibling.exchanges)

    def headers(self, token: str | bool | None = True) -> dict[str, str]:
        """The Authorization header: the run's token (``True``), another one, or none."""
        use = self.token if token is True else token or None
        return {"Authorization": f"Bearer {use}"} if isinstance(use, str) else {}

    async def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str | int | float] | None = None,
        raw: bytes | None = None,
        token: str | bool | None = True,
        limit_s: float = 15.0,
    ) -> Answer:
        """Send one request; the answer, whatever its status. No answer is :class:`NoAnswer`.

        ``body`` is sent as JSON; ``raw`` as it is (with a JSON content type).
        ``limit_s`` bounds the whole request, answer included.
        ``token``: ``True`` sends the run's token, a string sends that one, None sends none.
        """
        headers = self.headers(token)
        content: bytes | None = raw
        if raw is None and body is not None:
            content = json.dumps(body).encode()
        if content is not None:
            headers["Content-Type"] = "application/json"
        shown_path = path + (
            "?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""
        )
        started = trio.current_time()
        request_body = body if raw is None else raw
        response: httpx.Response | None = None
        problem = f"no answer within {limit_s:g} s"
        with trio.move_on_after(limit_s):
            try:
                response = await self.client.request(
                    method,
                    path,
                    content=content,
                    params=dict(params) if params else None,
                    headers=headers,
                    timeout=limit_s,
                )
            except httpx.HTTPError as exc:
                problem = tls.explain(exc, self.trust) or f"{type(exc).__name__}: {exc}".rstrip(
                    ": "
                )
        if response is None:
            exchange = Exchange(method, shown_path, request_body, 0, b"", "", 0.0)
            self.exchanges.append(exchange)
            raise NoAnswer("an answer", problem, exchange)
        exchange = Exchange(
            method,
            shown_path,
            request_body,
            response.status_code,
            response.content,
            response.headers.get("content-type", ""),
            trio.current_time() - started,
        )
        self.exchanges.append(exchange)
        return Answer(exchange)
