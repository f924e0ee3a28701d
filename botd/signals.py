"""Signals: the first SIGTERM/SIGINT drains, the second skips the drain, the third exits now."""

from __future__ import annotations

import signal
from collections.abc import Callable

import trio
from loguru import logger

from .events import Event

__all__ = ["watch_signals"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def watch_signals(
    on_signal: Callable[[int, str], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``on_signal(count, name)`` for each SIGTERM/SIGINT received.

    This function never returns unless cancelled. It must run in the main thread.
    """
    with trio.open_signal_receiver(*SIGNALS) as signals:
        task_status.started()
        count = 0
        async for signum in signals:
            count += 1
            name = signal.Signals(signum).name
            logger.bind(event=Event.SIGNAL, signal=name, count=count).info("received {}", name)
            on_signal(count, name)
