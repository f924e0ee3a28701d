"""Loading: :func:`load_config` builds the effective :class:`BotConfig` from defaults < TOML
file < environment < overrides (CLI flags), collecting every problem before it raises;
:func:`unknown_variables` finds the ``BOT_*`` variables that are no setting (typos).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import tls
from ..errors import ConfigError
from ..token_files import read_token_file
from .converter import config_converter
from .secret import Secret
from .setting import flag_name, problem, show
from .settings import FIELD_TYPES, SETTINGS, BotConfig, cross_problems

__all__ = ["load_config", "unknown_variables"]

_CONVERTER = config_converter()


def _close_matches(word: str, possibilities: list[str], n: int) -> list[str]:
    import difflib  # only for an unknown name: difflib and heapq are not on the start path

    return difflib.get_close_matches(word, possibilities, n=n)


def _read_toml(file: Path, problems: list[str]) -> dict[str, tuple[Any, str]]:
    import tomllib  # only with a config file: not on every start

    try:
        with open(file, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        problems.append(f"{file}: cannot read the config file: {exc.strerror or exc}")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{file}: not valid TOML: {exc}")
        return {}
    found: dict[str, tuple[Any, str]] = {}
    for key, value in data.items():
        where = f"{key} (in {file})"
        if key not in SETTINGS:
            near = _close_matches(key.lower(), list(SETTINGS), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            problems.append(f"{where}: unknown setting{hint}")
            continue
        found[key] = (value, where)
    return found


def unknown_variables(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The ``BOT_*`` variables of ``env`` that name no setting, sorted, each with the closest
    variable that does (or None). Candidates are every setting's variable, the seed's
    unprefixed ones too (``BOT_HEARTBEAT_INTERVAL_MS`` -> ``HEARTBEAT_INTERVAL_MS``).

    :func:`load_config` ignores such a variable; ``botd run`` and ``check-config`` warn.
    """
    known = [spec.env for spec in SETTINGS.values()]
    found: list[tuple[str, str | None]] = []
    for name in sorted(env):
        if name.startswith("BOT_") and name not in known:
            near = _close_matches(name, known, n=1)
            found.append((name, near[0] if near else None))
    return found


def _read_token_file(path: Path, where: str, problems: list[str]) -> Secret | None:
    try:
        return Secret(read_token_file(path, where))
    except ConfigError as exc:
        problems.extend(exc.problems)
        return None


#: The TLS settings of a bot, checked together: their files must make an SSL context.
TLS_FIELDS = ("ca_file", "tls_cert", "tls_key")


def _check_tls(values: Mapping[str, Any], label: Any, problems: list[str]) -> None:
    """A problem, naming the setting, if the TLS files cannot be read or used."""
    if not any(values.get(name) for name in TLS_FIELDS):
        return
    try:
        tls.client_context(
            ca_file=values.get("ca_file"),
            cert_file=values.get("tls_cert"),
            key_file=values.get("tls_key"),
            names=(label("ca_file"), label("tls_cert"), label("tls_key")),
        )
    except ConfigError as exc:
        problems.extend(exc.problems)


def load_config(
    *,
    env: Mapping[str, str] | None = None,
    file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> BotConfig:
    """Build the effective :class:`BotConfig` from defaults < file < env < overrides.

    Args:
        env: the environment (``os.environ`` when None); only ``ENV_VARS`` names are read,
            and an empty value counts as unset.
        file: an optional TOML file whose keys are field names.
        overrides: CLI flags by field name; None values are skipped (flag not given).

    Raises ConfigError with every problem, one line each, naming the variable as written.
    Reads the TOML file, the token file and the TLS files (BOT_CA_FILE, BOT_TLS_CERT,
    BOT_TLS_KEY: each must be readable PEM), nothing else.
    """
    problems: list[str] = []
    chosen: dict[str, tuple[Any, str]] = {}
    if file is not None:
        chosen.update(_read_toml(file, problems))
    environ = os.environ if env is None else env
    for name, spec in SETTINGS.items():
        raw = environ.get(spec.env)
        if raw is not None and raw.strip() != "":
            chosen[name] = (raw, spec.env)
    for name, value in (overrides or {}).items():
        if name not in SETTINGS:
            problems.append(f"{flag_name(name)}: unknown setting")
        elif value is not None:
            chosen[name] = (value, flag_name(name))

    values: dict[str, Any] = {}
    for name, (raw, where) in chosen.items():
        spec = SETTINGS[name]
        try:
            value = raw
            if isinstance(raw, str) and spec.accepts.parse is not None:
                value = spec.accepts.parse(raw)
            value = _CONVERTER.structure(value, FIELD_TYPES[name])
        except Exception:
            problems.append(f"{where}: must be {spec.accepts.text}, got {show(raw, spec)}")
            continue
        found = problem(value, spec)
        if found is not None:
            problems.append(f"{where}: {found}")
            continue
        values[name] = value

    if "token_file" in values:
        if "token" in chosen:
            problems.append(
                f"{chosen['token'][1]} and {chosen['token_file'][1]}: give one of them, not both"
            )
        else:
            token = _read_token_file(values["token_file"], chosen["token_file"][1], problems)
            if token is not None:
                values["token"] = token

    def label(name: str) -> str:
        return chosen[name][1] if name in chosen else SETTINGS[name].env

    _check_tls(values, label, problems)
    problems.extend(cross_problems(values, label, frozenset(chosen) - set(values)))
    if problems:
        raise ConfigError(problems)
    return BotConfig(**values)
