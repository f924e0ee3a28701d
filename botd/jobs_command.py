"""``botd jobs``: look at, wait for, cancel and retry the jobs of a main server.

``get ID``, ``wait ID [--timeout S]``, ``list [--status S] [--kind K] [--limit N]``,
``cancel ID``, ``retry ID`` and ``retry --status dead|failed [--kind K]`` (every job of that
status), each through :class:`botd.JobsClient`. Each prints one line per job (id, kind,
status, attempts, the result or the error, shortened), or with ``--json`` the JobView(s) as
JSON. Exit codes: :mod:`botd.producer_cli`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .jobs_client import JobsClient
from .models import JOB_STATUSES, JobView
from .producer_cli import (
    EXIT_CODES,
    EXIT_OK,
    EXIT_USAGE,
    HelpFormatter,
    add_connection_arguments,
    exit_of,
    job_line,
    prepare_parser,
    print_json,
    say,
    with_client,
)

__all__ = ["add_jobs_arguments", "run_jobs_from_args"]

PROG = "botd jobs"
MAX_LIST = 1000


def add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``botd jobs``' actions, each with its flags and the connection flags."""
    prepare_parser(parser)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the JobView(s) as JSON")
    add_connection_arguments(common)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=help_text, parents=[common],
            formatter_class=HelpFormatter, epilog=EXIT_CODES,
        )  # fmt: skip
        return sub

    action("get", "show one job").add_argument("job_id", metavar="ID", help="the job's id")
    wait = action("wait", "wait until a job is final; exit 0 succeeded, 1 not, 2 timeout")
    wait.add_argument("job_id", metavar="ID", help="the job's id")
    wait.add_argument(
        "--timeout", type=float, default=None, metavar="S",
        help="give up after S seconds, exit 2 (default: no limit)",
    )  # fmt: skip
    listing = action("list", "list jobs, newest first")
    listing.add_argument("--status", choices=JOB_STATUSES, default=None,
                         help="only jobs of this status (default: any)")  # fmt: skip
    listing.add_argument("--kind", default=None, help="only jobs of this kind (default: any)")
    listing.add_argument("--limit", type=int, default=100, help=f"at most N jobs, 1..{MAX_LIST}")
    action("cancel", "cancel a queued or leased job").add_argument(
        "job_id", metavar="ID", help="the job's id"
    )
    retry = action("retry", "queue a dead or failed job again (ID), or every one (--status)")
    retry.add_argument("job_id", metavar="ID", nargs="?", default=None,
                       help="the job's id (default: none; then --status is needed)")  # fmt: skip
    retry.add_argument("--status", choices=("dead", "failed"), default=None,
                       help="retry every job of this status instead (default: none)")  # fmt: skip
    retry.add_argument("--kind", default=None,
                       help="with --status: only jobs of this kind (default: any)")  # fmt: skip


def run_jobs_from_args(args: argparse.Namespace) -> int:
    """Run the action :func:`add_jobs_arguments` parsed; see the module for the exit codes."""
    problem = _bad_arguments(args)
    if problem:
        say(PROG, problem)
        return EXIT_USAGE
    return with_client(PROG, args, lambda client: _ACTIONS[args.action](client, args))


def _bad_arguments(args: argparse.Namespace) -> str | None:
    if args.action == "list" and not 1 <= args.limit <= MAX_LIST:
        return f"--limit must be 1..{MAX_LIST}, got {args.limit}"
    if args.action == "wait" and args.timeout is not None and not args.timeout >= 0:
        return f"--timeout must be >= 0 seconds, got {args.timeout}"
    if args.action == "retry":
        if (args.job_id is None) == (args.status is None):
            return "retry takes a job ID or --status dead|failed (one of them)"
        if args.kind is not None and args.status is None:
            return "--kind goes with --status (a job ID names one job already)"
    return None


def _show(view: JobView, args: argparse.Namespace) -> None:
    if args.json:
        print_json(view)
    else:
        print(job_line(view), flush=True)


Action = Callable[[JobsClient, argparse.Namespace], int]


def _one(method: str) -> Action:
    """An action that calls ``client.<method>(ID)`` and shows the job."""

    def run(client: JobsClient, args: argparse.Namespace) -> int:
        _show(getattr(client, method)(args.job_id), args)
        return EXIT_OK

    return run


def _wait(client: JobsClient, args: argparse.Namespace) -> int:
    view = client.wait(args.job_id, timeout=args.timeout)
    _show(view, args)
    return exit_of(view)


def _list(client: JobsClient, args: argparse.Namespace) -> int:
    views = client.list(status=args.status, kind=args.kind, limit=args.limit)
    if args.json:
        print_json(views)
    else:
        print("".join(f"{job_line(view)}\n" for view in views), end="", flush=True)
    return EXIT_OK


def _retry(client: JobsClient, args: argparse.Namespace) -> int:
    if args.job_id is not None:
        _show(client.retry(args.job_id), args)
        return EXIT_OK
    ids = client.retry_all(args.status, kind=args.kind)
    if args.json:
        print_json({"retried": len(ids), "job_ids": ids})
    else:
        print("".join(f"{job_id}\n" for job_id in ids), end="", flush=True)
        say(PROG, f"{len(ids)} {args.status} job(s) queued again")
    return EXIT_OK


_ACTIONS: dict[str, Action] = {
    "get": _one("get"),
    "wait": _wait,
    "list": _list,
    "cancel": _one("cancel"),
    "retry": _retry,
}
