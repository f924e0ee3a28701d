"""Identity across real processes: ``botd server --tokens-file`` with worker, producer and
admin tokens, real ``botd run`` bots, SIGHUP. Real time, short intervals, generous deadlines.

- a second ``botd run`` with bot A's BOT_ID and a worker token gets bot_id_in_use, says so
  once, keeps trying and takes nothing; A, SIGKILLed and restarted with its state dir,
  registers again at once (it proves continuity with the token in ``<state>/session``);
- SIGHUP re-reads the tokens file: a token added works, a token removed is refused, a bad
  file keeps the tokens in force; a bad file at start is exit 78;
- the same with one token a line (``ROLE:TOKEN``, a bare ``TOKEN`` is admin): a bot with
  its worker token runs jobs, SIGHUP adds a token, a bad line is named, never shown.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.procs import (
    Proc,
    Procs,
    bot_env,
    botd,
    clean_env,
    free_ports,
    server_up,
    wait_for,
)

pytestmark = pytest.mark.slow

WORKER_A = "worker-a-token-0123456789"
WORKER_B = "worker-b-token-0123456789"
PRODUCER = "producer-token-0123456789"
ADMIN = "admin-token-0123456789abc"


def tokens_toml(*entries: tuple[str, str]) -> str:
    return "".join(f'[[tokens]]\nrole = "{role}"\ntoken = "{token}"\n\n' for role, token in entries)


def write_tokens(path: Path, *entries: tuple[str, str], mode: int = 0o600) -> None:
    path.write_text(tokens_toml(*entries))
    os.chmod(path, mode)


def start_server(procs: Procs, tmp_path: Path, tokens: Path, *, lease_ttl: float) -> str:
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    args = ["server", "--port", str(port), "--db", str(tmp_path / "jobs.db"),
            "--lease-ttl", f"{lease_ttl:g}", "--heartbeat-interval", "0.3",
            "--tokens-file", str(tokens), "--log-format", "json"]  # fmt: skip
    server = procs.spawn("server", args, clean_env({}))
    wait_for("the server", lambda: server_up(url), (server,))
    return url


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def run_job(url: str, procs: tuple[Any, ...]) -> None:
    resp = httpx.post(f"{url}/v1/jobs", json={"kind": "simulate"}, headers=as_(PRODUCER))
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["job_id"]

    def done() -> bool | None:
        view = httpx.get(f"{url}/v1/jobs/{job_id}", headers=as_(PRODUCER)).json()
        return True if view["status"] == "succeeded" else None

    wait_for(f"job {job_id} to succeed", done, procs)


def test_a_live_bot_id_is_not_taken_and_its_restart_proves_continuity(
    procs: Procs, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.toml"
    write_tokens(tokens, ("worker", WORKER_A), ("worker", WORKER_B), ("producer", PRODUCER))
    # gone_after = max(20, 3 * 0.3) = 20 s: A's session stays alive long after its SIGKILL.
    url = start_server(procs, tmp_path, tokens, lease_ttl=20.0)
    a_env = bot_env("twin", url, tmp_path / "a-state", None, BOT_TOKEN=WORKER_A)
    first = procs.bot("a", a_env)
    wait_for("A to register", lambda: first.events("registered") or None, (first,))
    run_job(url, (first,))
    (tmp_path / "b-state").mkdir()
    second = procs.bot("b", bot_env("twin", url, tmp_path / "b-state", None, BOT_TOKEN=WORKER_B))
    [conflict] = wait_for(
        "B's bot_id_conflict", lambda: second.events("bot_id_conflict") or None, (second,)
    )
    assert conflict["level"] == "ERROR" and conflict["holder_pid"] == first.pid
    time.sleep(2.0)  # B keeps trying, with backoff, and takes nothing
    assert second.alive() and not second.events("registered")
    assert len(first.events("registered")) == 1  # A's session was never taken
    assert len(second.events("bot_id_conflict")) == 1
    assert all(e["level"] == "WARNING" for e in second.events("registration_failed"))
    run_job(url, (first,))
    # B cannot read A's session id: no worker token lists bots, the producer sees none.
    assert httpx.get(f"{url}/v1/bots", headers=as_(WORKER_B)).status_code == 403
    listed = httpx.get(f"{url}/v1/bots/twin", headers=as_(PRODUCER)).json()
    assert listed["session_id"] is None and listed["active_leases"] == []

    first.kill()
    killed = time.monotonic()
    again = procs.bot("a", a_env)  # the same state dir: the token of the live session
    wait_for("A to register again", lambda: len(again.events("registered")) >= 2 or None, (again,))
    assert time.monotonic() - killed < 20.0, "within the old session's gone_after"
    assert not second.events("registered")
    run_job(url, (again, second))
    kept = json.loads((tmp_path / "a-state" / "session").read_text())
    assert kept["bot_id"] == "twin"
    for proc in (first, again, second):
        assert kept["session_token"] not in proc.out() + proc.err()


def reload_tokens(server: Proc, count: int) -> dict[str, Any]:
    """SIGHUP ``server`` and return its ``count``-th reload record (done or failed)."""
    server.signal(signal.SIGHUP)
    done = ("tokens_reloaded", "tokens_reload_failed")
    reloads = wait_for(
        f"reload {count}",
        lambda: [r for r in server.logs() if r.get("event") in done][count - 1 :] or None,
        (server,),
    )
    first: dict[str, Any] = reloads[0]
    return first


def test_sighup_rereads_the_tokens_file(procs: Procs, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    write_tokens(tokens, ("admin", ADMIN), mode=0o644)
    url = start_server(procs, tmp_path, tokens, lease_ttl=5.0)
    [server] = procs.all
    [loose] = server.events("tokens_file_readable")
    assert loose["level"] == "WARNING" and "chmod 600" in loose["msg"]

    def stats(token: str) -> int:
        return httpx.get(f"{url}/v1/stats", headers=as_(token)).status_code

    assert (stats(ADMIN), stats(PRODUCER)) == (200, 401)
    write_tokens(tokens, ("admin", ADMIN), ("producer", PRODUCER))
    assert reload_tokens(server, 1)["event"] == "tokens_reloaded"
    assert (stats(ADMIN), stats(PRODUCER)) == (200, 200)  # added
    write_tokens(tokens, ("producer", PRODUCER))
    assert reload_tokens(server, 2)["event"] == "tokens_reloaded"
    assert (stats(ADMIN), stats(PRODUCER)) == (401, 200)  # removed
    tokens.write_text(tokens_toml(("producer", PRODUCER)) + '[[tokens]]\nrole = "boss"\n')
    failed = reload_tokens(server, 3)
    assert failed["event"] == "tokens_reload_failed" and failed["level"] == "ERROR"
    assert "entry 2" in failed["error"] and PRODUCER not in failed["error"]
    assert stats(PRODUCER) == 200  # the tokens in force stay
    assert server.alive()
    logged = server.out() + server.err()
    assert PRODUCER not in logged and ADMIN not in logged


def test_a_tokens_file_of_one_token_a_line(procs: Procs, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# the fleet\nworker:{WORKER_A}\n\nproducer:{PRODUCER}\n")
    os.chmod(tokens, 0o640)
    url = start_server(procs, tmp_path, tokens, lease_ttl=5.0)
    [server] = procs.all
    [loose] = server.events("tokens_file_readable")
    assert loose["level"] == "WARNING" and "--tokens-file" in loose["msg"]
    assert "chmod 600" in loose["msg"]
    bot = procs.bot("a", bot_env("liner", url, None, None, BOT_TOKEN=WORKER_A))
    run_job(url, (bot, server))
    submitted = httpx.post(f"{url}/v1/jobs", json={"kind": "k"}, headers=as_(WORKER_A))
    assert submitted.status_code == 403  # a worker token cannot submit

    def stats(token: str) -> int:
        return httpx.get(f"{url}/v1/stats", headers=as_(token)).status_code

    assert stats(ADMIN) == 401
    tokens.write_text(tokens.read_text() + f"{ADMIN}\n")  # a bare token: admin
    reloaded = reload_tokens(server, 1)
    assert reloaded["event"] == "tokens_reloaded"
    assert reloaded["roles"] == {"worker": 1, "producer": 1, "admin": 1}
    assert stats(ADMIN) == 200
    tokens.write_text(f"worker:{WORKER_A}\nboss:{WORKER_B}\n")
    failed = reload_tokens(server, 2)
    assert failed["event"] == "tokens_reload_failed" and "line 2" in failed["error"]
    assert (stats(ADMIN), stats(PRODUCER)) == (200, 200)  # the tokens in force stay
    run_job(url, (bot, server))
    logged = server.out() + server.err() + bot.out() + bot.err()
    assert not any(token in logged for token in (WORKER_A, WORKER_B, PRODUCER, ADMIN))


def test_a_bad_tokens_file_at_start_is_exit_78(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[tokens]]\nrole = "admin"\ntoken = "{ADMIN}"\n\n[[tokens]]\nrole = 1\n')
    port = free_ports(1)[0]
    done = botd(["server", "--port", str(port), "--db", ":memory:", "--tokens-file", str(tokens)],
                clean_env({}))  # fmt: skip
    assert done.returncode == 78, done.stderr
    assert "entry 2, line 5" in done.stderr and ADMIN not in done.stderr + done.stdout
    tokens.write_text(f"{ADMIN}\n# then\nworker {WORKER_A}\n")
    done = botd(["server", "--port", str(port), "--db", ":memory:", "--tokens-file", str(tokens)],
                clean_env({}))  # fmt: skip
    assert done.returncode == 78, done.stderr
    assert "line 3" in done.stderr and "ROLE:TOKEN" in done.stderr
    assert not any(token in done.stderr + done.stdout for token in (ADMIN, WORKER_A))
