"""contrib/docker/Dockerfile, read with the ``dockerfile`` package (BuildKit's own parser)."""

from __future__ import annotations

import json

import dockerfile
import pytest

from tests.support.paths import REPO

DOCKERFILE = REPO / "contrib" / "docker" / "Dockerfile"


@pytest.fixture(scope="module")
def final_stage() -> list[dockerfile.Command]:
    """The instructions of the last stage (the image that ships)."""
    commands = list(dockerfile.parse_file(str(DOCKERFILE)))
    starts = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    return commands[starts[-1] :]


def only(stage: list[dockerfile.Command], cmd: str) -> dockerfile.Command:
    found = [c for c in stage if c.cmd == cmd]
    assert len(found) == 1, f"expected one {cmd}, got {len(found)}"
    return found[0]


def test_slim_python_base(final_stage: list[dockerfile.Command]) -> None:
    image = final_stage[0].value[0]
    assert image.startswith("python:3.")
    assert "-slim" in image


def test_runs_as_a_numeric_non_root_user(final_stage: list[dockerfile.Command]) -> None:
    user = only(final_stage, "USER").value[0]
    uid = user.split(":")[0]
    assert uid.isdigit(), "numeric, so Kubernetes runAsNonRoot can verify it"
    assert int(uid) != 0
    # The user is switched to after every RUN, so nothing later runs as root by accident.
    cmds = [c.cmd for c in final_stage]
    assert "RUN" not in cmds[cmds.index("USER") :]


def test_exec_form_entrypoint_no_shell(final_stage: list[dockerfile.Command]) -> None:
    entrypoint = only(final_stage, "ENTRYPOINT")
    cmd = only(final_stage, "CMD")
    assert entrypoint.json, "ENTRYPOINT must be exec form: a shell would swallow SIGTERM"
    assert cmd.json
    assert entrypoint.value == ("botd",)
    assert cmd.value == ("run",)
    # The same as the raw text: JSON arrays, not a shell string.
    raw = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["botd"]' in raw
    assert json.loads(entrypoint.original.split(None, 1)[1]) == ["botd"]


def test_stop_signal_and_ops_port(final_stage: list[dockerfile.Command]) -> None:
    assert only(final_stage, "STOPSIGNAL").value == ("SIGTERM",)
    env = {}
    for c in final_stage:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2], strict=True))
    assert env["BOT_LOG_FORMAT"] == "json"
    host, port = env["BOT_OPS_ADDR"].rsplit(":", 1)
    assert host == "0.0.0.0"  # probes and Prometheus come from outside the container
    assert only(final_stage, "EXPOSE").value == (port,)


def test_healthcheck_probes_liveness(final_stage: list[dockerfile.Command]) -> None:
    check = only(final_stage, "HEALTHCHECK")
    assert check.json
    assert check.value[0] == "CMD"
    assert any("/healthz" in part for part in check.value)
