"""The simulator is a terminal: of the switch it uses the ISO 8583 codec and framing only, as a
real kiosk's software would (docs/architecture.md, "Layers"). `kiosk_sim serve`, the launcher of
`make serve`, runs the switch itself and so reads its settings and calls its entry point."""

from __future__ import annotations

import ast
from pathlib import Path

import kiosk_sim

ALLOWED = ("switch.iso8583",)
LAUNCHER = {"serve.py": {"switch.__main__", "switch.settings"}}


def switch_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "switch" or name.startswith("switch.")}


def test_the_simulator_uses_only_the_switchs_codec() -> None:
    package = Path(kiosk_sim.__file__).parent
    beyond = {
        path.name: sorted(outside)
        for path in sorted(package.glob("*.py"))
        if (
            outside := {
                name
                for name in switch_imports(path) - LAUNCHER.get(path.name, set())
                if not name.startswith(ALLOWED)
            }
        )
    }
    assert beyond == {}
