"""Logging: one loguru sink writing JSON lines (or readable text), stdlib logging routed into it.

The pieces, in the order a record meets them:

1. A stdlib :class:`logging.LogRecord` (httpx, hypercorn, trio, anything) reaches the
   :class:`~botd.stdlib_logging.InterceptHandler` on the root logger and is re-emitted
   through loguru, with the stdlib logger's name as ``logger`` and its ``extra=`` attributes
   as fields.
2. The loguru patcher fills ``bot_id`` and ``state`` from the :class:`AgentLogContext` of the
   current task (a :class:`contextvars.ContextVar`; Trio copies it into child tasks), or
   ``None`` outside any agent. Several agents in one process each see their own.
3. The one sink turns the record into one line: a flat JSON object, or a readable text line.
4. Every secret of the sink's :class:`~botd.redaction.Redactor` and of the current agent's,
   and every ``Bearer <token>``, is replaced by ``***`` in every field of the final line
   (message, fields, keys, traceback). JSON lines are redacted value
   by value before serializing, so a secret overlapping a JSON escape cannot break the line;
   text lines are redacted as a whole.

What is installed is owned by an object, not by module globals: :func:`setup_logging` returns
the :class:`LogSetup` that the process's entry point holds (a later install replaces it,
:meth:`LogSetup.close` takes it all away), and each agent's id, state and secrets live in its
own :class:`AgentLogContext`, so the agents of one process share nothing here. Loguru's
logger and the stdlib root logger are process-wide by nature: so is which setup is installed.

Stdlib logging is joined, not taken over: :func:`setup_logging` adds one handler to the root
logger and sets the root level to the chosen level, so records below it are not even built.
It does not call ``logging.basicConfig(force=True)``, does not remove handlers that others
added, and does not touch other loggers' levels, handlers or ``propagate`` flags, with one
exception: hypercorn's own stream handlers, which :func:`hypercorn_config_loggers` replaces
(the issue asks for that). A library that sets ``propagate = False`` on its logger keeps its
records to itself; that is its choice.

Key events carry a stable ``event`` field; :func:`emit` is the helper and
:class:`botd.events.Event` (also ``logs.Event``) lists every name. ``docs/operations.md``
documents the line format and every event.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TextIO, TypedDict, Unpack

import attrs
from loguru import logger

from .events import Event
from .redaction import Redactor, Redacts, jsonable
from .redaction import env_secrets as secrets_in_env
from .stdlib_logging import (
    InterceptHandler,
    configure_hypercorn_logging,
    hypercorn_config_loggers,
    stdlib_level,
)
from .timestamps import rfc3339_of

if TYPE_CHECKING:
    from loguru import Message, Record

__all__ = [
    "AgentLogContext",
    "Event",
    "InterceptHandler",
    "LogFormat",
    "LogSetup",
    "bind_agent",
    "configure_hypercorn_logging",
    "current_agent",
    "emit",
    "enabled",
    "hypercorn_config_loggers",
    "setup_logging",
]

LogFormat = Literal["auto", "json", "text"]
#: The core fields of every JSON line, in order; an extra field with one of these names is
#: written as ``field_<name>`` instead of overwriting it.
CORE_FIELDS = ("time", "level", "msg", "logger", "bot_id", "state")
EXC_FIELDS = ("exc_type", "exc_message", "exc_traceback")
_INTERNAL_PREFIX = "_botd_"
#: Characters that JSON leaves raw but some line splitters (str.splitlines, JavaScript) break
#: lines at; escaped so that one record is one line for every reader.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


# --- per-agent context ------------------------------------------------------------------


@attrs.frozen
class AgentLogContext:
    """Who is logging: the bot's id, a callable returning its current lifecycle state, and
    the agent's own secrets (its :class:`~botd.redaction.Redactor`)."""

    bot_id: str
    state: Callable[[], object]
    redactor: Redactor = attrs.field(factory=Redactor)


_agent: contextvars.ContextVar[AgentLogContext | None] = contextvars.ContextVar(
    "botd_agent_log_context", default=None
)


def current_agent() -> AgentLogContext | None:
    """Return the :class:`AgentLogContext` of the current task, or None outside any agent."""
    return _agent.get()


@contextlib.contextmanager
def bind_agent(
    bot_id: str, state_fn: Callable[[], object], redactor: Redactor | None = None
) -> Iterator[AgentLogContext]:
    """Tag every log record emitted in this context with ``bot_id`` and the current state,
    and redact ``redactor``'s secrets from it.

    Open it around the agent's nursery: Trio copies the context into every task spawned under
    it, so their records (and stdlib records they cause) carry this bot's id. ``state_fn`` is
    called for every record; if it raises, ``state`` is ``None``. The previous context is
    restored on exit, so agents nest and run side by side.
    """
    ctx = AgentLogContext(bot_id=bot_id, state=state_fn, redactor=redactor or Redactor())
    token = _agent.set(ctx)
    try:
        yield ctx
    finally:
        _agent.reset(token)


def _patch(record: Record) -> None:
    """The loguru patcher: fill ``bot_id`` and ``state`` unless the record already has them."""
    extra = record["extra"]
    ctx = _agent.get()
    if ctx is None:
        extra.setdefault("bot_id", None)
        extra.setdefault("state", None)
        return
    extra.setdefault("bot_id", ctx.bot_id)
    if "state" not in extra:
        try:
            state = ctx.state()
        except Exception:
            state = None
        extra["state"] = None if state is None else str(state)


# --- formatting -------------------------------------------------------------------------


def _exc_type_name(exc_type: type[BaseException]) -> str:
    if exc_type.__module__ == "builtins":
        return exc_type.__qualname__
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


def _fields(record: Record) -> dict[str, Any]:
    """The event fields of a record: its extras minus internals, with core-name clashes moved."""
    out: dict[str, Any] = {}
    for key, value in record["extra"].items():
        if key.startswith(_INTERNAL_PREFIX) or key in ("bot_id", "state", "logger"):
            continue
        name = f"field_{key}" if key in CORE_FIELDS or key in EXC_FIELDS else key
        out[name] = value
    return out


def record_to_dict(record: Record) -> dict[str, Any]:
    """Return the flat object of one record (before redaction); see the module docstring."""
    extra = record["extra"]
    doc: dict[str, Any] = {
        "time": rfc3339_of(record["time"], "microseconds"),
        "level": record["level"].name,
        "msg": record["message"],
        "logger": extra.get("logger") or record["name"],
        "bot_id": extra.get("bot_id"),
        "state": extra.get("state"),
    }
    doc.update(_fields(record))
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        doc["exc_type"] = _exc_type_name(exc.type)
        doc["exc_message"] = str(exc.value)
        doc["exc_traceback"] = "".join(
            traceback.format_exception(exc.type, exc.value, exc.traceback)
        ).rstrip("\n")
    return doc


def _json_line(record: Record, redactor: Redacts) -> str:
    """The JSON line of a record, redacted value by value (so the line stays valid JSON).

    Most lines hold nothing to redact: the line is built once and scanned once; only when
    the scan finds a secret form or "bearer" is it built again with every value redacted.
    A value's JSON form is a substring of the line, so a clean line means clean values.
    """
    doc = record_to_dict(record)
    line = json.dumps(jsonable(doc), ensure_ascii=False, separators=(",", ":"))
    if redactor.may_match(line):
        line = json.dumps(jsonable(doc, redactor), ensure_ascii=False, separators=(",", ":"))
    return line.translate(_LINE_BREAKS)


def _text_format(record: Record) -> str:
    """The loguru format for text mode; fields go through ``extra`` so braces need no escaping."""
    extra = record["extra"]
    who = extra.get("bot_id") or "-"
    state = extra.get("state") or "-"
    fields = " ".join(
        f"{k}={json.dumps(jsonable(v), ensure_ascii=False)}" for k, v in _fields(record).items()
    )
    extra[f"{_INTERNAL_PREFIX}who"] = f"{who}/{state}"
    extra[f"{_INTERNAL_PREFIX}logger"] = extra.get("logger") or record["name"]
    extra[f"{_INTERNAL_PREFIX}fields"] = f"  {fields}" if fields else ""
    return (
        "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <8}</level> "
        "<cyan>{extra[_botd_who]}</cyan> {extra[_botd_logger]}: <level>{message}</level>"
        "<dim>{extra[_botd_fields]}</dim>\n{exception}"
    )


# --- setup ------------------------------------------------------------------------------


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LogOptions(TypedDict, total=False):
    """The options of :meth:`LogSetup.install`, for :func:`setup_logging`."""

    level: str | int
    fmt: LogFormat
    stream: TextIO | None
    secrets: Iterable[str]
    env_secrets: bool


class LogSetup:
    """What the process's entry point installs into loguru and stdlib logging, and owns.

    Loguru's logger and the stdlib root logger are process-wide, so one setup is installed
    at a time: :meth:`install` replaces (never adds to) what this or another setup installed,
    taking over what it must put back, and :meth:`close` puts that back. ``redactor`` holds
    the process's secrets; every line is also redacted with the secrets of the agent that
    wrote it (its :class:`AgentLogContext`): agents never share secrets through here.
    """

    #: What loguru and the root logger hold is process-wide, so are these two: the id of
    #: loguru's default stderr handler (0 until a close put it back), and the one installed.
    _loguru_default_id: ClassVar[int] = 0
    _installed: ClassVar[LogSetup | None] = None

    @classmethod
    def installed(cls) -> LogSetup | None:
        """The setup installed now, or None."""
        return cls._installed

    def __init__(self) -> None:
        self.redactor = Redactor()
        self._handler_id: int | None = None
        self._intercept: InterceptHandler | None = None
        self._root_level: int | None = None  # the root level before we changed it
        self._removed_default = False  # we removed loguru's default stderr handler

    def add_secret(self, value: str) -> None:
        """Register a secret: from now on it appears as ``***`` in every line. Empty is ignored."""
        self.redactor.add(value)

    def _clean(self) -> Redacts:
        ctx = _agent.get()
        return self.redactor.join(ctx.redactor if ctx is not None else None)

    def install(
        self,
        *,
        level: str | int = "INFO",
        fmt: LogFormat = "auto",
        stream: TextIO | None = None,
        secrets: Iterable[str] = (),
        env_secrets: bool = True,
    ) -> LogSetup:
        """Install the one sink; safe to call again (it replaces what the last call installed).

        Args:
            level: the lowest level written, loguru's names (``TRACE``..``CRITICAL``) or a number.
            fmt: ``json`` (one flat JSON object per line), ``text`` (one readable line, coloured
                only on a TTY) or ``auto`` (text on a TTY, JSON otherwise).
            stream: where lines go; ``sys.stdout`` (as it is now) by default.
            secrets: values replaced by ``***`` in every line; :meth:`add_secret` adds more later.
            env_secrets: also register the value of every ``*_TOKEN`` environment variable.

        Removes loguru's default stderr handler (and this object's previous sink), not sinks
        added by others. Adds an :class:`InterceptHandler` to the root stdlib logger once and
        sets the root level to ``level``. Raises ``ValueError`` for an unknown level or format.
        """
        if fmt not in ("auto", "json", "text"):
            raise ValueError(f"log format must be auto, json or text, not {fmt!r}")
        out = sys.stdout if stream is None else stream
        for secret in secrets:
            self.add_secret(secret)
        if env_secrets:
            for secret in secrets_in_env(os.environ):
                self.add_secret(secret)
        if isinstance(level, str):
            level = level.upper()
        root_level = stdlib_level(level)  # raises ValueError for an unknown name
        tty = _is_tty(out)
        text = fmt == "text" or (fmt == "auto" and tty)
        clean = self._clean

        def write_json(message: Message) -> None:
            out.write(_json_line(message.record, clean()) + "\n")
            out.flush()

        def write_text(message: Message) -> None:
            out.write(clean()(str(message)))
            out.flush()

        self._remove_sink()
        self._take_over(LogSetup._installed)
        LogSetup._installed = self
        try:
            logger.remove(LogSetup._loguru_default_id)  # gone already after the first setup
            self._removed_default = True
        except ValueError:
            pass
        logger.configure(patcher=_patch)
        if text:
            self._handler_id = logger.add(
                write_text,
                level=level,
                format=_text_format,
                colorize=tty,
                backtrace=False,
                diagnose=False,  # diagnose prints local variables: secrets
            )
        else:
            self._handler_id = logger.add(
                write_json, level=level, format="{message}", backtrace=False, diagnose=False
            )
        root = logging.getLogger()
        if not any(isinstance(h, InterceptHandler) for h in root.handlers):
            self._intercept = InterceptHandler()
            root.addHandler(self._intercept)
        if self._root_level is None:
            self._root_level = root.level
        root.setLevel(root_level)
        return self

    def _take_over(self, other: LogSetup | None) -> None:
        """Replace ``other``: remove its sink; what it must put back, this one puts back."""
        if other is None or other is self:
            return
        other._remove_sink()
        if self._intercept is None:
            self._intercept, other._intercept = other._intercept, None
        if self._root_level is None:
            self._root_level, other._root_level = other._root_level, None
        self._removed_default = self._removed_default or other._removed_default
        other._removed_default = False

    def _remove_sink(self) -> None:
        if self._handler_id is not None:
            with contextlib.suppress(ValueError):
                logger.remove(self._handler_id)
            self._handler_id = None

    def close(self) -> None:
        """Remove what :meth:`install` added: its sink and the root handler; put back the root
        logger's level and loguru's default stderr handler as they were before.

        Loguru then has no sink of ours; records are dropped unless someone else added one.
        For tests and for embedding; the daemon never needs it.
        """
        self._remove_sink()
        if LogSetup._installed is self:
            LogSetup._installed = None
        if self._intercept is not None:
            logging.getLogger().removeHandler(self._intercept)
            self._intercept = None
        if self._root_level is not None:
            logging.getLogger().setLevel(self._root_level)
            self._root_level = None
        if self._removed_default:
            LogSetup._loguru_default_id = logger.add(sys.stderr)  # as before install
            self._removed_default = False


def setup_logging(**options: Unpack[LogOptions]) -> LogSetup:
    """A new :class:`LogSetup`, installed (see :meth:`LogSetup.install` for the options)."""
    return LogSetup().install(**options)


_LEVEL_NO = {
    "TRACE": 5,
    "DEBUG": 10,
    "INFO": 20,
    "SUCCESS": 25,
    "WARNING": 30,
    "ERROR": 40,
    "CRITICAL": 50,
}


def enabled(level: str) -> bool:
    """Whether some loguru sink takes records at ``level`` (a standard level name).

    For hot paths (a line per job): skip building a record that every sink would drop.
    Reads loguru's minimum level over all its sinks; True if that cannot be read.
    """
    core = getattr(logger, "_core", None)
    min_level = getattr(core, "min_level", 0)
    return _LEVEL_NO.get(level, 0) >= min_level if isinstance(min_level, int) else True


def emit(
    event: Event,
    msg: str,
    level: str | int = "INFO",
    *,
    exc: BaseException | None = None,
    **fields: Any,
) -> None:
    """Log ``msg`` with a stable ``event`` name and ``fields`` (flattened into the JSON line).

    ``msg`` is not a format string: braces are written as they are. ``exc`` attaches an
    exception (``exc_type``, ``exc_message``, ``exc_traceback``). Never raises for a bad
    field value: values that are not JSON become strings.
    """
    logger.opt(depth=1, exception=exc).bind(event=str(event), **fields).log(level, msg)
