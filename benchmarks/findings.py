"""What profiling found where a goal is missed: kept by hand, printed under "Findings".

Each entry names where the time goes, with the figure that shows it, so that the owner of
that code can act. The harness adds one line per missed goal of the current run by itself.
"""

from __future__ import annotations

FINDINGS: tuple[str, ...] = ()
