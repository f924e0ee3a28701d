"""What ``botd submit`` and ``botd jobs`` share: the connection flags, the exit codes, the
help layout, one line per job, and the one place where an error becomes a message and a code.

Exit codes (:data:`EXIT_CODES`, in both commands' ``--help``):

- ``0``: done (for a wait: the job succeeded);
- ``1``: the job ended badly (failed, dead or cancelled), or the server refused the request
  (an unknown job, one that cannot be retried or cancelled, a bad value, a rejected token);
- ``2``: no usable answer in time (the wait's timeout passed, the server cannot be reached
  or answered 5xx or garbage), or bad arguments (as argparse's own usage errors).

So 2 is worth trying again later (or with other arguments); 1 is not.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from . import codec
from .admin_client import (
    CA_FILE_ENV,
    DEFAULT_SERVER,
    SERVER_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    resolve_token,
    server_url,
)
from .errors import (
    ConfigError,
    ProtocolError,
    RequestRejected,
    ServerUnavailable,
    Unrecoverable,
    WaitTimeout,
)
from .jobs_client import JobsClient
from .models import JobView
from .token_files import token_flag_warning

__all__ = [
    "EXIT_BAD",
    "EXIT_CODES",
    "EXIT_NO_ANSWER",
    "EXIT_OK",
    "EXIT_USAGE",
    "HelpFormatter",
    "add_connection_arguments",
    "exit_of",
    "job_line",
    "prepare_parser",
    "print_json",
    "say",
    "with_client",
]

EXIT_OK = 0
EXIT_BAD = 1
EXIT_NO_ANSWER = 2
EXIT_USAGE = 2  # as argparse's own usage errors
EXIT_CODES = """\
exit codes:
  0  done (for a wait: the job succeeded)
  1  the job ended failed, dead or cancelled; or the server refused the request (unknown
     job, not retryable, already finished, a bad value, a rejected token)
  2  no usable answer: the wait's timeout passed, the server cannot be reached or answered
     5xx; or bad arguments
"""
#: How much of a result or an error a job's line shows.
DETAIL_CHARS = 60


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help, unless the help already says it; the epilog as
    written (the exit-code table)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default is None:
            return text
        return super()._get_help_string(action)


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the help layout (:class:`HelpFormatter`) and the exit-code epilog."""
    parser.formatter_class = HelpFormatter
    parser.epilog = EXIT_CODES


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--server``, ``--token``, ``--token-file`` and ``--ca-file`` to ``parser``."""
    group = parser.add_argument_group("server")
    group.add_argument(
        "--server",
        metavar="URL",
        default=None,
        help=f"main server URL (default: env {SERVER_ENV}, else {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--token",
        metavar="T",
        default=None,
        help=f"bearer token (default: env {TOKEN_ENV}, else the file in env {TOKEN_FILE_ENV}, "
        "else none). A flag shows in `ps`: prefer the environment or --token-file",
    )
    group.add_argument(
        "--token-file",
        metavar="PATH",
        default=None,
        help="file holding the bearer token (default: none; --token wins over it)",
    )
    group.add_argument(
        "--ca-file",
        metavar="PATH",
        default=None,
        help="verify an https:// server against the CA certificates in this PEM file"
        f" (default: env {CA_FILE_ENV}, else the system's CA bundle)",
    )


def with_client(prog: str, args: argparse.Namespace, work: Callable[[JobsClient], int]) -> int:
    """``work(client)`` on a :class:`JobsClient` of the connection flags, and its exit code;
    a botd error becomes its message on stderr and its exit code."""
    where = server_url(args.server)
    if args.token:
        say(prog, f"warning: {token_flag_warning('--token', TOKEN_ENV)}")
    try:
        token = resolve_token(
            args.token, args.token_file, warn=lambda line: say(prog, f"warning: {line}")
        )
        with JobsClient(where, token=token, timeout=30.0, ca_file=args.ca_file) as client:
            return work(client)
    except WaitTimeout as exc:
        job = exc.job.job_id
        say(prog, f"{exc}; `botd jobs wait {job}` waits again, `botd jobs cancel {job}` stops it")
        return EXIT_NO_ANSWER
    except (RequestRejected, Unrecoverable) as exc:
        say(prog, str(exc))
        return EXIT_BAD
    except ServerUnavailable as exc:
        hint = "" if "TLS:" in str(exc) else f"; is the server up? (--server, env {SERVER_ENV})"
        say(prog, f"cannot reach {where}: {exc}{hint}")
        return EXIT_NO_ANSWER
    except ProtocolError as exc:
        say(prog, f"unexpected answer from {where}: {exc}; is that a botd server?")
        return EXIT_NO_ANSWER
    except ConfigError as exc:
        say(prog, str(exc))
        return EXIT_USAGE


def say(prog: str, message: str) -> None:
    print(f"{prog}: {message}", file=sys.stderr)


def exit_of(view: JobView) -> int:
    """0 for a job that succeeded, 1 for any other."""
    return EXIT_OK if view.status == "succeeded" else EXIT_BAD


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 3] + "..."


def job_line(view: JobView) -> str:
    """``id  kind  status  attempts/max  detail``: the result when it succeeded, else the
    last error, each cut to 60 characters."""
    if view.status == "succeeded":
        detail = json.dumps(view.result)
    elif view.error is not None:
        detail = f"{view.error.type}: {view.error.message}"
    else:
        detail = ""
    line = f"{view.job_id}  {view.kind}  {view.status}  {view.attempts}/{view.max_attempts}"
    return f"{line}  {_short(detail)}" if detail else line


def print_json(value: Any) -> None:
    """``value`` (attrs objects or plain data) as one JSON document on stdout."""
    print(json.dumps(codec.unstructure(value)), flush=True)
