"""``--chaos``: one outage of the demo's server, timed by the jobs' progress.

Once :data:`CHAOS_AT` of the jobs reached a final status, the server is stopped for
``--chaos-down`` seconds, then started again on the same port with the same database.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio
from trio_util import AsyncValue

from .embedded_server import EmbeddedServer
from .options import DemoOptions

__all__ = ["CHAOS_AT", "Chaos"]

#: The chaos outage starts once this share of the jobs reached a final status.
CHAOS_AT = 1 / 3


class Chaos:
    """The outage of ``server``; ``outage`` is (down at, back at), in seconds since the start.

    Args:
      note: says what happens (the demo's notes); elapsed: seconds since the demo started.
    """

    def __init__(
        self,
        options: DemoOptions,
        server: EmbeddedServer,
        note: Callable[[str], None],
        elapsed: Callable[[], float],
    ) -> None:
        self.options = options
        self.server = server
        self.outage: tuple[float, float] | None = None
        #: Set when the outage is over, or will not happen (without ``--chaos``).
        self.done = trio.Event()
        self._note = note
        self._elapsed = elapsed
        self._down_at: float | None = None
        if not options.chaos:
            self.done.set()

    async def run(self, final: AsyncValue[int], end_run: Callable[[str], None]) -> None:
        """Wait for ``final`` (jobs in a final status), stop the server, start it again.

        Calls ``end_run("server")`` when the server cannot bind its port again.
        """
        o = self.options
        try:
            await final.wait_value(lambda n: n >= math.ceil(o.jobs * CHAOS_AT))
            self._note(f"chaos: stopping the server for {o.chaos_down:g}s")
            down_at = self._down_at = self._elapsed()
            await self.server.stop()
            await trio.sleep(o.chaos_down)
            if await self._bring_back():
                self.outage = (down_at, self._elapsed())
                self._note("chaos: the server is back on the same port, same database")
            else:
                end_run("server")
        finally:
            self.done.set()

    async def end(self) -> None:
        """After a run that was interrupted during the outage: the bots need the server to drain."""
        back = self.server.up or await self._bring_back()
        if back and self.outage is None and self._down_at is not None:
            self.outage = (self._down_at, self._elapsed())
            self._note("the server is back (the outage was cut short)")

    async def _bring_back(self) -> bool:
        """Start the server again on its port; False (and a note) if that keeps failing."""
        try:
            await self.server.restart()
        except trio.TooSlowError:
            config = self.server.config
            self._note(f"the server could not bind {config.host}:{config.port} again")
            return False
        return True
