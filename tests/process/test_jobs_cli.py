"""``botd submit --wait``, ``botd jobs`` and the README's producer example, as real processes
against a real ``botd server`` (with a token) and one ``botd run`` bot that claims only
``simulate`` jobs; the other kinds stay queued until a test works them by hand over HTTP.

One fleet serves the whole module. ``test_jobs_retry_status_dead_puts_dead_jobs_back`` needs
the server's side of issue 14 (``POST /v1/jobs/retry``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import attrs
import httpx
import pytest

from botd.handlers.simulate import simulated_value
from tests.support.paths import REPO
from tests.support.procs import Procs, bot_env, botd, clean_env, server_up, wait_for
from tests.support.server import free_port

pytestmark = pytest.mark.slow

DEADLINE_S = 20.0
TOKEN = "s3cret-producer"
LEASE_TTL_S = 1.0


@attrs.frozen
class Fleet:
    url: str
    env: dict[str, str]  # a producer's: the server and the token

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return botd(list(args), {**self.env, **extra})

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10.0
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    with Procs(tmp) as procs:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = procs.server("server", port, tmp / "jobs.db", lease_ttl=LEASE_TTL_S,
                              token=TOKEN)  # fmt: skip
        wait_for("the server", lambda: server_up(url), (server,))
        procs.bot("bot", bot_env("bot-1", url, tmp / "state", None, BOT_TOKEN=TOKEN,
                                 BOT_KINDS="simulate"))  # fmt: skip
        yield Fleet(url, clean_env({"MAIN_SERVER_URL": url, "BOTD_TOKEN": TOKEN}))


def claim_by_hand(fleet: Fleet, kind: str) -> list[dict[str, Any]]:
    """Claim the queued jobs of ``kind`` as a bot that then says nothing more."""
    with fleet.http() as http:
        session = http.post("/v1/bots/register", json={"bot_id": f"hand-{kind}"}).json()
        body = {"bot_id": f"hand-{kind}", "session_id": session["session_id"],
                "max_jobs": 10, "kinds": [kind]}  # fmt: skip
        jobs: list[dict[str, Any]] = http.post("/v1/jobs/claim", json=body).json()["jobs"]
    return jobs


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- producer-example:start", 1)[1].split("<!-- producer-example:end")[0]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_producer_example_runs_as_written(fleet: Fleet) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 11
    done = subprocess.run([sys.executable, "-c", code], env=fleet.env, capture_output=True,
                          text=True, timeout=DEADLINE_S, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"result: {{'value': {simulated_value({'order': 17})}}}\n"


def test_submit_wait_prints_the_result_or_says_why_the_job_failed(fleet: Fleet) -> None:
    ok = fleet.cli("submit", "--kind", "simulate", "--payload", '{"n": 5}', "--wait")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"value": simulated_value({"n": 5})}
    failed = fleet.cli("submit", "--kind", "simulate", "--payload", '{"fail": true}',
                       "--max-attempts", "1", "--wait", "--wait-timeout", "30")  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout == ""
    assert "ended failed: simulated_failure" in failed.stderr


def test_submit_wait_exits_2_on_its_timeout_and_1_when_the_job_is_cancelled(
    fleet: Fleet, tmp_path: Any
) -> None:
    late = fleet.cli("submit", "--kind", "manual", "--wait", "--wait-timeout", "0.5")
    assert late.returncode == 2, late.stderr
    assert "still queued after 0.5s" in late.stderr and "botd jobs wait" in late.stderr
    with Procs(tmp_path) as procs:
        waiting = procs.spawn("submit", ["submit", "--kind", "manual", "--wait"], fleet.env)
        found = wait_for("its job id", lambda: re.search(r"job (\w+) queued", waiting.err()),
                         (waiting,))  # fmt: skip
        cancelled = fleet.cli("jobs", "cancel", found[1])
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"{found[1]}  manual  cancelled  0/3" in cancelled.stdout
        assert waiting.wait(DEADLINE_S) == 1
    assert f"job {found[1]} ended cancelled" in waiting.err()


def test_jobs_wait_returns_soon_after_the_job_finishes(fleet: Fleet, tmp_path: Any) -> None:
    submitted = fleet.cli("submit", "--kind", "byhand", "--payload", '{"n": 1}')
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    with Procs(tmp_path) as procs:
        waiting = procs.spawn("wait", ["jobs", "wait", job_id, "--timeout", "30"], fleet.env)
        time.sleep(1.0)
        assert waiting.alive(), waiting.tail()  # it waits for a queued job
        (claimed,) = claim_by_hand(fleet, "byhand")
        with fleet.http() as http:
            ack = {"lease_id": claimed["lease_id"], "outcome": "succeeded", "result": [42]}
            http.post(f"/v1/leases/{claimed['lease_id']}/ack", json=ack).raise_for_status()
        acked = time.monotonic()
        assert waiting.wait(DEADLINE_S) == 0, waiting.tail()
        assert time.monotonic() - acked < 10  # not the 30 s of its --timeout
    assert waiting.out() == f"{job_id}  byhand  succeeded  1/3  [42]\n"


def test_jobs_exit_codes_and_token_sources(fleet: Fleet, tmp_path: Any) -> None:
    unknown = fleet.cli("jobs", "get", "nope")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert "no such job (404 unknown_job)" in unknown.stderr
    anonymous = botd(["jobs", "list"], clean_env({"MAIN_SERVER_URL": fleet.url}))
    assert anonymous.returncode == 1
    assert all(w in anonymous.stderr for w in ("--token", "BOTD_TOKEN", "BOTD_TOKEN_FILE"))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    by_file = botd(["jobs", "list", "--json", "--token-file", str(token_file)],
                   clean_env({"MAIN_SERVER_URL": fleet.url}))  # fmt: skip
    assert by_file.returncode == 0, by_file.stderr
    assert isinstance(json.loads(by_file.stdout), list)
    by_env = botd(["jobs", "list"], clean_env({"MAIN_SERVER_URL": fleet.url,
                                               "BOTD_TOKEN_FILE": str(token_file)}))  # fmt: skip
    assert by_env.returncode == 0, by_env.stderr
    nobody = fleet.cli("jobs", "get", "x", "--server", f"http://127.0.0.1:{free_port()}")
    assert nobody.returncode == 2
    assert "cannot reach" in nobody.stderr
    for bad in (["jobs", "retry"], ["jobs", "list", "--limit", "0"], ["jobs", "frobnicate"],
                ["submit", "--kind", "k", "--run-at", "tomorrow"],
                ["submit", "--kind", "k", "--wait", "--count", "2"]):  # fmt: skip
        done = fleet.cli(*bad)
        assert done.returncode == 2, (bad, done.stderr)
        assert done.stderr


def test_jobs_retry_status_dead_puts_dead_jobs_back(fleet: Fleet) -> None:
    """Needs the server's side of issue 14: ``POST /v1/jobs/retry``."""
    ids = [fleet.cli("submit", "--kind", "doomed", "--max-attempts", "1").stdout.strip()
           for _ in range(2)]  # fmt: skip
    assert len(claim_by_hand(fleet, "doomed")) == 2  # and then silence: the leases expire

    def dead() -> list[Any] | None:
        listed = fleet.cli("jobs", "list", "--status", "dead", "--json")
        views = [v for v in json.loads(listed.stdout) if v["kind"] == "doomed"]
        return views if len(views) == 2 else None

    wait_for("both jobs dead", dead)
    retried = fleet.cli("jobs", "retry", "--status", "dead", "--kind", "doomed")
    assert retried.returncode == 0, retried.stderr
    assert sorted(retried.stdout.split()) == sorted(ids)
    for job_id in ids:
        got = fleet.cli("jobs", "get", job_id, "--json")
        assert json.loads(got.stdout)["status"] == "queued"
    again = fleet.cli("jobs", "retry", ids[0])
    assert again.returncode == 1
    assert "cannot be retried" in again.stderr
    # The cause is gone (this bot acks): each job succeeds, on the fresh attempt budget.
    claimed = claim_by_hand(fleet, "doomed")
    assert sorted(job["job_id"] for job in claimed) == sorted(ids)
    assert all(job["attempt"] == 1 for job in claimed)
    with fleet.http() as http:
        for job in claimed:
            ack = {"lease_id": job["lease_id"], "outcome": "succeeded", "result": "ok"}
            http.post(f"/v1/leases/{job['lease_id']}/ack", json=ack).raise_for_status()
    for job_id in ids:
        got = fleet.cli("jobs", "get", job_id, "--json")
        assert json.loads(got.stdout)["status"] == "succeeded"
