"""The demo's reference server: served in the demo's Trio run, stopped, and started again on
the same port with the same database (``--chaos``)."""

from __future__ import annotations

import attrs
import httpx
import trio

from ..server.config import ServerConfig
from ..server.run import serve

__all__ = ["RESTART_DEADLINE_S", "EmbeddedServer"]

#: How long a restart keeps trying to bind the same port again.
RESTART_DEADLINE_S = 10.0


class EmbeddedServer:
    """The reference server in this Trio run: started, stopped and started again on its port.

    ``state`` is what the view shows: ``starting`` (until a start or restart succeeds), ``up``,
    or ``down`` (from a stop, or a restart that gave up).
    """

    def __init__(self, config: ServerConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.url: str | None = None
        self.state = "starting"
        self._nursery = nursery
        self._stop: trio.Event | None = None
        self._done: trio.Event | None = None

    @property
    def up(self) -> bool:
        """True from a start until a stop is asked for."""
        return self._stop is not None and not self._stop.is_set()

    async def start(self) -> str:
        """Serve; return the URL. The first start fixes the port that restarts reuse.

        Errors: OSError (in an exception group) when the port cannot be bound.
        """
        stop, done = trio.Event(), trio.Event()
        url: str = await self._nursery.start(self._serve, stop, done)
        self._stop, self._done = stop, done
        self.state = "up"
        if self.url is None:
            port = httpx.URL(url).port
            if port is not None:
                self.config = attrs.evolve(self.config, port=port)
            self.url = url
        return url

    async def restart(self, deadline_s: float = RESTART_DEADLINE_S) -> None:
        """Start again on the same port, retrying while the old socket lingers.

        Errors: trio.TooSlowError when the port stayed taken for ``deadline_s`` (then ``down``).
        """
        self.state = "starting"
        try:
            with trio.fail_after(deadline_s):
                while True:
                    try:
                        await self.start()
                        return
                    except* OSError:
                        pass
                    await trio.sleep(0.2)
        except trio.TooSlowError:
            self.state = "down"
            raise

    async def stop(self) -> None:
        """Stop (long polls answer at once, in-flight requests get hypercorn's grace)."""
        self.state = "down"
        if self._stop is not None and self._done is not None:
            self._stop.set()
            await self._done.wait()

    async def _serve(
        self, stop: trio.Event, done: trio.Event, *, task_status: trio.TaskStatus[str]
    ) -> None:
        try:
            await serve(self.config, shutdown=stop, task_status=task_status)
        finally:
            done.set()
