"""``botd demo``: a server and a fleet of bots in one Trio run, from inside and from outside.

The demo serves over real loopback sockets (hypercorn), so these tests run in real time with
short jobs and generous deadlines; the formatting tests need no clock at all.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
import trio
from rich.console import Console

from botd.cli import main
from botd.demo import (
    BotReport,
    BotRow,
    DemoOptions,
    DemoReport,
    LiveView,
    PlainView,
    Snapshot,
    format_summary,
    run_demo,
)
from tests.support.procs import BOTD, botd, clean_env, wait_for

SUBPROCESS_DEADLINE_S = 60


def _run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return botd(["demo", "--workdir", str(tmp_path), *args], clean_env({}), SUBPROCESS_DEADLINE_S)


def _figure(text: str, label: str) -> int:
    found = re.search(rf"^\s*{label}:\s+(\d+)$", text, re.MULTILINE)
    assert found is not None, f"no {label!r} line in:\n{text}"
    return int(found.group(1))


def _log_file(stdout: str) -> Path:
    found = re.search(r"^\s*logs:\s+(\S+)", stdout, re.MULTILINE)
    assert found is not None, stdout
    return Path(found.group(1))


# --- in process -------------------------------------------------------------------------


async def test_a_fleet_runs_every_job_to_a_final_status_in_one_trio_run(tmp_path: Path) -> None:
    out = io.StringIO()
    options = DemoOptions(bots=3, jobs=15, duration_ms=20, failure_rate=0.3, concurrency=2)
    with trio.fail_after(30):
        report = await run_demo(options, PlainView(out, interval=0.2), tmp_path)

    assert report.all_final, format_summary(report)
    assert report.exit_code == 0
    assert report.submitted == 15
    assert sum(report.counts[s] for s in ("succeeded", "failed", "dead", "cancelled")) == 15
    assert len(report.latencies) == 15
    assert all(lat >= 0.02 for lat in report.latencies)
    # Three agents lived side by side, each with its own lifecycle and counters.
    assert [b.bot_id for b in report.bots] == ["demo-bot-1", "demo-bot-2", "demo-bot-3"]
    assert sum(b.jobs_processed for b in report.bots) >= 15
    for bot in report.bots:
        assert bot.exit_code == 0
        assert bot.transitions["ready"] >= 1
        assert bot.transitions["stopped"] == 1
    assert report.ended_by == "done"
    assert "all 15 jobs reached a final status" in out.getvalue()
    assert (tmp_path / "demo.db").exists()
    assert {p.name for p in (tmp_path / "bots").iterdir()} == {
        "demo-bot-1",
        "demo-bot-2",
        "demo-bot-3",
    }


# --- the views and the summary (no clock) -----------------------------------------------


def _snapshot() -> Snapshot:
    return Snapshot(
        elapsed=3.5,
        jobs=10,
        submitted=8,
        counts={"succeeded": 4, "failed": 1, "leased": 2, "queued": 1},
        server="down",
        bots=(
            BotRow("demo-bot-1", "error", (), 3, 1, (("heartbeat", "open"),)),
            BotRow("demo-bot-2", "processing", ("abcd1234#2",), 2, 0, (("heartbeat", "closed"),)),
        ),
        notes=("[  1.0s] chaos: stopping the server for 3s",),
    )


def test_the_live_view_draws_the_bar_the_bots_and_their_breakers() -> None:
    buf = io.StringIO()
    view = LiveView(Console(file=buf, width=120, force_terminal=False, color_system=None))
    view.show(_snapshot())
    view.close()
    text = buf.getvalue()
    assert "5/10 ended" in text
    assert "succeeded 4" in text
    assert "unsubmitted 2" in text
    assert "demo-bot-1" in text
    assert "error" in text
    assert "abcd1234#2" in text
    assert "heartbeat" in text
    assert "chaos: stopping the server" in text


def test_the_plain_view_prints_one_line_per_interval() -> None:
    out = io.StringIO()
    view = PlainView(out, interval=1.0)
    view.show(_snapshot())
    view.show(_snapshot())  # the same second: nothing new
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert "jobs 5/10 final" in lines[0]
    assert "demo-bot-1 error heartbeat:open" in lines[0]


def _report(**kw: object) -> DemoReport:
    base: dict[str, object] = {
        "jobs": 4,
        "submitted": 4,
        "counts": {"succeeded": 3, "failed": 1},
        "retries": 2,
        "retried_jobs": 1,
        "latencies": (0.1, 0.2, 0.3, 0.4),
        "bots": (BotReport("demo-bot-1", 5, {"ready": 2, "error": 1}, {"heartbeat": 1}, 0),),
        "wall_s": 5.0,
        "chaos": True,
        "outage": (1.0, 4.0),
        "ended_by": "done",
    }
    base.update(kw)
    return DemoReport(**base)  # type: ignore[arg-type]


def test_the_summary_has_every_figure_and_the_exit_code() -> None:
    text = format_summary(_report())
    assert "4 of 4 jobs reached a final status" in text
    assert "succeeded 3, failed 1, dead 0, cancelled 0" in text
    assert "retries:     2 (1 jobs needed more than one attempt)" in text
    assert "p50 0.25s, p99 0.40s" in text
    assert "server down from 1.0s to 4.0s (3.0s)" in text
    assert _figure(text, "error transitions") == 1
    assert _figure(text, "breaker openings") == 1
    assert text.endswith("exit 0: every job reached a final status")


def test_exit_codes_say_whether_every_job_ended() -> None:
    assert _report().exit_code == 0
    unfinished = _report(counts={"succeeded": 2, "queued": 2}, ended_by="signal")
    assert unfinished.exit_code == 1
    assert "2 not final" in format_summary(unfinished)
    assert _report(submitted=3, counts={"succeeded": 3}).exit_code == 1
    crashed = (BotReport("demo-bot-1", 0, {}, {}, 70),)
    assert _report(bots=crashed).exit_code == 70


def test_bad_flags_exit_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--workdir", str(tmp_path), "--failure-rate", "1.5"]) == 2
    assert "--failure-rate must be <= 1.0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_help_lists_the_flags_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--bots", "--jobs", "--failure-rate", "--duration-ms", "--chaos", "--view"):
        assert flag in text
    assert "exit codes:" in text


# --- the real command -------------------------------------------------------------------


def test_botd_demo_runs_every_job_to_a_final_status_and_exits_0(tmp_path: Path) -> None:
    result = _run_cli(tmp_path, "--jobs", "30", "--duration-ms", "50")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "botd demo: 30 of 30 jobs reached a final status" in out
    assert "exit 0: every job reached a final status" in out
    assert re.search(r"latency:\s+p50 \d+\.\d\ds, p99 \d+\.\d\ds", out)
    assert len(re.findall(r"^    demo-bot-\d: .* exit 0$", out, re.MULTILINE)) == 3
    # The JSON log went to its file, not into the view.
    assert not any(line.startswith("{") for line in out.splitlines())
    log = _log_file(out)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["bot_id"] for e in events} >= {"demo-bot-1", "demo-bot-2", "demo-bot-3"}


def test_botd_demo_chaos_opens_breakers_goes_to_error_and_still_ends_every_job(
    tmp_path: Path,
) -> None:
    result = _run_cli(tmp_path, "--jobs", "30", "--duration-ms", "50", "--chaos")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "botd demo: 30 of 30 jobs reached a final status" in out
    assert re.search(r"chaos:\s+server down from [\d.]+s to [\d.]+s", out), out
    assert "chaos: the server is back on the same port, same database" in out
    assert _figure(out, "error transitions") >= 1
    assert _figure(out, "breaker openings") >= 1
    events = [json.loads(line) for line in _log_file(out).read_text().splitlines()]
    assert any(e.get("event") == "breaker_opened" for e in events)
    assert sum(e.get("event") == "server_listening" for e in events) == 2


def test_ctrl_c_drains_the_bots_and_exits_1_with_the_summary(tmp_path: Path) -> None:
    stdout = tmp_path / "demo.stdout"
    with stdout.open("w") as sink:
        proc = subprocess.Popen(
            [*BOTD, "demo", "--workdir", str(tmp_path), "--jobs", "100", "--duration-ms", "800"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env({}),
        )
    try:
        wait_for(
            "jobs running",
            lambda: True if "running)" in stdout.read_text() else None,
            timeout=30,
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = stdout.read_text()
    assert "SIGINT: draining the bots" in out
    assert "(ended by: signal)" in out
    assert "exit 1: some jobs did not reach a final status" in out
    bots = re.findall(r"^    demo-bot-\d: .*shutting_down 1, stopped 1\).* exit 0$", out, re.M)
    assert len(bots) == 3, out
    # The drain let running jobs finish: nothing was cancelled, nothing died.
    assert "cancelled 0" in out
    assert "dead 0" in out


async def test_the_timeout_ends_the_run_drains_the_bots_and_reports_what_did_not_end(
    tmp_path: Path,
) -> None:
    # 40 jobs of 1.5 s on 8 slots need 7.5 s: a 3 s timeout ends the run with jobs running,
    # however long the bots take to start on a busy machine (1.2 s was seen).
    options = DemoOptions(bots=2, jobs=40, duration_ms=1500, failure_rate=0.0, timeout=3.0)
    with trio.fail_after(30):
        report = await run_demo(options, PlainView(io.StringIO()), tmp_path)
    assert report.ended_by == "timeout"
    assert not report.all_final
    assert report.exit_code == 1
    # The drain let the running jobs finish: none was cancelled or released as dead.
    assert report.counts["succeeded"] >= 1
    assert report.counts["dead"] == report.counts["cancelled"] == 0
    assert all(b.exit_code == 0 and b.transitions["shutting_down"] == 1 for b in report.bots)
    assert "never submitted" in format_summary(report) or "not final" in format_summary(report)
