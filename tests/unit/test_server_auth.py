"""The server's tokens file and token table (botd.server.auth): parsing, errors that name
the entry and never a token, and matching. (Its permissions: tests/unit/test_secret_files.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from botd.server.auth import Tokens, TokensFileError, load_tokens, parse_tokens

GOOD = """
# the fleet's tokens
[[tokens]]
role = "worker"
name = "fleet"
token = "worker-token-0123456789"

[[tokens]]
role = "producer"
token = "producer-token-0123456789"
"""


def test_a_toml_file_gives_roles_and_names() -> None:
    entries = parse_tokens(GOOD, "tokens.toml")
    assert [(e.role, e.name) for e in entries] == [("worker", "fleet"), ("producer", "")]
    assert "worker-token" not in repr(entries)


SECRET = "the-secret-token-value-1234"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (f'[[tokens]]\nrole = "worker"\ntoken = "{SECRET}"\n\n[[tokens]]\nrole = "boss"\n'
         f'token = "{SECRET}x"\n', "entry 2, line 5: 'role' must be one of worker, producer"),
        (f'[[tokens]]\nrole = "admin"\ntoken = "{SECRET}"\ncolour = "red"\n', "unknown key"),
        ('[[tokens]]\nrole = "admin"\ntoken = "short"\n', "16 to 512 characters"),
        ('[[tokens]]\nrole = "admin"\n', "'token' is missing"),
        (f'[[tokens]]\nrole = "admin"\ntoken = "{SECRET}"\n[[tokens]]\nrole = "worker"\n'
         f'token = "{SECRET}"\n', "repeats an earlier token"),
        (f'[[tokens]]\nrole = "admin"\ntoken = "{SECRET} x"\n', "a space at position 28"),
        (f'[[tokens]]\nrole = "admin"\ntoken = "{SECRET}\u00e9"\n', "a non-ASCII character"),
        (f'[[tokens]]\nrole = "admin"\ntoken = "{SECRET}\\u0007"\n', "a control character"),
        (f'[[tokens]]\nrole = "admin"\ntoken = {SECRET}\n', "not valid TOML"),
        (f'[tokens]\ntoken = "{SECRET}"\n', "must be [[tokens]] tables"),
        ("# only comments\n\n", "holds no token"),
        ("", "holds no token"),
        ("[[tokens]]\n", "entry 1, line 1: 'role' must be one of"),
    ],
)  # fmt: skip
def test_a_bad_file_names_the_entry_and_never_the_token(text: str, says: str) -> None:
    with pytest.raises(TokensFileError) as caught:
        parse_tokens(text, "/etc/botd/tokens.toml")
    message = str(caught.value)
    assert message.startswith("/etc/botd/tokens.toml: ")
    assert says in message
    assert SECRET not in message and "short" not in message


LINES = """
# one token a line: ROLE:TOKEN, or a bare TOKEN (admin)
worker:worker-token-0123456789

  producer : producer-token-0123456789\r
admin-token-0123456789abc
admin:admin:token-with-a-colon
"""


def test_one_token_a_line_gives_roles_and_a_bare_token_is_admin() -> None:
    entries = parse_tokens(LINES, "tokens.txt")
    assert [(e.role, e.token, e.name) for e in entries] == [
        ("worker", "worker-token-0123456789", "line 3"),
        ("producer", "producer-token-0123456789", "line 5"),
        ("admin", "admin-token-0123456789abc", "line 6"),
        ("admin", "admin:token-with-a-colon", "line 7"),
    ]
    assert "worker-token" not in repr(entries)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (f"# fleet\nworker:{SECRET}\nboss:{SECRET}x\n", "line 3: what comes before the first ':'"
                                                         " is not a role"),
        (f"worker:{SECRET}\n\nproducer:{SECRET}\n", "line 3: repeats the token of line 1"),
        (f"{SECRET}\nworker:{SECRET}\n", "line 2: repeats the token of line 1"),
        ("worker:shortsecret\n", "line 1: the token must be 16 to 512 characters"),
        (f"worker {SECRET}\n", "line 1: the token cannot be a bearer token (it holds a space at"
                                " position 7"),
        (f"worker:{SECRET}\u00e9\n", "a non-ASCII character at position 28"),
        (f"worker:{SECRET}\x07\n", "a control character"),
        (f'token = "{SECRET}"\n', "a TOML tokens file starts with [[tokens]]"),
        ("worker:\n", "line 1: the token cannot be a bearer token (it is empty)"),
    ],
)  # fmt: skip
def test_a_bad_line_is_named_and_its_token_never_shown(text: str, says: str) -> None:
    with pytest.raises(TokensFileError) as caught:
        parse_tokens(text, "/etc/botd/tokens")
    message = str(caught.value)
    assert message.startswith("/etc/botd/tokens: ") and says in message
    assert SECRET not in message and "shortsecret" not in message


def test_both_forms_are_read_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(LINES)
    assert [e.role for e in load_tokens(path)] == ["worker", "producer", "admin", "admin"]
    path.write_text(GOOD)
    assert [e.role for e in load_tokens(path)] == ["worker", "producer"]


def test_a_missing_or_unreadable_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(TokensFileError, match="no such file"):
        load_tokens(tmp_path / "nope.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(TokensFileError, match="cannot read it") as caught:
        load_tokens(binary)
    assert SECRET not in str(caught.value)


def test_the_single_token_is_admin_and_no_token_is_dev_mode() -> None:
    assert Tokens().open and Tokens.of(None).open
    tokens = Tokens.of("single-admin-token", parse_tokens(GOOD, "t"))
    assert not tokens.open
    entry = tokens.match("single-admin-token")
    assert entry is not None and entry.role == "admin"
    assert tokens.summary() == {"worker": 1, "producer": 1, "admin": 1}


@given(st.text(min_size=1, max_size=80))
def test_only_a_known_token_matches(given_token: str) -> None:
    tokens = Tokens.of("single-admin-token", parse_tokens(GOOD, "t"))
    known = {"single-admin-token", "worker-token-0123456789", "producer-token-0123456789"}
    entry = tokens.match(given_token)
    assert (entry is not None) == (given_token in known)
    if entry is not None:
        assert entry.token == given_token
