"""Where the repository's files are, for the tests that read them (contrib, docs, README)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONTRIB", "DOCS", "REPO"]

#: The repository's root (tests/support/ is two levels below it).
REPO = Path(__file__).resolve().parents[2]
CONTRIB = REPO / "contrib"
DOCS = REPO / "docs"
