"""``botd submit``: queue jobs on a main server from the command line, printing their ids."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .admin_client import AdminClient, Answer
from .errors import ProtocolError, ServerUnavailable
from .models import MAX_BATCH, JobBatch, JobBatchResult, JobSubmit, JobView

__all__ = ["add_submit_arguments", "run_submit_from_args"]

TOKEN_ENV = "BOTD_TOKEN"
SERVER_ENV = "MAIN_SERVER_URL"
DEFAULT_SERVER = "http://127.0.0.1:3001"
#: The flags that are JobSubmit fields of the same name (``--timeout`` is ``timeout_s``).
_JOB_FLAGS = ("kind", "max_attempts", "priority", "idempotency_key")


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``botd submit``'s flags to ``parser``."""
    parser.add_argument("--kind", required=True, help="job kind, e.g. simulate")
    parser.add_argument("--payload", default="null", help="job payload as JSON (null)")
    parser.add_argument("--count", type=int, default=1, help="how many jobs to submit (1)")
    parser.add_argument("--priority", type=int, default=0, help="higher is claimed first (0)")
    parser.add_argument("--max-attempts", type=int, default=3, help="attempts before giving up")
    parser.add_argument("--timeout", type=float, default=None, help="job timeout in seconds")
    parser.add_argument(
        "--idempotency-key", default=None, help="submit once per key (only with --count 1)"
    )
    parser.add_argument(
        "--server", default=None, help=f"main server URL (env {SERVER_ENV}, {DEFAULT_SERVER})"
    )
    parser.add_argument("--token", default=None, help=f"bearer token (default: env {TOKEN_ENV})")


def run_submit_from_args(args: argparse.Namespace) -> int:
    """Submit ``--count`` jobs and print one job_id a line.

    Returns 0 when every job was accepted, 2 for bad flags, 1 when the server refused or
    could not be reached (the reason goes to stderr; ids already printed stay valid).
    """
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        print(f"botd submit: --payload is not JSON ({exc})", file=sys.stderr)
        return 2
    if args.count < 1 or (args.count > 1 and args.idempotency_key):
        print("botd submit: --count must be >= 1 (and 1 with --idempotency-key)", file=sys.stderr)
        return 2
    try:
        fields = {name: getattr(args, name) for name in _JOB_FLAGS}
        job = JobSubmit(payload=payload, timeout_s=args.timeout, **fields)
    except (TypeError, ValueError) as exc:
        print(f"botd submit: {exc}", file=sys.stderr)
        return 2
    server = (args.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER).rstrip("/")
    token = args.token or os.environ.get(TOKEN_ENV)
    try:
        with AdminClient(server, token=token, timeout=30.0) as client:
            if args.count == 1:
                answer = client.post("/v1/jobs", job)
                if not answer.ok:
                    return _refused(answer)
                print(answer.decode(JobView).job_id, flush=True)
            left = args.count if args.count > 1 else 0
            while left:  # many: batches of up to MAX_BATCH, one transaction each
                n = min(left, MAX_BATCH)
                answer = client.post("/v1/jobs/batch", JobBatch([job] * n))
                if not answer.ok:
                    return _refused(answer)
                for view in answer.decode(JobBatchResult).jobs:
                    print(view.job_id)
                sys.stdout.flush()
                left -= n
    except ServerUnavailable as exc:
        print(f"botd submit: cannot reach {server}: {exc}", file=sys.stderr)
        return 1
    except ProtocolError as exc:
        print(f"botd submit: unexpected answer from {server}: {exc}", file=sys.stderr)
        return 1
    return 0


def _refused(answer: Answer) -> int:
    """Say why the server did not accept the jobs; exit code 1."""
    print(f"botd submit: {answer.reason()}", file=sys.stderr)
    return 1
