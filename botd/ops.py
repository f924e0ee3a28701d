"""The ops endpoint: ``/healthz``, ``/readyz``, ``/metrics`` and ``/status`` for one bot.

Served by hypercorn's trio worker inside the agent's nursery (:class:`OpsServer`); the routes
are a small Starlette app (:func:`build_app`) that reads a :class:`StatusSource`, so it never
imports the agent. The listening socket is bound first (a taken port fails at once); hypercorn
and Starlette are imported in a worker thread after that, while the bot registers, so the
~0.1 s they take to import is not spent before the bot can start (requests that come
earlier wait in the listen backlog). Routes:

- ``GET /healthz``: liveness. 200 ``{"status": "ok"}`` while the event loop is responsive
  (:meth:`StatusSource.loop_lag` below the threshold) and the bot has not stopped; else 503
  ``{"status": "unhealthy", "reason": ...}``. It never depends on the main server.
- ``GET /readyz``: 200 ``{"ready": true, "state": ...}`` in ``ready`` or ``processing``, else
  503 ``{"ready": false, "state": ...}``.
- ``GET /metrics``: the Prometheus text exposition of the bot's registry.
- ``GET /status``: the status document (:func:`build_status_document` has its keys).

Every body passes through the bot's :class:`~botd.redaction.Redactor`, so a secret of the bot
never appears on the page, whatever the source put in it. Hypercorn's loggers are routed into
our log sink (:func:`botd.logs.hypercorn_config_loggers`): hypercorn writes nothing to stderr.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

import trio
from loguru import logger

from .errors import ConfigError
from .events import Event
from .lifecycle import State
from .logs import configure_hypercorn_logging
from .redaction import Redactor, redact_config, redact_value
from .timestamps import rfc3339, rfc3339_of

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = [
    "DEFAULT_LAG_THRESHOLD_S",
    "DEFAULT_OPS_ADDR",
    "READY_STATES",
    "BreakerView",
    "Canary",
    "OpsServer",
    "StatusSource",
    "TransitionView",
    "build_app",
    "build_status_document",
]

DEFAULT_OPS_ADDR = "127.0.0.1:9317"
#: ``/healthz`` fails once a turn of the event loop has run this long (:class:`Canary`).
DEFAULT_LAG_THRESHOLD_S = 5.0
READY_STATES = frozenset({State.READY.value, State.PROCESSING.value})
DEFAULT_RECENT_TRANSITIONS = 20


class StatusSource(Protocol):
    """What the ops endpoint reads from the bot (the agent implements it)."""

    @property
    def state(self) -> str:
        """The current lifecycle state, lowercase (``"ready"``)."""
        ...

    @property
    def stopped(self) -> bool:
        """True once the bot has stopped for good: ``/healthz`` is then 503."""
        ...

    def status_document(self) -> dict[str, Any]:
        """The ``/status`` document, as :func:`build_status_document` builds it."""
        ...

    def loop_lag(self) -> float:
        """Seconds since the event-loop canary last ticked (:meth:`Canary.loop_lag`)."""
        ...


class BreakerView(Protocol):
    """What the status document reads from a circuit breaker."""

    @property
    def state(self) -> str: ...

    @property
    def failure_count(self) -> int: ...


class TransitionView(Protocol):
    """What the status document reads from a lifecycle transition.

    ``at`` is Trio's clock; ``wall_time`` is for display (Unix seconds or an aware datetime);
    ``duration_s`` is how long the bot was in ``from_state``.
    """

    @property
    def from_state(self) -> str: ...

    @property
    def to_state(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def at(self) -> float: ...

    @property
    def wall_time(self) -> Any: ...

    @property
    def duration_s(self) -> float | None: ...


# --- the status document ----------------------------------------------------------------


def _rfc3339(wall_time: Any) -> str | None:
    if wall_time is None:
        return None
    if isinstance(wall_time, int | float):
        return rfc3339(wall_time, "microseconds")
    if not isinstance(wall_time, datetime):
        return str(wall_time)
    return rfc3339_of(wall_time, "microseconds")


def build_status_document(
    *,
    bot_id: str,
    state: str,
    version: str,
    uptime_seconds: float,
    startup_attempts: int,
    total_jobs_processed: int,
    circuit_breakers: Mapping[str, BreakerView],
    jobs_in_flight: int,
    outbox_pending: int,
    transitions: Iterable[TransitionView],
    config: Mapping[str, Any],
    recent: int = DEFAULT_RECENT_TRANSITIONS,
) -> dict[str, Any]:
    """Build the ``/status`` document: the seed's metrics document and more.

    Keys: ``bot_id``, ``state``, ``uptime_seconds``, ``startup_attempts``,
    ``total_jobs_processed``, ``circuit_breakers`` (``{name: {"state", "failure_count"}}``,
    the seed's exact keys), ``jobs_in_flight``, ``outbox_pending``, ``transitions`` (the last
    ``recent``, oldest first: ``{"from_state", "to_state", "reason", "at", "duration_s"}``
    with ``at`` an RFC 3339 UTC wall time), ``config`` (through
    :func:`botd.redaction.redact_config`, the one redaction of a config on its way here) and
    ``version``. Pure: no I/O, never raises for well-typed input.
    """
    last = list(transitions)[-recent:] if recent > 0 else []
    return {
        "bot_id": bot_id,
        "state": str(state),
        "uptime_seconds": round(float(uptime_seconds), 3),
        "startup_attempts": int(startup_attempts),
        "total_jobs_processed": int(total_jobs_processed),
        "circuit_breakers": {
            name: {"state": str(b.state), "failure_count": int(b.failure_count)}
            for name, b in circuit_breakers.items()
        },
        "jobs_in_flight": int(jobs_in_flight),
        "outbox_pending": int(outbox_pending),
        "transitions": [
            {
                "from_state": str(t.from_state),
                "to_state": str(t.to_state),
                "reason": t.reason,
                "at": _rfc3339(t.wall_time),
                "duration_s": None if t.duration_s is None else round(t.duration_s, 6),
            }
            for t in last
        ],
        "config": redact_config(config),
        "version": version,
    }


# --- the canary -------------------------------------------------------------------------


class Canary(trio.abc.Instrument):
    """Watches the event loop's turns so that ``/healthz`` can tell a stuck event loop.

    A Trio instrument, not a task that ticks: the loop marks the start of each turn (it comes
    back from waiting for I/O and timers) and its end (it waits again), so an idle bot does not
    wake up for it. A turn that runs longer than ``interval + warn_after`` seconds (a task that
    blocks the loop, or more runnable work than the loop gets through in that time) is logged
    as "Event loop blocked or overloaded: delay=..." (event ``event_loop_blocked``) when it
    ends: every block of ``interval + warn_after`` seconds or more is reported, as when a tick
    of ``interval`` came ``warn_after`` seconds late. :meth:`loop_lag` is how long the current
    turn has run. Turns are timed on the monotonic clock, not Trio's: a mock clock's jump is
    not a block. :meth:`run` installs the instrument and removes it when cancelled; it never
    returns otherwise and raises nothing.
    """

    def __init__(self, *, interval: float = 1.0, warn_after: float = 1.0) -> None:
        if interval <= 0 or warn_after < 0:
            raise ValueError("canary interval must be > 0 and warn_after >= 0")
        self.interval = interval
        self.warn_after = warn_after
        self._turn_started: float | None = None

    def loop_lag(self) -> float:
        """Seconds the current turn of the loop has run (0 before :meth:`run` started)."""
        if self._turn_started is None:
            return 0.0
        return max(0.0, time.monotonic() - self._turn_started)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the loop's turns until cancelled; see the class docstring."""
        self._turn_started = time.monotonic()
        trio.lowlevel.add_instrument(self)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            with contextlib.suppress(KeyError):  # Trio drops an instrument whose hook raised
                trio.lowlevel.remove_instrument(self)

    def after_io_wait(self, timeout: float) -> None:
        self._turn_started = time.monotonic()

    def before_io_wait(self, timeout: float) -> None:
        started = self._turn_started
        if started is None:
            return
        took = time.monotonic() - started
        if took > self.interval + self.warn_after:
            logger.bind(event=Event.EVENT_LOOP_BLOCKED, delay_s=round(took, 3)).warning(
                f"Event loop blocked or overloaded: delay={took:.3f}s"
            )


# --- the app ----------------------------------------------------------------------------


def _json(doc: Mapping[str, Any], redactor: Redactor, status_code: int = 200) -> Response:
    from starlette.responses import Response

    body = json.dumps(redact_value(doc, redactor), ensure_ascii=False)
    return Response(body, status_code=status_code, media_type="application/json")


def build_app(
    source: StatusSource,
    metrics_render: Callable[[], tuple[bytes, str]],
    *,
    lag_threshold: float = DEFAULT_LAG_THRESHOLD_S,
    redactor: Redactor | None = None,
) -> Starlette:
    """Return the Starlette app of the ops endpoint (see the module docstring for the routes).

    Every body passes through ``redactor`` (a bare one, which still hides ``Bearer`` tokens,
    when None). An exception in ``source`` or ``metrics_render`` becomes a 500 and is logged
    by the server.
    """
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    clean = redactor if redactor is not None else Redactor()

    def reply(doc: Mapping[str, Any], status_code: int = 200) -> Response:
        return _json(doc, clean, status_code)

    async def healthz(request: Request) -> Response:
        if source.stopped:
            return reply({"status": "unhealthy", "reason": "stopped"}, 503)
        lag = source.loop_lag()
        if lag >= lag_threshold:
            reason = f"event loop lag {lag:.1f}s >= {lag_threshold:.1f}s"
            return reply({"status": "unhealthy", "reason": reason}, 503)
        return reply({"status": "ok"})

    async def readyz(request: Request) -> Response:
        state = str(source.state)
        ready = state in READY_STATES
        return reply({"ready": ready, "state": state}, 200 if ready else 503)

    async def metrics(request: Request) -> Response:
        # The process collector reads /proc: do it off the event loop.
        body, content_type = await trio.to_thread.run_sync(metrics_render)
        body = clean(body.decode("utf-8")).encode("utf-8")
        return Response(body, headers={"content-type": content_type})

    async def status(request: Request) -> Response:
        return reply(source.status_document())

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/status", status, methods=["GET"]),
        ]
    )


def _load_server() -> tuple[Any, Any, Any, Any]:
    """Import hypercorn's trio worker and Starlette (in a worker thread: see OpsServer)."""
    import starlette.applications
    import starlette.responses
    import starlette.routing  # noqa: F401 - imported here, off the event loop
    from hypercorn.config import Config, Sockets
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    return Config, Sockets, worker_serve, wrap_app


def _listen(addr: str) -> tuple[socket.socket, str]:
    """A listening TCP socket on ``addr`` (``host:port``, ``[v6]:port``) and its ``host:port``.

    Made as hypercorn makes its own (TCP_NODELAY, SO_REUSEADDR), but not inheritable: exec
    jobs must not hold the ops port. Raises OSError.
    """
    bare = addr.replace("[", "").replace("]", "")
    host, _, port = bare.rpartition(":")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(100)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    name = sock.getsockname()
    bound = f"[{name[0]}]:{name[1]}" if family == socket.AF_INET6 else f"{name[0]}:{name[1]}"
    return sock, bound


class OpsServer:
    """The ops endpoint of one bot on ``addr`` (``host:port``; port 0 picks a free one).

    Args:
        addr: where to listen, e.g. ``127.0.0.1:9317`` or ``[::1]:0``.
        source: the bot's :class:`StatusSource`.
        metrics_render: returns ``(body, content_type)``, e.g. ``BotMetrics.render``.
        lag_threshold: ``/healthz`` fails when the loop lag reaches this many seconds.
        redactor: the bot's secrets, hidden from every body.
        access_log: log every request (through our sink). Off by default: probes and
            scrapes would flood the log.
    """

    def __init__(
        self,
        addr: str,
        source: StatusSource,
        metrics_render: Callable[[], tuple[bytes, str]],
        *,
        lag_threshold: float = DEFAULT_LAG_THRESHOLD_S,
        access_log: bool = False,
        graceful_timeout: float = 1.0,
        redactor: Redactor | None = None,
    ) -> None:
        self.redactor = redactor if redactor is not None else Redactor()
        self.addr = addr
        self.source = source
        self.metrics_render = metrics_render
        self.lag_threshold = lag_threshold
        self.access_log = access_log
        self.graceful_timeout = graceful_timeout
        self.bound: str | None = None
        self._stop = trio.Event()

    def stop(self) -> None:
        """Ask :meth:`run` to close gracefully (in-flight requests get ``graceful_timeout``)."""
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or :meth:`stop`; ``task_status.started("host:port")`` once bound.

        Errors: :class:`~botd.errors.ConfigError` naming ``BOT_OPS_ADDR`` if the address cannot
        be bound (before ``started``); anything else propagates as it is. ``started`` comes
        once the socket listens; hypercorn is imported (in a worker thread) and serves it
        after that. Hypercorn is given a shutdown trigger, so it installs no signal handlers
        of its own. Owns the listening socket and a nursery of connection tasks, all closed
        when it returns.
        """
        try:
            sock, self.bound = _listen(self.addr)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigError(f"BOT_OPS_ADDR={self.addr}: cannot listen: {reason}") from exc
        with sock:
            task_status.started(self.bound)
            config_cls, sockets_cls, worker_serve, wrap_app = await trio.to_thread.run_sync(
                _load_server
            )
            app = build_app(
                self.source,
                self.metrics_render,
                lag_threshold=self.lag_threshold,
                redactor=self.redactor,
            )
            config = config_cls()
            config.bind = [self.bound]
            config.graceful_timeout = self.graceful_timeout
            configure_hypercorn_logging(config, access_log=self.access_log)
            await worker_serve(
                wrap_app(cast(Any, app), config.wsgi_max_body_size, "asgi"),
                config,
                sockets=sockets_cls([], [sock], []),
                shutdown_trigger=self._stop.wait,
            )
