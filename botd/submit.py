"""``botd submit``: queue jobs on a main server from the command line, printing their ids;
with ``--wait``, wait for the one job and print its result.

It goes through :class:`botd.JobsClient`; the connection flags, the exit codes (0 done, 1 the
job ended badly or the server refused, 2 timeout, no answer or bad arguments) and the error
messages are those of :mod:`botd.producer_cli`, as for ``botd jobs``.
"""

from __future__ import annotations

import argparse
import json

from .jobs_client import JobsClient, rfc3339_run_at
from .models import MAX_BATCH, JobSubmit
from .producer_cli import (
    EXIT_OK,
    EXIT_USAGE,
    add_connection_arguments,
    exit_of,
    prepare_parser,
    say,
    with_client,
)

__all__ = ["add_submit_arguments", "run_submit_from_args"]

PROG = "botd submit"
#: The flags that are JobSubmit fields of the same name (``--timeout`` is ``timeout_s``).
_JOB_FLAGS = ("kind", "max_attempts", "priority", "idempotency_key")


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``botd submit``'s flags to ``parser``."""
    prepare_parser(parser)
    parser.add_argument("--kind", required=True, help="job kind, e.g. simulate (required)")
    parser.add_argument("--payload", default="null", help="job payload as JSON")
    parser.add_argument("--count", type=int, default=1, help="how many jobs to submit")
    parser.add_argument("--priority", type=int, default=0, help="higher is claimed first")
    parser.add_argument("--max-attempts", type=int, default=3, help="attempts before giving up")
    parser.add_argument(
        "--timeout", type=float, default=None, help="job timeout in seconds (default: none)"
    )
    parser.add_argument(
        "--idempotency-key", default=None, help="submit once per key (default: none; --count 1)"
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--run-at", default=None, metavar="TIME",
        help="not before this RFC 3339 time, e.g. 2030-01-31T12:00:00Z (default: now)",
    )  # fmt: skip
    when.add_argument(
        "--delay", type=float, default=None, metavar="S",
        help="not before S seconds from now (default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--wait", action="store_true",
        help="wait for the job (--count 1) and print its result JSON instead of its id; "
        "exit 0 succeeded, 1 failed, dead or cancelled, 2 timeout",
    )  # fmt: skip
    parser.add_argument(
        "--wait-timeout", type=float, default=None, metavar="S",
        help="with --wait: give up after S seconds, exit 2 (default: no limit)",
    )  # fmt: skip
    add_connection_arguments(parser)


def _job_of(args: argparse.Namespace) -> JobSubmit | str:
    """The job the flags describe, or what is wrong with them."""
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        return f"--payload is not JSON ({exc})"
    if args.count < 1 or (args.count > 1 and (args.idempotency_key or args.wait)):
        return "--count must be >= 1 (and 1 with --idempotency-key or --wait)"
    if args.wait_timeout is not None and not (args.wait and args.wait_timeout >= 0):
        return "--wait-timeout goes with --wait and must be >= 0 seconds"
    try:
        run_at = None if args.run_at is None else rfc3339_run_at(args.run_at)
        fields = {name: getattr(args, name) for name in _JOB_FLAGS}
        return JobSubmit(
            payload=payload, timeout_s=args.timeout, run_at=run_at, delay_s=args.delay, **fields
        )
    except (TypeError, ValueError) as exc:
        return str(exc)


def run_submit_from_args(args: argparse.Namespace) -> int:
    """Submit ``--count`` jobs and print one job_id a line, or with ``--wait`` the result.

    Exit codes: :mod:`botd.producer_cli` (ids already printed stay valid on any failure).
    """
    job_or_problem = _job_of(args)
    if isinstance(job_or_problem, str):
        say(PROG, job_or_problem)
        return EXIT_USAGE
    job = job_or_problem

    def work(client: JobsClient) -> int:
        if args.wait:
            return _wait_for(client, job, args.wait_timeout)
        return _queue(client, job, args.count)

    return with_client(PROG, args, work)


def _queue(client: JobsClient, job: JobSubmit, count: int) -> int:
    """Queue ``count`` copies of ``job``, a batch of up to 1000 a request, one transaction
    each; print each batch's ids as soon as it is in."""
    for start in range(0, count, MAX_BATCH):
        views = client.submit_many([job] * min(MAX_BATCH, count - start))
        print("".join(f"{view.job_id}\n" for view in views), end="", flush=True)
    return EXIT_OK


def _wait_for(client: JobsClient, job: JobSubmit, timeout: float | None) -> int:
    """Queue ``job``, wait for it, print its result JSON; say why when it ended otherwise."""
    (view,) = client.submit_many([job])
    say(PROG, f"job {view.job_id} queued; waiting for it")
    view = client.wait(view.job_id, timeout=timeout)
    if view.status == "succeeded":
        print(json.dumps(view.result), flush=True)
    else:
        error = f": {view.error.type}: {view.error.message}" if view.error else ""
        say(PROG, f"job {view.job_id} ended {view.status}{error}")
    return exit_of(view)
