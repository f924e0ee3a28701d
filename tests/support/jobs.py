"""Job helpers for the handler tests: async callables for ``python``, and an exec script.

As a module, it holds callables for ``PythonHandler("tests.support.jobs:<name>")``.
As a script (``python tests/support/jobs.py MODE``), it is a command for ``ExecHandler``:
it reads the job JSON from stdin and behaves as MODE says (see ``MODES``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

SCRIPT = Path(__file__).resolve()

# --- python handler callables -----------------------------------------------------------


async def echo(job: Any) -> Any:
    """Return the job's payload and attempt."""
    await trio.sleep(0)
    return {"payload": job.payload, "attempt": job.attempt, "job_id": job.job_id}


async def permanent(job: Any) -> Any:
    from botd.errors import PermanentError

    raise PermanentError(f"job {job.job_id} cannot succeed")


async def not_json(job: Any) -> Any:
    return {"when": object()}


async def sized(job: Any) -> Any:
    """A result of ``payload["bytes"]`` characters (a small one without it)."""
    size = (job.payload or {}).get("bytes")
    return {"blob": "x" * size} if size else {"ok": job.job_id}


async def boom(job: Any) -> Any:
    raise ValueError("boom")


async def slow(job: Any) -> Any:
    await trio.sleep(3600)
    return "never"


def not_async(job: Any) -> Any:
    return 1


NOT_CALLABLE = 42


# --- the exec script --------------------------------------------------------------------


def _job() -> dict[str, Any]:
    return json.loads(sys.stdin.read())


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _spawn_sleepers(marker: str, count: int = 2) -> list[int]:
    """Start ``sleep`` grandchildren in our process group; ``marker`` is their argument."""
    return [subprocess.Popen(["sleep", marker]).pid for _ in range(count)]


def main(mode: str) -> int:
    job = _job()
    payload = job.get("payload") or {}
    if mode == "json":
        print("some log line")
        print(
            json.dumps(
                {
                    "payload": payload,
                    "env": {
                        k: os.environ.get(k, "")
                        for k in ("BOTD_JOB_ID", "BOTD_LEASE_ID", "BOTD_ATTEMPT")
                    },
                    "lease_id": job["lease_id"],
                }
            )
        )
        print("")
        return 0
    if mode == "plain":
        sys.stdout.write("hello\nworld\n")
        return 0
    if mode == "big":
        sys.stdout.write("x" * 200_000 + "\n")
        return 0
    if mode == "fail":
        sys.stderr.write("e" * 5000 + "\nthe last words\n")
        return 3
    if mode in ("stubborn", "polite"):
        # Write our group and grandchildren to payload["pidfile"], then sleep forever.
        # stubborn ignores SIGTERM (and notes it); polite exits on it.
        notes = payload["pidfile"] + ".term"
        if mode == "stubborn":

            def note(_sig: int, _frame: Any) -> None:
                with open(notes, "a") as f:
                    f.write("TERM\n")

            signal.signal(signal.SIGTERM, note)
        kids = _spawn_sleepers(payload["marker"])
        _write(
            payload["pidfile"],
            json.dumps({"pgid": os.getpgid(0), "pid": os.getpid(), "kids": kids}),
        )
        while True:
            time.sleep(1000)
    if mode == "leave-behind":
        # Exit at once, leaving grandchildren that hold stdout open.
        kids = _spawn_sleepers(payload["marker"])
        _write(
            payload["pidfile"],
            json.dumps({"pgid": os.getpgid(0), "pid": os.getpid(), "kids": kids}),
        )
        print(json.dumps({"left": len(kids)}))
        return 0
    print(f"unknown mode {mode!r}", file=sys.stderr)
    return 2


MODES = ("json", "plain", "big", "fail", "stubborn", "polite", "leave-behind")

if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))


# --- process inspection (for "no process left behind") ---------------------------------


def _live_stats() -> list[tuple[int, str, list[str]]]:
    """(pid, state, stat fields after the command name) of every process in /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        out.append((int(entry.name), fields[0], fields))
    return out


def children_of(pid: int) -> list[int]:
    """Pids of the live processes whose parent is ``pid`` (zombies do not count)."""
    return [child for child, state, f in _live_stats() if int(f[1]) == pid and state not in "ZX"]


def live_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies."""
    return [pid for pid, state, f in _live_stats() if int(f[2]) == pgid and state not in "ZX"]


def live_with_arg(marker: str) -> list[int]:
    """Pids of live (non-zombie) processes that have ``marker`` as an argument."""
    found = []
    for pid, state, _f in _live_stats():
        if state in "ZX":
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv:
            found.append(pid)
    return found
