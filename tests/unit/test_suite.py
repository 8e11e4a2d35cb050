"""The test suite itself: every test function can fail (it asserts, expects an exception, or calls a helper that
does), so none passes whatever the code under test does."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# Calls that are checks themselves: pytest.raises/fail/warns/approx, contextlib.suppress (only the named
# exception may escape: "never raises anything else" tests).
CHECK_CALLS = frozenset({"raises", "fail", "warns", "deprecated_call", "approx", "suppress"})
BROAD = frozenset({"Exception", "BaseException"})


def _calls(node: ast.AST) -> Iterator[str]:
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Name):
                yield f.id
            elif isinstance(f, ast.Attribute):
                yield f.attr


def _checks_itself(node: ast.AST) -> bool:
    """An assert, a raise, a check call, or an except clause for a specific exception (others escape)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Assert | ast.Raise):
            return True
        if isinstance(n, ast.ExceptHandler) and n.type is not None:
            names = {x.id for x in ast.walk(n.type) if isinstance(x, ast.Name)}
            if names and not names & BROAD:
                return True
    return any(c in CHECK_CALLS for c in _calls(node))


def unfailing_tests(sources: dict[str, str]) -> list[str]:
    """`file:line name` of each test function (test_* in a test_*.py file) that checks nothing, directly or through
    a function defined in `sources` (matched by name: a helper, fixture or method that checks)."""
    functions: dict[str, list[ast.AST]] = {}
    tests: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.setdefault(node.name, []).append(node)
                if node.name.startswith("test_") and Path(name).name.startswith("test_"):
                    tests.append((name, node))
    checking = {f for f, nodes in functions.items() if any(_checks_itself(n) for n in nodes)}
    grew = True
    while grew:
        grew = False
        for f, nodes in functions.items():
            if f not in checking and any(set(_calls(n)) & checking for n in nodes):
                checking.add(f)
                grew = True
    return [f"{name}:{node.lineno} {node.name}" for name, node in tests
            if not (_checks_itself(node) or set(_calls(node)) & checking)]


def test_every_test_in_the_suite_can_fail() -> None:
    sources = {str(p.relative_to(TESTS)): p.read_text() for p in sorted(TESTS.rglob("*.py"))}
    assert unfailing_tests(sources) == []


def test_the_checker_finds_tests_that_check_nothing() -> None:
    source = '''
import contextlib, pytest

def helper(x):
    assert x

def test_direct(): assert 1
def test_via_helper(): helper(1)
def test_raises():
    with pytest.raises(ValueError): int("x")
def test_suppress():
    with contextlib.suppress(ValueError): int("x")
def test_specific_except():
    try: int("x")
    except ValueError: pass
def test_nothing(): int("1")
def test_broad_except():
    try: int("x")
    except Exception: pass
def test_calls_a_helper_that_checks_nothing(): print(1)
'''
    found = unfailing_tests({"test_x.py": source})
    assert [f.split()[1] for f in found] == [
        "test_nothing", "test_broad_except", "test_calls_a_helper_that_checks_nothing"]
    assert found[0].startswith("test_x.py:16 ")


def test_every_test_module_has_its_own_basename() -> None:
    """The test folders are not packages: two test_x.py files under tests/ stop pytest's collection of the whole suite
    ("import file mismatch"), as the integration test_registry.py/test_replicas.py did beside the unit ones."""
    names = [p.name for p in TESTS.rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
