"""The import graph: no module circles (lazy imports inside functions counted), and the oracle line.

A circle, even one closed only by an import inside a function, means two modules each need
the other: the speed bench's cells -> worker -> decode was one. And the spec shares no code
with the implementations: impls may read the spec's configuration, parameters, step table
and convention names, never its math (it stays the oracle the implementations are judged by).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("spec", "impls", "conformance", "reports")
#: The spec's math: what no implementation may import.
SPEC_MATH = ("spec.steps", "spec.block", "spec.backward", "spec.cache", "spec.masks", "spec.invariants")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `path` imports anywhere in it; `from pkg import sub` counts as pkg.sub only."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            names_only = len(subs) < len(node.names)  # some imported names are not modules
            out |= subs | ({node.module} if names_only else set())
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out & modules.keys()


def _graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports. A package's __init__ importing its own
    submodules (to collect them, as checks/ registers its checks) is left out: that is
    the package gathering its parts, not two modules needing each other."""
    mods = _modules()
    return {m: {d for d in _imports(p, mods) if not d.startswith(m + ".")} - {m} for m, p in mods.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_lazy_imports():
    g = _graph()
    assert "conformance.speed.timers" in g["conformance.speed.worker"]  # imported inside a method only


def test_no_import_circles_in_the_speed_bench():
    g = _graph()
    speed = {m: {d for d in ds if d.startswith("conformance.speed")} for m, ds in g.items()
             if m.startswith("conformance.speed")}
    assert _circles(speed) == []


def test_no_import_circles_between_modules():
    circles = _circles(_graph())
    assert circles == [], f"modules that import each other (lazily counted): {circles}"


def test_circle_finder_finds_one():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_implementations_never_import_the_spec_math():
    g = _graph()
    bad = {(m, d) for m, ds in g.items() if m.startswith("impls") for d in ds if d in SPEC_MATH}
    assert bad == set()
    assert {"impls.array_steps", "impls.array_vjps", "impls.array_cache"} <= g.keys()


def test_spec_imports_nothing_outside_itself():
    g = _graph()
    assert {(m, d) for m, ds in g.items() if m.startswith("spec") for d in ds if not d.startswith("spec")} == set()
