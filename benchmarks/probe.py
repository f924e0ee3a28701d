"""The dispatch-latency probe: a ``BOT_HANDLER=python`` handler that reports when it starts.

``BOT_PYTHON_HANDLER=benchmarks.probe:record`` sends one UDP datagram per job to
``127.0.0.1:$BENCH_PROBE_PORT``: ``"<payload seq> <time.monotonic()>"`` (the machine-wide clock),
then returns None. A lost datagram only loses one sample.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

_SOCK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
_ADDR = ("127.0.0.1", int(os.environ.get("BENCH_PROBE_PORT", "9")))


async def record(job: Any) -> None:
    """Send the job's ``seq`` and the time now; the job succeeds with result None."""
    started = time.monotonic()
    seq = job.payload.get("seq", -1) if isinstance(job.payload, dict) else -1
    _SOCK.sendto(f"{seq} {started}".encode(), _ADDR)
