"""Secrets that never show: :class:`Secret`, and a URL shown with its password masked."""

from __future__ import annotations

from typing import Any

from ..redaction import REDACTED, hide_url_password

__all__ = ["REDACTED", "Secret", "hide_password"]


class Secret:
    """A string that never shows itself: ``repr``/``str`` are ``***``; :meth:`reveal` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a secret must be a string")
        self._value = value

    def reveal(self) -> str:
        """The secret value: pass it straight to where it is needed, never to a log."""
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not picklable")


def hide_password(value: Any) -> Any:
    """A URL with its password (if any) shown as ``***``; anything but a str unchanged."""
    return hide_url_password(value) if isinstance(value, str) else value
