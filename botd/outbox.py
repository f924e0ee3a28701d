"""The durable result outbox: finished jobs' acks, kept in ``BOT_STATE_DIR`` until reported.

A worker puts a job's ack here before it tells the server; the reporting loop sends what is
pending and removes what the server recorded. With a state dir, each ``put`` is committed to
SQLite (WAL, ``synchronous=FULL``) before it returns, so a result survives a crash of the
bot, and the next run loads it and reports it. Without one (``state_dir=None``) the outbox
lives in memory only: for tests and the demo.

The file is ``<state_dir>/outbox.sqlite3``; ``<state_dir>/lock`` (an ``flock``) keeps two
bots from sharing one state dir. SQLite runs in a worker thread (``trio.to_thread`` behind a
``CapacityLimiter(1)``). Every storage failure, at open or at run time, raises
:class:`~botd.errors.StateDirError` naming the path and what to do; an entry is never dropped
silently.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, overload

import attrs
import trio
import trio_util

from .errors import StateDirError
from .models import Ack
from .outbox_file import DB_NAME, LOCK_NAME, OutboxEntry, OutboxFile

__all__ = ["DB_NAME", "DEFAULT_MAX_PENDING", "LOCK_NAME", "Outbox", "OutboxEntry"]

DEFAULT_MAX_PENDING = 10_000

T = TypeVar("T")


@attrs.define(eq=False)
class _Batch:
    """Puts that share one commit (see :meth:`Outbox._put`)."""

    entries: dict[str, OutboxEntry] = attrs.field(factory=dict)
    done: trio.Event = attrs.field(factory=trio.Event)
    added: set[str] = attrs.field(factory=set)
    error: StateDirError | None = None


def _new_entry(job_id: str, ack: Ack, size: int) -> OutboxEntry:
    """A new pending entry for ``ack``, created now, not yet attempted."""
    return OutboxEntry(ack.lease_id, job_id, ack, time.time(), 0, size)


class Outbox:
    """Finished jobs' acks, kept until the server has recorded them.

    Open it with :meth:`open`; it loads what an earlier run left behind. ``put`` is durable
    before it returns (with a state dir) and idempotent per lease; ``remove`` forgets what
    the server recorded. ``pending()`` and ``leases()`` read an in-memory mirror, oldest
    first. ``updated`` is a ``trio_util.AsyncValue`` holding the count, and
    :meth:`wait_nonempty` / :meth:`wait_not_full` sleep on it. ``full`` says the claimer
    should stop claiming; ``put`` still stores past it (a result is never dropped).

    Errors: StateDirError on any storage failure (the mirror is left unchanged, so it
    always matches the file). Closing: :meth:`close`, or ``async with``.
    """

    def __init__(
        self, store: OutboxFile | None, entries: list[OutboxEntry], max_pending: int
    ) -> None:
        self._store = store
        self._entries: dict[str, OutboxEntry] = {e.lease_id: e for e in entries}
        self._limiter = trio.CapacityLimiter(1)
        self._batch = _Batch()
        self._committing = False
        self._closed = False
        #: Removed from the mirror, still in the file: the next commit deletes them.
        self._doomed: list[str] = []
        self.max_pending = max_pending
        self.updated: Any = trio_util.AsyncValue(len(self._entries))

    @classmethod
    async def open(
        cls, state_dir: Path | None, *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> Outbox:
        """Open (creating if needed) the outbox in ``state_dir``; None means in memory.

        Raises StateDirError when the dir is not a directory, cannot be created or written,
        is locked by another bot, or holds a corrupt database.
        """
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
        if state_dir is None:
            return cls(None, [], max_pending)
        store = OutboxFile(Path(state_dir))
        entries = await trio.to_thread.run_sync(store.open)
        return cls(store, entries, max_pending)

    @property
    def durable(self) -> bool:
        """True when entries are kept on disk."""
        return self._store is not None

    @property
    def path(self) -> Path | None:
        """The database file, or None in memory."""
        return self._store.db_path if self._store is not None else None

    @property
    def count(self) -> int:
        return len(self._entries)

    @property
    def full(self) -> bool:
        """True when ``count >= max_pending``: stop claiming until results drain."""
        return len(self._entries) >= self.max_pending

    def pending(self) -> list[OutboxEntry]:
        """The entries waiting to be reported, oldest first."""
        return list(self._entries.values())

    def leases(self) -> list[str]:
        """Lease ids of the pending entries, oldest first (for ``active_leases``)."""
        return list(self._entries)

    def get(self, lease_id: str) -> OutboxEntry | None:
        return self._entries.get(lease_id)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the outbox is closed")

    def _publish(self) -> None:
        self.updated.value = len(self._entries)

    @overload
    async def put(self, entry: OutboxEntry, /) -> bool: ...

    @overload
    async def put(self, job_id: str, ack: Ack, /, *, size: int = 0) -> bool: ...

    async def put(
        self, entry_or_job_id: OutboxEntry | str, ack: Ack | None = None, /, *, size: int = 0
    ) -> bool:
        """Store an ack durably; return True if it is new, False if its lease was already here.

        ``size``: about how many bytes the ack's result takes (0: small or not known).
        Committed and fsynced before it returns. Shielded from cancellation, so a result
        being stored when shutdown starts is still stored. Raises StateDirError if it could
        not be stored (then it is not in the outbox either).
        """
        self._check_open()
        if isinstance(entry_or_job_id, OutboxEntry):
            entry = entry_or_job_id
        else:
            if ack is None:
                raise TypeError("put(job_id, ack) needs the ack")
            entry = _new_entry(entry_or_job_id, ack, size)
        if self._store is None:  # in memory: nothing to wait for, nothing to cancel
            added = self._add(entry)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return added
        with trio.CancelScope(shield=True):
            added = await self._put(entry)
        return added

    def put_nowait(self, job_id: str, ack: Ack, *, size: int = 0) -> bool:
        """In memory only: store an ack at once, without a checkpoint (the runner's hot
        path: its job already passed through the scheduler). As :meth:`put` otherwise.
        Raises RuntimeError on a durable outbox, whose put waits for its commit."""
        self._check_open()
        if self._store is not None:
            raise RuntimeError("put_nowait is for an outbox in memory: await put()")
        return self._add(_new_entry(job_id, ack, size))

    async def _put(self, entry: OutboxEntry) -> bool:
        """Group commit: the puts that arrive while a commit runs share the next one.

        The first put to find no commit running writes every queued entry in one
        transaction, and again while more were queued meanwhile (at most one batch per
        ``concurrency`` jobs); the others wait for the commit of their batch. Each put returns
        only once its own entry is committed.
        """
        if entry.lease_id in self._entries or entry.lease_id in self._batch.entries:
            await trio.lowlevel.checkpoint()
            return False
        batch = self._batch
        batch.entries[entry.lease_id] = entry
        if self._committing:
            await batch.done.wait()
        else:
            self._committing = True
            try:
                # One turn of the scheduler first: the jobs that finished in the same turn
                # (a claim's batch of no-op jobs does) join this commit instead of the next.
                await trio.lowlevel.checkpoint()
                while self._batch.entries:
                    await self._commit(self._batch)
            finally:
                self._committing = False
        if batch.error is not None:
            raise batch.error
        return entry.lease_id in batch.added

    async def _commit(self, batch: _Batch) -> None:
        self._batch = _Batch()  # puts from now on go to the next commit
        store = self._store
        assert store is not None
        entries = list(batch.entries.values())
        doomed, self._doomed = self._doomed, []
        try:
            await self._run(lambda: store.put_many(entries, doomed))
        except StateDirError as exc:
            batch.error = exc  # nothing of the batch is in the outbox
            self._doomed.extend(doomed)  # still in the file
        except Exception as exc:  # a bug: still, no put of the batch may think it is stored
            batch.error = StateDirError(f"state dir: results not stored: {exc!r}")
            self._doomed.extend(doomed)
        else:
            batch.added = {item.lease_id for item in entries if self._add(item)}
        finally:
            batch.done.set()

    def _known(self, lease_ids: Iterable[str]) -> list[str]:
        """Those of ``lease_ids`` held here, each once, in the order given."""
        return [x for x in dict.fromkeys(lease_ids) if x in self._entries]

    def _add(self, entry: OutboxEntry) -> bool:
        if entry.lease_id in self._entries:  # already here, or a concurrent put won the race
            return False
        self._entries[entry.lease_id] = entry
        self._publish()
        return True

    async def _write_known(
        self, lease_ids: Iterable[str], write: Callable[[OutboxFile, list[str]], None]
    ) -> list[str]:
        """Apply ``write`` to the file for those of ``lease_ids`` held here; return them."""
        self._check_open()
        known = self._known(lease_ids)
        if known and self._store is not None:
            store = self._store
            await self._run(lambda: write(store, known))
        else:
            await trio.lowlevel.checkpoint()
        return known

    async def remove(self, lease_ids: Iterable[str], *, defer: bool = False) -> None:
        """Forget the entries of ``lease_ids`` (the server has them); unknown ids are ignored.

        ``defer``: for a caller that knows a put is coming (the claimer, with the jobs of
        the same answer just started): the entries leave the mirror now and the file in the
        transaction of the next commit (or at :meth:`close`), which saves a write of their
        own. Until then a crash brings them back: they are sent again and answered
        ``duplicate``, as for any removal, which is never fsynced.
        """
        if defer and self._store is not None:
            self._check_open()
            known = self._known(lease_ids)
            for lease_id in known:
                del self._entries[lease_id]
            self._doomed.extend(known)
            if known:
                self._publish()
            await trio.lowlevel.checkpoint()
            return
        doomed = await self._write_known(lease_ids, OutboxFile.remove)
        if doomed:
            for lease_id in doomed:
                self._entries.pop(lease_id, None)
            self._publish()

    async def replace(self, lease_id: str, ack: Ack) -> bool:
        """Put ``ack`` in the place of the lease's pending ack (which the server refused).

        False when the lease is not here. Durable before it returns, like :meth:`put`; raises
        StateDirError if it could not be written (then the old ack stays).
        """
        self._check_open()
        old = self._entries.get(lease_id)
        if old is None or ack.lease_id != lease_id:
            await trio.lowlevel.checkpoint()
            return False
        if self._store is not None:
            store = self._store
            with trio.CancelScope(shield=True):
                await self._run(lambda: store.replace(lease_id, ack))
        else:
            await trio.lowlevel.checkpoint()
        if lease_id in self._entries:
            self._entries[lease_id] = attrs.evolve(old, ack=ack, size=0)
        return True

    async def mark_attempted(self, lease_ids: Iterable[str]) -> None:
        """Count one more delivery attempt for ``lease_ids`` (for display and metrics)."""
        for lease_id in await self._write_known(lease_ids, OutboxFile.bump):
            old = self._entries.get(lease_id)
            if old is not None:
                self._entries[lease_id] = attrs.evolve(old, attempts=old.attempts + 1)

    async def wait_nonempty(self) -> None:
        """Return once at least one entry is pending (at once if there is one)."""
        await self.updated.wait_value(lambda n: n > 0)

    async def wait_not_full(self) -> None:
        """Return once ``count < max_pending`` (at once if so)."""
        await self.updated.wait_value(lambda n: n < self.max_pending)

    async def close(self) -> None:
        """Close the database and release the lock. Idempotent; entries stay on disk."""
        if self._closed:
            return
        self._closed = True
        if self._store is not None:
            store = self._store
            doomed, self._doomed = self._doomed, []

            def finish() -> None:
                try:
                    if doomed:  # a failure only brings them back (sent again: duplicate)
                        with contextlib.suppress(StateDirError):
                            store.remove(doomed)
                finally:
                    store.close()

            with trio.CancelScope(shield=True):
                await self._run(finish)

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
