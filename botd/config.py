"""The bot's configuration: :class:`BotConfig` (frozen) and :func:`load_config`.

Sources, lowest to highest: the defaults below, an optional TOML file (keys are field names),
the environment (``ENV_VARS``: the seed's names unprefixed, every new one ``BOT_`` + the
upper field name), and overrides (CLI flags, by field name). Every value is parsed by one
converter (:func:`config_converter`, a copy of :data:`botd.codec.lenient`), so ``"false"``
is False and ``"5"`` is 5 whichever source it came from.

Error handling: :func:`load_config` collects every problem, one line each naming the variable
as the user wrote it (``FAILURE_RATE``, ``failure_rate (in bot.toml)``, ``--failure-rate``)
and the accepted values, then raises one :class:`~botd.errors.ConfigError`. It never raises
KeyError or a cattrs error, and never shows a secret. An empty environment variable counts
as unset. The only I/O is reading the TOML file and the token file.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs

from . import codec
from .errors import ConfigError

__all__ = [
    "DEFAULT_CIRCUIT_BREAKER_JITTER",
    "DEFAULT_CIRCUIT_BREAKER_THRESHOLD",
    "DEFAULT_CIRCUIT_BREAKER_TIMEOUT",
    "DEFAULT_CLAIM_TIMEOUT_MARGIN",
    "DEFAULT_CLAIM_WAIT",
    "DEFAULT_CLEANUP_TIMEOUT",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_ERROR_TIMEOUT",
    "DEFAULT_EXEC_KILL_GRACE",
    "DEFAULT_FAILURE_RATE",
    "DEFAULT_HANDLER",
    "DEFAULT_HEALTH_CHECK_TIMEOUT",
    "DEFAULT_HEALTH_INTERVAL",
    "DEFAULT_HEARTBEAT_INTERVAL_MS",
    "DEFAULT_JOB_TIMEOUT",
    "DEFAULT_LOG_FORMAT",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_MAIN_SERVER_URL",
    "DEFAULT_MAX_STARTUP_ATTEMPTS",
    "DEFAULT_OPS_ADDR",
    "DEFAULT_OUTBOX_MAX",
    "DEFAULT_PROCESSING_DURATION_MS",
    "DEFAULT_REGISTER_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_RETRY_BASE_DELAY",
    "DEFAULT_RETRY_MAX_DELAY",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_TRANSITION_HISTORY",
    "ENV_VARS",
    "MAX_CLAIM_WAIT",
    "MAX_CONCURRENCY",
    "BotConfig",
    "HandlerName",
    "LogFormat",
    "LogLevel",
    "Secret",
    "config_converter",
    "default_bot_id",
    "flag_name",
    "load_config",
    "redacted",
    "to_env",
]

HandlerName = Literal["simulate", "exec", "python"]
LogLevel = Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["json", "text", "auto"]

DEFAULT_MAIN_SERVER_URL = "http://localhost:3001"
DEFAULT_PROCESSING_DURATION_MS = 2000
DEFAULT_HEARTBEAT_INTERVAL_MS = 5000
DEFAULT_FAILURE_RATE = 0.0
DEFAULT_MAX_STARTUP_ATTEMPTS = 20
DEFAULT_CIRCUIT_BREAKER_THRESHOLD = 5
DEFAULT_CIRCUIT_BREAKER_TIMEOUT = 30.0
DEFAULT_CIRCUIT_BREAKER_JITTER = 0.1
DEFAULT_RETRY_BASE_DELAY = 1.0
DEFAULT_RETRY_MAX_DELAY = 60.0
DEFAULT_CONCURRENCY = 1
MAX_CONCURRENCY = 1000
DEFAULT_HANDLER: HandlerName = "simulate"
DEFAULT_EXEC_KILL_GRACE = 5.0
DEFAULT_JOB_TIMEOUT = 300.0
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
DEFAULT_CLEANUP_TIMEOUT = 5.0
DEFAULT_OPS_ADDR = "127.0.0.1:9317"
DEFAULT_LOG_LEVEL: LogLevel = "INFO"
DEFAULT_LOG_FORMAT: LogFormat = "auto"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_CLAIM_WAIT = 20.0
MAX_CLAIM_WAIT = 30.0
DEFAULT_CLAIM_TIMEOUT_MARGIN = 5.0
DEFAULT_OUTBOX_MAX = 10000
DEFAULT_HEALTH_INTERVAL = 5.0
DEFAULT_HEALTH_CHECK_TIMEOUT = 10.0
DEFAULT_REGISTER_TIMEOUT = 15.0
DEFAULT_ERROR_TIMEOUT = 60.0
DEFAULT_TRANSITION_HISTORY = 50
MAX_BOT_ID_LEN = 200

REDACTED = "***"


def default_bot_id() -> str:
    """``<hostname>-<pid>``: the seed's default bot id."""
    return f"{socket.gethostname()}-{os.getpid()}"


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


# --- checks: one table of accepted values per field -------------------------------------


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _url_ok(v: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(v)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query


def _bot_id_ok(v: str) -> bool:
    return 0 < len(v) <= MAX_BOT_ID_LEN and v.isprintable() and not re.search(r"[\s/]", v)


_HANDLER_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


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


def _ops_ok(v: str) -> bool:
    try:
        parse_ops_addr(v)
    except ValueError:
        return False
    return True


def _kinds_ok(v: tuple[str, ...]) -> bool:
    return all(k and k == k.strip() and "," not in k for k in v)


def _labels_ok(v: Mapping[str, str]) -> bool:
    return all(
        k and k == k.strip() and not re.search(r"[,=]", k) and "," not in val
        for k, val in v.items()
    )


@attrs.frozen
class _Spec:
    env: str
    help: str
    accepted: str
    check: Callable[[Any], bool] | None = None
    text: Callable[[str], Any] | None = None
    secret: bool = False


def _split_commas(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _split_labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _split_commas(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"not key=value: {item!r}")
        out[key.strip()] = value.strip()
    return out


def _between(lo: float, hi: float) -> Callable[[float], bool]:
    return lambda v: _finite(v) and lo <= v <= hi


def _above(lo: float) -> Callable[[float], bool]:
    return lambda v: _finite(v) and v > lo


def _at_least(lo: float) -> Callable[[float], bool]:
    return lambda v: _finite(v) and v >= lo


_SECONDS = "a number of seconds > 0"

_SPECS: dict[str, _Spec] = {
    "bot_id": _Spec(
        "BOT_ID",
        "this bot's id (default <hostname>-<pid>)",
        f"a non-empty id of at most {MAX_BOT_ID_LEN} characters without spaces or '/'",
        _bot_id_ok,
    ),
    "main_server_url": _Spec(
        "MAIN_SERVER_URL",
        "the main server's base URL",
        "an http:// or https:// URL with a host",
        _url_ok,
    ),
    "processing_duration_ms": _Spec(
        "PROCESSING_DURATION_MS",
        "simulated job duration, ms (simulate handler)",
        "an integer >= 0",
        _at_least(0),
    ),
    "heartbeat_interval_ms": _Spec(
        "HEARTBEAT_INTERVAL_MS", "heartbeat interval, ms", "an integer > 0", _above(0)
    ),
    "failure_rate": _Spec(
        "FAILURE_RATE",
        "share of simulated jobs that fail (simulate handler)",
        "a number between 0.0 and 1.0",
        _between(0.0, 1.0),
    ),
    "max_startup_attempts": _Spec(
        "MAX_STARTUP_ATTEMPTS",
        "registration attempts before giving up (exit 69)",
        "an integer >= 1",
        _at_least(1),
    ),
    "circuit_breaker_threshold": _Spec(
        "CIRCUIT_BREAKER_THRESHOLD",
        "consecutive failures that open a circuit breaker",
        "an integer >= 1",
        _at_least(1),
    ),
    "circuit_breaker_timeout": _Spec(
        "CIRCUIT_BREAKER_TIMEOUT", "seconds a breaker stays open (+/- jitter)", _SECONDS, _above(0)
    ),
    "circuit_breaker_jitter": _Spec(
        "BOT_CIRCUIT_BREAKER_JITTER",
        "relative jitter of the breaker's open time",
        "a number >= 0.0 and < 1.0",
        lambda v: _finite(v) and 0.0 <= v < 1.0,
    ),
    "retry_base_delay": _Spec(
        "RETRY_BASE_DELAY", "backoff ceiling of the first retry, seconds", _SECONDS, _above(0)
    ),
    "retry_max_delay": _Spec(
        "RETRY_MAX_DELAY", "largest backoff ceiling, seconds", _SECONDS, _above(0)
    ),
    "concurrency": _Spec(
        "BOT_CONCURRENCY",
        "jobs run at the same time",
        f"an integer between 1 and {MAX_CONCURRENCY}",
        _between(1, MAX_CONCURRENCY),
    ),
    "handler": _Spec("BOT_HANDLER", "the job handler", "one of simulate, exec, python"),
    "exec_command": _Spec(
        "BOT_EXEC_COMMAND",
        "command line of the exec handler (split like a shell does)",
        "a command line such as 'python3 job.py' (or a list of strings in TOML)",
        lambda v: all(isinstance(a, str) for a in v),
        shlex.split,
    ),
    "exec_shell": _Spec(
        "BOT_EXEC_SHELL", "run the exec command through /bin/sh", "true or false (1/0, yes/no)"
    ),
    "exec_kill_grace": _Spec(
        "BOT_EXEC_KILL_GRACE",
        "seconds between SIGTERM and SIGKILL for a cancelled exec job",
        "a number of seconds >= 0",
        _at_least(0),
    ),
    "python_handler": _Spec(
        "BOT_PYTHON_HANDLER",
        "the python handler, module:function",
        "module:function, such as 'mypkg.jobs:run'",
        lambda v: _HANDLER_REF.fullmatch(v) is not None,
    ),
    "job_timeout": _Spec("BOT_JOB_TIMEOUT", "seconds one job may run", _SECONDS, _above(0)),
    "shutdown_timeout": _Spec(
        "BOT_SHUTDOWN_TIMEOUT",
        "seconds running jobs get to finish after SIGTERM",
        "a number of seconds >= 0",
        _at_least(0),
    ),
    "cleanup_timeout": _Spec(
        "BOT_CLEANUP_TIMEOUT",
        "seconds for releasing and deregistering after the drain",
        _SECONDS,
        _above(0),
    ),
    "state_dir": _Spec(
        "BOT_STATE_DIR",
        "directory of the durable result outbox (unset: in memory, NOT durable)",
        "a directory path",
        lambda v: str(v) != "",
    ),
    "token": _Spec(
        "BOT_TOKEN",
        "bearer token for the main server",
        "a non-empty token",
        lambda v: v.reveal() != "",
        secret=True,
    ),
    "token_file": _Spec(
        "BOT_TOKEN_FILE",
        "file holding the bearer token (not together with BOT_TOKEN)",
        "a readable file path",
        lambda v: str(v) != "",
    ),
    "ops_addr": _Spec(
        "BOT_OPS_ADDR",
        "host:port of the ops endpoint, or off",
        "host:port with a port 0..65535, or off",
        _ops_ok,
    ),
    "log_level": _Spec(
        "BOT_LOG_LEVEL", "log level", "one of TRACE, DEBUG, INFO, WARNING, ERROR (any case)"
    ),
    "log_format": _Spec("BOT_LOG_FORMAT", "log format", "one of json, text, auto"),
    "connect_timeout": _Spec(
        "BOT_CONNECT_TIMEOUT", "HTTP connect timeout, seconds", _SECONDS, _above(0)
    ),
    "request_timeout": _Spec(
        "BOT_REQUEST_TIMEOUT", "HTTP read/write timeout, seconds", _SECONDS, _above(0)
    ),
    "claim_wait": _Spec(
        "BOT_CLAIM_WAIT",
        "long-poll wait_s of a claim, seconds",
        f"a number of seconds between 0 and {MAX_CLAIM_WAIT:g}",
        _between(0, MAX_CLAIM_WAIT),
    ),
    "claim_timeout_margin": _Spec(
        "BOT_CLAIM_TIMEOUT_MARGIN",
        "added to wait_s for a claim's read timeout, seconds",
        _SECONDS,
        _above(0),
    ),
    "kinds": _Spec(
        "BOT_KINDS",
        "job kinds to claim, comma separated (empty: all)",
        "comma-separated kind names",
        _kinds_ok,
        _split_commas,
    ),
    "labels": _Spec(
        "BOT_LABELS",
        "labels sent at registration, k=v,k2=v2",
        "comma-separated key=value pairs",
        _labels_ok,
        _split_labels,
    ),
    "outbox_max": _Spec(
        "BOT_OUTBOX_MAX", "most results kept while unacknowledged", "an integer >= 1", _at_least(1)
    ),
    "health_interval": _Spec(
        "BOT_HEALTH_INTERVAL",
        "the oldest a health check may be before a claim; seconds between checks while unhealthy",
        _SECONDS,
        _above(0),
    ),
    "health_check_timeout": _Spec(
        "BOT_HEALTH_CHECK_TIMEOUT", "deadline of the HEALTH_CHECK state, s", _SECONDS, _above(0)
    ),
    "register_timeout": _Spec(
        "BOT_REGISTER_TIMEOUT", "deadline of one registration attempt, seconds", _SECONDS, _above(0)
    ),
    "error_timeout": _Spec(
        "BOT_ERROR_TIMEOUT", "deadline of ERROR recovery, seconds", _SECONDS, _above(0)
    ),
    "transition_history": _Spec(
        "BOT_TRANSITION_HISTORY",
        "state transitions kept for the status page",
        "an integer >= 1",
        _at_least(1),
    ),
}

ENV_VARS: Mapping[str, tuple[str, str]] = types.MappingProxyType(
    {name: (spec.env, spec.help) for name, spec in _SPECS.items()}
)
"""field name -> (environment variable, help text), for ``--help`` and flags."""

_BY_ENV = {spec.env: name for name, spec in _SPECS.items()}


def flag_name(field: str) -> str:
    """The CLI flag of a field, as used in problem lines: ``failure_rate`` -> ``--failure-rate``."""
    return "--" + field.replace("_", "-")


def _hide_password(value: Any) -> Any:
    """A URL with its password (if any) shown as ``***``; anything else unchanged."""
    if not isinstance(value, str) or "@" not in value:
        return value
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(value)
    except ValueError:
        return re.sub(r":[^:@/]*@", f":{REDACTED}@", value)
    if parts.password is None:
        return value
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}:{REDACTED}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _show(value: Any, spec: _Spec) -> str:
    if spec.secret:
        return REDACTED
    if spec.env == "MAIN_SERVER_URL":
        value = _hide_password(value)
    if isinstance(value, Path):
        return repr(str(value))
    if isinstance(value, tuple):
        return repr(list(value))
    if isinstance(value, types.MappingProxyType):
        return repr(dict(value))
    return repr(value)


def _field_problem(name: str, value: Any) -> str | None:
    """``must be ..., got ...`` if a structured value is out of range, else None."""
    spec = _SPECS[name]
    if spec.check is None or spec.check(value):
        return None
    return f"must be {spec.accepted}, got {_show(value, spec)}"


def _validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    problem = _field_problem(attribute.name, value)
    if problem is not None:
        raise ConfigError(f"{attribute.name}: {problem}")


def _labels(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class BotConfig:
    """The effective configuration of one bot (frozen; validated on construction).

    Every field has a named ``DEFAULT_*`` constant; ``ENV_VARS`` names its variable.
    ``state_dir=None`` keeps results in memory only: NOT durable across a crash.
    ``token`` is the bearer token, also when read from ``token_file``.
    Construction raises ConfigError naming the field for an out-of-range value.
    """

    bot_id: str = attrs.field(factory=default_bot_id, validator=_validate)
    main_server_url: str = attrs.field(default=DEFAULT_MAIN_SERVER_URL, validator=_validate)
    processing_duration_ms: int = attrs.field(
        default=DEFAULT_PROCESSING_DURATION_MS, validator=_validate
    )
    heartbeat_interval_ms: int = attrs.field(
        default=DEFAULT_HEARTBEAT_INTERVAL_MS, validator=_validate
    )
    failure_rate: float = attrs.field(default=DEFAULT_FAILURE_RATE, validator=_validate)
    max_startup_attempts: int = attrs.field(
        default=DEFAULT_MAX_STARTUP_ATTEMPTS, validator=_validate
    )
    circuit_breaker_threshold: int = attrs.field(
        default=DEFAULT_CIRCUIT_BREAKER_THRESHOLD, validator=_validate
    )
    circuit_breaker_timeout: float = attrs.field(
        default=DEFAULT_CIRCUIT_BREAKER_TIMEOUT, validator=_validate
    )
    circuit_breaker_jitter: float = attrs.field(
        default=DEFAULT_CIRCUIT_BREAKER_JITTER, validator=_validate
    )
    retry_base_delay: float = attrs.field(default=DEFAULT_RETRY_BASE_DELAY, validator=_validate)
    retry_max_delay: float = attrs.field(default=DEFAULT_RETRY_MAX_DELAY, validator=_validate)
    concurrency: int = attrs.field(default=DEFAULT_CONCURRENCY, validator=_validate)
    handler: HandlerName = attrs.field(default=DEFAULT_HANDLER, validator=_validate)
    exec_command: tuple[str, ...] = attrs.field(default=(), validator=_validate)
    exec_shell: bool = attrs.field(default=False, validator=_validate)
    exec_kill_grace: float = attrs.field(default=DEFAULT_EXEC_KILL_GRACE, validator=_validate)
    python_handler: str | None = attrs.field(default=None, validator=_validate)
    job_timeout: float = attrs.field(default=DEFAULT_JOB_TIMEOUT, validator=_validate)
    shutdown_timeout: float = attrs.field(default=DEFAULT_SHUTDOWN_TIMEOUT, validator=_validate)
    cleanup_timeout: float = attrs.field(default=DEFAULT_CLEANUP_TIMEOUT, validator=_validate)
    state_dir: Path | None = attrs.field(default=None, validator=_validate)
    token: Secret | None = attrs.field(default=None, validator=_validate)
    token_file: Path | None = attrs.field(default=None, validator=_validate)
    ops_addr: str = attrs.field(default=DEFAULT_OPS_ADDR, validator=_validate)
    log_level: LogLevel = attrs.field(default=DEFAULT_LOG_LEVEL, validator=_validate)
    log_format: LogFormat = attrs.field(default=DEFAULT_LOG_FORMAT, validator=_validate)
    connect_timeout: float = attrs.field(default=DEFAULT_CONNECT_TIMEOUT, validator=_validate)
    request_timeout: float = attrs.field(default=DEFAULT_REQUEST_TIMEOUT, validator=_validate)
    claim_wait: float = attrs.field(default=DEFAULT_CLAIM_WAIT, validator=_validate)
    claim_timeout_margin: float = attrs.field(
        default=DEFAULT_CLAIM_TIMEOUT_MARGIN, validator=_validate
    )
    kinds: tuple[str, ...] = attrs.field(default=(), validator=_validate)
    labels: Mapping[str, str] = attrs.field(
        factory=dict, converter=_labels, validator=_validate, hash=False
    )
    outbox_max: int = attrs.field(default=DEFAULT_OUTBOX_MAX, validator=_validate)
    health_interval: float = attrs.field(default=DEFAULT_HEALTH_INTERVAL, validator=_validate)
    health_check_timeout: float = attrs.field(
        default=DEFAULT_HEALTH_CHECK_TIMEOUT, validator=_validate
    )
    register_timeout: float = attrs.field(default=DEFAULT_REGISTER_TIMEOUT, validator=_validate)
    error_timeout: float = attrs.field(default=DEFAULT_ERROR_TIMEOUT, validator=_validate)
    transition_history: int = attrs.field(default=DEFAULT_TRANSITION_HISTORY, validator=_validate)

    def __attrs_post_init__(self) -> None:
        problems = _cross_problems(attrs.asdict(self, recurse=False), lambda name: name)
        if problems:
            raise ConfigError(problems)

    @property
    def processing_duration(self) -> float:
        """``processing_duration_ms`` in seconds."""
        return self.processing_duration_ms / 1000

    @property
    def heartbeat_interval(self) -> float:
        """``heartbeat_interval_ms`` in seconds."""
        return self.heartbeat_interval_ms / 1000

    @property
    def claim_read_timeout(self) -> float:
        """Read timeout of one long-poll claim: ``claim_wait + claim_timeout_margin``."""
        return self.claim_wait + self.claim_timeout_margin

    @property
    def ops_bind(self) -> tuple[str, int] | None:
        """(host, port) of the ops endpoint, or None when ``ops_addr`` is ``off``."""
        return parse_ops_addr(self.ops_addr)

    @property
    def durable(self) -> bool:
        """True when results survive a crash (``state_dir`` is set)."""
        return self.state_dir is not None


def _cross_problems(
    values: Mapping[str, Any],
    label: Callable[[str], str],
    failed: frozenset[str] = frozenset(),
) -> list[str]:
    """Problems that involve two fields; ``label(field)`` names a field as the user wrote it.

    A check that involves a field in ``failed`` (already reported) is skipped.
    """
    problems = []
    base = values.get("retry_base_delay", DEFAULT_RETRY_BASE_DELAY)
    cap = values.get("retry_max_delay", DEFAULT_RETRY_MAX_DELAY)
    if cap < base and not failed & {"retry_base_delay", "retry_max_delay"}:
        problems.append(
            f"{label('retry_max_delay')}: must be >= {label('retry_base_delay')} ({base!r}),"
            f" got {cap!r}"
        )
    handler = None if "handler" in failed else values.get("handler", DEFAULT_HANDLER)
    if handler == "exec" and not values.get("exec_command") and "exec_command" not in failed:
        problems.append(
            f"{label('exec_command')}: required when {label('handler')} is exec;"
            f" must be {_SPECS['exec_command'].accepted}"
        )
    if handler == "python" and not values.get("python_handler") and "python_handler" not in failed:
        problems.append(
            f"{label('python_handler')}: required when {label('handler')} is python;"
            f" must be {_SPECS['python_handler'].accepted}"
        )
    return problems


attrs.resolve_types(BotConfig)
_FIELD_TYPES: dict[str, Any] = {f.name: f.type for f in attrs.fields(BotConfig)}
assert set(_FIELD_TYPES) == set(_SPECS), "every BotConfig field needs a spec"


# --- the converter ----------------------------------------------------------------------


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
        return _split_commas(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"expected a list of strings, got {value!r}")


def _structure_str_map(value: Any, _: Any) -> dict[str, str]:
    if isinstance(value, str):
        return _split_labels(value)
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


_CONVERTER = config_converter()


# --- loading ----------------------------------------------------------------------------


def _read_toml(file: Path, problems: list[str]) -> dict[str, tuple[Any, str]]:
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
        if key not in _SPECS:
            near = difflib.get_close_matches(key.lower(), list(_SPECS), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            problems.append(f"{where}: unknown setting{hint}")
            continue
        found[key] = (value, where)
    return found


def _read_token_file(path: Path, where: str, problems: list[str]) -> Secret | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append(f"{where}: cannot read token file {str(path)!r}: {exc.strerror or exc}")
        return None
    except UnicodeDecodeError:
        problems.append(f"{where}: token file {str(path)!r} is not UTF-8 text")
        return None
    if not text:
        problems.append(f"{where}: token file {str(path)!r} is empty")
        return None
    return Secret(text)


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
    Reads the TOML file and the token file, nothing else.
    """
    problems: list[str] = []
    chosen: dict[str, tuple[Any, str]] = {}
    if file is not None:
        chosen.update(_read_toml(file, problems))
    environ = os.environ if env is None else env
    for name, spec in _SPECS.items():
        raw = environ.get(spec.env)
        if raw is not None and raw.strip() != "":
            chosen[name] = (raw, spec.env)
    for name, value in (overrides or {}).items():
        if name not in _SPECS:
            problems.append(f"{flag_name(name)}: unknown setting")
        elif value is not None:
            chosen[name] = (value, flag_name(name))

    values: dict[str, Any] = {}
    for name, (raw, where) in chosen.items():
        spec = _SPECS[name]
        try:
            value = raw
            if isinstance(raw, str) and spec.text is not None:
                value = spec.text(raw)
            value = _CONVERTER.structure(value, _FIELD_TYPES[name])
        except Exception:
            problems.append(f"{where}: must be {spec.accepted}, got {_show(raw, spec)}")
            continue
        problem = _field_problem(name, value)
        if problem is not None:
            problems.append(f"{where}: {problem}")
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
        return chosen[name][1] if name in chosen else _SPECS[name].env

    problems.extend(_cross_problems(values, label, frozenset(chosen) - set(values)))
    if problems:
        raise ConfigError(problems)
    return BotConfig(**values)


# --- output -----------------------------------------------------------------------------


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


def redacted(config: BotConfig) -> dict[str, Any]:
    """The effective config as JSON-able data, field by field, with secrets shown as ``***``.

    Secrets are the token and the password of a ``main_server_url`` (``https://u:***@host``).
    """
    data = {f.name: _plain(getattr(config, f.name)) for f in attrs.fields(BotConfig)}
    data["main_server_url"] = _hide_password(config.main_server_url)
    return data


def _env_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if name == "exec_command":
        return shlex.join(value)
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, Secret):
        return value.reveal()
    return str(value)


def to_env(config: BotConfig, *, secrets: bool = False) -> dict[str, str]:
    """The environment that :func:`load_config` turns back into ``config``.

    For starting a bot as a subprocess. Unset optional fields are left out. Secrets are left
    out unless ``secrets=True``; then the result holds the token in clear: never log it.
    A config whose token came from ``token_file`` exports the file, not the token.
    """
    out: dict[str, str] = {}
    for f in attrs.fields(BotConfig):
        value = getattr(config, f.name)
        if value is None:
            continue
        if f.name == "token" and (not secrets or config.token_file is not None):
            continue
        out[_SPECS[f.name].env] = _env_text(f.name, value)
    return out
