"""Fail on import cycles between the modules of the given packages.

Usage: python scripts/check_import_cycles.py [--root DIR] PACKAGE [PACKAGE ...]

Every `import` and `from ... import` counts, at module level and inside functions (a lazy
import still ties the two modules together); imports under `if TYPE_CHECKING:` do not (they
never run). `from pkg import name` counts as an import of `pkg.name` when that is a module,
else of `pkg`. Importing `pkg.mod` also runs `pkg/__init__.py`, but that edge is left out:
a package's `__init__` re-exporting its submodules is not a cycle anyone has to untangle.
Prints each cycle as `a -> b -> a` and exits 1 if there is one, 0 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every .py file of `package` under `root`."""
    base = root / package.replace(".", "/")
    modules: dict[str, Path] = {}
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of `if TYPE_CHECKING:` blocks."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a `from` import names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    # In a package's __init__, `.` is the package itself; in a module, its parent.
    keep = len(parts) - node.level + (1 if is_package else 0)
    base = parts[:keep]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of `modules` it imports."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, is_package, node)
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    targets.append(child if child in modules else base)
            for target in targets:
                # `import a.b.c` names a.b.c; fall back to the longest prefix we know.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(f"{target}."):
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, set(component)) for component in sorted(components)]


def _cycle_in(graph: dict[str, set[str]], members: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(members)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & members):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if succ not in parents:
                    parents[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+", help="top-level packages, e.g. tinyexp_core")
    parser.add_argument("--root", default=".", help="directory that holds the packages")
    args = parser.parse_args(argv)
    root = Path(args.root)
    modules: dict[str, Path] = {}
    for package in args.packages:
        found = module_files(root, package)
        if not found:
            parser.error(f"no package {package!r} under {root}")
        modules.update(found)
    cycles = find_cycles(import_graph(modules))
    for cycle in cycles:
        print(f"import cycle: {' -> '.join(cycle)}")
    if cycles:
        print(f"{len(cycles)} import cycle(s) in {', '.join(args.packages)}", file=sys.stderr)
        return 1
    print(f"no import cycles in {', '.join(args.packages)} ({len(modules)} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
