"""The layering rules of the package, checked on its source (README, Layout;
docs/architecture.md).

* The core (sources, store, preprocessing, models, layers, dataset, comparison and the
  one-idea modules beside them) never imports Dagster, nor the development-only parts.
  ``maintenance``, ``sharing`` and ``provenance`` (called by both the CLI and Dagster) follow
  the same rules.
* No import cycle between modules, counting imports inside functions too (a lazy import
  hides a cycle from Python, not from a reader); ``TYPE_CHECKING`` imports do not count.
* No function in the core is longer than 80 lines.

The import graph is read with ``ast`` (no third-party import-graph tool is installed here);
``from package import name`` counts as an import of ``package.name`` when that is a module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import pad_assets

PACKAGE = Path(pad_assets.__file__).resolve().parent
CORE_PACKAGES = ("sources", "store", "preprocessing", "models", "layers", "comparison",
                 "maintenance", "sharing", "provenance")
CORE_MODULES = ("dataset", "settings", "errors", "hashing", "keys", "csv_safety", "project_config",
                "__init__")
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = ["pad_assets", *f.relative_to(PACKAGE).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


MODULES = _modules()


def _is_core(name: str) -> bool:
    parts = name.split(".")
    if len(parts) == 1:
        return True  # pad_assets/__init__.py
    return parts[1] in CORE_PACKAGES or (len(parts) == 2 and parts[1] in CORE_MODULES)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _imports(name: str) -> Iterator[str]:
    """Every module ``name`` imports (absolute names), at any depth of its code."""
    path, is_pkg = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    package = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base) + (f".{node.module}" if node.module else "")
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                yield sub if sub in MODULES else mod


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        edges = set()
        for target in _imports(name):
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_sees_a_cycle_and_nothing_else() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(_graph()) == []


def test_the_core_imports_no_dagster_and_no_devtools() -> None:
    bad = {name: sorted(t for t in _imports(name)
                        if t.split(".")[0] == "dagster" or t.startswith("pad_assets.devtools")
                        or t.startswith("pad_assets.orchestration"))
           for name in MODULES if _is_core(name)}
    assert {k: v for k, v in bad.items() if v} == {}
    assert len([n for n in MODULES if _is_core(n)]) > 40  # the core was found at all


def test_importing_the_core_loads_no_dagster() -> None:
    """The same rule at run time: every core module imported, Dagster never loaded."""
    core = sorted(n for n in MODULES if _is_core(n) and not n.endswith("__main__"))
    code = ("import importlib, sys\n"
            f"for m in {core!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'dagster'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"


def _long_functions(name: str) -> Iterator[str]:
    path, _ = MODULES[name]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                yield f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length})"


@pytest.mark.parametrize("package", [*CORE_PACKAGES, "top-level modules"])
def test_no_function_in_the_core_is_longer_than_80_lines(package: str) -> None:
    names = [n for n in MODULES if _is_core(n)
             and (n.split(".")[1:2] == [package] if package in CORE_PACKAGES
                  else n.count(".") <= 1 and n.split(".")[-1] not in CORE_PACKAGES)]
    assert names
    assert [f for n in names for f in _long_functions(n)] == []
