"""``botd conformance URL`` as a user runs it: against ``botd server`` every check passes
(SQLite and PostgreSQL), a broken server fails by name, and the exit codes mean what
``--help`` says. Real processes, real sockets, real time.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from botd.conformance import SUITE, run_suite, select
from tests.support.broken_servers import DEFECTS, broken_server
from tests.support.procs import BOTD, Procs, botd, clean_env, free_ports, server_up, wait_for
from tests.support.server import running_server

pytestmark = pytest.mark.slow

TOKEN = "conformance-secret-token"


def conformance(args: list[str], **env: str) -> tuple[int, str, str]:
    done = botd(["conformance", *args], clean_env(env), timeout=240)
    return done.returncode, done.stdout, done.stderr


def started_server(procs: Procs, db: str, *, lease_ttl: float = 2.0) -> str:
    (port,) = free_ports(1)
    proc = procs.server("server", port, db, lease_ttl=lease_ttl, heartbeat=0.5, token=TOKEN)
    url = f"http://127.0.0.1:{port}"
    wait_for("the server", lambda: server_up(url), (proc,))
    return url


def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def passes_everything(report: dict[str, Any]) -> None:
    shown = json.dumps([c for c in report["checks"] if c["status"] != "pass"], indent=1)
    assert report["failed"] == 0, shown
    assert report["skipped"] == 0, shown
    assert report["passed"] == len(SUITE)
    assert report["exit_code"] == 0
    assert report["leftovers"] == []


def test_botd_server_on_sqlite_passes_every_check(procs: Procs, tmp_path: Path) -> None:
    url = started_server(procs, str(tmp_path / "jobs.db"))
    code, out, err = conformance([url, "--json"], BOTD_TOKEN_FILE=str(token_file(tmp_path)))
    assert code == 0, out + err
    passes_everything(json.loads(out))
    assert not any(
        '"level":"ERROR"' in line.replace(" ", "") for line in procs.all[0].out().splitlines()
    )


def test_botd_server_on_postgres_passes_every_check(
    procs: Procs, tmp_path: Path, pg_dsn: str
) -> None:
    url = started_server(procs, pg_dsn)
    code, out, err = conformance([url, "--json"], BOTD_TOKEN=TOKEN)
    assert code == 0, out + err
    passes_everything(json.loads(out))


async def test_a_server_that_answers_a_repeated_ack_with_409_fails_by_name() -> None:
    async with broken_server(DEFECTS["repeated_ack_is_409"], lease_ttl=30.0) as url:
        done = await trio.run_process(
            [*BOTD, "conformance", url],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=clean_env({}),
        )
    out = done.stdout.decode()
    assert done.returncode == 1, out + done.stderr.decode()
    lines = out.splitlines()
    failing = [line for line in lines if line.startswith("FAIL")]
    assert len(failing) == 1 and failing[0].split()[1] == "ack.duplicate", out
    detail = lines[lines.index(failing[0]) + 1 : lines.index(failing[0]) + 4]
    assert detail[0].strip().startswith('expected: 200 {"status": "duplicate"}'), detail
    assert detail[1].strip().startswith("got:      409"), detail
    assert detail[2].strip().startswith("request:  POST /v1/leases/"), detail
    assert "failed: ack.duplicate" in out
    # The lease TTL is 30 s: the checks that wait it out say why they did not run.
    skipped = [line for line in lines if line.startswith("SKIP")]
    assert {line.split()[1] for line in skipped} == {
        "auth.required", "bots.gone", "lease.expiry", "lease.unlisted_released"
    }  # fmt: skip
    assert all("--slow" in line for line in skipped if "auth" not in line)


async def test_slow_checks_run_with_slow_and_say_why_without() -> None:
    async with running_server(lease_ttl=12.0, heartbeat_interval=0.5) as url:
        quick = await run_suite(url, checks=select(["health", "lease.unlisted_released"]))
        slow = await run_suite(url, slow=True, checks=select(["lease.unlisted_released"]))
    assert [v.status for v in quick.verdicts] == ["pass", "skip"]
    assert "lease_ttl_s is 12 s (over 10 s); run with --slow" in quick.verdicts[1].reason
    assert quick.exit_code == 0
    assert [v.status for v in slow.verdicts] == ["pass"], slow.verdicts


async def test_exit_2_when_the_server_cannot_be_used(tmp_path: Path) -> None:
    (port,) = free_ports(1)

    def run(*args: str, **env: str) -> tuple[int, str, str]:
        return conformance(list(args), **env)

    code, _, err = await trio.to_thread.run_sync(run, f"http://127.0.0.1:{port}")
    assert code == 2 and "no answer from the server" in err, err
    async with running_server(token=TOKEN) as url:
        code, _, err = await trio.to_thread.run_sync(run, url)
        assert code == 2 and "wants a token" in err and "BOTD_TOKEN" in err, err
        code, _, err = await trio.to_thread.run_sync(partial_run(run, url, "--token", "wrong"))
        assert code == 2 and "refused the token" in err, err
        assert "wrong" not in err
        code, out, err = await trio.to_thread.run_sync(
            partial_run(
                run, url, "--only", "health,jobs.stats", "--token-file", str(token_file(tmp_path))
            )
        )
        assert code == 0, out + err
        assert [line.split()[:2] for line in out.splitlines()[:2]] == [
            ["PASS", "health"], ["PASS", "jobs.stats"]
        ]  # fmt: skip
    code, _, err = await trio.to_thread.run_sync(
        partial_run(run, "http://127.0.0.1:1", "--only", "nope")
    )
    assert code == 2 and "no check named nope" in err, err
    code, _, err = await trio.to_thread.run_sync(partial_run(run, "ftp://example"))
    assert code == 2 and "not an http:// or https:// URL" in err, err
    code, _, err = await trio.to_thread.run_sync(partial_run(run))
    assert code == 2 and "give the server's URL" in err, err
    code, _, err = await trio.to_thread.run_sync(
        partial_run(run, "http://127.0.0.1:1", "--token-file", "/nonexistent/token")
    )
    assert code == 2 and "cannot read the token file" in err, err


def partial_run(fn: Any, *args: str) -> Any:
    return lambda: fn(*args)


def test_list_and_help_name_every_check_and_the_exit_codes() -> None:
    code, out, _ = conformance(["--list"])
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == [c.name for c in SUITE]
    code, out, _ = conformance(["--help"])
    assert code == 0
    text = " ".join(out.split())
    for words in ("never claims a real job", "--slow", "exit codes:", "2 the server could not"):
        assert words in text, words
