"""The config written out: :func:`redacted` (JSON-able, secrets hidden: ``check-config`` and
``/status``), :func:`to_env` (the environment that loads it back), :func:`settings_table`
(the README's table of every setting) and :func:`flag_arguments` (each setting's flag in
``botd run --help``), all from the fields' Settings.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from .secret import REDACTED, Secret
from .setting import Setting, setting_of
from .settings import FIELD_TYPES, BotConfig

__all__ = ["as_data", "default_text", "flag_arguments", "redacted", "settings_table", "to_env"]


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def as_data(config: BotConfig) -> dict[str, Any]:
    """The effective config as JSON-able data, field by field; a :class:`Secret` is ``***``
    (it never shows itself), nothing else is masked: for :func:`botd.redaction.redact_config`."""
    return {f.name: _plain(getattr(config, f.name)) for f in attrs.fields(BotConfig)}


def redacted(config: BotConfig) -> dict[str, Any]:
    """The effective config as JSON-able data, field by field, with secrets shown as ``***``.

    Secrets are the token and the password of a ``main_server_url`` (``https://u:***@host``).
    """
    data: dict[str, Any] = {}
    for f in attrs.fields(BotConfig):
        value, spec = getattr(config, f.name), setting_of(f)
        data[f.name] = _plain(spec.mask(value) if spec.mask is not None else value)
    return data


def _env_text(value: Any, spec: Setting) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if spec.env_text is not None:
        return spec.env_text(value)
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, Secret):
        return value.reveal()
    return str(value)


def to_env(config: BotConfig, *, secrets: bool = False) -> dict[str, str]:
    """The environment that :func:`~botd.config.load_config` turns back into ``config``.

    For starting a bot as a subprocess. Unset optional fields are left out. Secrets are left
    out unless ``secrets=True``; then the result holds the token in clear: never log it.
    A config whose token came from ``token_file`` exports the file, not the token.
    """
    out: dict[str, str] = {}
    for f in attrs.fields(BotConfig):
        value, spec = getattr(config, f.name), setting_of(f)
        if value is None:
            continue
        if spec.secret and not secrets:
            continue
        if f.name == "token" and config.token_file is not None:
            continue  # BOT_TOKEN_FILE is exported instead
        out[spec.env] = _env_text(value, spec)
    return out


def default_text(name: str) -> str:
    """A field's default as the README and ``--help`` show it (``(unset)`` for none)."""
    field = attrs.fields_dict(BotConfig)[name]
    spec = setting_of(field)
    if spec.default_text is not None:
        return spec.default_text
    if field.default is None or field.default == ():
        return "(unset)"
    return _env_text(field.default, spec)


def settings_table() -> str:
    """The README's settings table (Markdown): variable, default and meaning of every field."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in attrs.fields(BotConfig):
        spec = setting_of(f)
        meaning = spec.help.replace("|", "\\|")
        rows.append(f"| `{spec.env}` | `{default_text(f.name)}` | {meaning} |")
    return "\n".join(rows) + "\n"


def flag_arguments(name: str) -> dict[str, Any]:
    """The keyword arguments of ``add_argument`` for a field's flag (``dest`` aside).

    The help says what the setting is, what it accepts, its default and its variable. A
    bool setting is a plain switch (``--exec-shell``, ``--no-exec-shell``) that takes no
    value; a choice shows its choices as the metavar. Every flag defaults to None: not given.
    """
    spec = setting_of(attrs.fields_dict(BotConfig)[name])
    tp = FIELD_TYPES[name]
    default = default_text(name)
    if tp is bool:
        text = f"{spec.help}; default {default} [env {spec.env}: {spec.accepts.text}]"
        return {
            "action": argparse.BooleanOptionalAction,
            "default": None,
            "help": _escaped(text),
        }
    text = f"{spec.help}; accepts {spec.accepts.text}; default {default} [env {spec.env}]"
    metavar = "VALUE"
    if typing.get_origin(tp) is Literal:
        metavar = "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    return {"metavar": metavar, "default": None, "help": _escaped(text)}


def _escaped(text: str) -> str:
    """``text`` for argparse, which formats help with ``%``."""
    return text.replace("%", "%%")
