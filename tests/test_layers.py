"""The folders are the architecture: ``drivers`` never imports ``agent``, and no module
imports itself round a circle (not even through an import hidden in a function, which is
how a circle is usually papered over)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in ("agent", "drivers"):
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = p
    return mods


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, mods: dict[str, Path], name: str, is_pkg: bool) -> set[str]:
    """The project modules ``tree`` imports at run time, anywhere in it."""
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo += node.orelse  # annotations only: no import at run time
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            subs = {f"{base}.{a.name}" for a in node.names} & mods.keys()
            out |= subs or ({base} & mods.keys())  # a submodule, or names of a module
        todo += ast.iter_child_nodes(node)
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(ast.parse(p.read_text(encoding="utf-8")), mods, name, p.name == "__init__.py")
            for name, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles_in_agent_or_drivers():
    assert cycles(import_graph()) == []


def test_the_circle_finder_finds_a_circle_through_a_function_level_import():
    tree_a = ast.parse("from pkg.b import X\n")
    tree_b = ast.parse("def f():\n    from pkg.a import Y\n")
    mods = {"pkg.a": Path("a.py"), "pkg.b": Path("b.py")}
    graph = {"pkg.a": _imports(tree_a, mods, "pkg.a", False), "pkg.b": _imports(tree_b, mods, "pkg.b", False)}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_drivers_never_import_agent():
    graph = import_graph()
    wrong = {m: sorted(d for d in deps if d.split(".")[0] == "agent")
             for m, deps in graph.items() if m.split(".")[0] == "drivers"}
    assert {m: d for m, d in wrong.items() if d} == {}
