"""The conformance suite names each known defect of a broken server, and nothing else fails.

Each server here is the reference server with one rule of docs/protocol.md broken in front
of it (tests/support/broken_servers.py). The suite runs in this Trio run against its URL,
over real sockets and real time, with the checks that could see the defect and a few that
must not: the checks listed in the defect's ``caught_by`` must fail, the others must pass.
"""

from __future__ import annotations

import pytest

from botd.conformance import SUITE, Report, run_suite, select
from tests.support.broken_servers import DEFECT_TOKEN, DEFECTS, Defect, broken_server

pytestmark = pytest.mark.slow

#: Checks that no defect here touches: they must keep passing, so a defect is reported by
#: its own checks and not by a suite that fails everything.
BYSTANDERS = ("health", "jobs.submit", "bots.register", "ack.recorded")


async def run_against(defect: Defect, names: list[str]) -> Report:
    token = DEFECT_TOKEN if defect.lets_in else None
    async with broken_server(defect, token=token) as url:
        return await run_suite(url, token=token, checks=select(names))


@pytest.mark.parametrize("name", sorted(DEFECTS))
async def test_each_defect_is_reported_by_name(name: str) -> None:
    defect = DEFECTS[name]
    names = sorted(set(BYSTANDERS) | defect.caught_by)
    report = await run_against(defect, names)
    verdicts = {v.name: v for v in report.verdicts}
    failed = {v.name for v in report.failed}
    shown = "\n".join(line for v in report.verdicts for line in v.lines())
    assert failed == defect.caught_by, shown
    assert report.exit_code == 1
    for check in defect.caught_by:
        verdict = verdicts[check]
        assert verdict.expected and verdict.got, verdict
    assert all(verdicts[n].status == "pass" for n in BYSTANDERS if n not in defect.caught_by)


def test_every_defect_is_caught_by_checks_that_exist() -> None:
    names = {c.name for c in SUITE}
    for defect in DEFECTS.values():
        assert defect.caught_by <= names, defect.name
