"""The settings: :class:`BotConfig`, whose fields are every setting of a bot.

Each field holds its name, type and default, and in its metadata its :class:`Setting`:
the environment variable (the seed's names unprefixed, every new one ``BOT_`` + the upper
field name), the help text, the accepted values, and how it is shown. ``SETTINGS`` and
``ENV_VARS`` read them back in field order; the flags, the README table, ``check-config``
and :func:`~botd.config.load_config` all come from there.
"""

from __future__ import annotations

import os
import shlex
import socket
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from ..errors import ConfigError
from .accepted import (
    COUNT,
    MAX_BOT_ID_LEN,
    SECONDS,
    SECONDS_OR_ZERO,
    Accepted,
    above,
    at_least,
    between,
    bot_id_ok,
    finite,
    handler_ref_ok,
    kinds_ok,
    labels_ok,
    non_empty,
    ops_ok,
    split_commas,
    split_labels,
    url_ok,
)
from .secret import Secret, hide_password
from .setting import Setting, setting, setting_of

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
    "DEFAULT_PREFETCH",
    "DEFAULT_PROCESSING_DURATION_MS",
    "DEFAULT_REGISTER_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_RESPONSE_MAX_BYTES",
    "DEFAULT_RESULT_MAX_BYTES",
    "DEFAULT_RETRY_BASE_DELAY",
    "DEFAULT_RETRY_MAX_DELAY",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_TRANSITION_HISTORY",
    "ENV_VARS",
    "FIELD_TYPES",
    "MAX_CLAIM_WAIT",
    "MAX_CONCURRENCY",
    "SETTINGS",
    "BotConfig",
    "HandlerName",
    "LogFormat",
    "LogLevel",
    "cross_problems",
    "default_bot_id",
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
DEFAULT_PREFETCH = 0
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
DEFAULT_RESULT_MAX_BYTES = 1024 * 1024
DEFAULT_RESPONSE_MAX_BYTES = 16 * 1024 * 1024
#: The smallest BOT_RESPONSE_MAX_BYTES: every answer but a claim's is far below it.
MIN_RESPONSE_MAX_BYTES = 64 * 1024
DEFAULT_HEALTH_INTERVAL = 5.0
DEFAULT_HEALTH_CHECK_TIMEOUT = 10.0
DEFAULT_REGISTER_TIMEOUT = 15.0
DEFAULT_ERROR_TIMEOUT = 60.0
DEFAULT_TRANSITION_HISTORY = 50


def default_bot_id() -> str:
    """``<hostname>-<pid>``: the seed's default bot id."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _frozen_labels(value: Mapping[str, str]) -> Mapping[str, str]:
    return types.MappingProxyType(dict(value))


# What some settings accept, named to keep their fields short (the others say it inline).
_BOOL = Accepted("true or false (1/0, yes/no)")
_CONCURRENCY = Accepted(f"an integer between 1 and {MAX_CONCURRENCY}", between(1, MAX_CONCURRENCY))
_PREFETCH = Accepted(f"an integer between 0 and {MAX_CONCURRENCY}", between(0, MAX_CONCURRENCY))
_CLAIM_WAIT = Accepted(
    f"a number of seconds between 0 and {MAX_CLAIM_WAIT:g}", between(0, MAX_CLAIM_WAIT)
)
_EXEC_COMMAND = Accepted(
    "a command line such as 'python3 job.py' (or a list of strings in TOML)",
    lambda v: all(isinstance(a, str) for a in v),
    shlex.split,
)
_DIRECTORY = Accepted("a directory path", non_empty)
_FILE = Accepted("a readable file path", non_empty)
_PYTHON_HANDLER = Accepted("module:function, such as 'mypkg.jobs:run'", handler_ref_ok)


@attrs.frozen
class BotConfig:
    """The effective configuration of one bot (frozen; validated on construction).

    Every default other than None, empty or False is a named ``DEFAULT_*`` constant; the
    Setting of a field (``SETTINGS``) names its variable. ``state_dir=None`` keeps results in
    memory only: NOT durable across a crash. ``token`` is the bearer token, also when read
    from ``token_file``.
    Construction raises ConfigError naming the field for an out-of-range value.
    """

    # ruff's RUF009 does not know that setting() returns an attrs field: hence the noqa marks.
    bot_id: str = setting(
        attrs.Factory(default_bot_id),
        env="BOT_ID",
        help="this bot's id",
        accepts=Accepted(
            f"a non-empty id of at most {MAX_BOT_ID_LEN} characters without spaces or '/'",
            bot_id_ok,
        ),
        default_text="<hostname>-<pid>",
    )
    main_server_url: str = setting(
        DEFAULT_MAIN_SERVER_URL,
        env="MAIN_SERVER_URL",
        help="the main server's base URL",
        accepts=Accepted("an http:// or https:// URL with a host", url_ok),
        mask=hide_password,
    )
    ca_file: Path | None = setting(  # noqa: RUF009
        None,
        env="BOT_CA_FILE",
        help="verify an https:// server against the CA certificates in this PEM file instead"
        " of the system's bundle",
        accepts=_FILE,
    )
    tls_cert: Path | None = setting(  # noqa: RUF009
        None,
        env="BOT_TLS_CERT",
        help="present this PEM client certificate (chain) to an https:// server; its key too"
        " unless BOT_TLS_KEY is set",
        accepts=_FILE,
    )
    tls_key: Path | None = setting(  # noqa: RUF009
        None,
        env="BOT_TLS_KEY",
        help="the PEM private key of BOT_TLS_CERT",
        accepts=_FILE,
    )
    processing_duration_ms: int = setting(
        DEFAULT_PROCESSING_DURATION_MS,
        env="PROCESSING_DURATION_MS",
        help="simulated job duration, ms (simulate handler)",
        accepts=Accepted("an integer >= 0", at_least(0)),
    )
    heartbeat_interval_ms: int = setting(
        DEFAULT_HEARTBEAT_INTERVAL_MS,
        env="HEARTBEAT_INTERVAL_MS",
        help="heartbeat interval, ms",
        accepts=Accepted("an integer > 0", above(0)),
    )
    failure_rate: float = setting(
        DEFAULT_FAILURE_RATE,
        env="FAILURE_RATE",
        help="share of simulated jobs that fail (simulate handler)",
        accepts=Accepted("a number between 0.0 and 1.0", between(0.0, 1.0)),
    )
    max_startup_attempts: int = setting(
        DEFAULT_MAX_STARTUP_ATTEMPTS,
        env="MAX_STARTUP_ATTEMPTS",
        help="registration attempts before giving up (exit 69)",
        accepts=COUNT,
    )
    circuit_breaker_threshold: int = setting(
        DEFAULT_CIRCUIT_BREAKER_THRESHOLD,
        env="CIRCUIT_BREAKER_THRESHOLD",
        help="consecutive failures that open a circuit breaker",
        accepts=COUNT,
    )
    circuit_breaker_timeout: float = setting(
        DEFAULT_CIRCUIT_BREAKER_TIMEOUT,
        env="CIRCUIT_BREAKER_TIMEOUT",
        help="seconds a breaker stays open (+/- jitter)",
        accepts=SECONDS,
    )
    circuit_breaker_jitter: float = setting(
        DEFAULT_CIRCUIT_BREAKER_JITTER,
        env="BOT_CIRCUIT_BREAKER_JITTER",
        help="relative jitter of the breaker's open time",
        accepts=Accepted("a number >= 0.0 and < 1.0", lambda v: finite(v) and 0.0 <= v < 1.0),
    )
    retry_base_delay: float = setting(
        DEFAULT_RETRY_BASE_DELAY,
        env="RETRY_BASE_DELAY",
        help="backoff ceiling of the first retry, seconds",
        accepts=SECONDS,
    )
    retry_max_delay: float = setting(
        DEFAULT_RETRY_MAX_DELAY,
        env="RETRY_MAX_DELAY",
        help="largest backoff ceiling, seconds",
        accepts=SECONDS,
    )
    concurrency: int = setting(
        DEFAULT_CONCURRENCY,
        env="BOT_CONCURRENCY",
        help="jobs run at the same time",
        accepts=_CONCURRENCY,
    )
    prefetch: int = setting(
        DEFAULT_PREFETCH,
        env="BOT_PREFETCH",
        help="most claimed jobs held waiting for a free slot, leases heartbeated (0: claim only"
        " for free slots; no effect with BOT_ONCE)",
        accepts=_PREFETCH,
    )
    handler: HandlerName = setting(  # noqa: RUF009
        DEFAULT_HANDLER,
        env="BOT_HANDLER",
        help="the job handler",
        accepts=Accepted("one of simulate, exec, python"),
    )
    exec_command: tuple[str, ...] = setting(
        (),
        env="BOT_EXEC_COMMAND",
        help="command line of the exec handler (split like a shell does)",
        accepts=_EXEC_COMMAND,
        env_text=shlex.join,
    )
    exec_shell: bool = setting(
        False,
        env="BOT_EXEC_SHELL",
        help="run the exec command through /bin/sh",
        accepts=_BOOL,
    )
    exec_kill_grace: float = setting(
        DEFAULT_EXEC_KILL_GRACE,
        env="BOT_EXEC_KILL_GRACE",
        help="seconds between SIGTERM and SIGKILL for a cancelled exec job",
        accepts=SECONDS_OR_ZERO,
    )
    python_handler: str | None = setting(
        None,
        env="BOT_PYTHON_HANDLER",
        help="the python handler, module:function",
        accepts=_PYTHON_HANDLER,
    )
    job_timeout: float = setting(
        DEFAULT_JOB_TIMEOUT,
        env="BOT_JOB_TIMEOUT",
        help="seconds one job may run",
        accepts=SECONDS,
    )
    shutdown_timeout: float = setting(
        DEFAULT_SHUTDOWN_TIMEOUT,
        env="BOT_SHUTDOWN_TIMEOUT",
        help="seconds running jobs get to finish after SIGTERM",
        accepts=SECONDS_OR_ZERO,
    )
    cleanup_timeout: float = setting(
        DEFAULT_CLEANUP_TIMEOUT,
        env="BOT_CLEANUP_TIMEOUT",
        help="seconds for releasing and deregistering after the drain",
        accepts=SECONDS,
    )
    once: bool = setting(
        False,
        env="BOT_ONCE",
        help="run one job, report its result, then drain, deregister and exit 0",
        accepts=_BOOL,
    )
    disconnect_after_idle: float | None = setting(
        None,
        env="BOT_DISCONNECT_AFTER_IDLE",
        help="drain, deregister and exit 0 after this many seconds without a job running"
        " (counted from the first READY and again from each job's end; unset: never)",
        accepts=SECONDS,
    )
    state_dir: Path | None = setting(  # noqa: RUF009
        None,
        env="BOT_STATE_DIR",
        help="directory of the durable result outbox (unset: in memory, NOT durable)",
        accepts=_DIRECTORY,
    )
    token: Secret | None = setting(  # noqa: RUF009
        None,
        env="BOT_TOKEN",
        help="bearer token for the main server",
        secret=True,
        accepts=Accepted("a non-empty token", lambda v: v.reveal() != ""),
    )
    token_file: Path | None = setting(  # noqa: RUF009
        None,
        env="BOT_TOKEN_FILE",
        help="file holding the bearer token (not together with BOT_TOKEN)",
        accepts=_FILE,
    )
    ops_addr: str = setting(
        DEFAULT_OPS_ADDR,
        env="BOT_OPS_ADDR",
        help="host:port of the ops endpoint, or off",
        accepts=Accepted("host:port with a port 0..65535, or off", ops_ok),
    )
    log_level: LogLevel = setting(  # noqa: RUF009
        DEFAULT_LOG_LEVEL,
        env="BOT_LOG_LEVEL",
        help="log level",
        accepts=Accepted("one of TRACE, DEBUG, INFO, WARNING, ERROR (any case)"),
    )
    log_format: LogFormat = setting(  # noqa: RUF009
        DEFAULT_LOG_FORMAT,
        env="BOT_LOG_FORMAT",
        help="log format",
        accepts=Accepted("one of json, text, auto"),
    )
    connect_timeout: float = setting(
        DEFAULT_CONNECT_TIMEOUT,
        env="BOT_CONNECT_TIMEOUT",
        help="HTTP connect timeout, seconds",
        accepts=SECONDS,
    )
    request_timeout: float = setting(
        DEFAULT_REQUEST_TIMEOUT,
        env="BOT_REQUEST_TIMEOUT",
        help="HTTP read/write timeout, seconds",
        accepts=SECONDS,
    )
    claim_wait: float = setting(
        DEFAULT_CLAIM_WAIT,
        env="BOT_CLAIM_WAIT",
        help="long-poll wait_s of a claim, seconds",
        accepts=_CLAIM_WAIT,
    )
    claim_timeout_margin: float = setting(
        DEFAULT_CLAIM_TIMEOUT_MARGIN,
        env="BOT_CLAIM_TIMEOUT_MARGIN",
        help="a claim may take wait_s + this + BOT_REQUEST_TIMEOUT, seconds",
        accepts=SECONDS,
    )
    response_max_bytes: int = setting(
        DEFAULT_RESPONSE_MAX_BYTES,
        env="BOT_RESPONSE_MAX_BYTES",
        help="largest answer read from the server, bytes (a claim's: at least 4 MiB per job"
        " asked for); a larger one is a protocol error, retried with backoff",
        accepts=Accepted(
            f"an integer >= {MIN_RESPONSE_MAX_BYTES}", at_least(MIN_RESPONSE_MAX_BYTES)
        ),
    )
    kinds: tuple[str, ...] = setting(
        (),
        env="BOT_KINDS",
        help="job kinds to claim, comma separated (empty: all kinds the handler takes;"
        " simulate takes only `simulate`)",
        accepts=Accepted("comma-separated kind names", kinds_ok, split_commas),
    )
    labels: Mapping[str, str] = setting(
        attrs.Factory(dict),
        env="BOT_LABELS",
        help="labels sent at registration, k=v,k2=v2",
        accepts=Accepted("comma-separated key=value pairs", labels_ok, split_labels),
        default_text="(empty)",
        converter=_frozen_labels,
        hash=False,
    )
    outbox_max: int = setting(
        DEFAULT_OUTBOX_MAX,
        env="BOT_OUTBOX_MAX",
        help="most results kept while unacknowledged",
        accepts=COUNT,
    )
    result_max_bytes: int = setting(
        DEFAULT_RESULT_MAX_BYTES,
        env="BOT_RESULT_MAX_BYTES",
        help="largest job result, bytes of JSON; a larger one fails its job for good"
        " (result_too_large)",
        accepts=COUNT,
    )
    health_interval: float = setting(
        DEFAULT_HEALTH_INTERVAL,
        env="BOT_HEALTH_INTERVAL",
        help="the oldest a health check may be before a claim; seconds between checks while"
        " unhealthy",
        accepts=SECONDS,
    )
    health_check_timeout: float = setting(
        DEFAULT_HEALTH_CHECK_TIMEOUT,
        env="BOT_HEALTH_CHECK_TIMEOUT",
        help="deadline of the HEALTH_CHECK state, s",
        accepts=SECONDS,
    )
    register_timeout: float = setting(
        DEFAULT_REGISTER_TIMEOUT,
        env="BOT_REGISTER_TIMEOUT",
        help="deadline of one registration attempt, seconds",
        accepts=SECONDS,
    )
    error_timeout: float = setting(
        DEFAULT_ERROR_TIMEOUT,
        env="BOT_ERROR_TIMEOUT",
        help="deadline of ERROR recovery, seconds",
        accepts=SECONDS,
    )
    transition_history: int = setting(
        DEFAULT_TRANSITION_HISTORY,
        env="BOT_TRANSITION_HISTORY",
        help="state transitions kept for the status page",
        accepts=COUNT,
    )

    def __attrs_post_init__(self) -> None:
        problems = cross_problems(attrs.asdict(self, recurse=False), lambda name: name)
        if problems:
            raise ConfigError(problems)


attrs.resolve_types(BotConfig)

SETTINGS: Mapping[str, Setting] = types.MappingProxyType(
    {f.name: setting_of(f) for f in attrs.fields(BotConfig)}
)
"""field name -> its Setting, in field order."""

FIELD_TYPES: Mapping[str, Any] = types.MappingProxyType(
    {f.name: f.type for f in attrs.fields(BotConfig)}
)
"""field name -> its type (resolved), for the converter."""

ENV_VARS: Mapping[str, tuple[str, str]] = types.MappingProxyType(
    {name: (spec.env, spec.help) for name, spec in SETTINGS.items()}
)
"""field name -> (environment variable, help text), for ``--help`` and flags."""


def cross_problems(
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
            f" must be {_EXEC_COMMAND.text}"
        )
    if handler == "python" and not values.get("python_handler") and "python_handler" not in failed:
        problems.append(
            f"{label('python_handler')}: required when {label('handler')} is python;"
            f" must be {_PYTHON_HANDLER.text}"
        )
    return problems
