"""``botd conformance URL``: run protocol v1's checks against a main server and report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trio

from ..admin_client import CA_FILE_ENV, TOKEN_ENV, TOKEN_FILE_ENV, resolve_ca_file, resolve_token
from ..errors import ConfigError
from ..token_files import token_flag_warning
from .bench import KIND_PREFIX, QUICK_TTL_S
from .report import Verdict
from .runner import SUITE, Unreachable, run_suite, select

__all__ = ["add_conformance_arguments", "run_conformance_from_args"]


DESCRIPTION = f"""\
Run every check of protocol v1 (docs/protocol.md) against the main server at URL, and print
one line per check (PASS, FAIL with the request, the expected and the actual answer, or
SKIP with why), then a summary.

It is safe on a server in use: it touches only jobs and bots of its own. Each run picks a
random id; every job it submits has a kind {KIND_PREFIX}<id>-<n>, every bot id starts with
{KIND_PREFIX}<id>, and every claim it makes sets `kinds` to its own kind, so it never
claims a real job. At the end it cancels the jobs of the run that are not final and
deregisters its bots. It needs a token that may register, claim and submit.

Checks that wait out the server's lease TTL (lease expiry, `gone` bots) run only when
that TTL is at most {QUICK_TTL_S:g} s, or with --slow. Checks marked [extension] test
what docs/protocol.md lists as extensions.
"""

EXIT_CODES = """\
exit codes:
  0  every check that ran passed
  1  at least one check failed
  2  the server could not be reached, refused the token, or the arguments are wrong
"""


def add_conformance_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``botd conformance``'s arguments to ``parser``."""
    parser.description = DESCRIPTION
    parser.epilog = EXIT_CODES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "url", metavar="URL", nargs="?", help="the server, such as http://127.0.0.1:3001"
    )
    parser.add_argument(
        "--token",
        help="the bearer token (shows in `ps`: prefer --token-file or env"
        f" {TOKEN_ENV}; default: env {TOKEN_ENV}, then the file at env {TOKEN_FILE_ENV})",
    )
    parser.add_argument(
        "--token-file", type=Path, metavar="FILE", help="read the bearer token from FILE"
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help="verify an https:// server against the CA certificates in this PEM file"
        f" (default: env {CA_FILE_ENV}, else the system's CA bundle)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON, for CI")
    parser.add_argument(
        "--only",
        metavar="NAME,...",
        default="",
        help="run only these checks (comma separated; see --list); default: all",
    )
    parser.add_argument(
        "--slow",
        action="store_true",
        help=f"also run the checks that wait out a lease TTL over {QUICK_TTL_S:g} s",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the checks and exit (no URL needed)"
    )


def _print_verdict(verdict: Verdict) -> None:
    print("\n".join(verdict.lines()), flush=True)


def run_conformance_from_args(args: argparse.Namespace) -> int:
    """``botd conformance``: run the suite; the exit code (0, 1 or 2)."""
    if args.list:
        for check in SUITE:
            tags = " [slow]" * check.slow + " [extension]" * check.extension
            print(f"{check.name:<34} {check.title}{tags}")
        return 0
    try:
        checks = select([n.strip() for n in args.only.split(",") if n.strip()])
        if args.token:
            warning = token_flag_warning("--token", TOKEN_ENV)
            print(f"botd conformance: warning: {warning}", file=sys.stderr)
        token = resolve_token(
            args.token,
            args.token_file,
            warn=lambda line: print(f"botd conformance: warning: {line}", file=sys.stderr),
        )
        ca_file = resolve_ca_file(args.ca_file)
    except (ValueError, ConfigError) as exc:
        print(f"botd conformance: {exc}", file=sys.stderr)
        return 2
    if not args.url:
        print(
            "botd conformance: give the server's URL, such as http://127.0.0.1:3001",
            file=sys.stderr,
        )
        return 2
    url = str(args.url).rstrip("/")
    if not url.startswith(("http://", "https://")):
        print(f"botd conformance: {url!r} is not an http:// or https:// URL", file=sys.stderr)
        return 2

    async def main() -> int:
        try:
            report = await run_suite(
                url,
                token=token,
                ca_file=ca_file,
                slow=args.slow,
                checks=checks,
                on_verdict=None if args.json else _print_verdict,
            )
        except Unreachable as exc:
            print(f"botd conformance: {url}: {exc}", file=sys.stderr)
            return 2
        except ConfigError as exc:
            print(f"botd conformance: {exc}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(report.as_dict(), indent=2))
        else:
            print(report.summary())
        return report.exit_code

    return trio.run(main)
