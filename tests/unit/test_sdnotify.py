"""botd.sdnotify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import itertools
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from botd.lifecycle import State
from botd.sdnotify import Notifier

STATES = [state.value for state in State]


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket in a short temp dir (AF_UNIX paths are limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sdn-") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        try:
            yield path, sock
        finally:
            sock.close()


def drain(sock: socket.socket) -> list[str]:
    """Every datagram queued on ``sock`` right now (sends are synchronous on AF_UNIX)."""
    out: list[str] = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_messages_arrive(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready()
    assert n.status("registering")
    assert n.stopping()
    assert n.watchdog()
    assert n.notify(STATUS="two\nlines", ERRNO=5)
    n.close()
    assert drain(sock) == [
        "READY=1",
        "STATUS=registering",
        "STOPPING=1",
        "WATCHDOG=1",
        "STATUS=two lines\nERRNO=5",
    ]


def test_abstract_socket() -> None:
    name = f"botd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        n.close()
        assert drain(sock) == ["READY=1"]
    finally:
        sock.close()


def test_no_socket_is_a_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready()
    assert n.watchdog_interval() is None
    n.on_transition("health_check", "ready")


def test_send_error_is_logged_not_raised(tmp_path: Path) -> None:
    messages: list[str] = []
    sink = logger.add(messages.append, level="DEBUG", format="{extra[event]} {message}")
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
        assert not n.ready()
        assert not n.stopping()
    finally:
        logger.remove(sink)
    assert len(messages) == 2
    assert all(m.startswith("sd_notify_failed ") for m in messages)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/nowhere", **env})
    assert n.watchdog_interval() == expected


async def test_run_watchdog_pings_on_trios_clock(
    listener: tuple[str, socket.socket], autojump_clock: trio.testing.MockClock
) -> None:
    path, sock = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    async with trio.open_nursery() as nursery:
        await nursery.start(n.run_watchdog)
        await trio.sleep(2.5)  # virtual: pings at 0, 1 and 2 s
        nursery.cancel_scope.cancel()
    n.close()
    assert drain(sock) == ["WATCHDOG=1"] * 3


async def test_run_watchdog_returns_without_watchdog(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    with trio.fail_after(1):
        await n.run_watchdog()
    assert drain(sock) == []


def test_transition_listener(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    walk = [
        "initializing",
        "registering",
        "health_check",
        "ready",
        "processing",
        "error",
        "registering",
        "health_check",
        "ready",
        "shutting_down",
        "stopped",
    ]
    for old, new in itertools.pairwise(walk):
        n.on_transition(old, new)
    n.close()
    assert drain(sock) == [
        "STATUS=registering",
        "STATUS=health_check",
        "READY=1\nSTATUS=ready",
        "STATUS=processing",
        "STATUS=error",
        "STATUS=registering",
        "STATUS=health_check",
        "STATUS=ready",
        "STOPPING=1\nSTATUS=shutting_down",
        "STATUS=stopped",
    ]


@given(st.lists(st.sampled_from(STATES), min_size=1, max_size=30))
def test_transition_listener_invariants(walk: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="sdn-") as tmp:
        path = str(Path(tmp) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            sock.setblocking(False)
            n = Notifier.from_env({"NOTIFY_SOCKET": path})
            got: list[str] = []
            for old, new in itertools.pairwise(["initializing", *walk]):
                n.on_transition(old, new)
                got += drain(sock)  # the kernel queues only ~10 datagrams per socket
            n.close()
    assert len(got) == len(walk)
    assert [m.splitlines()[-1] for m in got] == [f"STATUS={s}" for s in walk]
    ready_at = [i for i, m in enumerate(got) if "READY=1" in m.splitlines()]
    assert ready_at == ([walk.index("ready")] if "ready" in walk else [])
    stopping = [i for i, m in enumerate(got) if "STOPPING=1" in m.splitlines()]
    assert stopping == [i for i, s in enumerate(walk) if s == "shutting_down"]
