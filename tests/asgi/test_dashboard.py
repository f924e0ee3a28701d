"""The fleet dashboard (issue 7): ``GET /`` of the reference server.

- In-process (httpx on the ASGI app): the page is HTML with a strict Content-Security-Policy
  whose hashes match its inline script and style; it names no other origin and never hands
  data to an HTML parser; it needs no token while the API behind it does.
- In real headless Chromium (Debian's ``chromium``, driven by Playwright with
  ``executable_path``; no browser is downloaded): a real ``botd server`` with a token, three
  real ``botd run`` bots and a demo-sized batch of jobs. The page asks for the token (and
  refuses a wrong one), then shows the bots with their state, counts that change while the
  jobs run, a sparkline, and the dead and failed jobs with their error text, escaped; a
  delayed job shows as scheduled with its due time, and a dead job's Retry button queues it
  again (a POST with the token). It keeps the token in session storage only and makes no
  request to another origin. A screenshot is saved under ``tmp_path`` and
  ``$BOTD_TEST_ARTIFACTS`` (default ``.artifacts/`` in the repo), also when the test fails.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from playwright.sync_api import ConsoleMessage, Page, Request, expect, sync_playwright

from tests.support.paths import REPO
from tests.support.procs import (
    Proc,
    Procs,
    bot_env,
    free_ports,
    server_up,
    wait_for,
)
from tests.support.server import asgi_client, make_app

TOKEN = "dash-token-5f1c9a"
LEASE_TTL_S = 2.5
SIMULATED_JOBS = 60
DOOMED_JOBS = 2
XSS_BOT = '<img src="x" id="xss-bot">bot'
XSS_MESSAGE = '<img src="x" id="xss-msg"> & <b id="xss-b">not bold</b>'


# --- the page itself, in-process ---------------------------------------------------------


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


async def test_page_is_self_contained_html_under_a_strict_csp(
    autojump_clock: trio.abc.Clock,
) -> None:
    app, _ = make_app()
    async with asgi_client(app) as client:
        resp = await client.get("/")
        post = await client.post("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    html = resp.text
    directives = dict(
        part.strip().split(" ", 1) for part in resp.headers["content-security-policy"].split(";")
    )
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    assert len(scripts) == 1 and len(styles) == 1
    assert directives == {
        "default-src": "'none'",
        "script-src": _csp_hash(scripts[0]),
        "style-src": _csp_hash(styles[0]),
        "connect-src": "'self'",
        "img-src": "data:",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
    }
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["referrer-policy"] == "no-referrer"
    # Nothing from elsewhere: no absolute URL, no external script, style or image.
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<script[^>]*\bsrc=|<link[^>]*stylesheet|@import|url\(", html)
    assert all(ref.startswith("data:") for ref in re.findall(r'(?:src|href)="([^"]*)"', html))
    # Data never goes through an HTML parser, and the token never goes to localStorage.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in html
    assert "localStorage" not in html
    assert "sessionStorage" in html
    assert post.status_code == 405


async def test_page_needs_no_token_but_its_data_does(autojump_clock: trio.abc.Clock) -> None:
    app, _ = make_app(token=TOKEN)
    async with asgi_client(app) as client:
        page = await client.get("/")
        stats = await client.get("/v1/stats")
        authed = await client.get("/v1/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert page.status_code == 200
    assert TOKEN not in page.text
    assert stats.status_code == 401
    assert authed.status_code == 200


# --- the page in a real browser, on a real fleet -----------------------------------------


def _artifact_dirs(tmp_path: Path) -> list[Path]:
    shared = Path(os.environ.get("BOTD_TEST_ARTIFACTS") or REPO / ".artifacts")
    return [tmp_path, shared]


def _screenshot(page: Page, tmp_path: Path, name: str) -> None:
    for where in _artifact_dirs(tmp_path):
        where.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(where / name), full_page=True)


def _submit(api: httpx.Client, kind: str, payload: Any, **spec: Any) -> str:
    resp = api.post("/v1/jobs", json={"kind": kind, "payload": payload, **spec})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["job_id"])


def _stats(api: httpx.Client) -> dict[str, int]:
    return dict(api.get("/v1/stats").json()["jobs"])


def _fail_one_job_by_hand(api: httpx.Client) -> str:
    """A bot with markup in its id claims an ``xss`` job and fails it with markup too."""
    job_id = _submit(api, "xss", None, max_attempts=1)
    reg = api.post("/v1/bots/register", json={"bot_id": XSS_BOT, "hostname": "<i>h</i>"})
    assert reg.status_code == 200, reg.text
    session = reg.json()["session_id"]
    claim = api.post(
        "/v1/jobs/claim",
        json={"bot_id": XSS_BOT, "session_id": session, "max_jobs": 1, "kinds": ["xss"]},
    ).json()
    assert [j["job_id"] for j in claim["jobs"]] == [job_id]
    lease_id = claim["jobs"][0]["lease_id"]
    ack = api.post(
        f"/v1/leases/{lease_id}/ack",
        json={
            "lease_id": lease_id,
            "outcome": "failed",
            "error": {"type": "markup", "message": XSS_MESSAGE, "retryable": False},
        },
    )
    assert ack.status_code == 200, ack.text
    return job_id


@pytest.mark.slow
def test_dashboard_in_chromium_during_a_run(procs: Procs, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (nox's tests session installs it)"
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    # The token through env BOTD_SERVER_TOKEN (procs.server): --token warns that ps shows it.
    server = procs.server("server", port, tmp_path / "jobs.db", lease_ttl=LEASE_TTL_S,
                          heartbeat=0.3, token=TOKEN)  # fmt: skip
    wait_for("the server to answer", lambda: server_up(url), (server,))

    def bot(name: str, kinds: str, **extra: str) -> Proc:
        env = bot_env(name, url, None, None, BOT_TOKEN=TOKEN, BOT_KINDS=kinds, **extra)
        return procs.bot(name, env)

    workers = [
        bot(name, "simulate", FAILURE_RATE="0.2", PROCESSING_DURATION_MS="250",
            BOT_CONCURRENCY="2")
        for name in ("bot-1", "bot-2")
    ]  # fmt: skip
    doomed_bot = bot("bot-doomed", "doomed", BOT_CONCURRENCY="4")
    fleet = (server, *workers, doomed_bot)

    requests: list[Request] = []
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        # Chromium logs each 401 it gets as a failed resource; anything else is a fault
        # (a CSP violation, a script error).
        if msg.type == "error" and "status of 401" not in msg.text:
            problems.append(f"console: {msg.text}")

    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=auth, timeout=5.0) as api, sync_playwright() as pw:
        wait_for(
            "three active bots",
            lambda: True if api.get("/v1/stats").json()["bots"]["active"] == 3 else None,
            fleet,
        )
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15_000)
        expect.set_options(timeout=15_000)
        page.on("request", lambda req: requests.append(req))
        page.on("console", on_console)
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        try:
            _drive(page, api, url, fleet, doomed_bot)
            _screenshot(page, tmp_path, "dashboard.png")
            storage = page.evaluate(
                "() => [Object.assign({}, sessionStorage), localStorage.length, location.href]"
            )
        except BaseException:
            with contextlib.suppress(Exception):
                _screenshot(page, tmp_path, "dashboard-failed.png")
            raise
        finally:
            browser.close()

    session_storage, local_items, href = storage
    assert list(session_storage.values()) == [TOKEN]
    assert local_items == 0
    assert TOKEN not in href
    assert requests
    for req in requests:
        assert req.url.startswith(f"{url}/") or req.url.startswith("data:"), req.url
        assert TOKEN not in req.url
    api_calls = [r for r in requests if r.url.startswith(f"{url}/v1/")]
    authed = [r for r in api_calls if r.headers.get("authorization") == f"Bearer {TOKEN}"]
    assert len(authed) >= 10  # it polled, with the token, many times
    posts = [r for r in api_calls if r.method == "POST"]
    assert [r.url.rsplit("/", 1)[-1] for r in posts] == ["retry"]
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in posts)
    assert problems == []
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


# Test code run in the page (CDP, not subject to its CSP): keep each new value of the shown
# succeeded count, as the page renders it.
_RECORD_SUCCEEDED = """() => {
  const node = document.querySelector("#count-succeeded b");
  const shown = window.__succeededShown = [node.textContent];
  new MutationObserver(() => {
    if (shown[shown.length - 1] !== node.textContent) shown.push(node.textContent);
  }).observe(node, {childList: true, characterData: true, subtree: true});
}"""


def _drive(page: Page, api: httpx.Client, url: str, fleet: tuple[Proc, ...], doomed: Proc) -> None:
    # The token form: a wrong token is refused, the right one opens the page.
    page.goto(f"{url}/")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#main")).to_be_hidden()
    page.fill("#token", "not-the-token")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-msg")).to_have_text("The server refused that token.")
    page.fill("#token", TOKEN)
    page.click("#login button[type=submit]")
    expect(page.locator("#main")).to_be_visible()
    expect(page.locator("#conn")).to_contain_text("live")

    bots = page.locator("#bots tbody")
    for name in ("bot-1", "bot-2", "bot-doomed"):
        row = bots.locator("tr", has=page.locator("td.id", has_text=name))
        expect(row).to_contain_text("active")
        expect(row.locator("td").nth(2)).to_have_text(re.compile(r"^(ready|processing)$"))
        expect(row.locator("td").nth(3)).to_contain_text(re.compile(r"ago|just now"))
    expect(page.locator("#count-queued b")).to_have_text("0")

    # Record every succeeded count the page renders from here on.
    page.evaluate(_RECORD_SUCCEEDED)

    # A demo-sized batch: retries (FAILURE_RATE), failures (permanent, or 1 attempt), and
    # jobs whose bot dies holding them (dead once their leases expire).
    for i in range(SIMULATED_JOBS):
        payload: dict[str, Any] = {"permanent": True} if i % 20 == 0 else {"n": i}
        _submit(api, "simulate", payload, max_attempts=1 if i % 4 == 1 else 3)
    doomed_ids = [
        _submit(api, "doomed", {"duration_ms": 60_000}, max_attempts=1) for _ in range(DOOMED_JOBS)
    ]
    xss_job = _fail_one_job_by_hand(api)

    def settled() -> bool | None:
        stats = _stats(api)
        return True if stats["queued"] == 0 and stats["leased"] == DOOMED_JOBS else None

    wait_for("the simulated jobs to finish", settled, fleet, timeout=45.0, interval=0.1)
    done = _stats(api)["succeeded"]
    expect(page.locator("#count-succeeded b")).to_have_text(str(done))
    # The counts changed while the jobs ran: the page showed the climb, poll by poll.
    shown = [int(v) for v in page.evaluate("() => window.__succeededShown")]
    assert shown == sorted(shown) and shown[-1] == done, shown
    assert len(set(shown)) >= 3, shown
    assert all(api.get(f"/v1/jobs/{j}").json()["status"] == "leased" for j in doomed_ids)

    # The doomed bot dies holding its jobs: they end dead when their leases expire.
    doomed.signal(signal.SIGKILL)
    doomed.popen.wait()

    def all_dead() -> dict[str, int] | None:
        stats = _stats(api)
        return stats if stats["dead"] >= DOOMED_JOBS and stats["leased"] == 0 else None

    final = wait_for(
        "the doomed jobs to be dead", all_dead, tuple(p for p in fleet if p is not doomed)
    )

    # The page agrees with the server, and shows what went wrong.
    expect(page.locator("#count-dead b")).to_have_text(str(final["dead"]))
    expect(page.locator("#count-failed b")).to_have_text(str(final["failed"]))
    doomed_row = bots.locator("tr", has=page.locator("td.id", has_text="bot-doomed"))
    expect(doomed_row).to_contain_text("gone")
    problems = page.locator("#problems tbody")
    for job_id in doomed_ids:
        row = problems.locator(f'tr[data-job-id="{job_id}"]')
        expect(row).to_contain_text("dead")
        expect(row).to_contain_text("lease_expired")
    expect(problems).to_contain_text("simulated permanent failure")
    # Markup from the server shows as text; it never becomes elements.
    expect(problems.locator(f'tr[data-job-id="{xss_job}"] td.msg')).to_have_text(XSS_MESSAGE)
    expect(bots.locator("td.id", has_text=XSS_BOT)).to_have_count(1)
    assert page.locator("#xss-bot, #xss-msg, #xss-b, #bots img, #problems img").count() == 0

    # A delayed job shows as scheduled, with its due time.
    later = _submit(api, "later", None, delay_s=3600)
    expect(page.locator("#scheduled")).to_contain_text("1 scheduled")
    expect(page.locator(f'#later tr[data-job-id="{later}"]')).to_contain_text(
        re.compile(r"in \d+ min")
    )

    # The Retry button of a dead job queues it again (its bot is gone: it stays queued).
    retried = doomed_ids[0]
    problems.locator(f'tr[data-job-id="{retried}"] button.retry').click()
    expect(problems.locator(f'tr[data-job-id="{retried}"]')).to_have_count(0)
    view = api.get(f"/v1/jobs/{retried}").json()
    assert (view["status"], view["attempts"]) == ("queued", 0), view
    expect(page.locator("#count-dead b")).to_have_text(str(final["dead"] - 1))

    # The sparkline drew the throughput; the page is still live.
    points = page.locator("#spark-line").get_attribute("points") or ""
    assert len(points.split()) >= 3, points
    peak = float(re.findall(r"peak ([0-9.]+)", page.locator("#rate").inner_text())[0])
    assert peak > 0
    # One more poll, so that the screenshot shows the final counts and ages.
    updated = page.locator("#conn").inner_text()
    expect(page.locator("#conn")).not_to_have_text(updated)
    expect(page.locator("#conn")).to_contain_text("live")
