"""The tree keeps the shape docs/architecture.md draws: who may import whom, and module sizes.

- the shared layer (the protocol's models, codec and errors, and the names every side uses:
  timestamps, outcomes, events, redaction, logs) imports nothing above it, but the package
  root exports the producer's client library (``admin_client``, ``jobs_client``), which
  imports only the shared layer;
- the reference server (``botd/server/``) imports the shared layer only, never the agent;
- the agent's side never imports the server; only the commands on top (``cli``, ``demo``)
  may import both;
- no module is over 500 lines unless docs/architecture.md names it and says why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import DOCS, REPO

PACKAGE = REPO / "botd"
SHARED = {
    "botd",
    "botd._version",
    "botd.exit_codes",
    "botd.errors",
    "botd.models",
    "botd.codec",
    "botd.timestamps",
    "botd.outcomes",
    "botd.events",
    "botd.redaction",
    "botd.tls",
    "botd.token_files",
    "botd.stdlib_logging",
    "botd.logs",
}
#: The producer's client library: ``botd`` exports it, so it imports only the shared layer.
CLIENT_LIBRARY = {"botd.admin_client", "botd.jobs_client"}
#: The commands on top: they may import any side.
TOP = ("botd.cli", "botd.demo")
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The botd modules ``path`` imports (``from . import x`` counts as ``botd.x``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level > 1:
                base = base[: -(node.level - 1)]
            module = ".".join([*base, node.module] if node.module else base)
            if not node.level:
                module = node.module or ""
            if module.split(".")[0] != "botd":
                continue
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                is_module = (REPO / Path(*submodule.split("."))).with_suffix(".py").exists()
                is_package = (REPO / Path(*submodule.split(".")) / "__init__.py").exists()
                found.add(submodule if is_module or is_package else module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "botd"}
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def in_server(name: str) -> bool:
    return name == "botd.server" or name.startswith("botd.server.")


def on_top(name: str) -> bool:
    return any(name == t or name.startswith(t + ".") for t in TOP)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_run_one_way(name: str) -> None:
    deps = imports_of(MODULES[name])
    if name in SHARED or name in CLIENT_LIBRARY:
        allowed = SHARED | CLIENT_LIBRARY if name in CLIENT_LIBRARY | {"botd"} else SHARED
        above = {d for d in deps if d not in allowed}
        assert not above, f"{name} is below the agent and the server but imports {sorted(above)}"
    elif in_server(name):
        agent_side = {d for d in deps if not in_server(d) and d not in SHARED}
        assert not agent_side, f"the server's {name} imports the agent's {sorted(agent_side)}"
    elif not on_top(name):
        server = {d for d in deps if in_server(d)}
        assert not server, f"the agent's {name} imports the server's {sorted(server)}"


def test_no_module_is_over_500_lines_unless_the_architecture_says_why() -> None:
    architecture = (DOCS / "architecture.md").read_text()
    long = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in MODULES.values()
        if len(path.read_text().splitlines()) > MAX_LINES
    }
    unexplained = {f: n for f, n in long.items() if f"`{f}`" not in architecture}
    assert not unexplained, f"over {MAX_LINES} lines, not explained in architecture.md"
