"""The factory of job handlers: :func:`build_handler` builds the one ``BOT_HANDLER`` names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError
from .exec import DEFAULT_KILL_GRACE, ExecHandler
from .process_groups import GROUPS_DIR
from .python import PythonHandler
from .running import Handler
from .simulate import SimulateHandler

__all__ = ["HANDLER_NAMES", "build_handler"]

HANDLER_NAMES: tuple[str, ...] = ("simulate", "exec", "python")


def build_handler(
    name: str,
    *,
    processing_duration_ms: float = 2000,
    failure_rate: float = 0.0,
    exec_command: Sequence[str] = (),
    exec_shell: bool = False,
    exec_kill_grace: float = DEFAULT_KILL_GRACE,
    python_handler: str = "",
    state_dir: Path | None = None,
) -> Handler:
    """Build the handler that ``BOT_HANDLER`` names; ConfigError when it or its settings are bad.

    With ``state_dir``, the exec handler records its running jobs' process groups there.
    """
    if name == "simulate":
        return SimulateHandler(processing_duration_ms, failure_rate)
    if name == "exec":
        groups = None if state_dir is None else Path(state_dir) / GROUPS_DIR
        return ExecHandler(
            exec_command, shell=exec_shell, kill_grace=exec_kill_grace, groups_dir=groups
        )
    if name == "python":
        return PythonHandler(python_handler)
    raise ConfigError(
        f"BOT_HANDLER: {name!r} is not a handler; use one of {', '.join(HANDLER_NAMES)}"
    )
