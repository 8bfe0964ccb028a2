"""The import contracts of docs/architecture.md, read from the source: data flows one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data_pipeline", "tokenizer", "simulator", "demo")
COMMAND = "commands"  # the `worldsim` command: above every stage, imported by none

# package -> modules it must never import, and why
FORBIDDEN: dict[str, tuple[tuple[str, ...], str]] = {
    "data_pipeline": (
        ("tokenizer", "simulator", "demo", "worldsim.nn", "worldsim.train", COMMAND),
        "data_pipeline imports no model",
    ),
    "tokenizer": (("simulator", "demo", COMMAND), "tokenizer never imports simulator"),
    "simulator": (("demo", COMMAND), "nothing imports demo or the command"),
    "demo": ((COMMAND,), "the app uses public APIs, not the command"),
    "worldsim": ((*STAGES, COMMAND), "worldsim/ holds shared layers: it imports no stage"),
    "benchmarks": (("demo",), "nothing imports demo"),
}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports, wherever the import statement stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def violations(package: str) -> list[str]:
    forbidden, why = FORBIDDEN[package]
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name} ({why})")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str) -> None:
    assert violations(package) == []


def test_the_scan_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from simulator.engine.world_simulator import WorldSimulator\n")
    assert "simulator.engine.world_simulator" in imported_modules(bad)
