"""Sizes that fit in a head: no module of the library or the flows over 450 lines, no function over 60 (from its
`def` to its last line, docstring included). docs/concepts/architecture.md gives the reasons; a unit that outgrows
them is split by responsibility, not by line count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).parents[3]
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
SOURCES = sorted(p for package in ("components", "flows") for p in (REPO / package).rglob("*.py"))


def _name(file: Path) -> str:
    return file.relative_to(REPO).as_posix()


@pytest.mark.parametrize("file", SOURCES, ids=_name)
def test_modules_fit_in_a_head(file: Path) -> None:
    lines = len(file.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{_name(file)} has {lines} lines (at most {MAX_MODULE_LINES}): split it"


def test_functions_fit_in_a_head() -> None:
    long = [
        f"{_name(file)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for file in SOURCES
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_subpackage_says_what_it_holds() -> None:
    packages = list((REPO / "components").rglob("__init__.py"))
    undocumented = [_name(p) for p in packages if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))]
    assert not undocumented, f"subpackages without a docstring: {undocumented}"
