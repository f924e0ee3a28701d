"""systemd's ``NOTIFY_SOCKET`` protocol: tell the service manager how the bot is doing.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for an
abstract socket) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``. Each message is
one ``AF_UNIX`` ``SOCK_DGRAM`` datagram of newline-separated ``KEY=value`` lines:

- ``READY=1`` the first time the bot reaches READY (the unit becomes "active");
- ``STATUS=<state>`` on every lifecycle transition (shown by ``systemctl status``);
- ``STOPPING=1`` when the drain starts;
- ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` from :meth:`Notifier.run_watchdog`.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op, so the daemon calls these
unconditionally. A send never blocks (the socket is non-blocking and the datagram is tiny) and
never raises: a failure is logged once per kind and the bot carries on, because losing a status
line must never take a worker down.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from enum import Enum

import trio
from loguru import logger

from .events import Event
from .lifecycle import State

__all__ = ["Notifier"]

_READY_STATE = State.READY.value
_DRAIN_STATE = State.SHUTTING_DOWN.value


def _state_name(state: object) -> str:
    """``"ready"`` for ``"ready"`` or for an enum member whose value is ``"ready"``."""
    if isinstance(state, Enum):
        return str(state.value)
    return str(state)


def _socket_address(value: str) -> str:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value (``@name`` is an abstract socket)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


class Notifier:
    """Sends systemd notifications for one bot; a no-op when ``address`` is ``None``.

    Build it with :meth:`from_env`. The socket is opened on the first send and closed by
    :meth:`close`. Errors: none raised; ``OSError`` from the socket is logged (event
    ``sd_notify_failed``) and the call returns ``False``.
    """

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._ready_sent = False
        self._failed_once = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``environ``.

        The watchdog is off when ``WATCHDOG_USEC`` is missing, not a positive integer, or when
        ``WATCHDOG_PID`` names another process (systemd meant it for our parent). A bad value is
        logged, never raised: the watchdog is an extra, not a reason to refuse to start.
        """
        address = environ.get("NOTIFY_SOCKET") or None
        watchdog_usec: int | None = None
        raw_usec = environ.get("WATCHDOG_USEC")
        raw_pid = environ.get("WATCHDOG_PID")
        if address is not None and raw_usec:
            try:
                watchdog_usec = int(raw_usec)
                if watchdog_usec <= 0:
                    raise ValueError(raw_usec)
                if raw_pid and int(raw_pid) != os.getpid():
                    watchdog_usec = None
            except ValueError:
                logger.bind(event=Event.SD_NOTIFY_BAD_ENV).warning(
                    "ignoring WATCHDOG_USEC={!r} / WATCHDOG_PID={!r}: not positive integers",
                    raw_usec,
                    raw_pid,
                )
                watchdog_usec = None
        return cls(address, watchdog_usec=watchdog_usec)

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens (``NOTIFY_SOCKET`` set)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or ``None`` if off."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram of ``KEY=value`` lines; True if it was sent.

        Newlines in a value are replaced by spaces, as one line is one field. Returns False
        without sending when notifications are off, and False after logging on an ``OSError``.
        """
        if self._address is None or not fields:
            return False
        payload = "\n".join(
            f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()
        )
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(payload.encode(), _socket_address(self._address))
        except OSError as exc:
            log = logger.bind(event=Event.SD_NOTIFY_FAILED, error_type=type(exc).__name__)
            if self._failed_once:
                log.debug("sd_notify to {} failed: {}", self._address, exc)
            else:
                log.warning("sd_notify to {} failed: {}", self._address, exc)
                self._failed_once = True
            return False
        return True

    def ready(self) -> bool:
        """Send ``READY=1``: the unit is up."""
        return self.notify(READY=1)

    def status(self, text: str) -> bool:
        """Send ``STATUS=<text>`` for ``systemctl status``."""
        return self.notify(STATUS=text)

    def stopping(self) -> bool:
        """Send ``STOPPING=1``: the bot is draining."""
        return self.notify(STOPPING=1)

    def watchdog(self) -> bool:
        """Send ``WATCHDOG=1``: the event loop is alive."""
        return self.notify(WATCHDOG=1)

    def on_transition(self, from_state: object, to_state: object) -> None:
        """A lifecycle listener: ``STATUS`` on every transition, ``READY`` once, ``STOPPING``.

        States are lowercase strings (``"ready"``) or enum members with those values.
        ``READY=1`` goes with the first transition into ``ready`` only: a recovery through
        ERROR back to READY only updates the status. ``STOPPING=1`` goes with
        ``shutting_down``. Never raises.
        """
        del from_state  # the status names the state we are in
        to_name = _state_name(to_state)
        fields: dict[str, str | int] = {}
        if to_name == _READY_STATE and not self._ready_sent:
            fields["READY"] = 1
            self._ready_sent = True
        if to_name == _DRAIN_STATE:
            fields["STOPPING"] = 1
        fields["STATUS"] = to_name
        self.notify(**fields)

    async def run_watchdog(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Ping ``WATCHDOG=1`` every :meth:`watchdog_interval` seconds on Trio's clock.

        Returns at once when there is no watchdog; otherwise it never returns unless
        cancelled. Because it runs in the event loop, a stuck loop stops the pings and systemd
        restarts the bot. Send errors are logged by :meth:`notify` and the loop goes on.
        """
        interval = self.watchdog_interval()
        task_status.started()
        if interval is None:
            return
        while True:
            self.watchdog()
            await trio.sleep(interval)

    def close(self) -> None:
        """Close the socket (if one was opened). Later sends reopen it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
