"""Token files and token flags: the one place that reads a token file and says what is unsafe.

- :func:`read_token_file`: the token in a file, stripped; a :class:`~botd.errors.ConfigError`
  (naming the file and the setting, never echoing its content) when it cannot be read, is
  empty, or holds what cannot go into an ``Authorization`` header (several lines, spaces,
  control or non-ASCII characters: a file of garbage);
- :func:`token_problem`: why a text cannot be a bearer token (visible ASCII only), naming
  the position of the first bad character, never the text;
- :func:`loose_permissions`: the warning for a token file that users other than its owner
  may read or change (and its fix, ``chmod 600``), or None. A file of another owner that
  this user reads through its group (a Kubernetes secret mounted ``0440`` with the pod's
  ``fsGroup``) is no warning: the group is how it is shared;
- :func:`token_flag_warning`: the warning for a token given on the command line, which every
  user of the machine sees in ``ps``.

Shared: ``botd run`` (:mod:`botd.config`), the producer commands (:mod:`botd.admin_client`),
``botd conformance`` and ``botd server`` (its ``--tokens-file`` too) use it alike.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigError

__all__ = ["loose_permissions", "read_token_file", "token_flag_warning", "token_problem"]


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be sent as ``Authorization: Bearer <token>``, or None: a token is
    visible ASCII (RFC 6750's b64token and then some). Names the first bad character's kind
    and position, never the token."""
    if not token:
        return "it is empty"
    for index, char in enumerate(token):
        if not "!" <= char <= "~":
            kind = "a space" if char == " " else "a line break" if char in "\r\n" else None
            what = kind or ("a control character" if char.isascii() else "a non-ASCII character")
            return f"it holds {what} at position {index + 1}: a token is visible ASCII only"
    return None


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
    problem = token_problem(text)
    if problem is not None:
        lines = len(text.splitlines())
        what = f"{lines} lines" if lines > 1 else "what no token holds"
        raise ConfigError(
            f"{where}: the token file {str(path)!r} holds {what} ({problem}; its content is"
            " not shown); write only the token into it, on one line"
        )
    return text


def loose_permissions(path: Path | str, where: str) -> str | None:
    """A warning if users other than the owner of the token file ``path`` may read or change
    it, else None (also when it cannot be stat'ed: reading it says so). ``where`` names the
    setting. Its group counts only while this user owns the file: a file of another owner
    that this user reads through its group (Kubernetes' ``fsGroup``) is shared that way."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    ours = st.st_uid == os.geteuid()
    group = mode & (stat.S_IRGRP | stat.S_IWGRP) if ours else 0
    others = mode & (stat.S_IROTH | stat.S_IWOTH)
    if not group and not others:
        return None
    who = " and ".join(name for name, bits in (("its group", group), ("others", others)) if bits)
    how = "read or changed" if mode & (stat.S_IWGRP | stat.S_IWOTH) & (group | others) else "read"
    return (
        f"{where}: the token file {str(path)!r} may be {how} by {who} (mode {mode:o}):"
        f" chmod 600 {path}"
    )


def token_flag_warning(flag: str, env: str, file_flag: str | None = "--token-file") -> str:
    """The warning for a token given on the command line as ``flag``."""
    instead = f"env {env}" + (f" or {file_flag} FILE" if file_flag else "")
    return (
        f"a token given with {flag} shows in `ps` to every user of this machine;"
        f" use {instead} instead"
    )
