"""The fleet dashboard: ``GET /`` serves one self-contained HTML page.

The page (``dashboard.html`` beside this module, shipped in the wheel as package data) has
its CSS and JS inline: no build step, nothing from a CDN, no request to any other origin.
Every second it polls ``/v1/stats``, ``/v1/bots`` (its first page of 1000, saying so when
there are more) and ``/v1/jobs?status=dead|failed|queued``
and shows the bots (status, state, last seen, active leases), the queue depth by status and
how many queued jobs are not yet due (``scheduled``), a jobs-per-second sparkline (the
change in finished jobs between polls), the dead and failed jobs with their errors, each
with a Retry button (``POST /v1/jobs/{job_id}/retry``), and the latest queued jobs whose
``run_at`` is still ahead, with their due time. Server data reaches the DOM through
``textContent`` only.

The page holds no secret, so ``GET /`` needs no auth. When the server has a token, the
page's first poll gets 401 and it asks for the token; it keeps it in the tab's
``sessionStorage`` and sends it as ``Authorization: Bearer`` (never in a URL).

The Content-Security-Policy allows the page's own inline ``<script>`` and ``<style>`` by
their SHA-256 hashes and connections to its own origin; nothing else may load or run.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources

import attrs
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

__all__ = ["DashboardPage", "dashboard", "dashboard_page"]

_PAGE_FILE = "dashboard.html"


@attrs.frozen
class DashboardPage:
    """The page's HTML and the Content-Security-Policy that lets exactly it run."""

    html: str
    content_security_policy: str

    @property
    def headers(self) -> dict[str, str]:
        """The response headers of ``GET /`` beside the content type."""
        return {
            "Content-Security-Policy": self.content_security_policy,
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        }


def _hashes(html: str, tag: str) -> str:
    """The CSP sources (``'sha256-...'``) of every inline ``<tag>`` element's text."""
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    if not bodies:
        raise ValueError(f"{_PAGE_FILE} has no inline <{tag}>")
    digests = (hashlib.sha256(body.encode("utf-8")).digest() for body in bodies)
    return " ".join(f"'sha256-{base64.b64encode(d).decode('ascii')}'" for d in digests)


@functools.cache
def dashboard_page() -> DashboardPage:
    """Read the page from the package once, and derive its CSP from its inline code."""
    html = resources.files("botd.server").joinpath(_PAGE_FILE).read_text(encoding="utf-8")
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_hashes(html, 'script')}",
            f"style-src {_hashes(html, 'style')}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return DashboardPage(html=html, content_security_policy=csp)


async def dashboard(request: Request) -> Response:
    """``GET /``: the dashboard page, with its Content-Security-Policy (no auth)."""
    page = dashboard_page()
    return HTMLResponse(page.html, headers=page.headers)
