"""The bot's configuration: :class:`BotConfig` (frozen) and :func:`load_config`.

Sources, lowest to highest: the defaults, an optional TOML file (keys are field names),
the environment (``ENV_VARS``: the seed's names unprefixed, every new one ``BOT_`` + the
upper field name), and overrides (CLI flags, by field name). Every value is parsed by one
converter (:func:`config_converter`, a copy of :data:`botd.codec.lenient`), so ``"false"``
is False and ``"5"`` is 5 whichever source it came from.

One source of truth: each field of :class:`BotConfig` carries its name, type, default and,
in its metadata, its Setting (variable, help, accepted values, how it is shown). The
``botd run`` flags (:func:`flag_arguments`), ``check-config`` (:func:`redacted`),
:func:`to_env` and the README's table (:func:`settings_table`) are generated from the fields.

Error handling: :func:`load_config` collects every problem, one line each naming the variable
as the user wrote it (``FAILURE_RATE``, ``failure_rate (in bot.toml)``, ``--failure-rate``)
and the accepted values, then raises one :class:`~botd.errors.ConfigError`. It never raises
KeyError or a cattrs error, and never shows a secret. An empty environment variable counts
as unset; a ``BOT_*`` variable that names no setting is ignored, and
:func:`unknown_variables` lists it, with the closest name, for a warning. The only I/O is
reading the TOML file and the token file.

Modules: :mod:`.settings` (the fields, and every ``DEFAULT_*`` and ``MAX_*`` constant),
:mod:`.setting` (a field's Setting), :mod:`.accepted` (accepted values, checks and text
parsers), :mod:`.secret`, :mod:`.converter`, :mod:`.load` and :mod:`.export`.
"""

from __future__ import annotations

from .converter import config_converter
from .export import as_data, default_text, flag_arguments, redacted, settings_table, to_env
from .load import load_config, unknown_variables
from .secret import Secret
from .setting import flag_name
from .settings import (
    DEFAULT_CLAIM_TIMEOUT_MARGIN,
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    ENV_VARS,
    MAX_CONCURRENCY,
    BotConfig,
    HandlerName,
    LogFormat,
    LogLevel,
    default_bot_id,
)

__all__ = [
    "DEFAULT_CLAIM_TIMEOUT_MARGIN",
    "DEFAULT_HEARTBEAT_INTERVAL_MS",
    "ENV_VARS",
    "MAX_CONCURRENCY",
    "BotConfig",
    "HandlerName",
    "LogFormat",
    "LogLevel",
    "Secret",
    "as_data",
    "config_converter",
    "default_bot_id",
    "default_text",
    "flag_arguments",
    "flag_name",
    "load_config",
    "redacted",
    "settings_table",
    "to_env",
    "unknown_variables",
]
