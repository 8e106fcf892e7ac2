"""No import cycles among the project's modules (selfflow, modalities, data_pipelines).

The graph is read from the source with ``ast``; nothing is imported. Every executed import counts,
at module level and inside functions (a function-level import only defers a cycle to the first
call); imports under ``if TYPE_CHECKING:`` never run and do not. ``from pkg import name`` is an
edge to the submodule ``pkg.name`` when that is a module, else to ``pkg`` itself (``name`` is then
an attribute its ``__init__`` defines). Importing a submodule is not an edge to its parent
packages, although Python runs their ``__init__`` first: a package's ``__init__`` re-exporting
its submodules would otherwise be a cycle with each of them.
"""

from __future__ import annotations

import ast
import dataclasses
from collections import deque
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("selfflow", "modalities", "data_pipelines")


@dataclasses.dataclass(frozen=True)
class Edge:
    """An import of ``target`` at ``path:line``; ``deferred``: inside a function."""

    target: str
    path: str
    line: int
    deferred: bool

    def where(self) -> str:
        return f"{self.path}:{self.line}" + (" (in a function)" if self.deferred else "")


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under ``root/<package>``; a package's
    ``__init__.py`` is the package's own name."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """The import statements a module executes: (node, inside a function)."""

    def __init__(self):
        self.found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
        self._depth = 0

    def visit_Import(self, node):
        self.found.append((node, self._depth > 0))

    visit_ImportFrom = visit_Import

    def _function(self, node):
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node):
        if _is_type_checking(node.test):  # only the else branch runs
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a (possibly relative) ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    parts = (module if is_package else module.rpartition(".")[0]).split(".")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def _known_prefix(name: str, modules) -> str | None:
    """The longest dotted prefix of ``name`` that is one of ``modules``."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def import_graph(root: Path = REPO, packages: Iterable[str] = PACKAGES) -> dict[str, list[Edge]]:
    """{module: its imports of other modules of ``packages``}; imports from elsewhere are left out."""
    modules = module_files(root, packages)
    graph = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        rel = path.relative_to(root).as_posix()
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges = []
        for node, deferred in visitor.found:
            targets = []
            if isinstance(node, ast.Import):
                targets = [_known_prefix(alias.name, modules) for alias in node.names]
            else:
                source = _absolute(node, module, is_package)
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in modules else _known_prefix(source, modules))
            for target in dict.fromkeys(targets):  # once per statement, in order
                if target is not None and target != module:
                    edges.append(Edge(target, rel, node.lineno, deferred))
        graph[module] = edges
    return graph


def strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """The components of more than one module (each import cycle lies in one), sorted (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for edge in graph.get(v, ()):
            w = edge.target
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def shortest_cycle(graph: dict[str, list[Edge]], component: list[str]) -> list[Edge]:
    """A shortest import cycle through the component's first module: its edges, in order."""
    start, members = component[0], set(component)
    came_from: dict[str, tuple[str, Edge]] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for edge in graph[v]:
            w = edge.target
            if w not in members or w in came_from:
                continue
            came_from[w] = (v, edge)
            if w == start:
                path, node = [], start
                while True:
                    prev, e = came_from[node]
                    path.append(e)
                    node = prev
                    if node == start:
                        return path[::-1]
            queue.append(w)
    raise AssertionError(f"no cycle through {start}")  # a component of > 1 module always has one


def describe(graph: dict[str, list[Edge]], component: list[str]) -> str:
    cycle = shortest_cycle(graph, component)
    lines = [f"import cycle: {' -> '.join([component[0]] + [e.target for e in cycle])}"]
    source = component[0]
    for edge in cycle:
        lines.append(f"    {source} -> {edge.target}: {edge.where()}")
        source = edge.target
    if len(component) > len(cycle):
        members = set(component)
        lines.append(f"  in a cycle component of {len(component)} modules: {', '.join(component)}")
        lines.append("  every import within it:")
        lines += [
            f"    {m} -> {e.target}: {e.where()}" for m in component for e in graph[m] if e.target in members
        ]
    return "\n".join(lines)


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and "selfflow.train" in graph and "modalities.image" in graph
    components = strongly_connected(graph)
    assert not components, "\n\n".join(describe(graph, c) for c in components)


# ---------------------------------------------------------------------------- the checker itself


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_cycles_through_function_level_and_from_imports_are_found(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",  # `from pkg import <module>`
            "pkg/b.py": "def f():\n    import pkg.c.d as d\n",  # deferred, dotted
            "pkg/c/__init__.py": "",
            "pkg/c/d.py": "import os\nfrom ..a import thing\n",  # relative; os is left out
            "pkg/lone.py": "from pkg.a import thing\n",
        },
    )
    graph = import_graph(root, ["pkg"])
    assert strongly_connected(graph) == [["pkg.a", "pkg.b", "pkg.c.d"]]
    assert [e.target for e in shortest_cycle(graph, ["pkg.a", "pkg.b", "pkg.c.d"])] == [
        "pkg.b",
        "pkg.c.d",
        "pkg.a",
    ]
    message = describe(graph, ["pkg.a", "pkg.b", "pkg.c.d"])
    assert "import cycle: pkg.a -> pkg.b -> pkg.c.d -> pkg.a" in message
    assert "pkg/b.py:2 (in a function)" in message and "pkg/c/d.py:2" in message


def test_package_reexport_is_not_a_cycle(tmp_path):
    """``pkg/__init__`` re-exports its submodules, which import each other (absolute, relative,
    ``from pkg import <module>``): importing pkg.b runs pkg/__init__ first, but that is no edge."""
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg import a, b\nfrom pkg.a import A\nfrom .b import B\n",
            "pkg/a.py": "import pkg.b\nfrom pkg import b\nfrom . import b as bb\nA = 1\n",
            "pkg/b.py": "B = 2\n",
        },
    )
    graph = import_graph(root, ["pkg"])
    assert {e.target for e in graph["pkg.a"]} == {"pkg.b"}
    assert {e.target for e in graph["pkg"]} == {"pkg.a", "pkg.b"}
    assert strongly_connected(graph) == []


def test_importing_a_name_from_the_package_init_is_an_edge_to_it(tmp_path):
    """``from pkg import helper`` (not a module) runs pkg/__init__, which imports pkg.a: a cycle."""
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import A\n\ndef helper():\n    pass\n",
            "pkg/a.py": "from pkg import helper\nA = 1\n",
        },
    )
    assert strongly_connected(import_graph(root, ["pkg"])) == [["pkg", "pkg.a"]]


def test_type_checking_imports_do_not_count(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg.b import B\nelse:\n    B = None\n",
            "pkg/b.py": "from typing import TYPE_CHECKING\nfrom pkg.a import B\nif TYPE_CHECKING:\n    import pkg.a\n",
        },
    )
    graph = import_graph(root, ["pkg"])
    assert [e.target for e in graph["pkg.a"]] == [] and [e.target for e in graph["pkg.b"]] == ["pkg.a"]
    assert strongly_connected(graph) == []
