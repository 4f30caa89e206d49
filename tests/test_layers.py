"""The import graph of gkd/, app/ and worker/, read from the source (ast): imports point one way (worker -> app's
store -> gkd), and no module of gkd/ or app/ imports itself back through others (no cycles).

`python -m tests.test_layers` prints the graph's summary and every violation.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("gkd", "app", "worker")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, known: dict[str, Path], top_level: bool) -> Iterator[str]:
    """The project modules `tree` imports: at import time only (`top_level`), or anywhere (functions too)."""
    package = module if known[module].name == "__init__.py" else module.rpartition(".")[0]
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue  # annotations only
            if top_level and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.Import):
                yield from (alias.name for alias in child.names if alias.name.split(".")[0] in PACKAGES)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + [base]).strip(".")
                if base.split(".")[0] not in PACKAGES:
                    continue
                for alias in child.names:
                    yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
            stack.append(child)


def graph(top_level: bool) -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges[module] = {m for m in _imports(tree, module, known, top_level) if m in known and m != module}
    return edges


def direction_violations(edges: dict[str, set[str]]) -> list[str]:
    """worker -> app.store -> gkd: gkd imports neither, app never the worker, the store nothing of the API, the
    worker nothing of app but the store, the HTTP client nothing of the library."""
    rules = [
        ("gkd", ("app", "worker"), "the library never imports the service"),
        ("app", ("worker",), "the API enqueues by task name"),
        ("worker", ("app.",), "the worker uses the store only"),
        ("app.store", ("app.",), "the store is below the API"),
        ("gkd.client", ("gkd.",), "the client speaks HTTP only"),
    ]
    allowed = {"worker": ("app.store",), "app.store": ("app.store",), "gkd.client": ("gkd.client",)}
    found = []
    for source, targets in sorted(edges.items()):
        for rule_source, forbidden, why in rules:
            if source != rule_source and not source.startswith(rule_source + "."):
                continue
            for target in sorted(targets):
                if target == "gkd" and rule_source == "gkd.client":
                    continue  # the package root (its version)
                if any(target == f or target.startswith(f if f.endswith(".") else f + ".") for f in forbidden) \
                        and not target.startswith(allowed.get(rule_source, ("\0",))):
                    found.append(f"{source} -> {target}: {why}")
    return found


def cycles(edges: dict[str, set[str]], prefix: str) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), among modules under `prefix`."""
    nodes = [m for m in edges if m == prefix or m.startswith(prefix + ".")]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in nodes:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(nodes):
        if node not in index:
            visit(node)
    return components


def test_imports_point_one_way():
    assert direction_violations(graph(top_level=False)) == []


@pytest.mark.parametrize("top_level", [True, False], ids=["at-import-time", "with-lazy-imports"])
def test_no_import_cycles_in_gkd_and_app(top_level: bool):
    edges = graph(top_level=top_level)
    assert cycles(edges, "gkd") == []
    assert cycles(edges, "app") == []


def test_the_checks_see_violations():
    """Guards the two tests above against passing vacuously."""
    edges = {"gkd.a": {"app.b"}, "app.b": {"worker.c"}, "app.store.x": {"app.routes.y"}, "worker.c": {"app.routes.y"},
             "app.routes.y": {"app.store.x"}, "gkd.client.z": {"gkd.training.t"}}
    assert len(direction_violations(edges)) == 5
    assert cycles({"app.p": {"app.q"}, "app.q": {"app.p"}, "app.r": set()}, "app") == [["app.p", "app.q"]]


if __name__ == "__main__":
    every, eager = graph(top_level=False), graph(top_level=True)
    print(f"{len(every)} modules, {sum(map(len, every.values()))} import edges "
          f"({sum(map(len, eager.values()))} at import time)")
    print("direction violations:", direction_violations(every) or "none")
    for prefix in ("gkd", "app", "worker"):
        print(f"cycles in {prefix}/: at import time {cycles(eager, prefix) or 'none'}, "
              f"with lazy imports {cycles(every, prefix) or 'none'}")
