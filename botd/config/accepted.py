"""What a setting accepts: :class:`Accepted` (the words a problem line shows, a check of the
parsed value, an optional parser of its text), and the checks and parsers the settings share.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

__all__ = [
    "COUNT",
    "MAX_BOT_ID_LEN",
    "SECONDS",
    "SECONDS_OR_ZERO",
    "Accepted",
    "above",
    "at_least",
    "between",
    "bot_id_ok",
    "finite",
    "handler_ref_ok",
    "kinds_ok",
    "labels_ok",
    "non_empty",
    "ops_ok",
    "parse_ops_addr",
    "split_commas",
    "split_labels",
    "url_ok",
]

MAX_BOT_ID_LEN = 200


@attrs.frozen
class Accepted:
    """The values a setting accepts.

    ``text`` completes "must be ..." in a problem line; ``check`` (None: any value of the
    field's type) tests a parsed value; ``parse`` turns a text (from the environment or a
    flag) into what the converter structures, when the type's own hook is not enough.
    """

    text: str
    check: Callable[[Any], bool] | None = None
    parse: Callable[[str], Any] | None = None


def finite(v: float) -> bool:
    return math.isfinite(v)


def between(lo: float, hi: float) -> Callable[[float], bool]:
    return lambda v: finite(v) and lo <= v <= hi


def above(lo: float) -> Callable[[float], bool]:
    return lambda v: finite(v) and v > lo


def at_least(lo: float) -> Callable[[float], bool]:
    return lambda v: finite(v) and v >= lo


SECONDS = Accepted("a number of seconds > 0", above(0))
SECONDS_OR_ZERO = Accepted("a number of seconds >= 0", at_least(0))
COUNT = Accepted("an integer >= 1", at_least(1))


def non_empty(v: object) -> bool:
    return str(v) != ""


def url_ok(v: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(v)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query


def bot_id_ok(v: str) -> bool:
    return 0 < len(v) <= MAX_BOT_ID_LEN and v.isprintable() and not re.search(r"[\s/]", v)


_HANDLER_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def handler_ref_ok(v: str) -> bool:
    return _HANDLER_REF.fullmatch(v) is not None


def parse_ops_addr(v: str) -> tuple[str, int] | None:
    """``"host:port"`` -> (host, port); ``"off"`` -> None; raise ValueError otherwise."""
    if v.strip().lower() == "off":
        return None
    host, sep, port_text = v.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(v)
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not 0 <= port <= 65535 or re.search(r"[\s/]", host):
        raise ValueError(v)
    return host, port


def ops_ok(v: str) -> bool:
    try:
        parse_ops_addr(v)
    except ValueError:
        return False
    return True


def kinds_ok(v: tuple[str, ...]) -> bool:
    return all(k and k == k.strip() and "," not in k for k in v)


def labels_ok(v: Mapping[str, str]) -> bool:
    return all(
        k and k == k.strip() and not re.search(r"[,=]", k) and "," not in val
        for k, val in v.items()
    )


def split_commas(text: str) -> tuple[str, ...]:
    """``" a, ,b "`` -> ``("a", "b")``: the parts between commas, stripped, empty ones dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def split_labels(text: str) -> dict[str, str]:
    """``"k=v, k2 = v2"`` -> ``{"k": "v", "k2": "v2"}``; ValueError for a part without ``=``."""
    out: dict[str, str] = {}
    for item in split_commas(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"not key=value: {item!r}")
        out[key.strip()] = value.strip()
    return out
