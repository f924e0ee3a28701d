"""Test options (``--soak`` makes the chaos test run longer) and the shared ``procs`` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Procs


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """The real processes a test starts; every one still running is killed at the end."""
    owner = Procs(tmp_path)
    try:
        yield owner
    finally:
        owner.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the chaos test longer: more jobs and more faults (nox -s soak)",
    )
