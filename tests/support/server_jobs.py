"""Jobs on a real reference server with a bearer token, from outside, over loopback.

- :func:`submit`: ``botd submit`` of ``count`` simulate jobs, the token from ``BOTD_TOKEN``;
- :func:`stats`: the server's ``/v1/stats``, or None when it does not answer 200;
- :func:`succeeded`: a check for :func:`tests.support.procs.wait_for`: ``count`` jobs (or
  more) have succeeded.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.procs import botd

__all__ = ["stats", "submit", "succeeded"]


def stats(server_url: str, token: str) -> dict[str, Any] | None:
    """The server's /v1/stats, or None when it does not answer 200."""
    try:
        resp = httpx.get(
            f"{server_url}/v1/stats", headers={"Authorization": f"Bearer {token}"}, timeout=5.0
        )
    except httpx.TransportError:
        return None
    return resp.json() if resp.status_code == 200 else None


def submit(
    server_url: str, token: str, count: int, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """``botd submit`` ``count`` simulate jobs, the token from ``BOTD_TOKEN``."""
    done = botd(
        ["submit", "--server", server_url, "--kind", "simulate", "--count", str(count)],
        {**env, "BOTD_TOKEN": token},
    )
    assert done.returncode == 0, done.stderr
    return done


def succeeded(server_url: str, token: str, count: int) -> Callable[[], bool | None]:
    """True once the server counts ``count`` succeeded jobs or more, else None."""

    def check() -> bool | None:
        doc = stats(server_url, token)
        return True if doc is not None and doc["jobs"].get("succeeded", 0) >= count else None

    return check
