"""The verdicts of a run, as lines for a person and as JSON for CI."""

from __future__ import annotations

from typing import Any, Literal

import attrs

__all__ = ["Report", "Verdict", "VerdictStatus"]

VerdictStatus = Literal["pass", "fail", "skip"]
_LABEL = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}
_NAME_WIDTH = 34


@attrs.frozen
class Verdict:
    """What one check found."""

    name: str
    title: str
    status: VerdictStatus
    seconds: float
    extension: bool = False
    #: Why it failed (``expected``/``got``) or was skipped (``reason``).
    reason: str = ""
    expected: str = ""
    got: str = ""
    request: str = ""
    answer: str = ""

    def lines(self) -> list[str]:
        """One line, and for a failure the request, the expected and the actual answer."""
        tag = " [extension]" if self.extension else ""
        head = f"{_LABEL[self.status]}  {self.name:<{_NAME_WIDTH}} {self.seconds:6.2f} s{tag}"
        if self.status == "skip":
            return [f"{head}  {self.reason}"]
        if self.status == "pass":
            return [head]
        out = [head, f"      expected: {self.expected}", f"      got:      {self.got}"]
        if self.request:
            out.append(f"      request:  {self.request}")
        if self.answer and self.answer not in self.got:
            out.append(f"      answer:   {self.answer}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class Report:
    """Every verdict of one run against ``server``."""

    server: str
    prefix: str
    verdicts: list[Verdict] = attrs.field(factory=list)
    seconds: float = 0.0
    #: Problems of the cleanup (jobs it could not cancel, bots it could not deregister).
    leftovers: list[str] = attrs.field(factory=list)

    def count(self, status: VerdictStatus) -> int:
        return sum(1 for v in self.verdicts if v.status == status)

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == "fail"]

    @property
    def exit_code(self) -> int:
        """0 when every check that ran passed, else 1."""
        return 1 if self.failed else 0

    def summary(self) -> str:
        passed, failed, skipped = self.count("pass"), self.count("fail"), self.count("skip")
        line = (
            f"{passed} passed, {failed} failed, {skipped} skipped of {len(self.verdicts)} checks"
            f" in {self.seconds:.1f} s against {self.server}"
        )
        if self.failed:
            line += "\nfailed: " + ", ".join(v.name for v in self.failed)
        line += f"\nthe run's jobs and bots are named {self.prefix}-*"
        for leftover in self.leftovers:
            line += f"\ncleanup: {leftover}"
        return line

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "prefix": self.prefix,
            "seconds": round(self.seconds, 3),
            "passed": self.count("pass"),
            "failed": self.count("fail"),
            "skipped": self.count("skip"),
            "exit_code": self.exit_code,
            "checks": [v.as_dict() for v in self.verdicts],
            "leftovers": list(self.leftovers),
        }
