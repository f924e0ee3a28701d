"""The one cattrs converter, and the border where cattrs errors become botd errors.

``converter`` is strict, for JSON: a bool must be a JSON bool, an int a JSON integer,
a str a JSON string. :func:`structure` turns any decoding failure into the error class
the caller names (``ProtocolError`` for server bodies, ``ConfigError`` for config),
with one message per problem that names the field, such as ``$.jobs[0].attempt``.

``lenient`` is the same converter with string hooks for values that arrive as text
(environment variables and CLI flags): ``"5"`` becomes 5, and ``"false"`` becomes
False (never True, as a plain ``bool("false")`` would).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import cattrs
import cattrs.errors
from cattrs.errors import ForbiddenExtraKeysError

from .errors import BotdError, ProtocolError

__all__ = ["converter", "dumps", "lenient", "loads", "parse_bool", "problems_of", "structure"]

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
    return structure(data, cls, what=what)


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)


def dumps(obj: Any) -> bytes:
    """Encode an attrs object (or plain data) as compact JSON bytes."""
    # What unstructure returns has no cycles: the check would only cost time.
    return json.dumps(
        converter.unstructure(obj), separators=(",", ":"), check_circular=False
    ).encode()
