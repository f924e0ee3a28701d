"""The ``python`` handler: an async function, ``BOT_PYTHON_HANDLER=module:function``, per job."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ConfigError
from ..models import ClaimedJob

__all__ = ["PythonHandler"]


def _python_config_error(spec: str, problem: str) -> ConfigError:
    return ConfigError(
        f"BOT_PYTHON_HANDLER={spec!r}: {problem}; set it to 'package.module:function', "
        "an async function that takes the job and returns a JSON-able result"
    )


def _is_async_callable(obj: Any) -> bool:
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(obj, "__call__", None)  # noqa: B004 -- an instance with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


class PythonHandler:
    """Calls ``module:function``, an async callable that takes the job, for each job.

    The function is imported at construction; a bad spec raises ConfigError naming
    BOT_PYTHON_HANDLER. The call ends when the function returns; its result is returned as
    it is (:func:`~botd.handlers.running.run_job` checks it once: a result that is not JSON,
    or too large, fails the job for good). The function's exceptions pass through unchanged
    (PermanentError means: do not retry).
    """

    def __init__(self, spec: str) -> None:
        module_name, sep, attr_path = spec.partition(":")
        if not sep or not module_name.strip() or not attr_path.strip():
            raise _python_config_error(spec, "expected 'module:function'")
        try:
            target: Any = importlib.import_module(module_name.strip())
        except Exception as exc:
            raise _python_config_error(
                spec, f"cannot import {module_name!r} ({type(exc).__name__}: {exc})"
            ) from None
        for part in attr_path.strip().split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise _python_config_error(spec, f"{module_name} has no {attr_path!r}") from None
        if not callable(target):
            raise _python_config_error(spec, f"{attr_path!r} is not callable")
        if not _is_async_callable(target):
            raise _python_config_error(spec, f"{attr_path!r} is not an async function")
        self.spec = spec
        self._function: Callable[[ClaimedJob], Awaitable[Any]] = target

    async def __call__(self, job: ClaimedJob) -> Any:
        return await self._function(job)
