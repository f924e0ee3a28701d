"""botd.state_files, botd.token_files and the exec handler's environment: private files,
no symlinks followed, token files checked without echoing them, no token passed to a job."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from botd.errors import ConfigError, StateDirError
from botd.redaction import without_tokens
from botd.state_files import check_state_dir, make_private_dir, open_private, write_private
from botd.token_files import (
    loose_permissions,
    read_token_file,
    token_flag_warning,
    token_problem,
)


def test_open_private_creates_0600_and_never_follows_a_symlink(tmp_path: Path) -> None:
    os.close(open_private(tmp_path / "new"))
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o600
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        write_private(tmp_path / "link", b"overwritten")
    assert target.read_text() == "keep"


def test_make_private_dir_is_0700(tmp_path: Path) -> None:
    make_private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


@pytest.mark.parametrize(("mode", "refused"), [(0o700, False), (0o770, False), (0o777, True),
                                               (0o1777, True), (0o703, True)])  # fmt: skip
def test_a_world_writable_state_dir_is_refused(tmp_path: Path, mode: int, refused: bool) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    if refused:
        with pytest.raises(StateDirError, match="writable by every user"):
            check_state_dir(state)
    else:
        check_state_dir(state)
    check_state_dir(tmp_path / "missing")  # created later, 0700


def test_token_file_errors_never_show_its_content(tmp_path: Path) -> None:
    path = tmp_path / "token"
    for content in ("SECRETX\nSECRETY", "SECRETX SECRETY", "SECRET\x00X", "SECRETé"):
        path.write_text(content)
        with pytest.raises(ConfigError) as caught:
            read_token_file(path, "BOT_TOKEN_FILE")
        assert "SECRET" not in str(caught.value) and "BOT_TOKEN_FILE" in str(caught.value)
    path.write_bytes(b"\xffSECRET")
    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        read_token_file(path, "--token-file")
    assert "SECRET" not in str(caught.value)
    path.write_text("  good-token\n")
    assert read_token_file(path, "BOT_TOKEN_FILE") == "good-token"


def test_a_token_file_readable_by_others_gets_a_warning_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("t")
    path.chmod(0o600)
    assert loose_permissions(path, "BOT_TOKEN_FILE") is None
    path.chmod(0o640)
    warning = loose_permissions(path, "BOT_TOKEN_FILE")
    assert warning is not None and f"chmod 600 {path}" in warning and "640" in warning
    assert warning.startswith("BOT_TOKEN_FILE: ") and "read by its group (" in warning
    path.chmod(0o606)
    warning = loose_permissions(path, "--tokens-file")
    assert warning is not None and "read or changed by others" in warning
    assert "shows in `ps`" in token_flag_warning("--token", "BOTD_TOKEN")


@pytest.mark.parametrize(("mode", "warned"), [(0o440, False), (0o400, False), (0o640, False),
                                              (0o444, True), (0o604, True)])  # fmt: skip
def test_a_file_of_another_owner_read_through_its_group_is_no_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int, warned: bool
) -> None:
    """A Kubernetes secret mounted 0440 with the pod's fsGroup: root owns it, the bot reads
    it through the group. Others reading it is still a warning."""
    path = tmp_path / "token"
    path.write_text("t")
    path.chmod(mode)
    monkeypatch.setattr("botd.token_files.os.geteuid", lambda: path.stat().st_uid + 1)
    warning = loose_permissions(path, "BOT_TOKEN_FILE")
    assert (warning is not None) is warned
    if warning is not None:
        assert "by others" in warning and "its group" not in warning


@given(st.text(max_size=40))
def test_token_problem_accepts_exactly_visible_ascii_and_never_quotes(text: str) -> None:
    problem = token_problem("tok-" + text)
    visible = all("!" <= c <= "~" for c in text)
    assert (problem is None) is visible
    if problem is not None:
        assert "tok-" not in problem and "position" in problem


@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True), st.text()))
def test_a_jobs_environment_keeps_everything_but_the_token_variables(
    environ: dict[str, str],
) -> None:
    kept = without_tokens(environ)
    for name, value in environ.items():
        is_token = name.upper().endswith(("_TOKEN", "_TOKEN_FILE"))
        assert (name in kept) is not is_token
        if not is_token:
            assert kept[name] == value
