"""Stdlib logging routed into botd's one loguru sink: httpx, hypercorn, trio, anything.

:class:`InterceptHandler` sits on the root logger (:class:`botd.logs.LogSetup` adds it) and
re-emits every stdlib record through loguru, with the stdlib logger's name as ``logger`` and
its ``extra=`` attributes as fields. :func:`hypercorn_config_loggers` gives hypercorn loggers
that propagate there instead of the stream handlers it would build itself.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from loguru import logger

__all__ = [
    "InterceptHandler",
    "configure_hypercorn_logging",
    "hypercorn_config_loggers",
    "stdlib_level",
]

#: Attributes every stdlib LogRecord has; anything else on a record came from ``extra=``.
_STD_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_HYPERCORN_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"


class InterceptHandler(logging.Handler):
    """A stdlib handler that re-emits every record through loguru, keeping the logger name.

    Errors while emitting go to :meth:`logging.Handler.handleError`, like any stdlib handler.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int
            try:
                level = logger.level(record.levelname).name
            except ValueError:
                level = record.levelno
            frame, depth = inspect.currentframe(), 0
            while frame is not None and (
                depth == 0 or frame.f_code.co_filename == logging.__file__
            ):
                frame = frame.f_back
                depth += 1
            fields = {k: v for k, v in vars(record).items() if k not in _STD_RECORD_ATTRS}
            fields["logger"] = record.name
            logger.opt(depth=depth, exception=record.exc_info).bind(**fields).log(
                level, record.getMessage()
            )
        except Exception:
            self.handleError(record)


def stdlib_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    no = logger.level(level.upper()).no
    return max(no, 1)  # loguru TRACE (5) still means "everything" to stdlib


def hypercorn_config_loggers(*, access_log: bool = True) -> dict[str, logging.Logger | None]:
    """Return the ``errorlog`` and ``accesslog`` values for a hypercorn ``Config``.

    Hypercorn uses a :class:`logging.Logger` given there as is, instead of building its own
    stderr/stdout handlers; ours propagate to the root logger, hence into our sink. Handlers
    that an earlier hypercorn ``Config`` installed on those loggers (a stream handler with
    hypercorn's format) are removed and ``propagate`` is set again, so no hypercorn line
    bypasses the sink. ``access_log=False`` turns the access log off (``None``).
    """
    loggers: dict[str, logging.Logger | None] = {}
    for key, name in (("errorlog", "hypercorn.error"), ("accesslog", "hypercorn.access")):
        lg = logging.getLogger(name)
        lg.handlers = [h for h in lg.handlers if not _is_hypercorn_handler(h)]
        lg.propagate = True
        loggers[key] = lg
    if not access_log:
        loggers["accesslog"] = None
    return loggers


def configure_hypercorn_logging(config: Any, *, access_log: bool = True) -> None:
    """Set ``config.errorlog`` / ``config.accesslog`` from :func:`hypercorn_config_loggers`."""
    for key, value in hypercorn_config_loggers(access_log=access_log).items():
        setattr(config, key, value)


def _is_hypercorn_handler(handler: logging.Handler) -> bool:
    fmt = handler.formatter._fmt if handler.formatter is not None else None
    return isinstance(handler, logging.StreamHandler) and fmt == _HYPERCORN_FORMAT
