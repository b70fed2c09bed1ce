"""hcbak/repo imports neither typer, rich nor requests, and never prints or exits."""

from __future__ import annotations

import ast
from pathlib import Path

import hcbak.repo

FORBIDDEN = {"typer", "rich", "requests", "click", "hcbak.cli", "hcbak.engine",
             "hcbak.hypercore", "hcbak.transport"}  # fmt: skip


def test_repo_package_stays_below_the_cli_and_engine() -> None:
    root = Path(hcbak.repo.__file__).parent
    problems = []
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
                    problems.append(f"{path.name}:{node.lineno} imports {name}")
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            if call and node.func.id in ("print", "exit", "quit"):  # type: ignore[attr-defined]
                problems.append(f"{path.name}:{node.lineno} calls {node.func.id}()")
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "exit"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                problems.append(f"{path.name}:{node.lineno} uses sys.exit")
    assert problems == []
