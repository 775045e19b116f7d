"""The package's layering, read from the source with ``ast`` (nothing is imported).

- No import cycle between modules. Every import counts, deferred ones inside functions too, and
  importing ``a.b.c`` counts as importing the packages ``a.b`` and ``a`` (their ``__init__`` runs),
  except a module's own parent packages.
- The shapes world's environment (``vrl.world``) imports nothing of the trainers, the rewards,
  the benchmark, the quickstart or the tiny models' training: it is the thing they all use.
- The trainers reach named checkpoints and data through the models and data layers, not by
  importing the world.
- No source file is longer than ``MAX_LINES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "vrl": ROOT / "vrl",
    "vrl.rewards": ROOT / "rewards",
    "vrl.samplers": ROOT / "samplers",
    "vrl.demo": ROOT / "demo",
}
"""Installed package name -> source folder (pyproject's package-dir)."""
MAX_LINES = 600


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` (at ``path``) imports, parents included."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            heads = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            heads = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for head in heads:
            parts = head.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in known and target != name and not name.startswith(target + "."):
                    targets.add(target)
    return targets


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
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
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle_and_only_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_deferred_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (pkg / "b.py").write_text("import pkg.a\n")
    monkeypatch.setitem(PACKAGES, "pkg", pkg)
    for name in [n for n in PACKAGES if n != "pkg"]:
        monkeypatch.delitem(PACKAGES, name)
    graph = import_graph()
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


ENVIRONMENT = "vrl.world"
ABOVE_THE_ENVIRONMENT = (
    "vrl.trainers",
    "vrl.rewards",
    "vrl.bench",
    "vrl.quickstart",
    "vrl.pretrain",
    "vrl.demo",
)


def test_the_environment_imports_nothing_built_on_it():
    graph = import_graph()
    offending = {
        name: sorted(t for t in targets if t.startswith(ABOVE_THE_ENVIRONMENT))
        for name, targets in graph.items()
        if name == ENVIRONMENT or name.startswith(ENVIRONMENT + ".")
    }
    assert {name: t for name, t in offending.items() if t} == {}


def test_the_trainers_do_not_import_the_world():
    graph = import_graph()
    offending = {
        name: sorted(t for t in targets if t.startswith(ENVIRONMENT))
        for name, targets in graph.items()
        if name.startswith("vrl.trainers")
    }
    assert {name: t for name, t in offending.items() if t} == {}


@pytest.mark.parametrize(
    "folder", ["vrl", "rewards", "samplers", "demo", "benchmarks", "experiments"]
)
def test_no_source_file_is_over_the_line_limit(folder):
    long = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / folder).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
