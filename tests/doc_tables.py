"""Reading Markdown reference documents in tests: headings, sections, first-column names.

The doc-agreement tests (policy language, entitlements, decision log, service) compare a
document's field tables with the schemas and code they describe; this is the parsing they share.
"""

from __future__ import annotations

import re
from typing import Any

import click

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_FIRST_CELL_NAME = re.compile(r"^`([^`]+)`$")


def headings(doc: str) -> list[tuple[int, str, int]]:
    """``(level, title, line index)`` of every heading outside fenced code blocks."""
    out = []
    in_fence = False
    for i, line in enumerate(doc.splitlines()):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        match = _HEADING.match(line)
        if match:
            out.append((len(match.group(1)), match.group(2), i))
    return out


def section_body(doc: str, title: str, level: int, name: str = "document") -> list[str]:
    """The lines under the one heading ``title`` at ``level``, up to the next heading.

    Raises:
        AssertionError: there is not exactly one such heading.
    """
    lines = doc.splitlines()
    found = headings(doc)
    starts = [i for lvl, text, i in found if lvl == level and text == title]
    if len(starts) != 1:
        raise AssertionError(f"{name}: expected one section headed {'#' * level} {title}, found {len(starts)}")
    following = [i for _, _, i in found if i > starts[0]]
    return lines[starts[0] + 1 : following[0] if following else len(lines)]


def table_first_cells(body: list[str], title: str) -> list[str]:
    """First-column names of the first table in ``body``: each must be a single `name`.

    Raises:
        AssertionError: no table, a malformed separator, or a first cell that is not a name.
    """
    rows: list[str] = []
    for line in body:
        stripped = line.strip()
        if stripped.startswith("|"):
            rows.append(stripped)
        elif rows:
            break  # the first table ended
    if len(rows) < 3:
        raise AssertionError(f"section {title!r} has no table (header, separator and rows)")
    if not re.fullmatch(r"\|(:?-{3,}:?\|)+", rows[1].replace(" ", "")):
        raise AssertionError(f"section {title!r}: second table line is not a separator: {rows[1]}")
    names = []
    for row in rows[2:]:
        cell = row.split("|")[1].strip()
        match = _FIRST_CELL_NAME.match(cell)
        if not match:
            raise AssertionError(f"section {title!r}: first cell {cell!r} is not a name in backticks")
        names.append(match.group(1))
    return names


def schema_object(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """The schema object at ``path``, which must have ``properties``."""
    node: Any = schema
    for key in path:
        node = node[key]
    assert isinstance(node, dict) and "properties" in node, f"schema path {path} is not an object with properties"
    return node


def name_mismatches(documented: list[str], actual: set[str]) -> tuple[list[str], list[str], list[str]] | None:
    """(undocumented, documented but not actual, documented twice), or None when they agree."""
    duplicates = sorted({n for n in documented if documented.count(n) > 1})
    missing = sorted(actual - set(documented))
    extra = sorted(set(documented) - actual)
    return (missing, extra, duplicates) if missing or extra or duplicates else None


def param_names(command: click.Command) -> list[str]:
    """Each option's longest flag (``--json``) and each argument's name upper-cased."""
    names = []
    for param in command.params:
        if isinstance(param, click.Option):
            names.append(max(param.opts, key=len))
        elif isinstance(param, click.Argument):
            names.append((param.name or "").upper())
    return names
