"""Every ``botd`` command's ``--help`` lists its exit codes."""

from __future__ import annotations

import pytest

from botd.cli import main

COMMANDS = [
    ["run"],
    ["check-config"],
    ["server"],
    ["submit"],
    ["jobs", "wait"],
    ["jobs", "list"],
    ["status"],
    ["demo"],
    ["conformance"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_lists_the_exit_codes(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out
    assert "\n  0 " in out
