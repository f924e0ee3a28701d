"""Redaction: the one place that decides what a secret looks like on a page or in a log line.

- :class:`Redactor` replaces registered secrets (raw, JSON-escaped or repr-escaped) and every
  ``Bearer <token>`` by ``***`` in a text. Each agent holds one (its token, the ``*_TOKEN``
  variables of its environment); so does the process's log sink. They are objects, not module
  state: several agents in one process each keep their own.
- :func:`redact_value` applies a redactor to every string (and key) of JSON-able data, so the
  data stays valid JSON whatever the secret overlapped.
- :func:`redact_config` hides the values of secret-looking keys and the password of a URL:
  a config on its way to a page (``/status``, ``check-config``).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "REDACTED",
    "Redactor",
    "Redacts",
    "env_secrets",
    "hide_url_password",
    "jsonable",
    "redact_config",
    "redact_value",
    "without_tokens",
]

REDACTED = "***"
_BEARER = re.compile(r"(?i)(\bbearer\s+)[^\s\"'\\,;]+")
_BEARER_WORD = re.compile(r"(?i)bearer")
#: The names of environment variables whose values are secrets by default.
_SECRET_ENV = re.compile(r".*_TOKEN\Z")
_SECRET_KEY = re.compile(r"(?i)(token|secret|password|passwd|credential|api_?key|auth)")
#: ``scheme://user:`` then the password, up to the authority's last ``@`` (a password may hold
#: one; a path, whitespace or the text's end stops it).
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/\s]*@")


class Redactor:
    """A set of secrets; :meth:`__call__` replaces each, and ``Bearer x``, by ``***``.

    Thread-safe to :meth:`add` to. :meth:`join` combines two (a log sink joins the process's
    secrets with those of the agent whose record it writes).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Register ``secret`` (empty is ignored)."""
        if not secret:
            return
        forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
        forms |= {repr(secret)[1:-1]}
        with self._lock:
            if forms <= self._forms:
                return
            self._forms |= forms
            ordered = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(f) for f in ordered))

    def clear(self) -> None:
        """Forget every secret."""
        with self._lock:
            self._forms.clear()
            self._pattern = None

    def join(self, other: Redactor | None) -> Redacts:
        """This redactor's secrets and ``other``'s (``self`` when ``other`` is None or self)."""
        if other is None or other is self:
            return self
        return _Joined((self, other))

    def _sub(self, text: str) -> str:
        pattern = self._pattern
        return text if pattern is None else pattern.sub(REDACTED, text)

    def _search(self, text: str) -> bool:
        pattern = self._pattern
        return pattern is not None and pattern.search(text) is not None

    def __call__(self, text: str) -> str:
        return _BEARER.sub(r"\g<1>" + REDACTED, self._sub(text))

    def may_match(self, text: str) -> bool:
        """False when ``text`` holds no secret form and no "bearer": nothing to redact in
        it, nor in any part of it (one scan, for the common case)."""
        return self._search(text) or _BEARER_WORD.search(text) is not None


class _Joined:
    """Several redactors' secrets at once (what :meth:`Redactor.join` builds)."""

    def __init__(self, parts: tuple[Redactor, ...]) -> None:
        self._parts = parts

    def __call__(self, text: str) -> str:
        for part in self._parts:
            text = part._sub(text)
        return _BEARER.sub(r"\g<1>" + REDACTED, text)

    def may_match(self, text: str) -> bool:
        if any(part._search(text) for part in self._parts):
            return True
        return _BEARER_WORD.search(text) is not None


#: A redactor, or several joined: a text cleaner that can tell when a text needs no cleaning.
Redacts = Redactor | _Joined


#: The names of the variables that hold a token or name its file: never passed to a job.
_TOKEN_VARIABLE = re.compile(r".*_TOKEN(_FILE)?\Z", re.IGNORECASE)


def without_tokens(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without its ``*_TOKEN`` and ``*_TOKEN_FILE`` variables (any case):
    the environment a job's command gets (BOT_TOKEN, BOTD_TOKEN, BOTD_SERVER_TOKEN, ...)."""
    return {name: value for name, value in environ.items() if not _TOKEN_VARIABLE.match(name)}


def env_secrets(environ: Mapping[str, str]) -> list[str]:
    """The values of the ``*_TOKEN`` variables of ``environ``: secrets by default."""
    return [value for name, value in environ.items() if _SECRET_ENV.match(name) and value]


def _same(text: str) -> str:
    return text


def jsonable(value: Any, clean: Callable[[str], str] = _same) -> Any:
    """Return ``value`` as plain JSON data with ``clean`` applied to every string and key.

    Unknown types, non-str keys and NaN become str; a number whose digits ``clean`` changes
    becomes the cleaned string.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, int | float):
        text = str(value)
        cleaned = clean(text)
        if cleaned != text or (isinstance(value, float) and not math.isfinite(value)):
            return cleaned
        return value
    if isinstance(value, Mapping):
        return {clean(str(k)): jsonable(v, clean) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, clean) for v in value]
    return clean(str(value))


def redact_value(value: Any, redactor: Redacts) -> Any:
    """Return ``value`` as plain JSON data with every string in it (keys too) redacted.

    Redacting values rather than serialized text keeps the JSON valid whatever the secret.
    """
    return jsonable(value, redactor)


def hide_url_password(value: str) -> str:
    """``scheme://user:password@host...`` with the password shown as ``***``, in any text."""
    return _URL_USERINFO.sub(r"\g<1>" + REDACTED + "@", value)


def redact_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``config`` fit for display: secret-looking keys and URL passwords become ``***``.

    A key is secret when its name contains token, secret, password, credential, api_key or
    auth; its value is replaced unless empty/None (so "not set" stays visible). Nested
    mappings are redacted too.
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        if _SECRET_KEY.search(str(key)) and value not in (None, "", b""):
            out[str(key)] = REDACTED
        elif isinstance(value, Mapping):
            out[str(key)] = redact_config(value)
        elif isinstance(value, str):
            out[str(key)] = hide_url_password(value)
        else:
            out[str(key)] = value
    return out
