"""``botd demo``: the reference server and a fleet of bots in one Trio run, with a live view.

::

    demo root nursery (run._Demo.run)
    ├── signals          first SIGINT/SIGTERM drains every bot, second skips the drain, third exits
    ├── server           botd.server.run.serve on a SQLite file in the run dir (restartable)
    ├── bot 1..N         botd.agent.Agent (opened by botd.wiring.open_agent), each with its
    │                    own state dir, metrics and log context
    ├── submitter        POST /v1/jobs/batch, 25 a time (idempotency keys: a retry never duplicates)
    ├── chaos            with --chaos: stops the server once a third of the jobs ended, then
    │                    starts it again on the same port with the same database
    └── monitor (the body) polls /v1/stats, redraws the view, decides when the run is over

One module a concern: ``options`` (:class:`DemoOptions`), ``embedded_server`` (the server,
stopped and started again), ``fleet`` (the bots), ``submitter``, ``chaos``, ``run`` (the root
nursery and the monitor: :func:`run_demo`), ``views`` (:class:`LiveView`, :class:`PlainView`),
``report`` (:class:`DemoReport`, :func:`format_summary`) and ``command`` (the flags and
:func:`run_demo_from_args`). The server and the bots are asked through
:class:`botd.admin_client.AsyncAdminClient`.

The view is ``rich`` on a terminal (imported by :class:`LiveView` only, so ``botd run`` never
loads it) and plain progress lines otherwise. The run ends when every job reached a final
status (succeeded, failed, dead or cancelled), on a signal, on ``--timeout``, or when every bot
stopped by itself. Exit codes: 0 every job reached a final status; 1 some did not
(interrupted, timed out, or the server could not be started); 2 bad flags; 70 a bot hit an
internal error.
"""

from .command import add_demo_arguments, run_demo_from_args
from .options import DemoOptions
from .report import BotReport, DemoReport, format_summary
from .run import run_demo
from .views import BotRow, LiveView, PlainView, Snapshot, View

__all__ = [
    "BotReport",
    "BotRow",
    "DemoOptions",
    "DemoReport",
    "LiveView",
    "PlainView",
    "Snapshot",
    "View",
    "add_demo_arguments",
    "format_summary",
    "run_demo",
    "run_demo_from_args",
]
