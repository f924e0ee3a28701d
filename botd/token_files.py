"""Token files and token flags: the one place that reads a token file and says what is unsafe.

- :func:`read_token_file`: the token in a file, stripped; a :class:`~botd.errors.ConfigError`
  (naming the file and the setting, never echoing its content) when it cannot be read, is
  empty, or holds what cannot go into an ``Authorization`` header (several lines, spaces,
  control or non-ASCII characters: a file of garbage);
- :func:`loose_permissions`: the warning for a token file that its group or others may read
  (and its fix, ``chmod 600``), or None;
- :func:`token_flag_warning`: the warning for a token given on the command line, which every
  user of the machine sees in ``ps``.

Shared: ``botd run`` (:mod:`botd.config`), the producer commands (:mod:`botd.admin_client`),
``botd conformance`` and ``botd server`` use it alike.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigError

__all__ = ["loose_permissions", "read_token_file", "token_flag_warning"]

#: What a bearer token may hold: visible ASCII (RFC 6750's b64token and then some).
_PRINTABLE = frozenset(chr(c) for c in range(0x21, 0x7F))


def read_token_file(path: Path, where: str) -> str:
    """The token in ``path`` (surrounding whitespace stripped). ``where`` names the setting
    in errors (``BOT_TOKEN_FILE``, ``--token-file``). The file's content is never shown."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot read the token file {str(path)!r}: {exc.strerror or exc}; fix the"
            " path"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{where}: the token file {str(path)!r} is not UTF-8 text; write only the token into it"
        ) from None
    if not text:
        raise ConfigError(
            f"{where}: the token file {str(path)!r} is empty; write the token into it"
        )
    if not set(text) <= _PRINTABLE:
        lines = len(text.splitlines())
        what = f"{lines} lines" if lines > 1 else "spaces, control or non-ASCII characters"
        raise ConfigError(
            f"{where}: the token file {str(path)!r} holds {what}, which no token has (its"
            " content is not shown); write only the token into it, on one line"
        )
    return text


def loose_permissions(path: Path, where: str) -> str | None:
    """A warning if the group or others may read the token file ``path``, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # reading it reports the problem
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    return (
        f"{where}: the token file {str(path)!r} may be read by other users (mode"
        f" {stat.S_IMODE(mode):o}): chmod 600 {path}"
    )


def token_flag_warning(flag: str, env: str, file_flag: str | None = "--token-file") -> str:
    """The warning for a token given on the command line as ``flag``."""
    instead = f"env {env}" + (f" or {file_flag} FILE" if file_flag else "")
    return (
        f"a token given with {flag} shows in `ps` to every user of this machine;"
        f" use {instead} instead"
    )
