"""``botd submit``: queue jobs on a main server from the command line, printing their ids."""

from __future__ import annotations

import argparse
import json
import os
import sys

import httpx

from . import codec
from .errors import ProtocolError
from .models import MAX_BATCH, JobBatch, JobBatchResult, JobSubmit, JobView

__all__ = ["add_submit_arguments", "run_submit_from_args"]

TOKEN_ENV = "BOTD_TOKEN"
SERVER_ENV = "MAIN_SERVER_URL"
DEFAULT_SERVER = "http://127.0.0.1:3001"


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
        job = JobSubmit(
            kind=args.kind,
            payload=payload,
            max_attempts=args.max_attempts,
            timeout_s=args.timeout,
            priority=args.priority,
            idempotency_key=args.idempotency_key,
        )
    except (TypeError, ValueError) as exc:
        print(f"botd submit: {exc}", file=sys.stderr)
        return 2
    server = (args.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER).rstrip("/")
    token = args.token or os.environ.get(TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers["Content-Type"] = "application/json"
    try:
        with httpx.Client(base_url=server, headers=headers, timeout=30.0) as client:
            if args.count == 1:
                resp = client.post("/v1/jobs", content=codec.dumps(job))
                if resp.status_code not in (200, 201):
                    print(f"botd submit: {_describe(resp)}", file=sys.stderr)
                    return 1
                print(codec.loads(resp.content, JobView).job_id, flush=True)
            left = args.count if args.count > 1 else 0
            while left:  # many: batches of up to MAX_BATCH, one transaction each
                n = min(left, MAX_BATCH)
                resp = client.post("/v1/jobs/batch", content=codec.dumps(JobBatch([job] * n)))
                if resp.status_code not in (200, 201):
                    print(f"botd submit: {_describe(resp)}", file=sys.stderr)
                    return 1
                for view in codec.loads(resp.content, JobBatchResult).jobs:
                    print(view.job_id)
                sys.stdout.flush()
                left -= n
    except httpx.HTTPError as exc:
        print(f"botd submit: cannot reach {server}: {exc}", file=sys.stderr)
        return 1
    except ProtocolError as exc:
        print(f"botd submit: unexpected answer from {server}: {exc}", file=sys.stderr)
        return 1
    return 0


def _describe(resp: httpx.Response) -> str:
    try:
        error = resp.json()["error"]
        return f"server answered {resp.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"server answered {resp.status_code}"
