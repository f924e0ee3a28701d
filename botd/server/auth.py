"""Who is calling the server: its tokens and their roles, and session tokens.

The server knows three roles (docs/protocol.md, "Auth"):

- ``worker``: register; a session's calls (heartbeat, claim, ack, deregister) then go with
  the session token that the register answered, never with the worker token;
- ``producer``: submit (one or a batch), read, wait for, cancel and retry jobs, the stats
  and the bots;
- ``admin``: everything, and a session's calls the v1 way too (the ``session_id`` in the
  body or the query), as protocol v1's own clients and checks make them.

Tokens come from ``--token`` (one ``admin`` token) and a tokens file (:func:`load_tokens`):
TOML ``[[tokens]]`` tables with ``role``, ``token`` and an optional ``name``, or one token
a line (``ROLE:TOKEN``, or a bare ``TOKEN``: admin, as ``--token``). With no token at all
every caller is ``admin`` (dev mode). Given tokens are compared in constant time
(their SHA-256 against every known token's, :meth:`Tokens.match`); a token is never logged,
and an error about the file names its entry, never its token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tomllib
from collections.abc import Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import Any, Literal, cast, get_args

import attrs

from ..errors import BotdError, HttpError
from ..models import BotInfo
from ..token_files import token_problem
from .store.records import token_hash

__all__ = [
    "ADMIN",
    "ALL_ROLES",
    "ROLES",
    "Caller",
    "Gate",
    "Role",
    "TokenEntry",
    "Tokens",
    "TokensFileError",
    "load_tokens",
    "own_session",
    "parse_tokens",
    "shown_to",
]

Role = Literal["worker", "producer", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
ALL_ROLES: tuple[str, ...] = ROLES
#: Tokens shorter than this are refused: a guessable token is no token.
MIN_TOKEN_LEN = 16
_MAX_TOKEN_LEN = 512


class TokensFileError(BotdError):
    """Raised when a tokens file cannot be read or is not valid; the message names the
    file and the entry, never a token."""


@attrs.frozen
class Caller:
    """Who made a request: a role, the token's name, and for a session its bot and id."""

    role: Role
    name: str = ""
    bot_id: str | None = None
    session_id: str | None = None

    @property
    def is_session(self) -> bool:
        """True when the request bore a session token."""
        return self.session_id is not None

    def may_see(self, bot_id: str) -> bool:
        """True when this caller may see the session id and lease ids of ``bot_id``."""
        return self.role == "admin" or (self.is_session and self.bot_id == bot_id)


ADMIN = Caller("admin")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@attrs.frozen
class TokenEntry:
    """One token of the table (the token itself kept out of ``repr``)."""

    role: Role
    token: str = attrs.field(repr=False)
    name: str = ""
    digest: bytes = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "digest", _digest(self.token))


@attrs.frozen
class Tokens:
    """The server's tokens; empty means dev mode (every caller is admin)."""

    entries: tuple[TokenEntry, ...] = ()

    @classmethod
    def of(cls, admin_token: str | None, entries: Iterable[TokenEntry] = ()) -> Tokens:
        """The table of ``--token`` (an admin token, if set) and a file's entries."""
        single = (TokenEntry("admin", admin_token, "--token"),) if admin_token else ()
        return cls((*single, *entries))

    @property
    def open(self) -> bool:
        """True when there is no token at all (dev mode)."""
        return not self.entries

    def match(self, given: str) -> TokenEntry | None:
        """The entry whose token is ``given``, or None. Compares ``given``'s SHA-256 with
        every entry's in constant time, and looks at every entry whatever matched."""
        digest = _digest(given)
        found: TokenEntry | None = None
        for entry in self.entries:
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry
        return found

    def secrets(self) -> list[str]:
        """Every token, for the log's redactor."""
        return [entry.token for entry in self.entries]

    def summary(self) -> dict[str, int]:
        """How many tokens of each role (for the log; no token, no name)."""
        return {role: sum(1 for e in self.entries if e.role == role) for role in ROLES}


#: A bearer longer than this is no session token: it is not looked up in the store.
_MAX_SESSION_TOKEN_LEN = 200
#: How many session tokens a Gate remembers (then it forgets them all and asks again).
_SESSION_CACHE_MAX = 10000

#: ``session_of(token_hash)``: the store's (bot_id, session_id) of a session token, or None.
SessionLookup = Callable[[str], Awaitable[tuple[str, str] | None]]


@attrs.define
class Gate:
    """Tells who made a request (:meth:`caller`) and whether it may (:meth:`admit`).

    ``tokens`` may be replaced at any time (a reloaded tokens file): the next request sees
    the new ones. A session token is looked up in the store once; what it maps to never
    changes, so the answer is kept (up to 10,000 of them).
    """

    tokens: Tokens
    session_of: SessionLookup
    _sessions: dict[str, Caller] = attrs.field(factory=dict, init=False)

    async def caller(self, authorization: str) -> Caller:
        """The caller of a request with this ``Authorization`` header; 401 unauthorized
        for a missing or unknown bearer (in dev mode, with no token at all: admin)."""
        tokens = self.tokens
        scheme, _, given = authorization.partition(" ")
        given = given.strip() if scheme.lower() == "bearer" else ""
        if given:
            entry = tokens.match(given)
            if entry is not None:
                return Caller(entry.role, entry.name)
            session = await self._session(given)
            if session is not None:
                return session
        if tokens.open:
            return ADMIN
        raise HttpError(
            401,
            "unauthorized",
            "missing or wrong token; send 'Authorization: Bearer <token>' with the server's token",
        )

    async def _session(self, given: str) -> Caller | None:
        if len(given) > _MAX_SESSION_TOKEN_LEN:
            return None
        digest = token_hash(given)
        known = self._sessions.get(digest)
        if known is not None:
            return known
        found = await self.session_of(digest)
        if found is None:
            return None
        if len(self._sessions) >= _SESSION_CACHE_MAX:
            self._sessions.clear()
        known = Caller("worker", "session", bot_id=found[0], session_id=found[1])
        self._sessions[digest] = known
        return known

    @staticmethod
    def admit(caller: Caller, roles: Collection[str], *, session: bool) -> None:
        """403 forbidden unless ``caller`` is admin, of one of ``roles``, or (``session``)
        a session; the message names the role the call needs."""
        if caller.is_session:
            if session:
                return
            what = "a session token cannot make this call"
            if "worker" in roles:
                what += "; register with your worker token"
            raise HttpError(403, "forbidden", what)
        if caller.role == "admin" or caller.role in roles:
            return
        if caller.role == "worker" and session:
            raise HttpError(
                403,
                "forbidden",
                "a worker token may only register: send this session's calls with the"
                " session_token of its register answer",
            )
        needed = " or ".join(sorted({*roles, "admin"}))
        raise HttpError(
            403, "forbidden", f"this call needs a {needed} token; yours is a {caller.role} token"
        )


def own_session(caller: Caller, bot_id: str, session_id: str) -> None:
    """403 not_session_owner when a session's call is for another bot or session."""
    if caller.is_session and (bot_id != caller.bot_id or session_id != caller.session_id):
        raise HttpError(
            403,
            "not_session_owner",
            f"this session token is not that of bot {bot_id!r}'s session {session_id!r}:"
            " a session acts only for itself",
        )


def shown_to(caller: Caller, bot: BotInfo) -> BotInfo:
    """``bot`` as ``caller`` may see it: its session id and lease ids only for an admin
    or for the session itself (others get null and ``[]``)."""
    if caller.may_see(bot.bot_id):
        return bot
    return attrs.evolve(bot, session_id=None, active_leases=[])


def parse_tokens(text: str, where: str) -> list[TokenEntry]:
    """The entries of a tokens file's ``text`` (``where`` names it in errors), in one of
    two forms. TOML, when its first line that is neither blank nor a ``#`` comment starts
    with ``[``::

        [[tokens]]
        role = "worker"            # worker, producer or admin
        name = "fleet-a"           # optional: shown in logs instead of the token
        token = "..."              # 16 to 512 visible ASCII characters

    else one token a line, ``ROLE:TOKEN`` or a bare ``TOKEN`` (an ``admin`` token, as
    ``--token`` gives), blank lines and whole-line ``#`` comments allowed; a token that
    holds ``:`` is written ``admin:TOKEN``. A line's entry is named ``line N`` in the logs.

    Raises TokensFileError naming the entry or the line, never a token; a file with no
    token at all is refused too (it would leave the server open to every caller).
    """
    first = next((ln.strip() for ln in text.splitlines() if _meaningful(ln)), "")
    entries = _parse_toml(text, where) if first.startswith("[") else _parse_lines(text, where)
    if not entries:
        raise TokensFileError(
            f"{where}: holds no token; a server with no token admits every caller as admin:"
            " write at least one (ROLE:TOKEN a line, or [[tokens]] tables)"
        )
    return entries


def _meaningful(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _parse_toml(text: str, where: str) -> list[TokenEntry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message says the line and column; it does not quote the text.
        raise TokensFileError(f"{where}: not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"tokens"})
    if extra:
        raise TokensFileError(f"{where}: unknown key {extra[0]!r}; only [[tokens]] tables")
    raw = data.get("tokens", [])
    if not isinstance(raw, list):
        raise TokensFileError(f"{where}: 'tokens' must be [[tokens]] tables")
    lines = [n for n, line in enumerate(text.splitlines(), 1) if line.strip() == "[[tokens]]"]
    entries: list[TokenEntry] = []
    seen: set[bytes] = set()
    for index, item in enumerate(raw, start=1):
        at = f", line {lines[index - 1]}" if len(lines) == len(raw) else ""
        what = f"{where}: [[tokens]] entry {index}{at}"
        entry = _entry(item, what)
        if entry.digest in seen:
            raise TokensFileError(f"{what}: repeats an earlier token")
        seen.add(entry.digest)
        entries.append(entry)
    return entries


_LINE_HINT = (
    "; write one token a line, ROLE:TOKEN or TOKEN (a TOML tokens file starts with [[tokens]])"
)


def _parse_lines(text: str, where: str) -> list[TokenEntry]:
    entries: list[TokenEntry] = []
    seen: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not _meaningful(line):
            continue
        what = f"{where}: line {number}"
        role, colon, token = (part.strip() for part in line.partition(":"))
        if not colon:
            role, token = "admin", role
        elif role not in ROLES:
            raise TokensFileError(
                f"{what}: what comes before the first ':' is not a role ({', '.join(ROLES)});"
                " write ROLE:TOKEN, or admin:TOKEN for an admin token that holds ':'"
            )
        _check_token(token, what, "the token", _LINE_HINT)
        entry = TokenEntry(cast(Role, role), token, f"line {number}")
        if entry.digest in seen:
            raise TokensFileError(f"{what}: repeats the token of line {seen[entry.digest]}")
        seen[entry.digest] = number
        entries.append(entry)
    return entries


def _check_token(token: str, what: str, subject: str, hint: str = "") -> None:
    """TokensFileError unless ``token`` is 16 to 512 visible ASCII characters; ``subject``
    names it (``'token'``, ``the token``), ``hint`` ends the message; never the token."""
    problem = token_problem(token)
    if problem is not None:
        raise TokensFileError(f"{what}: {subject} cannot be a bearer token ({problem}){hint}")
    if not MIN_TOKEN_LEN <= len(token) <= _MAX_TOKEN_LEN:
        raise TokensFileError(
            f"{what}: {subject} must be {MIN_TOKEN_LEN} to {_MAX_TOKEN_LEN} characters"
            " (make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )


def _entry(item: Any, what: str) -> TokenEntry:
    if not isinstance(item, dict):
        raise TokensFileError(f"{what}: must be a table with role and token")
    unknown = sorted(set(item) - {"role", "token", "name"})
    if unknown:
        raise TokensFileError(f"{what}: unknown key {unknown[0]!r} (role, token, name)")
    role, token, name = item.get("role"), item.get("token"), item.get("name", "")
    if role not in ROLES:
        raise TokensFileError(f"{what}: 'role' must be one of {', '.join(ROLES)}")
    if not isinstance(token, str) or not token.strip():
        raise TokensFileError(f"{what}: 'token' is missing or not a string")
    _check_token(token, what, "'token'")
    if not isinstance(name, str):
        raise TokensFileError(f"{what}: 'name' must be a string")
    return TokenEntry(role, token, name)


def load_tokens(path: str | os.PathLike[str]) -> list[TokenEntry]:
    """Read and parse the tokens file at ``path``; TokensFileError when it cannot be."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokensFileError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise TokensFileError(f"{where}: cannot read it: {reason}") from None
    return parse_tokens(text, where)
