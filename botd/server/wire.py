"""The wire of the server's routes: request bodies and parameters in, JSON and errors out.

Every error body is ``{"error": {"code", "message"}}`` (:func:`error_response`). Bad input
is 400 ``invalid_request`` naming the field; a body over 1 MiB is 413 ``payload_too_large``.
The helpers raise :class:`~botd.errors.HttpError`, which the routes answer as it says.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from starlette.requests import Request
from starlette.responses import Response

from .. import codec
from ..errors import EncodeError, HttpError
from ..models import MAX_TEXT, SessionHolder

__all__ = [
    "CURSOR_PATTERN",
    "DEFAULT_PAGE",
    "MAX_BODY_BYTES",
    "MAX_CURSOR_LEN",
    "MAX_PAGE",
    "cursor",
    "cursor_param",
    "decode",
    "decode_body",
    "error_response",
    "float_param",
    "int_param",
    "json_response",
    "path_param",
    "read_body",
    "text_param",
    "watch_disconnect",
]

T = TypeVar("T")

MAX_BODY_BYTES = 1024 * 1024
#: The most of a too-large body the server reads (and drops) so that its 413 reaches the
#: client (:func:`read_body`).
DRAIN_MAX_BYTES = 8 * MAX_BODY_BYTES
#: A page of ``GET /v1/bots`` or ``GET /v1/jobs``: this many without ``limit``, at most
#: MAX_PAGE with it (docs/protocol.md, Pages).
DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: The longest ``cursor`` query parameter: the cursor of a bot id of MAX_TEXT characters,
#: each of them four UTF-8 bytes, is 1,074 characters.
MAX_CURSOR_LEN = 1100
#: What a cursor is made of: the base64url alphabet (the OpenAPI document's pattern).
CURSOR_PATTERN = "^[A-Za-z0-9_-]*$"
_CURSOR_TEXT = re.compile(CURSOR_PATTERN)


class _InvalidRequest(HttpError):
    """Raised by codec.structure on a bad request body: 400 invalid_request naming the field."""

    def __init__(self, problem: str) -> None:
        super().__init__(400, "invalid_request", f"{problem}; fix the field and retry")


def error_response(
    status: int, code: str, message: str, holder: SessionHolder | None = None
) -> Response:
    """A JSON error body ``{"error": {"code", "message"}}`` with ``status``; a superseded
    session's body also says who holds the bot id now (``holder``)."""
    detail: dict[str, Any] = {"code": code, "message": message}
    if holder is not None:
        detail["holder"] = codec.unstructure(holder)
    return Response(
        json.dumps({"error": detail}, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        # A 413's body may be unread: the connection cannot carry another request.
        headers={"connection": "close"} if status == 413 else None,
    )


def json_response(obj: Any, status: int = 200) -> Response:
    """``obj`` (an attrs object or plain data) as a JSON answer with ``status``."""
    return Response(codec.dumps(obj), status_code=status, media_type="application/json")


async def read_body(request: Request) -> bytes:
    """The request's body; 413 payload_too_large past :data:`MAX_BODY_BYTES`.

    A body too large but within :data:`DRAIN_MAX_BYTES` is read to its end and dropped
    before the 413 (which says ``Connection: close``): a connection closed with unread data
    makes the kernel send a reset, which can destroy the answer before the client, still
    sending, reads it. A larger one is refused at once.
    """
    length = request.headers.get("content-length")
    declared = int(length) if length is not None and length.isdigit() else 0
    chunks: list[bytes] = []
    size = 0
    if declared <= DRAIN_MAX_BYTES:
        async for chunk in request.stream():
            size += len(chunk)
            if size > DRAIN_MAX_BYTES:
                break
            if size <= MAX_BODY_BYTES:
                chunks.append(chunk)
    if size > MAX_BODY_BYTES or declared > MAX_BODY_BYTES:
        raise HttpError(
            413, "payload_too_large", f"the body is over {MAX_BODY_BYTES} bytes; send less"
        )
    return b"".join(chunks)


async def decode(request: Request, cls: type[T]) -> T:
    """The request's JSON body as ``cls``; 400 invalid_request naming what is wrong."""
    raw = await read_body(request)
    return decode_body(raw, cls)


def decode_body(raw: bytes, cls: type[T]) -> T:
    """A request body as ``cls``: JSON, within the bounds of :func:`botd.codec.check_json`
    (depth, finite numbers, 64-bit integers, no lone surrogates), then the model's own
    validators; 400 invalid_request naming the field otherwise, before anything is stored."""
    try:
        data = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(
            400, "invalid_request", f"the body is not valid JSON ({exc}); send a JSON object"
        ) from None
    except RecursionError:
        raise _InvalidRequest(
            f"{cls.__name__}: the body nests deeper than {codec.MAX_DEPTH} arrays and objects"
        ) from None
    if data is None:
        raise HttpError(400, "invalid_request", f"the body is empty; send a {cls.__name__} object")
    try:
        codec.check_json(data, what=cls.__name__)
    except EncodeError as exc:
        raise _InvalidRequest(str(exc)) from None
    return codec.structure(data, cls, error=_InvalidRequest, what=cls.__name__)


def _bad_text(value: str, most: int) -> bool:
    return not value or len(value) > most or "\x00" in value


def path_param(request: Request, name: str) -> str:
    """Path parameter ``name`` (an id); 400 invalid_request naming it past
    :data:`~botd.models.MAX_TEXT` characters or with a NUL: no such id can exist."""
    value = str(request.path_params[name])
    if _bad_text(value, MAX_TEXT):
        raise HttpError(
            400,
            "invalid_request",
            f"path parameter {name!r} must be 1..{MAX_TEXT} characters without NUL",
        )
    return value


def text_param(request: Request, name: str, *, required: bool = False) -> str | None:
    """Query parameter ``name`` as text of 1..:data:`~botd.models.MAX_TEXT` characters
    without NUL (None when absent or empty, unless ``required``: then 400 naming it)."""
    value = request.query_params.get(name) or None
    if value is None:
        if required:
            raise HttpError(
                400, "invalid_request", f"query parameter {name!r} is required; send yours"
            )
        return None
    if _bad_text(value, MAX_TEXT):
        raise HttpError(
            400,
            "invalid_request",
            f"query parameter {name!r} must be 1..{MAX_TEXT} characters without NUL",
        )
    return value


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    """Query parameter ``name`` as an integer in ``lo..hi``, ``default`` when absent (an
    empty one is no integer: 400 naming it)."""
    return int(_number_param(request, name, default, lo, hi, int, "an integer"))


def float_param(request: Request, name: str, default: float, lo: float, hi: float) -> float:
    """Query parameter ``name`` as a number in ``lo..hi``, ``default`` when absent (an empty
    one is no number: 400 naming it)."""
    return _number_param(request, name, default, lo, hi, float, "a number")


def _number_param(
    request: Request,
    name: str,
    default: float,
    lo: float,
    hi: float,
    parse: Callable[[str], float],
    what: str,
) -> float:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = parse(text)
    except ValueError:
        value = math.nan
    if not lo <= value <= hi:  # NaN fails too
        raise HttpError(
            400, "invalid_request", f"query parameter {name!r} must be {what} {lo:g}..{hi:g}"
        )
    return value


def cursor(list_name: str, position: str) -> str:
    """The opaque cursor of ``position`` in the list ``list_name`` (a ``next_cursor``):
    base64url, without padding, of ``list_name:position``."""
    raw = f"{list_name}:{position}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def cursor_param(request: Request, list_name: str, *, number: bool = False) -> str | None:
    """The position in ``list_name`` that query parameter ``cursor`` names (None: absent or
    empty; ``number``: the position is a non-negative integer below 10**18); 400 naming
    ``cursor`` for anything no :func:`cursor` of this list made."""
    text = request.query_params.get("cursor") or None
    if text is None:
        return None
    position = _position(text, list_name)
    if position is None or (number and not (position.isdigit() and len(position) < 19)):
        raise HttpError(
            400,
            "invalid_request",
            f"query parameter 'cursor' is not a cursor of {list_name}; send the next_cursor"
            " of the previous page, or none for the first page",
        )
    return position


def _position(text: str, list_name: str) -> str | None:
    if len(text) > MAX_CURSOR_LEN or not _CURSOR_TEXT.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        prefix, _, position = raw.decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return None
    if prefix != list_name or _bad_text(position, MAX_TEXT):
        return None
    return position


async def watch_disconnect(request: Request, gone: trio.Event) -> None:
    """Set ``gone`` when the client of ``request`` (body already read) disconnects."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            gone.set()
            return
