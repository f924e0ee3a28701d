"""Test options: ``--soak`` makes the chaos test run longer (more jobs, more faults)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the chaos test longer: more jobs and more faults (nox -s soak)",
    )
