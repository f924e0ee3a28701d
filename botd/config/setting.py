"""One setting: :func:`setting` makes a ``BotConfig`` field that carries its :class:`Setting`
in the field's metadata (environment variable, help, accepted values, how it is shown), and
validates the field against it; :func:`setting_of` reads it back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ..errors import ConfigError
from .accepted import Accepted
from .secret import REDACTED

__all__ = ["Setting", "flag_name", "problem", "setting", "setting_of", "show"]

_KEY = "botd.setting"


@attrs.frozen
class Setting:
    """What the rest of botd knows of one field besides its name, type and default.

    ``env`` is its environment variable, ``help`` the text of its flag and README row,
    ``accepts`` its accepted values. ``secret`` shows it as ``***`` everywhere; ``mask``
    (if any) hides part of a value before it is shown (a URL's password). ``env_text`` (if
    any) writes a value as its variable's text when ``str`` would not read back (a command
    line). ``default_text`` is the README's default when the default is computed.
    Every setting has the flag :func:`flag_name` of its field.
    """

    env: str
    help: str
    accepts: Accepted
    secret: bool = False
    mask: Callable[[Any], Any] | None = None
    env_text: Callable[[Any], str] | None = None
    default_text: str | None = None


def setting(
    default: Any,
    *,
    env: str,
    help: str,
    accepts: Accepted,
    secret: bool = False,
    mask: Callable[[Any], Any] | None = None,
    env_text: Callable[[Any], str] | None = None,
    default_text: str | None = None,
    converter: Callable[[Any], Any] | None = None,
    hash: bool | None = None,
) -> Any:
    """An attrs field with ``default`` (a value or an ``attrs.Factory``) and its Setting.

    The field validates itself: construction raises ConfigError naming the field for a
    value its Setting does not accept.
    """
    meta = Setting(env, help, accepts, secret, mask, env_text, default_text)
    return attrs.field(
        default=default,
        validator=_validate,
        converter=converter,
        hash=hash,
        metadata={_KEY: meta},
    )


def setting_of(field: attrs.Attribute[Any]) -> Setting:
    """The Setting of a field made by :func:`setting`."""
    meta: Setting = field.metadata[_KEY]
    return meta


def flag_name(field: str) -> str:
    """The CLI flag of a field, as used in problem lines: ``failure_rate`` -> ``--failure-rate``."""
    return "--" + field.replace("_", "-")


def show(value: Any, spec: Setting) -> str:
    """A value as a problem line shows it: secrets as ``***``, masked, paths as strings."""
    if spec.secret:
        return REDACTED
    if spec.mask is not None:
        value = spec.mask(value)
    if isinstance(value, Path):
        return repr(str(value))
    if isinstance(value, tuple):
        return repr(list(value))
    if isinstance(value, Mapping):
        return repr(dict(value))
    return repr(value)


def problem(value: Any, spec: Setting) -> str | None:
    """``must be ..., got ...`` if a structured value is out of range, else None."""
    check = spec.accepts.check
    if check is None or check(value):
        return None
    return f"must be {spec.accepts.text}, got {show(value, spec)}"


def _validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    found = problem(value, setting_of(attribute))
    if found is not None:
        raise ConfigError(f"{attribute.name}: {found}")
