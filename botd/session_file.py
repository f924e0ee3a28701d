"""``<BOT_STATE_DIR>/session``: the last session token, so that a restarted bot proves
that it continues its own live session (``previous_session_token`` at its register).

The file holds ``{"bot_id", "session_token"}`` as JSON, mode 0600. It is written
atomically (a new file beside it, fsynced, renamed over it) and never through a symlink:
both the new file and the file read are opened with ``O_NOFOLLOW``. A file that is missing,
a symlink, unreadable or not ours is no token (the bot registers without one, and the
server refuses a live bot id to it until that session ends); a file that cannot be written
leaves the token in memory only. Neither stops the bot: :func:`read_token` and
:func:`write_token` say what went wrong, and the caller logs it. Synchronous: call them
through ``trio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

__all__ = ["SESSION_FILE", "read_token", "write_token"]

SESSION_FILE = "session"
_TMP = ".session.tmp"
_MAX_BYTES = 4096
_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def read_token(state_dir: Path, bot_id: str) -> tuple[str | None, str | None]:
    """(the token kept for ``bot_id``, None) or (None, why there is none usable; None
    when the file is simply absent)."""
    path = state_dir / SESSION_FILE
    try:
        fd = os.open(path, os.O_RDONLY | _FLAGS)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot open {path} ({exc.strerror}; a symlink is refused): ignored"
    try:
        raw = os.read(fd, _MAX_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read {path} ({exc.strerror}): ignored"
    finally:
        os.close(fd)
    try:
        data = json.loads(raw) if len(raw) <= _MAX_BYTES else None
    except ValueError:
        data = None
    token = data.get("session_token") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(token, str) or not token.isascii():
        return None, f"{path} is not a session file of botd: ignored"
    if not token or data.get("bot_id") != bot_id:
        return None, None  # another BOT_ID's: not ours to send
    return token, None


def write_token(state_dir: Path, bot_id: str, token: str) -> str | None:
    """Keep ``token`` for ``bot_id``; None when done, else why it could not be kept."""
    tmp, path = state_dir / _TMP, state_dir / SESSION_FILE
    body = json.dumps({"bot_id": bot_id, "session_token": token}).encode()
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a leftover of a crash mid-write (never followed: unlinked)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FLAGS, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(state_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        return f"cannot write {path} ({exc.strerror}); the session token is kept in memory only"
    return None
