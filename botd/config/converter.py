"""The config's converter: :func:`config_converter`, a copy of :data:`botd.codec.lenient`
with the hooks the settings' types need, so ``"false"`` is False and ``"5"`` is 5 whichever
source a value came from (booleans keep lenient's own hook: a plain cattrs would read
``"false"`` as True).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import cattrs

from .. import codec
from .accepted import split_commas, split_labels
from .secret import Secret

__all__ = ["config_converter"]


def _structure_secret(value: Any, _: type) -> Secret:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret(value)
    raise TypeError("expected a string")


def _structure_path(value: Any, _: type) -> Path:
    if isinstance(value, str | os.PathLike):
        return Path(value).expanduser()
    raise TypeError(f"expected a path, got {value!r}")


def _is_literal(tp: Any) -> bool:
    return typing.get_origin(tp) is Literal


def _literal_hook(tp: Any) -> Callable[[Any, Any], Any]:
    choices = typing.get_args(tp)

    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, str):
            for choice in choices:
                if isinstance(choice, str) and choice.lower() == value.strip().lower():
                    return choice
        raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {value!r}")

    return structure


def _structure_str_tuple(value: Any, _: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return split_commas(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"expected a list of strings, got {value!r}")


def _structure_str_map(value: Any, _: Any) -> dict[str, str]:
    if isinstance(value, str):
        return split_labels(value)
    if isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return dict(value)
    raise TypeError(f"expected a table of strings, got {value!r}")


def config_converter() -> cattrs.Converter:
    """A copy of :data:`botd.codec.lenient` with the hooks config needs.

    Adds: :class:`Secret` and ``Path`` from strings, case-insensitive ``Literal`` choices,
    ``tuple[str, ...]`` from a list or a comma-separated string, ``Mapping[str, str]`` from a
    table or ``k=v,k2=v2``.
    """
    conv = codec.lenient.copy()
    conv.register_structure_hook(Secret, _structure_secret)
    conv.register_structure_hook(Path, _structure_path)
    conv.register_structure_hook_factory(_is_literal, _literal_hook)
    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], _structure_str_tuple)
    conv.register_structure_hook_func(lambda t: t == Mapping[str, str], _structure_str_map)
    return conv
