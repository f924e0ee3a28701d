"""Process groups of exec jobs: each command runs in a group of its own, stopped as a whole.

:func:`spawn` starts a command in a new session (its own process group, whose pgid is the
command's pid); :func:`stop_group` SIGTERMs the group, SIGKILLs it after a grace and waits
until it is gone; :func:`group_alive` tells whether a member is left. While a job runs, a
record ``<groups_dir>/<pgid>`` holds its lease id (0600, never through a symlink;
:func:`write_record`, :func:`remove_record`), so that :func:`reap_leftover_groups` in a
restarted bot stops what a SIGKILLed one left running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio
from loguru import logger

from ..state_files import make_private_dir, read_private, write_private

__all__ = [
    "GROUPS_DIR",
    "group_alive",
    "reap_leftover_groups",
    "remove_record",
    "spawn",
    "stop_group",
    "write_record",
]

# Under BOT_STATE_DIR: one record per running exec job (file name: the pgid; text: the lease).
GROUPS_DIR = "exec-groups"
# After SIGKILL, how long the (shielded) reaping may take before we give up and log.
REAP_DEADLINE = 5.0
GROUP_POLL_INTERVAL = 0.02


async def spawn(argv: Sequence[str], *, shell: bool, env: Mapping[str, str]) -> trio.Process:
    """Start ``argv`` in a session of its own, with pipes on stdin, stdout and stderr.

    With ``shell`` the argv is joined with spaces and run by ``sh -c``. Raises OSError when
    the command cannot be started.
    """
    options: dict[str, Any] = {
        "stdin": subprocess.PIPE,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "env": dict(env),
        "start_new_session": True,
    }
    if shell:
        return await trio.lowlevel.open_process(" ".join(argv), shell=True, **options)
    return await trio.lowlevel.open_process(list(argv), **options)


def _live_members(pgid: int) -> list[int]:
    """Pids of the group's members that are not zombies, from /proc ([] without /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    """True while the process group has a member that is not a zombie.

    Zombies are ignored: an orphan's zombie waits on its new parent (often a PID 1 that
    never reaps), and it holds no resources but a pid.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path("/proc").is_dir() or bool(_live_members(pgid))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


async def _wait_group_gone(process: trio.Process) -> None:
    await process.wait()
    # No event tells us when the last member of a group is gone: poll /proc.
    while group_alive(process.pid):  # noqa: ASYNC110
        await trio.sleep(GROUP_POLL_INTERVAL)


async def stop_group(process: trio.Process, kill_grace: float) -> None:
    """SIGTERM the group, SIGKILL it after ``kill_grace``, and wait until it is gone.

    Returns at once when the group is gone already; gives up (and logs) when it survives
    SIGKILL for ``REAP_DEADLINE`` seconds, all on Trio's clock.
    """
    if process.poll() is not None and not group_alive(process.pid):
        return
    _signal_group(process.pid, signal.SIGTERM)
    with trio.move_on_after(kill_grace):
        await _wait_group_gone(process)
        return
    logger.warning(
        "exec: process group {} outlived SIGTERM by {:g}s; sending SIGKILL",
        process.pid,
        kill_grace,
    )
    _signal_group(process.pid, signal.SIGKILL)
    with trio.move_on_after(REAP_DEADLINE):
        await _wait_group_gone(process)
        return
    logger.error("exec: process group {} survived SIGKILL for {:g}s", process.pid, REAP_DEADLINE)


def write_record(groups_dir: Path, pgid: int, lease_id: str) -> None:
    """Record that group ``pgid`` runs the job of ``lease_id`` (blocking; logs an OSError)."""
    record = groups_dir / str(pgid)
    try:
        make_private_dir(record.parent)
        write_private(record, lease_id.encode())
    except OSError as exc:
        logger.warning("exec: cannot record the job's process group in {}: {}", record, exc)


def remove_record(groups_dir: Path, pgid: int) -> None:
    """Remove the record of group ``pgid`` (blocking; a missing record is fine)."""
    with contextlib.suppress(OSError):
        (groups_dir / str(pgid)).unlink()


def reap_leftover_groups(groups_dir: Path) -> int:
    """SIGKILL what exec jobs of an earlier run left running; returns how many processes.

    A bot that is SIGKILLed cannot stop its exec jobs: they run in sessions of their own,
    so nothing else stops them either (supervisord's ``stopasgroup`` reaches only the bot's
    group). Each running job leaves a record ``<groups_dir>/<pgid>`` holding its lease id; a
    process of that group whose environment still has ``BOTD_LEASE_ID=<lease>`` is one of
    them (a reused pid does not match) and is killed. The server gives the job to a bot
    again, so the orphan would only duplicate the work. Blocking: call it through
    ``trio.to_thread`` with the state dir locked. Records that cannot be read are removed.
    """
    make_private_dir(groups_dir)
    killed = 0
    for record in groups_dir.iterdir():
        try:
            pgid = int(record.name)
            marker = b"BOTD_LEASE_ID=" + read_private(record, 256).strip()
        except (ValueError, OSError):
            pgid, marker = 0, b""
        for pid in _live_members(pgid) if pgid > 1 and marker else ():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in environ:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        with contextlib.suppress(OSError):
            record.unlink()
    return killed
