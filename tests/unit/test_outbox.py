"""The durable result outbox: durability, crash safety, bad state dirs, locking, conservation."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from botd.errors import StateDirError
from botd.models import Ack, FailureInfo
from botd.outbox import DB_NAME, Outbox, OutboxEntry
from tests.support.paths import REPO


def ack(n: int | str, outcome: str = "succeeded") -> Ack:
    if outcome == "failed":
        return Ack(f"lease-{n}", "failed", None, FailureInfo("timeout", "slow", True))
    return Ack(f"lease-{n}", "succeeded", {"value": n})  # type: ignore[arg-type]


async def test_in_memory_outbox(autojump_clock: Any) -> None:
    outbox = await Outbox.open(None, max_pending=2)
    assert not outbox.durable
    assert outbox.path is None
    assert await outbox.put("job-1", ack(1))
    assert not await outbox.put("job-1", ack(1))  # idempotent per lease
    assert await outbox.put(OutboxEntry("lease-2", "job-2", ack(2, "failed"), 5.0))
    assert outbox.leases() == ["lease-1", "lease-2"]
    assert outbox.full
    assert outbox.count == len(outbox) == 2
    await outbox.remove(["lease-1", "lease-unknown"])
    assert outbox.leases() == ["lease-2"]
    assert not outbox.full
    await outbox.close()


async def test_durable_across_close_and_reopen(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with await Outbox.open(state) as outbox:
        assert outbox.durable
        assert outbox.path == state / DB_NAME
        for n in range(5):
            assert await outbox.put(f"job-{n}", ack(n, "failed" if n % 2 else "succeeded"))
        await outbox.remove(["lease-1", "lease-3"])
        await outbox.mark_attempted(["lease-4"])
        before = outbox.pending()
    assert state.stat().st_mode & 0o777 == 0o700
    async with await Outbox.open(state) as again:
        assert again.pending() == before
        assert again.leases() == ["lease-0", "lease-2", "lease-4"]
        assert again.get("lease-4") is not None
        assert again.get("lease-4").attempts == 1  # type: ignore[union-attr]
        assert again.get("lease-2").ack == ack(2)  # type: ignore[union-attr]
        assert not await again.put("job-0", ack(0))  # still idempotent after reopen


async def test_updated_and_waits(autojump_clock: Any) -> None:
    outbox = await Outbox.open(None, max_pending=1)
    woke: list[str] = []
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            await outbox.wait_nonempty()
            woke.append("nonempty")
            await trio.sleep(1)
            await outbox.wait_not_full()
            woke.append("not_full")

        nursery.start_soon(waiter)
        await trio.sleep(5)
        assert woke == []
        await outbox.put("job-1", ack(1))
        assert outbox.updated.value == 1
        await trio.sleep(5)
        assert woke == ["nonempty"]
        await outbox.remove(["lease-1"])
    assert woke == ["nonempty", "not_full"]


async def test_put_survives_cancellation(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "s")
    with trio.CancelScope() as scope:
        scope.cancel()
        await outbox.put("job-1", ack(1))
    assert outbox.leases() == ["lease-1"]
    await outbox.close()
    async with await Outbox.open(tmp_path / "s") as again:
        assert again.leases() == ["lease-1"]


CRASHER = textwrap.dedent(
    """
    import sys, time, trio
    from botd.models import Ack
    from botd.outbox import Outbox

    async def main():
        outbox = await Outbox.open(__import__("pathlib").Path(sys.argv[1]))
        for n in range(3):
            await outbox.put(f"job-{n}", Ack(f"lease-{n}", "succeeded", {"n": n}))
        print("PUT-DONE", flush=True)
        time.sleep(3600)  # never closes: the parent SIGKILLs us

    trio.run(main)
    """
)


async def test_a_put_survives_sigkill(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", CRASHER, str(state)], stdout=subprocess.PIPE, cwd=REPO
    )
    try:
        assert proc.stdout is not None
        seen = b""
        with trio.fail_after(60):
            while b"PUT-DONE" not in seen:
                chunk = await proc.stdout.receive_some()
                assert chunk, "the crasher exited early"
                seen += chunk
        proc.send_signal(signal.SIGKILL)
        with trio.fail_after(30):
            await proc.wait()
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            await proc.stdout.aclose()  # type: ignore[union-attr]
    # The dead process never closed the database or released the lock itself.
    async with await Outbox.open(state) as outbox:
        assert outbox.leases() == ["lease-0", "lease-1", "lease-2"]
        assert [e.ack.result for e in outbox.pending()] == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_corrupt_file_is_a_state_dir_error(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"this is not sqlite at all, just junk " * 200)
    with pytest.raises(StateDirError) as info:
        await Outbox.open(tmp_path)
    message = str(info.value)
    assert str(tmp_path / DB_NAME) in message
    assert "move it aside" in message
    # Failing to open released the lock: a fixed dir opens.
    (tmp_path / DB_NAME).unlink()
    await (await Outbox.open(tmp_path)).close()


async def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "state"
    target.write_text("oops")
    with pytest.raises(StateDirError, match="not a directory") as info:
        await Outbox.open(target)
    assert str(target) in str(info.value)
    with pytest.raises(StateDirError, match="create it"):
        await Outbox.open(target / "below")


UNWRITABLE = textwrap.dedent(
    """
    import os, sys, trio
    from pathlib import Path
    from botd.errors import StateDirError
    from botd.outbox import Outbox

    # Imports done, drop root: from here on this process is 'nobody'.
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)

    async def main():
        try:
            await Outbox.open(Path(sys.argv[1]))
        except StateDirError as exc:
            print("StateDirError:", exc)
        else:
            print("opened")

    trio.run(main)
    """
)


async def test_unwritable_dir_is_a_state_dir_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        state = tmp_path / "state"
        state.mkdir(mode=0o500)
        with pytest.raises(StateDirError) as info:
            await Outbox.open(state)
        message = str(info.value)
    else:
        # root writes anywhere: a child process drops to 'nobody' after its imports.
        base = Path(tempfile.mkdtemp(prefix="botd-outbox-"))
        try:
            base.chmod(0o755)
            state = base / "state"
            state.mkdir(mode=0o555)
            result = await trio.run_process(
                [sys.executable, "-c", UNWRITABLE, str(state)],
                capture_stdout=True,
                capture_stderr=True,
                cwd=REPO,
                check=False,
            )
        finally:
            shutil.rmtree(base)
        message = result.stdout.decode()
        assert message.startswith("StateDirError:"), (message, result.stderr.decode())
    assert str(state) in message
    assert "writable" in message


async def test_two_openers_conflict(tmp_path: Path) -> None:
    first = await Outbox.open(tmp_path)
    with pytest.raises(StateDirError, match="in use by another botd") as info:
        await Outbox.open(tmp_path)
    assert f"pid {os.getpid()}" in str(info.value)
    assert str(tmp_path) in str(info.value)
    await first.close()
    second = await Outbox.open(tmp_path)  # the lock went with the first
    await second.close()


async def test_the_database_and_its_wal_and_shm_are_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with await Outbox.open(state) as outbox:
        await outbox.put("job-1", ack(1))
        for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
            assert (state / name).stat().st_mode & 0o777 == 0o600, name


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
async def test_a_symlinked_wal_or_shm_is_refused_and_its_target_untouched(
    tmp_path: Path, suffix: str
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "target"
    target.write_text("keep")
    (state / (DB_NAME + suffix)).symlink_to(target)
    with pytest.raises(StateDirError, match=f"{DB_NAME}{suffix} is a symlink") as info:
        await Outbox.open(state)
    assert "remove the link" in str(info.value)
    assert target.read_text() == "keep"
    (state / (DB_NAME + suffix)).unlink()
    async with await Outbox.open(state):  # the lock went with the refused open
        pass


async def test_write_into_a_removed_dir_raises(tmp_path: Path) -> None:
    state = tmp_path / "state"
    outbox = await Outbox.open(state)
    await outbox.put("job-1", ack(1))
    for child in state.iterdir():
        child.unlink()
    state.rmdir()
    with pytest.raises(StateDirError, match="removed or replaced"):
        await outbox.put("job-2", ack(2))
    assert outbox.leases() == ["lease-1"]  # the mirror never claims what the disk lacks
    with pytest.raises(StateDirError):
        await outbox.remove(["lease-1"])
    assert outbox.leases() == ["lease-1"]
    await outbox.close()


async def test_closed_outbox_refuses_use(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path)
    await outbox.close()
    await outbox.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await outbox.put("job-1", ack(1))


def test_entry_must_match_its_ack() -> None:
    with pytest.raises(ValueError, match="differs"):
        OutboxEntry("lease-1", "job-1", ack(2), 0.0)


# --- conservation: pending == puts - removes, across reopen -----------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 12)),
        st.tuples(st.just("remove"), st.lists(st.integers(0, 14), max_size=4)),
        st.tuples(st.just("defer"), st.lists(st.integers(0, 14), max_size=4)),
        st.tuples(st.just("reopen"), st.none()),
        st.tuples(st.just("crash"), st.none()),
    ),
    max_size=30,
)


def _crash(outbox: Outbox) -> None:
    """As a SIGKILL leaves it: the file closed where it stands, nothing more written."""
    assert outbox._store is not None
    outbox._store.close()
    outbox._closed = True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, durable=st.booleans())
def test_conservation(ops: list[tuple[str, Any]], durable: bool) -> None:
    async def scenario(state: Path | None) -> None:
        outbox = await Outbox.open(state)
        model: dict[str, Ack] = {}
        # Removed with defer=True and not yet out of the file: a crash brings them back.
        lingering: dict[str, Ack] = {}
        for op, arg in ops:
            if op == "put":
                a = ack(arg, "failed" if arg % 3 == 0 else "succeeded")
                new = await outbox.put(f"job-{arg}", a)
                assert new == (a.lease_id not in model)
                model.setdefault(a.lease_id, a)
                if new:  # a commit: it deleted what waited for it
                    lingering.clear()
            elif op in ("remove", "defer"):
                await outbox.remove((f"lease-{n}" for n in arg), defer=op == "defer")
                for n in arg:
                    gone = model.pop(f"lease-{n}", None)
                    if gone is not None and op == "defer" and state is not None:
                        lingering[f"lease-{n}"] = gone
            elif state is not None and op == "reopen":
                await outbox.close()
                lingering.clear()  # a clean close deletes them
                outbox = await Outbox.open(state)
            elif state is not None:
                _crash(outbox)
                outbox = await Outbox.open(state)
                assert {e.lease_id: e.ack for e in outbox.pending()} == {**model, **lingering}
                model = {e.lease_id: e.ack for e in outbox.pending()}  # in the file's order
                lingering.clear()
            leases = outbox.leases()
            assert len(leases) == len(set(leases))
            assert leases == list(model)
            assert {e.lease_id: e.ack for e in outbox.pending()} == model
            assert outbox.updated.value == len(model)
        await outbox.close()
        if state is not None:
            async with await Outbox.open(state) as final:
                assert {e.lease_id: e.ack for e in final.pending()} == model

    if durable:
        with tempfile.TemporaryDirectory() as tmp:
            trio.run(scenario, Path(tmp) / "state")
    else:
        trio.run(scenario, None)


def _on_disk(state_dir: Path) -> set[str]:
    """The lease ids committed to the outbox file, read on a connection of its own."""
    conn = sqlite3.connect(state_dir / DB_NAME)
    try:
        return {row[0] for row in conn.execute("SELECT lease_id FROM outbox")}
    finally:
        conn.close()


async def test_a_put_during_a_commit_returns_only_once_its_own_entry_is_committed(
    tmp_path: Path,
) -> None:
    """Group commit: puts that arrive while a commit runs share the next one, and each
    returns only when its own entry is on disk (not when the running commit ends)."""
    outbox = await Outbox.open(tmp_path)
    store = outbox._store
    assert store is not None
    real_put_many = store.put_many
    commits: list[list[str]] = []
    in_commit, release = threading.Event(), threading.Event()

    def put_many(entries: list[Any], removed: Any = ()) -> None:
        commits.append([e.lease_id for e in entries])
        if len(commits) == 1:  # hold the first commit until the test lets it go
            in_commit.set()
            release.wait(10)
        real_put_many(entries, removed)

    store.put_many = put_many  # type: ignore[method-assign]
    seen_at_return: dict[str, set[str]] = {}

    async def put(lease: str) -> None:
        await outbox.put(f"job-{lease}", ack(lease))
        seen_at_return[lease] = _on_disk(tmp_path)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put, "a")
        await trio.to_thread.run_sync(in_commit.wait)  # a's commit is running
        nursery.start_soon(put, "b")
        nursery.start_soon(put, "c")
        await trio.testing.wait_all_tasks_blocked()
        assert seen_at_return == {}  # nobody returns while the first commit runs
        release.set()
    assert [sorted(batch) for batch in commits] == [["lease-a"], ["lease-b", "lease-c"]]
    for lease in ("a", "b", "c"):
        assert f"lease-{lease}" in seen_at_return[lease], lease
    await outbox.close()


async def test_only_forgetting_skips_the_fsync_and_every_put_stays_fsynced(tmp_path: Path) -> None:
    """A removal (the server has the ack) or an attempt count commits without an fsync; the
    connection is back to synchronous=FULL for every put after it, also after a failure."""
    outbox = await Outbox.open(tmp_path)
    store = outbox._store
    assert store is not None and store.conn is not None
    seen: list[int] = []
    real_write = store._write

    def write(doing: str, fn: Any, *, durable: bool = True) -> Any:
        assert store.conn is not None

        def spy(conn: sqlite3.Connection) -> Any:
            seen.append(conn.execute("PRAGMA synchronous").fetchone()[0])
            return fn(conn)

        return real_write(doing, spy, durable=durable)

    store._write = write  # type: ignore[method-assign]
    await outbox.put("job-1", ack(1))
    await outbox.put("job-2", ack(2))
    await outbox.mark_attempted(["lease-1"])
    await outbox.remove(["lease-1"])
    await outbox.put("job-3", ack(3))
    assert seen == [2, 2, 1, 1, 2]  # FULL, FULL, NORMAL, NORMAL, FULL

    def boom(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(StateDirError):
        real_write("remove results", boom, durable=False)
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    await outbox.close()
    reopened = await Outbox.open(tmp_path)
    assert reopened.leases() == ["lease-2", "lease-3"]
    await reopened.close()


async def test_puts_that_finish_in_one_scheduler_turn_share_one_commit(tmp_path: Path) -> None:
    """A claim's batch of jobs that end together is one fsync, not the first job's alone and
    then the others'; each put still returns only once its entry is committed."""
    outbox = await Outbox.open(tmp_path)
    store = outbox._store
    assert store is not None
    commits: list[int] = []
    real_put_many = store.put_many

    def put_many(entries: list[OutboxEntry], removed: Any = ()) -> None:
        commits.append(len(entries))
        real_put_many(entries, removed)

    store.put_many = put_many  # type: ignore[method-assign]
    returned: list[str] = []

    async def put(n: int) -> None:
        assert await outbox.put(f"job-{n}", ack(n))
        assert f"lease-{n}" in outbox.leases()  # committed when it returns
        returned.append(f"lease-{n}")

    async with trio.open_nursery() as nursery:
        for n in range(32):
            nursery.start_soon(put, n)
    assert commits == [32]
    assert sorted(returned) == sorted(outbox.leases())
    await outbox.close()


async def test_a_deferred_removal_leaves_the_file_in_the_next_commit(tmp_path: Path) -> None:
    """remove(defer=True), as the claimer does with jobs just started: the entries leave the
    mirror at once and the file in the next put's transaction (one write for both), or at
    close; a crash before either brings them back to be sent again."""
    outbox = await Outbox.open(tmp_path)
    for n in range(3):
        await outbox.put(f"job-{n}", ack(n))
    await outbox.remove(["lease-0", "lease-1", "lease-unknown"], defer=True)
    assert outbox.leases() == ["lease-2"]
    assert outbox.updated.value == 1
    assert _on_disk(tmp_path) == {"lease-0", "lease-1", "lease-2"}  # no write of its own
    await outbox.put("job-3", ack(3))
    assert _on_disk(tmp_path) == {"lease-2", "lease-3"}  # gone with the put's commit
    await outbox.remove(["lease-2"], defer=True)
    _crash(outbox)
    reopened = await Outbox.open(tmp_path)
    assert reopened.leases() == ["lease-2", "lease-3"]  # back: it is sent again
    await reopened.remove(["lease-3"], defer=True)
    await reopened.close()
    assert _on_disk(tmp_path) == {"lease-2"}  # a clean close deletes what waited


async def test_a_failed_commit_keeps_the_deferred_removals_for_the_next(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path)
    store = outbox._store
    assert store is not None
    await outbox.put("job-0", ack(0))
    await outbox.remove(["lease-0"], defer=True)
    real_put_many = store.put_many
    failing = [True]

    def put_many(entries: list[OutboxEntry], removed: Any = ()) -> None:
        if failing.pop():
            raise StateDirError("state dir: disk full (test)")
        real_put_many(entries, removed)

    store.put_many = put_many  # type: ignore[method-assign]
    with pytest.raises(StateDirError):
        await outbox.put("job-1", ack(1))
    assert outbox.leases() == []
    assert _on_disk(tmp_path) == {"lease-0"}
    failing.append(False)
    await outbox.put("job-2", ack(2))
    assert _on_disk(tmp_path) == {"lease-2"}
    await outbox.close()


async def test_put_nowait_is_for_an_outbox_in_memory(tmp_path: Path) -> None:
    """The runner's in-memory path stores without a scheduler turn; a durable outbox refuses
    it (its put must wait for the commit)."""
    outbox = await Outbox.open(None)
    assert outbox.put_nowait("job-1", ack(1), size=12)
    assert not outbox.put_nowait("job-1", ack(1))  # idempotent per lease, as put
    entry = outbox.get("lease-1")
    assert entry is not None and entry.size == 12 and entry.job_id == "job-1"
    assert outbox.updated.value == 1
    await outbox.close()
    with pytest.raises(RuntimeError, match="closed"):
        outbox.put_nowait("job-2", ack(2))
    durable = await Outbox.open(tmp_path)
    with pytest.raises(RuntimeError, match="await put"):
        durable.put_nowait("job-3", ack(3))
    assert durable.leases() == []
    await durable.close()
