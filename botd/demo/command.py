"""The ``botd demo`` command: its flags, and one run from them in a fresh run directory.

Everything lives in the run directory (``--workdir``, a temp dir by default): the database,
one state dir per bot, and ``demo.log``, where every JSON log line goes so that the live view
stays readable. The directory is kept; the summary names it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import trio

from .. import logs
from ..errors import ConfigError, leaf_exceptions
from ..exit_codes import ExitCode
from .options import (
    DEFAULT_BOTS,
    DEFAULT_CHAOS_DOWN_S,
    DEFAULT_CONCURRENCY,
    DEFAULT_DURATION_MS,
    DEFAULT_FAILURE_RATE,
    DEFAULT_JOBS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_TIMEOUT_S,
    DemoOptions,
)
from .report import DemoReport, format_summary
from .run import run_demo
from .views import LiveView, PlainView, View

__all__ = ["EPILOG", "add_demo_arguments", "main", "options_from_args", "run_demo_from_args"]

DESCRIPTION = (
    "``botd demo``: the reference server and a fleet of bots in one Trio run, with a live view."
)

EPILOG = """\
exit codes:
  0   every job reached a final status (succeeded, failed, dead or cancelled)
  1   some jobs did not (interrupted, --timeout, or the server could not start)
  2   bad flags
  70  a bot hit an internal error (see the log)

Ctrl-C drains the bots like `botd run` does (again: skip the drain; a third time: exit now).
"""


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``botd demo``'s flags to ``parser``."""
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--bots", type=int, default=DEFAULT_BOTS, help=f"bots in the fleet ({DEFAULT_BOTS})")
    add("--jobs", type=int, default=DEFAULT_JOBS, help=f"jobs to submit ({DEFAULT_JOBS})")
    add(
        "--failure-rate",
        type=float,
        default=DEFAULT_FAILURE_RATE,
        help=f"share of job attempts that fail, so retries show ({DEFAULT_FAILURE_RATE})",
    )
    add(
        "--duration-ms",
        type=int,
        default=DEFAULT_DURATION_MS,
        help=f"simulated job duration in ms ({DEFAULT_DURATION_MS})",
    )
    add(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"jobs each bot runs at once ({DEFAULT_CONCURRENCY})",
    )
    add(
        "--max-attempts",
        type=int,
        default=DEFAULT_MAX_ATTEMPTS,
        help=f"attempts per job before it fails ({DEFAULT_MAX_ATTEMPTS})",
    )
    add(
        "--chaos",
        action="store_true",
        help="stop the server mid-run (once a third of the jobs ended), then start it again",
    )
    add(
        "--chaos-down",
        type=float,
        default=DEFAULT_CHAOS_DOWN_S,
        metavar="SECONDS",
        help=f"how long --chaos keeps the server down ({DEFAULT_CHAOS_DOWN_S:g})",
    )
    add("--port", type=int, default=0, help="the server's port on 127.0.0.1 (0: any free port)")
    add(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up (exit 1) after this long ({DEFAULT_TIMEOUT_S:g})",
    )
    add(
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the run dir (database, state dirs, demo.log) is made (default: the temp dir)",
    )
    add(
        "--view",
        choices=("auto", "live", "plain"),
        default="auto",
        help="live (rich, redrawn in place), plain (progress lines), auto: live on a terminal",
    )


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """The DemoOptions of parsed flags (every field but ``host`` is a flag of the same name);
    ValueError/TypeError names the bad one."""
    flags = vars(args)
    return DemoOptions(
        **{f.name: flags[f.name] for f in attrs.fields(DemoOptions) if f.name in flags}
    )


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Send every log line (bots, server, libraries) to ``path`` while the demo runs."""
    import logging

    with path.open("a", encoding="utf-8") as stream:
        setup = logs.setup_logging(level="INFO", fmt="json", stream=stream)
        httpx_logger = logging.getLogger("httpx")
        old_level = httpx_logger.level
        httpx_logger.setLevel(logging.WARNING)  # one line per request is noise
        try:
            yield
        finally:
            httpx_logger.setLevel(old_level)
            setup.close()


def run_demo_from_args(args: argparse.Namespace) -> int:
    """Run ``botd demo`` with parsed flags; print the summary; return the exit code."""
    try:
        options = options_from_args(args)
    except (TypeError, ValueError, ConfigError) as exc:
        message = str(exc)
        for field in attrs.fields(DemoOptions):
            message = message.replace(f"'{field.name}'", "--" + field.name.replace("_", "-"))
        print(f"botd demo: {message}", file=sys.stderr)
        return 2
    parent = args.workdir
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="botd-demo-", dir=parent))
    log_path = run_dir / "demo.log"
    live = args.view == "live" or (args.view == "auto" and sys.stdout.isatty())
    view: View = LiveView() if live else PlainView(sys.stdout)
    print(f"botd demo: run dir {run_dir}, logs in {log_path}", flush=True)
    report: DemoReport | None = None
    failures: list[str] = []
    with _logs_to(log_path):
        try:
            report = trio.run(
                functools.partial(run_demo, options, view, run_dir, install_signals=True)
            )
        except* OSError as group:
            failures = [str(exc) for exc in leaf_exceptions(group)]
    if report is None:
        where = f"{options.host}:{options.port}"
        print(f"botd demo: cannot serve on {where}: {'; '.join(failures)}", file=sys.stderr)
        return int(ExitCode.FAILURE)
    report = attrs.evolve(report, log_path=log_path)
    print(format_summary(report), flush=True)
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m botd.demo``: the same as ``botd demo``."""
    parser = argparse.ArgumentParser(prog="botd demo", description=DESCRIPTION)
    add_demo_arguments(parser)
    return run_demo_from_args(parser.parse_args(argv))
