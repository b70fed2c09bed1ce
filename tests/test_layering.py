"""The layers of hcbak (docs/internals.md), checked over every module of hcbak/.

One table says which areas each area may import; an import that is not in it fails
here with the file and line. Imports only a type checker sees (under TYPE_CHECKING)
count too, except that they may not make a cycle. Below the CLI nothing prints, exits
or imports a terminal library; the simulator is imported only by `cli/sim.py` and
`cli/demo.py` (tests and benchmarks use it too, outside hcbak/); hypercore never
sees the config's cluster entry (it gets `ConnectionSettings`). And no two modules
import each other, directly or around a circle, when the program runs.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import hcbak

ROOT = Path(hcbak.__file__).parent

# Modules every layer may use: they import nothing above them.
LEAF = {"hcbak", "errors", "secrets", "schedule", "fsio", "malloc_tuning"}
# area -> the other areas it may import ("hcbak" is the package itself: __version__).
ALLOWED: dict[str, set[str]] = {
    "hcbak": set(),
    "errors": set(),
    "secrets": {"errors"},
    "schedule": set(),
    "fsio": set(),
    "malloc_tuning": set(),
    "systemd_units": LEAF,
    "config": LEAF,
    "repo": LEAF | {"config"},
    "transport": LEAF | {"config"},
    "hypercore": LEAF | {"config"},
    "engine": LEAF | {"config", "repo", "transport", "hypercore"},
    "cli": LEAF | {"config", "repo", "transport", "hypercore", "engine", "systemd_units", "sim"},
    "sim": {"hypercore.shapes"},  # the shape-report format it shares with real clusters
    "__main__": {"cli"},
}
# Only these modules may import the simulator (besides the simulator itself).
SIM_IMPORTERS = {"hcbak.cli.sim", "hcbak.cli.demo"}
# Libraries for the terminal and the network, and the areas that may use them.
LIBRARIES = {
    "typer": {"cli"},
    "click": {"cli"},
    "rich": {"cli"},
    "requests": {"hypercore", "cli", "sim"},
    "urllib3": {"hypercore", "sim"},
}
# Names an area must not import although their module is allowed.
FORBIDDEN_NAMES = {"hypercore": {"ClusterConfig", "Config", "JobConfig", "RepoConfig"}}
PRINTS_AND_EXITS = {"cli", "sim", "__main__"}


@dataclass(frozen=True)
class Import:
    module: str  # what the file names, absolute
    names: tuple[str, ...]
    line: int
    type_only: bool


def test_every_import_follows_the_layer_table() -> None:
    problems: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        area = _area(module)
        assert area in ALLOWED, f"{module}: add its area {area!r} to ALLOWED"
        for imp in _imports(path):
            problems += _check(module, area, imp, f"{path.relative_to(ROOT.parent)}:{imp.line}")
    assert problems == []


def test_nothing_below_the_cli_prints_or_exits() -> None:
    problems: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        if _area(_module_name(path)) in PRINTS_AND_EXITS:
            continue
        for node in ast.walk(_tree(path)):
            where = f"{path.relative_to(ROOT.parent)}:{getattr(node, 'lineno', 0)}"
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            if call and node.func.id in ("print", "exit", "quit"):  # type: ignore[attr-defined]
                problems.append(f"{where} calls {node.func.id}()")  # type: ignore[attr-defined]
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "exit"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                problems.append(f"{where} uses sys.exit")
    assert problems == []


def test_no_import_cycles_at_run_time() -> None:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        deps: set[str] = set()
        for imp in _imports(path):
            if imp.type_only or not imp.module.startswith("hcbak"):
                continue
            # `from pkg import submodule` depends on the submodule, not on pkg/__init__.
            subs = {f"{imp.module}.{n}" for n in imp.names} & modules.keys()
            deps |= subs or {_owning_module(imp.module, modules.keys())}
        graph[module] = deps - {module, ""}
    assert _cycles(graph) == []


def _check(module: str, area: str, imp: Import, where: str) -> list[str]:
    name = imp.module
    if not name.startswith("hcbak"):
        top = name.split(".")[0]
        users = LIBRARIES.get(top)
        ok = users is None or area in users
        return [] if ok else [f"{where}: {area}/ imports {top}"]
    target = _area(name)
    if target == area:
        return []
    if target == "sim" and module not in SIM_IMPORTERS:
        return [f"{where}: only {', '.join(sorted(SIM_IMPORTERS))} import the simulator"]
    allowed = ALLOWED[area]
    sub = ".".join(name.split(".")[1:3])  # e.g. "hypercore.shapes"
    if target not in allowed and sub not in allowed:
        return [f"{where}: {area}/ may not import {name} ({target}/ is not below it)"]
    bad = FORBIDDEN_NAMES.get(area, set()) & set(imp.names)
    return [f"{where}: {area}/ imports {', '.join(sorted(bad))}"] if bad else []


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


@functools.cache
def _imports(path: Path) -> list[Import]:
    tree = _tree(path)
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            type_only |= {id(n) for n in ast.walk(node)}
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(a.name, (), node.lineno, id(node) in type_only) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([module] if module else [])])
            names = tuple(a.name for a in node.names)
            out.append(Import(module, names, node.lineno, id(node) in type_only))
    return out


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hcbak"


def _owning_module(name: str, modules: object) -> str:
    while name and name not in modules:  # type: ignore[operator]
        name = name.rpartition(".")[0]
    return name


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found
