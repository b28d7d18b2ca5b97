"""Fail when code outgrows the shape the project promises (run by `make lint`).

Usage: python scripts/check_code_shape.py [--max-module-lines N] [--max-function-lines N]
           [--no-environ DIR ...] [--debt FILE] PATH [PATH ...]

- `--max-module-lines`: no `.py` file under the PATHs has more lines than N;
- `--max-function-lines`: no function or method there spans more than N lines (from its
  `def` line, decorators excluded, to its last line);
- `--no-environ DIR`: no file under DIR reads the environment (`os.environ`, `os.getenv`,
  `from os import environ/getenv`): user code gets its context from the training session;
- `--debt FILE`: known violations still to be paid off, one `path` (a long module) or
  `path:function` per line; they are tolerated, and an entry that no longer violates is
  itself an error (remove it), so the list only shrinks.

Prints one line per violation (`path:line: what`) and exits 1 if there is one, 0 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

_ENV_NAMES = {"environ", "getenv", "environb", "getenvb"}


def python_files(paths: list[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def long_functions(tree: ast.AST, limit: int) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                yield node.lineno, f"function {node.name} has {length} lines (at most {limit})"


def environment_reads(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _ENV_NAMES:
            yield node.lineno, f"reads the environment (.{node.attr})"
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            for alias in node.names:
                if alias.name in _ENV_NAMES:
                    yield node.lineno, f"reads the environment (from os import {alias.name})"


def _debt(path: str | None) -> set[str]:
    if not path:
        return set()
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def check(args: argparse.Namespace) -> list[str]:
    problems: list[str] = []
    debt, paid = _debt(args.debt), set()
    for path in python_files(args.paths):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
        if args.max_module_lines and lines > args.max_module_lines:
            if path.as_posix() in debt:
                paid.add(path.as_posix())
            else:
                problems.append(f"{path}:1: {lines} lines (at most {args.max_module_lines})")
        tree = ast.parse(text, filename=str(path))
        if args.max_function_lines:
            for line, what in long_functions(tree, args.max_function_lines):
                entry = f"{path.as_posix()}:{what.split()[1]}"
                if entry in debt:
                    paid.add(entry)
                else:
                    problems.append(f"{path}:{line}: {what}")
    for entry in sorted(debt - paid):
        problems.append(
            f"{args.debt}: {entry} no longer exceeds its limit: remove it from the list"
        )
    for path in python_files(args.no_environ):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, what in environment_reads(tree):
            problems.append(f"{path}:{line}: {what}; take it from the training session")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=[], help="files or folders to measure")
    parser.add_argument("--max-module-lines", type=int, default=0, help="0: no limit")
    parser.add_argument("--max-function-lines", type=int, default=0, help="0: no limit")
    parser.add_argument("--no-environ", action="append", default=[], metavar="DIR")
    parser.add_argument("--debt", default="", metavar="FILE", help="known violations")
    problems = check(parser.parse_args(argv))
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
