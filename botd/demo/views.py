"""What the demo shows while it runs: a :class:`Snapshot`, drawn by :class:`LiveView` (``rich``,
redrawn in place on a terminal) or by :class:`PlainView` (progress lines, for a pipe or a log).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Protocol

import attrs

from ..lifecycle import State
from ..models import FINAL_JOB_STATUSES

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = [
    "PLAIN_INTERVAL_S",
    "STATUS_ORDER",
    "BotRow",
    "LiveView",
    "PlainView",
    "Snapshot",
    "View",
]

#: How often the plain view prints a progress line.
PLAIN_INTERVAL_S = 1.0

#: The job statuses in the order the views and the summary show them (the final ones first).
STATUS_ORDER = ("succeeded", "failed", "dead", "cancelled", "leased", "queued")
_STATUS_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "dead": "magenta",
    "cancelled": "bright_black",
    "leased": "yellow",
    "queued": "blue",
    "unsubmitted": "bright_black",
}
_STATE_STYLE = {
    State.INITIALIZING.value: "bright_black",
    State.REGISTERING.value: "yellow",
    State.HEALTH_CHECK.value: "yellow",
    State.READY.value: "green",
    State.PROCESSING.value: "cyan",
    State.ERROR.value: "bold red",
    State.SHUTTING_DOWN.value: "magenta",
    State.STOPPED.value: "bright_black",
}
_BREAKER_STYLE = {"closed": "green", "open": "bold red", "half_open": "yellow"}


@attrs.frozen
class BotRow:
    bot_id: str
    state: str
    running: tuple[str, ...]  # "job_id#attempt" of each running job
    processed: int
    errors: int
    breakers: tuple[tuple[str, str], ...]  # (name, state)


@attrs.frozen
class Snapshot:
    elapsed: float
    jobs: int
    submitted: int
    counts: Mapping[str, int]
    server: str  # "up", "down" or "starting"
    bots: tuple[BotRow, ...]
    notes: tuple[str, ...]


class View(Protocol):
    """Where the demo shows its progress: :class:`LiveView` or :class:`PlainView`."""

    def show(self, snap: Snapshot) -> None: ...

    def note(self, elapsed: float, text: str) -> None: ...

    def close(self) -> None: ...


class PlainView:
    """Plain progress lines (for a pipe, a log or a test): one per ``interval``, and notes."""

    def __init__(self, stream: IO[str] | None = None, *, interval: float = PLAIN_INTERVAL_S):
        self._out = stream if stream is not None else sys.stdout
        self._interval = interval
        self._next = 0.0

    def _write(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def show(self, snap: Snapshot) -> None:
        if snap.elapsed < self._next:
            return
        self._next = snap.elapsed + self._interval
        final = sum(n for s, n in snap.counts.items() if s in FINAL_JOB_STATUSES)
        counts = " ".join(f"{s} {snap.counts.get(s, 0)}" for s in STATUS_ORDER)
        bots = ", ".join(
            f"{b.bot_id} {b.state}"
            + (f" ({len(b.running)} running)" if b.running else "")
            + "".join(f" {name}:{state}" for name, state in b.breakers if state != "closed")
            for b in snap.bots
        )
        self._write(
            f"[{snap.elapsed:6.1f}s] server {snap.server:<8} jobs {final}/{snap.jobs} final"
            f" (submitted {snap.submitted}): {counts} | {bots}"
        )

    def note(self, elapsed: float, text: str) -> None:
        self._write(f"[{elapsed:6.1f}s] {text}")

    def close(self) -> None:
        pass


class LiveView:
    """A ``rich`` live display: a bar of the jobs by status and a row per bot.

    ``rich`` is imported here, not at module level, so that only the demo pays for it.
    The display is redrawn from the Trio task that calls :meth:`show` (no refresh thread).
    """

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = console if console is not None else Console()
        self._live = Live(
            console=self._console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def show(self, snap: Snapshot) -> None:
        self._live.update(self._render(snap), refresh=True)

    def note(self, elapsed: float, text: str) -> None:
        pass  # notes are part of the snapshot

    def close(self) -> None:
        self._live.stop()

    def _render(self, snap: Snapshot) -> RenderableType:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        width = max(20, min(80, self._console.width - 10))
        final = sum(n for s, n in snap.counts.items() if s in FINAL_JOB_STATUSES)
        bar = Text()
        parts = [(s, snap.counts.get(s, 0)) for s in STATUS_ORDER]
        parts.append(("unsubmitted", max(0, snap.jobs - snap.submitted)))
        used = 0
        for i, (status, n) in enumerate(parts):
            cells = round(width * n / snap.jobs) if i < len(parts) - 1 else width - used
            cells = max(0, min(cells, width - used))
            used += cells
            bar.append("█" * cells, style=_STATUS_STYLE[status])
        bar.append(f" {final}/{snap.jobs} ended")
        legend = Text("  ")
        for status, n in parts:
            if status == "unsubmitted" and not n:
                continue
            legend.append("■ ", style=_STATUS_STYLE[status])
            legend.append(f"{status} {n}   ")

        table = Table(expand=False, box=None, padding=(0, 2))
        for column in ("bot", "state", "running", "done", "errors", "breakers"):
            table.add_column(column)
        for b in snap.bots:
            running = Text(
                ", ".join(b.running[:2]) + (f" +{len(b.running) - 2}" if len(b.running) > 2 else "")
            )
            breakers = Text()
            for name, state in b.breakers:
                breakers.append(f"{name} ", style=_BREAKER_STYLE.get(state, ""))
            table.add_row(
                b.bot_id,
                Text(b.state, style=_STATE_STYLE.get(b.state, "")),
                running,
                str(b.processed),
                Text(str(b.errors), style="red" if b.errors else ""),
                breakers,
            )
        server_style = {"up": "green", "down": "bold red"}.get(snap.server, "yellow")
        title = Text.assemble(
            "botd demo  ",
            (f"{snap.elapsed:5.1f}s", "bold"),
            "  server ",
            (snap.server, server_style),
        )
        caption = Text(
            "breakers: green closed, red open, yellow half-open   Ctrl-C drains",
            style="bright_black",
        )
        notes = Text("\n".join(snap.notes[-4:]), style="italic") if snap.notes else Text("")
        return Panel(Group(bar, legend, Text(""), table, Text(""), notes, caption), title=title)
