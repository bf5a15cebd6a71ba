"""Type hints and docstrings on the public API of envs/, algos/, recipes/ and benchmarks/.

The rule, checked with `ast` (nothing is imported):
- public means a name without a leading `_`: module-level functions, and methods of
  public module-level classes (nested public classes too). Dunder methods, nested
  functions and closures, and anything inside a private class do not count.
- every public function is fully annotated: each parameter (positional, keyword-only,
  *args, **kwargs) except the first of a method (self/cls; a @staticmethod has none),
  and the return;
- at least 90% of public functions have a docstring; a property's setter or deleter
  shares its getter's and is not counted.

Files being rewritten on other branches (PENDING) are scanned like the rest, but their
offenders make the whole-tree test xfail, naming them, instead of failing it; every
other file must have none. Empty PENDING once those rewrites land.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("envs", "algos", "recipes", "benchmarks")
MIN_DOCSTRING_SHARE = 0.90
PENDING: tuple[str, ...] = ()


def _public_functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, bool]]:
    """(qualified name, node, is_method) of every public function and method of public classes."""

    def visit(body: list[ast.stmt], prefix: str, in_class: bool) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, bool]]:
        for node in body:
            public = not getattr(node, "name", "_").startswith("_")
            if public and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + node.name, node, in_class
            elif public and isinstance(node, ast.ClassDef):
                yield from visit(node.body, f"{prefix}{node.name}.", True)

    yield from visit(tree.body, "", False)


def _unannotated(node: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> list[str]:
    """Names of the parameters (and 'return') that lack an annotation."""
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    if is_method and not static and positional:
        positional = positional[1:]  # self / cls
    params = [*positional, *args.kwonlyargs, *(a for a in (args.vararg, args.kwarg) if a is not None)]
    missing = [a.arg for a in params if a.annotation is None]
    if node.returns is None:
        missing.append("return")
    return missing


def _is_accessor(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A @name.setter or @name.deleter: documented by its getter."""
    return any(isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter") for d in node.decorator_list)


def _pending(rel: str, name: str) -> bool:
    """Whether `name` in file `rel` lies in the part being rewritten on another branch."""
    return any(rel.startswith(p) if ":" not in p else p == f"{rel}:{name}" for p in PENDING)


def _scan() -> tuple[list[str], list[str], int]:
    """(annotation offenders, functions without a docstring, count of documentable public functions).

    Each offender reads "path:line name", with " [pending]" where it lies in PENDING.
    """
    unannotated, undocumented, total = [], [], 0
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(), filename=rel)
            for name, node, is_method in _public_functions(tree):
                where = f"{rel}:{node.lineno} {name}" + (" [pending]" if _pending(rel, name) else "")
                if missing := _unannotated(node, is_method):
                    unannotated.append(f"{where} ({', '.join(missing)})")
                if _is_accessor(node):
                    continue
                total += 1
                if not ast.get_docstring(node):
                    undocumented.append(where)
    return unannotated, undocumented, total


def test_scan_finds_what_the_rule_names() -> None:
    """The checker itself: a missing hint, a method's self, closures and private classes."""
    tree = ast.parse(
        "def f(a, *, b: int) -> None:\n    def inner(x): pass\n"
        "class C:\n    def m(self, x: int):\n        '''doc'''\n    @staticmethod\n    def s(y) -> int: ...\n"
        "    def _p(self, z): ...\n    @property\n    def v(self) -> int: ...\n    @v.setter\n    def v(self, x: int) -> None: ...\n"
        "class _Hidden:\n    def m(self, q): ...\n"
    )
    found = [(name, _unannotated(node, m), bool(ast.get_docstring(node)), _is_accessor(node)) for name, node, m in _public_functions(tree)]
    assert found == [("f", ["a"], False, False), ("C.m", ["return"], True, False), ("C.s", ["y"], False, False),
                     ("C.v", [], False, False), ("C.v", [], False, True)]
    assert not _pending("algos/rollout.py", "SpreadKeeper.ready")


def test_public_functions_outside_pending_files_are_annotated_and_documented() -> None:
    """No offender at all outside PENDING: the share below then depends on those files alone."""
    unannotated, undocumented, _ = _scan()
    ours = [o for o in unannotated + undocumented if "[pending]" not in o]
    assert not ours, f"{len(ours)} public functions not fully annotated or without a docstring:\n" + "\n".join(ours)


def test_public_functions_are_annotated_and_mostly_documented() -> None:
    """Every public function fully annotated; >= 90% of them with a docstring (PENDING offenders: xfail)."""
    unannotated, undocumented, total = _scan()
    share = 1 - len(undocumented) / total
    summary = f"{total} public functions; {share:.1%} with a docstring; {len(unannotated)} not fully annotated"
    print(summary)
    problems = []
    if unannotated:
        problems.append(f"{len(unannotated)} not fully annotated:\n" + "\n".join(unannotated))
    if share < MIN_DOCSTRING_SHARE:
        problems.append(f"docstrings {share:.1%} < {MIN_DOCSTRING_SHARE:.0%}; without one:\n" + "\n".join(undocumented))
    if problems and all("[pending]" in o for o in unannotated + undocumented):
        pytest.xfail(f"{summary}: all {len(undocumented)} undocumented and {len(unannotated)} unannotated lie in PENDING files")
    assert not problems, "\n".join(problems)
