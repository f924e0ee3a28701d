"""The one cattrs converter, and the border where cattrs errors become botd errors.

``converter`` is strict, for JSON: a bool must be a JSON bool, an int a JSON integer,
a str a JSON string. :func:`structure` turns any decoding failure into the error class
the caller names (``ProtocolError`` for server bodies, ``ConfigError`` for config),
with one message per problem that names the field, such as ``$.jobs[0].attempt``.

:func:`check_json` holds parsed JSON to the protocol's bounds (depth, finite numbers,
64-bit integers, no lone surrogates) in one walk; :func:`dumps` never writes NaN or
Infinity. Both raise :class:`~botd.errors.EncodeError` naming the path.

``lenient`` is the same converter with string hooks for values that arrive as text
(environment variables and CLI flags): ``"5"`` becomes 5, and ``"false"`` becomes
False (never True, as a plain ``bool("false")`` would).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

import cattrs
import cattrs.errors
from cattrs.cols import is_mutable_sequence, list_structure_factory
from cattrs.errors import ForbiddenExtraKeysError

from .errors import BotdError, EncodeError, ProtocolError

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "check_json",
    "converter",
    "dumps",
    "lenient",
    "loads",
    "parse_bool",
    "problems_of",
    "structure",
]

#: The deepest a JSON document may nest arrays and objects, counted from its top.
MAX_DEPTH = 64
#: The integers a JSON document may hold: signed 64-bit, what every store keeps exactly.
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=False)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _strict_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected true or false, got {value!r}")


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"expected an integer, got {value!r}")


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"expected a number, got {value!r}")


def _strict_str(value: Any, _: type) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {value!r}")


converter.register_structure_hook(bool, _strict_bool)
converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)
converter.register_structure_hook(str, _strict_str)


def parse_bool(value: Any, _: type = bool) -> bool:
    """Read a boolean from text the way an operator means it: only true/false words count."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"expected one of true/false/1/0/yes/no/on/off, got {value!r}")


def _from_text(
    parse: Callable[[str], T], strict: Callable[[Any, type], T], expected: str
) -> Callable[[Any, type], T]:
    """A hook that parses a string with ``parse`` (after strip) and else is ``strict``."""

    def hook(value: Any, tp: type) -> T:
        if isinstance(value, str):
            try:
                return parse(value.strip())
            except ValueError:
                raise ValueError(f"expected {expected}, got {value!r}") from None
        return strict(value, tp)

    return hook


lenient = converter.copy(forbid_extra_keys=True)
lenient.register_structure_hook(bool, parse_bool)
lenient.register_structure_hook(int, _from_text(int, _strict_int, "an integer"))
lenient.register_structure_hook(float, _from_text(float, _strict_float, "a number"))


def _strict_list(tp: Any, conv: cattrs.Converter) -> Callable[[Any, Any], list[Any]]:
    """A list field takes a JSON array only (cattrs alone makes one of any iterable: the
    keys of an object, the characters of a text)."""
    items = list_structure_factory(tp, conv)

    def hook(value: Any, t: Any) -> list[Any]:
        if not isinstance(value, list):
            raise TypeError(f"expected an array, got {_json_type(value)}")
        structured: list[Any] = items(value, t)
        return structured

    return hook


def _json_type(value: Any) -> str:
    names = {dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else "another")


# JSON bodies only: the text-minded ``lenient`` (config) keeps cattrs' own list hook.
converter.register_structure_hook_factory(is_mutable_sequence, _strict_list)


def _format(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unknown field(s) {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, (TypeError, ValueError, cattrs.errors.CattrsError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def problems_of(exc: BaseException) -> list[str]:
    """One line per problem in a cattrs error, each naming the field path."""
    if isinstance(exc, cattrs.BaseValidationError):
        return list(cattrs.transform_error(exc, format_exception=_format))
    return [_format(exc, None)]


def structure(
    data: Any,
    cls: type[T],
    *,
    error: type[BotdError] = ProtocolError,
    what: str = "",
    conv: cattrs.Converter | None = None,
) -> T:
    """Decode ``data`` into ``cls``; raise ``error`` naming every bad field on failure.

    Never raises KeyError, TypeError or a cattrs error: the caller sees one botd error.
    """
    label = what or cls.__name__
    if attrs_has(cls) and not isinstance(data, dict):
        raise error(f"{label}: expected a JSON object, got {type(data).__name__}")
    try:
        return (conv or converter).structure(data, cls)
    except Exception as exc:
        problems = "; ".join(problems_of(exc))
        raise error(f"{label}: {problems}") from None


def attrs_has(cls: Any) -> bool:
    import attrs

    return isinstance(cls, type) and attrs.has(cls)


def loads(body: bytes | str, cls: type[T], *, what: str = "") -> T:
    """Parse a JSON body into ``cls``; any failure is a ProtocolError naming the field."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{what or cls.__name__}: body is not JSON ({exc})") from None
    except RecursionError:
        raise ProtocolError(f"{what or cls.__name__}: body nests too deeply") from None
    return structure(data, cls, what=what)


class _Bad(Exception):
    """A problem found by :func:`_walk`; ``path`` grows (reversed) as it unwinds."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.path: list[str] = []


def _segment_key(key: str) -> str:
    if key.isidentifier() and key.isascii():
        return f".{key}"
    return f"[{json.dumps(key)}]"


def _bad_text(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (it cannot be UTF-8)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _walk(value: Any, depth: int) -> None:
    # The hot path: type checks only; paths are built while a problem unwinds.
    if isinstance(value, str):
        if _bad_text(value):
            raise _Bad("a string holds a lone surrogate (not valid Unicode)")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise _Bad(f"integer {value} is outside signed 64 bits ({INT_MIN}..{INT_MAX})")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad(f"{value} is not a JSON number (NaN and Infinity are refused)")
    elif isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise _Bad(f"nested deeper than {MAX_DEPTH} arrays and objects")
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Bad(f"key {key!r} is not a string")
            if _bad_text(key):
                raise _Bad("a key holds a lone surrogate (not valid Unicode)")
            try:
                _walk(item, depth + 1)
            except _Bad as bad:
                bad.path.append(_segment_key(key))
                raise
    elif isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            raise _Bad(f"nested deeper than {MAX_DEPTH} arrays and objects")
        for index, item in enumerate(value):
            try:
                _walk(item, depth + 1)
            except _Bad as bad:
                bad.path.append(f"[{index}]")
                raise
    else:
        raise _Bad(f"{type(value).__name__} is not JSON data")


def check_json(value: Any, *, what: str = "") -> None:
    """Raise :class:`EncodeError` unless ``value`` (parsed JSON) is within the bounds:
    at most :data:`MAX_DEPTH` nested arrays/objects, finite numbers, integers in
    :data:`INT_MIN`..:data:`INT_MAX`, strings and keys without lone surrogates.

    One walk of the value; the message names the path, e.g. ``Ack: $.result.a[3]: ...``.
    """
    try:
        _walk(value, 0)
    except _Bad as bad:
        path = "$" + "".join(reversed(bad.path))
        prefix = f"{what}: " if what else ""
        raise EncodeError(f"{prefix}{path}: {bad.problem}") from None


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)


def dumps(obj: Any) -> bytes:
    """Encode an attrs object (or plain data) as compact JSON bytes.

    Raises :class:`EncodeError` naming the path for what JSON cannot hold (NaN, Infinity,
    a value nested too deeply for the encoder, something not JSON data); never writes the
    bare ``NaN`` that ``json.dumps`` would.
    """
    data = converter.unstructure(obj)
    try:
        # What unstructure returns has no cycles: the check would only cost time.
        return json.dumps(
            data, separators=(",", ":"), check_circular=False, allow_nan=False
        ).encode()
    except (ValueError, TypeError, RecursionError) as exc:
        # The failure path only: find where, for a message that names the field.
        try:
            check_json(data)
        except EncodeError as bad:
            raise bad from None
        except RecursionError:
            pass
        raise EncodeError(f"$: cannot encode as JSON ({type(exc).__name__}: {exc})") from None
