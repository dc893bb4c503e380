"""docs/security.md stays true: every regression test it names exists, and so does every section it cites."""

from __future__ import annotations

import ast
import re

from conftest import ROOT

DOC = (ROOT / "docs" / "security.md").read_text()
CITED_TEST = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
CITED_JAVA = re.compile(r"`(\w+Test)(?:\.(\w+))?`")


def _test_names(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_cited_python_test_exists() -> None:
    cited = CITED_TEST.findall(DOC)
    assert len(cited) >= 14
    missing = [f"{path}::{name}" for path, name in cited if name not in _test_names(path)]
    assert not missing


def test_every_cited_mapper_test_exists() -> None:
    sources = {p.stem: p.read_text() for p in (ROOT / "keycloak-spi" / "src" / "test").rglob("*Test.java")}
    cited = CITED_JAVA.findall(DOC)
    assert cited
    for cls, method in cited:
        assert cls in sources, cls
        assert not method or f"void {method}(" in sources[cls], f"{cls}.{method}"


def test_every_guarantee_row_names_a_regression_test() -> None:
    rows = [line for line in DOC.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(r.split("|")[1]) for r in rows] == list(range(1, len(rows) + 1))
    assert all(CITED_TEST.search(row) for row in rows)


def test_every_cited_doc_exists() -> None:
    for name in set(re.findall(r"\b([a-z-]+\.md)\b", DOC)):
        assert (ROOT / "docs" / name).exists(), name
