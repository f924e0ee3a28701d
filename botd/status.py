"""``botd status``: ask a bot's ops endpoint how it is, print it, exit with a usable code.

Exit codes, for scripts and supervisord event listeners:

- ``0``: the bot is ready (``/readyz`` answered 200);
- ``1``: the bot answered but is not ready (``/readyz`` answered 503);
- ``2``: the bot cannot be reached, or its answer is not a status document (message on stderr).

This is a one-shot CLI, so it asks through :class:`botd.admin_client.AdminClient` (httpx's
sync client), whose failures are botd errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from .admin_client import AdminClient
from .errors import ProtocolError, ServerUnavailable

__all__ = [
    "DEFAULT_OPS_URL",
    "EXIT_NOT_READY",
    "EXIT_READY",
    "EXIT_UNREACHABLE",
    "add_status_arguments",
    "format_status",
    "run_status",
    "run_status_from_args",
]

DEFAULT_OPS_URL = "http://127.0.0.1:9317"
DEFAULT_TIMEOUT_S = 5.0
EXIT_READY = 0
EXIT_NOT_READY = 1
EXIT_UNREACHABLE = 2


class _Unreachable(Exception):
    """Raised inside this module when the ops endpoint cannot give a usable answer."""


STATUS_EXIT_CODES = """\
exit codes:
  0  the bot is ready (its /readyz answers 200)
  1  the bot answers but is not ready (/readyz 503: starting, in error, or shutting down)
  2  no usable answer from the ops endpoint (not running, wrong --ops-url, BOT_OPS_ADDR off)
"""


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--ops-url URL``, ``--json`` and the exit codes to the ``botd status`` parser."""
    parser.epilog = STATUS_EXIT_CODES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--ops-url",
        default=DEFAULT_OPS_URL,
        metavar="URL",
        help=f"the bot's ops endpoint (default {DEFAULT_OPS_URL})",
    )
    parser.add_argument("--json", action="store_true", help="print the raw status document as JSON")


def run_status_from_args(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run :func:`run_status` with the arguments :func:`add_status_arguments` added."""
    return run_status(args.ops_url, as_json=args.json, out=out or sys.stdout, err=err)


def _base_url(ops_url: str) -> str:
    url = ops_url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def _fetch(client: AdminClient, url: str) -> tuple[int, Any]:
    try:
        answer = client.get(url)
    except ServerUnavailable as exc:
        raise _Unreachable(f"cannot reach {url}: {exc}") from exc
    try:
        body = answer.json()
    except ProtocolError as exc:
        raise _Unreachable(f"{url} answered {answer.status} without JSON") from exc
    return answer.status, body


def run_status(
    ops_url: str,
    *,
    as_json: bool,
    out: TextIO,
    err: TextIO | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> int:
    """GET ``/status`` and ``/readyz`` from ``ops_url``, print the document, return the exit code.

    Prints a readable table, or with ``as_json`` the document exactly as served. Returns
    :data:`EXIT_READY`, :data:`EXIT_NOT_READY` or :data:`EXIT_UNREACHABLE` (see the module
    docstring); never raises for network or server errors: they are reported on ``err``
    (stderr by default). ``timeout`` bounds each request.
    """
    err = sys.stderr if err is None else err
    base = _base_url(ops_url)
    try:
        with AdminClient(timeout=timeout) as client:
            code, doc = _fetch(client, f"{base}/status")
            if code != 200 or not isinstance(doc, dict):
                raise _Unreachable(f"{base}/status answered {code}, not a status document")
            ready_code, _ = _fetch(client, f"{base}/readyz")
            if ready_code not in (200, 503):
                raise _Unreachable(f"{base}/readyz answered {ready_code}")
    except _Unreachable as exc:
        print(f"botd status: {exc}", file=err)
        return EXIT_UNREACHABLE
    ready = ready_code == 200
    if as_json:
        out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(format_status(doc, ready=ready))
    return EXIT_READY if ready else EXIT_NOT_READY


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s"


def _table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = []
    for row in [headers, *rows]:
        lines.append(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return [line.rstrip() for line in lines]


def _s(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def format_status(doc: Mapping[str, Any], *, ready: bool) -> str:
    """Return the status document as readable text: state, counters, breakers, transitions."""
    lines = [
        f"bot                   {_s(doc.get('bot_id'))} (version {_s(doc.get('version'))})",
        f"state                 {_s(doc.get('state'))} ({'ready' if ready else 'NOT ready'})",
        f"uptime                {_duration(doc.get('uptime_seconds'))}",
        f"startup attempts      {_s(doc.get('startup_attempts'))}",
        f"jobs processed        {_s(doc.get('total_jobs_processed'))}",
        f"jobs in flight        {_s(doc.get('jobs_in_flight'))}",
        f"outbox pending        {_s(doc.get('outbox_pending'))}",
        "",
        "circuit breakers",
    ]
    breakers = doc.get("circuit_breakers") or {}
    if isinstance(breakers, Mapping) and breakers:
        rows = [
            [str(name), _s(b.get("state")), _s(b.get("failure_count"))]
            for name, b in breakers.items()
            if isinstance(b, Mapping)
        ]
        lines += _table(["name", "state", "failures"], rows)
    else:
        lines.append("  (none)")
    lines += ["", "recent transitions"]
    transitions = doc.get("transitions") or []
    if isinstance(transitions, list) and transitions:
        rows = [
            [
                _s(t.get("at")),
                _s(t.get("from_state")),
                _s(t.get("to_state")),
                _duration(t.get("duration_s")),
                _s(t.get("reason")),
            ]
            for t in transitions
            if isinstance(t, Mapping)
        ]
        lines += _table(["at", "from", "to", "after", "reason"], rows)
    else:
        lines.append("  (none)")
    return "\n".join(lines) + "\n"
