"""Files in a bot's state dir (``BOT_STATE_DIR``), the one way: private and never through a
symlink.

Every file botd creates there (the lock, the outbox database, the exec process-group
records, a session's token) is created ``0600``, every directory ``0700``, and each is opened
with ``O_NOFOLLOW``: a symlink planted at ``<state>/lock`` makes the open fail (ELOOP) and
leaves its target untouched. :func:`check_state_dir` refuses a directory that anyone may
write to (``o+w``, with or without the sticky bit: a bot's state dir is its own, never a
shared place like ``/tmp``).

- :func:`open_private`: ``os.open`` with ``O_NOFOLLOW | O_CLOEXEC`` and mode 0600;
- :func:`write_private` / :func:`read_private`: a whole small file, through it;
- :func:`make_private_dir`: ``mkdir -p`` with mode 0700 (an existing directory is kept as is);
- :func:`refuse_symlink`: for a path another library opens and would follow (SQLite's
  ``-wal`` and ``-shm`` files).

Synchronous: call it from a worker thread in a Trio run.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import StateDirError

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "check_state_dir",
    "make_private_dir",
    "open_private",
    "read_private",
    "refuse_symlink",
    "write_private",
]

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def open_private(path: Path | str, flags: int = os.O_RDWR | os.O_CREAT) -> int:
    """``os.open(path, flags)`` never through a symlink (OSError ELOOP if ``path`` is one),
    close-on-exec, creating a missing file 0600. Returns the file descriptor."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)


def write_private(path: Path | str, data: bytes) -> None:
    """Write ``data`` as the whole content of ``path`` (created 0600, never via a symlink)."""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def read_private(path: Path | str, limit: int = 1 << 16) -> bytes:
    """At most ``limit`` bytes of ``path``, never read through a symlink."""
    fd = open_private(path, os.O_RDONLY)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def refuse_symlink(path: Path) -> None:
    """Raise StateDirError if ``path`` is a symlink (its target is left untouched); a
    missing path or any other file passes."""
    if path.is_symlink():
        raise StateDirError(
            f"state dir {path.parent}: {path.name} is a symlink (to {os.readlink(path)!r}), not"
            f" a file of botd's; it was left untouched: remove the link ({path}) and start again"
        )


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700; an existing one stays as is."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)


def check_state_dir(path: Path, setting: str = "BOT_STATE_DIR") -> None:
    """Raise StateDirError if anyone may write to ``path`` (mode o+w): another user could
    plant files or symlinks in it. A missing directory passes (it is created 0700)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # created below, or refused there with its own message
    except OSError as exc:
        raise StateDirError(f"state dir {path}: cannot stat it ({exc})") from None
    if stat.S_ISDIR(mode) and mode & stat.S_IWOTH:
        raise StateDirError(
            f"state dir {path} ({setting}) is writable by every user (mode"
            f" {stat.S_IMODE(mode):o}): anyone could plant files or symlinks in it; give the bot"
            f" a directory of its own (chmod 700 {path}, or point {setting} elsewhere)"
        )
