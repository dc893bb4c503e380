"""Keep docs/entitlements.md true to the loader, the profile schema, the store and the CLI.

The guide documents things the code defines, in tables whose first column holds one name in
backticks per row. These tests parse those tables and compare them with the code, so that a new
rejection code, profile field, shipped profile, normalized column, feed type, status field or
``kpb entitlements check`` option fails the suite until it is documented:

* ``### profile``, ``### format``, ``### column`` and ``### date`` list exactly the properties of
  the root, ``properties.format``, ``$defs.column`` and ``$defs.date`` of
  ``schemas/profile.v1.schema.json``;
* every shipped profile (``profile.shipped_profiles()``) has a section headed with its name that
  names every header the profile reads;
* every ``Issue(...)`` code in the loader modules (the third argument, or ``code=``) is in the
  ``### Rejections`` table, or, for warnings (an ``Issue`` appended to a ``warnings`` list), in
  the ``### Warnings`` table; and every documented code still exists.

Self-checks run the same comparisons on modified copies (of the schema, of a module's source) to
prove that an undocumented addition is caught.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest

import doc_tables
from doc_tables import headings, name_mismatches, schema_object, table_first_cells
from keycloak_policy_bridge.cli import entitlements as cli
from keycloak_policy_bridge.context_feed import _CONVERTERS
from keycloak_policy_bridge.entitlements import (
    ASSIGNMENT_STATES,
    COLUMNS,
    PRIVILEGE_LEVELS,
    REQUIRED_COLUMNS,
    SUBJECT_STATUSES,
    SUBJECT_TYPES,
)
from keycloak_policy_bridge.errors import Issue
from keycloak_policy_bridge.json_schema import schema_issues
from keycloak_policy_bridge.profile import header_key, load_profile, shipped_profiles
from keycloak_policy_bridge.snapshot_store import SnapshotStore

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "entitlements.md"
PACKAGE = ROOT / "keycloak_policy_bridge"
SCHEMA = PACKAGE / "schemas" / "profile.v1.schema.json"

# Modules whose Issue codes are part of the loader's contract (the brief names the first four;
# the store adds its feed-name check).
CODE_MODULES = (
    "snapshot_loader.py",
    "entitlements.py",
    "profile.py",
    "context_feed.py",
    "snapshot_store.py",
    "snapshot_file.py",
    "snapshot_compiler.py",
)

# Section heading (after "### ") -> path of the schema object whose "properties" it documents.
PROFILE_SECTIONS: dict[str, tuple[str, ...]] = {
    "profile": (),
    "format": ("properties", "format"),
    "column": ("$defs", "column"),
    "date": ("$defs", "date"),
}

REJECTIONS = "Rejections"
WARNINGS = "Warnings"

_FIRST_CELL_NAME = re.compile(r"^`([^`]+)`$")
_ISSUE_DEFAULT_CODE: str = Issue("", "").code  # what an Issue without a code argument carries
# Issues made by json_schema.schema_issues(name, document, code) for a module's schema check.
_SCHEMA_DEFAULT_CODE: str = inspect.signature(schema_issues).parameters["code"].default


# --------------------------------------------------------------------------------------------
# Reading the document


def load_doc() -> str:
    return DOC.read_text(encoding="utf-8")


def section_body(doc: str, title: str, level: int) -> list[str]:
    return doc_tables.section_body(doc, title, level, DOC.name)


def table_rows(body: list[str]) -> dict[str, str]:
    """First-cell name -> the whole row, for the first table in ``body``."""
    rows = {}
    for line in body:
        stripped = line.strip()
        if stripped.startswith("|"):
            match = _FIRST_CELL_NAME.match(stripped.split("|")[1].strip())
            if match:
                rows[match.group(1)] = stripped
        elif rows:
            break
    return rows


def documented(doc: str, title: str, level: int = 3) -> list[str]:
    return table_first_cells(section_body(doc, title, level), title)


# --------------------------------------------------------------------------------------------
# Reading the schema and the code


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return schema


def schema_mismatches(doc: str, schema: dict[str, Any]) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """Per section: (undocumented schema fields, documented fields not in the schema, duplicates)."""
    out = {}
    for title, path in PROFILE_SECTIONS.items():
        mismatch = name_mismatches(documented(doc, title), set(schema_object(schema, path)["properties"]))
        if mismatch:
            out[title] = mismatch
    return out


@dataclasses.dataclass(frozen=True)
class CodeUse:
    module: str
    line: int
    code: str | None  # None: not a string literal
    warning: bool


def _is_warnings_append(node: ast.AST | None) -> bool:
    """``warnings.append(...)`` or ``<x>.warnings.append(...)``."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append"):
        return False
    target = node.func.value
    return (isinstance(target, ast.Name) and target.id == "warnings") or (isinstance(target, ast.Attribute) and target.attr == "warnings")


def issue_codes(module: str, source: str) -> list[CodeUse]:
    """Every ``Issue(...)`` and ``schema_issues(...)`` call in ``source`` with its code (third
    argument or ``code=``)."""
    tree = ast.parse(source)
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    uses = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name not in ("Issue", "schema_issues"):
            continue
        argument: ast.expr | None = node.args[2] if len(node.args) >= 3 else None
        for keyword in node.keywords:
            if keyword.arg == "code":
                argument = keyword.value
        if argument is None:
            code: str | None = _ISSUE_DEFAULT_CODE if name == "Issue" else _SCHEMA_DEFAULT_CODE
        elif isinstance(argument, ast.Constant) and isinstance(argument.value, str):
            code = argument.value
        else:
            code = None
        uses.append(CodeUse(module, node.lineno, code, _is_warnings_append(parents.get(node))))
    return uses


def module_sources() -> dict[str, str]:
    return {name: (PACKAGE / name).read_text(encoding="utf-8") for name in CODE_MODULES}


def all_code_uses(sources: dict[str, str]) -> list[CodeUse]:
    return [use for name, text in sources.items() for use in issue_codes(name, text)]


def undocumented_codes(doc: str, sources: dict[str, str]) -> tuple[list[str], list[str]]:
    """(rejection codes missing from the Rejections table, warning codes missing from Warnings)."""
    uses = all_code_uses(sources)
    rejections, warnings = set(documented(doc, REJECTIONS)), set(documented(doc, WARNINGS))
    missing_rejections = sorted({u.code for u in uses if u.code and not u.warning} - rejections)
    missing_warnings = sorted({u.code for u in uses if u.code and u.warning} - warnings)
    return missing_rejections, missing_warnings


def profile_names() -> list[str]:
    """Shipped profiles, as the package lists them and as files in this checkout."""
    files = {p.stem for p in (PACKAGE / "profiles").glob("*.json")}
    return sorted(set(shipped_profiles()) | files)


def profile_section(doc: str, name: str) -> list[str] | None:
    """The body of the section whose heading (backticks removed) is the profile's name."""
    for level, text, _ in headings(doc):
        plain = text.replace("`", "").strip()
        if plain == name or plain.startswith(f"{name} ") or plain.startswith(f"{name}:"):
            return section_body(doc, text, level)
    return None


# --------------------------------------------------------------------------------------------
# Vendor profile format


@pytest.mark.parametrize("title", list(PROFILE_SECTIONS))
def test_profile_format_table_matches_schema(title: str) -> None:
    names = documented(load_doc(), title)
    properties = sorted(schema_object(load_schema(), PROFILE_SECTIONS[title])["properties"])
    assert sorted(names) == properties, f"### {title}: documented fields {sorted(names)} != schema properties {properties}"
    assert len(names) == len(set(names)), f"### {title}: a field is listed twice"


def test_all_profile_format_tables_agree() -> None:
    assert schema_mismatches(load_doc(), load_schema()) == {}


@pytest.mark.parametrize("title", list(PROFILE_SECTIONS))
def test_an_undocumented_schema_field_is_caught(title: str) -> None:
    """Self-check on a copy of the schema: a new field in any documented object is reported."""
    schema = copy.deepcopy(load_schema())
    schema_object(schema, PROFILE_SECTIONS[title])["properties"]["brand_new_field"] = {"type": "string"}
    found = schema_mismatches(load_doc(), schema)
    assert "brand_new_field" in found.get(title, ([], [], []))[0], found


def test_a_removed_schema_field_is_caught() -> None:
    schema = copy.deepcopy(load_schema())
    del schema["$defs"]["column"]["properties"]["lower"]
    assert "lower" in schema_mismatches(load_doc(), schema).get("column", ([], [], []))[1]


def test_every_schema_object_with_properties_is_documented() -> None:
    """A new object type in the profile schema must get its own table (and an entry here)."""
    found: set[tuple[str, ...]] = set()

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict):
                found.add(path)
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, (*path, str(i)))

    walk(load_schema(), ())
    combinators = {"oneOf", "anyOf", "allOf", "if", "then", "else", "not"}
    objects = {p for p in found if not combinators.intersection(p)}
    assert objects <= set(PROFILE_SECTIONS.values()), f"schema objects without a table: {sorted(objects - set(PROFILE_SECTIONS.values()))}"


# --------------------------------------------------------------------------------------------
# Shipped profiles


@pytest.mark.parametrize("name", profile_names())
def test_every_shipped_profile_has_a_section(name: str) -> None:
    assert profile_section(load_doc(), name) is not None, f"shipped profile {name!r} has no section headed with its name"


@pytest.mark.parametrize("name", profile_names())
def test_a_profile_section_names_every_header_the_profile_reads(name: str) -> None:
    body = profile_section(load_doc(), name)
    assert body is not None
    named = {header_key(n) for n in re.findall(r"`([^`\n]+)`", "\n".join(body))}
    profile = load_profile(name)
    headers = {h for column in profile.columns for h in (*column.sources, *column.inputs())}
    missing = sorted(h for h in headers if header_key(h) not in named)
    assert not missing, f"section {name}: headers the profile reads but the section does not name: {missing}"


def test_a_missing_profile_section_is_caught() -> None:
    doc = load_doc().replace("### `saviynt-access-report`", "### saviynt")
    assert profile_section(doc, "saviynt-access-report") is None


# --------------------------------------------------------------------------------------------
# Rejection and warning codes


def test_issue_codes_are_string_literals() -> None:
    """A computed code could not be checked against the guide; keep codes literal."""
    computed = [f"{u.module}:{u.line}" for u in all_code_uses(module_sources()) if u.code is None]
    assert not computed, f"Issue codes that are not string literals: {computed}"


def test_the_extraction_finds_the_known_codes() -> None:
    """Guard against a broken extractor passing vacuously."""
    uses = all_code_uses(module_sources())
    codes = {u.code for u in uses}
    assert {"missing_manifest", "hash_mismatch", "record_drop", "bad_timestamp", "schema"} <= codes
    assert {u.code for u in uses if u.warning} >= {"orphan", "status_conflict", "formula_like_cell", "ambiguous_join_key"}


def test_every_rejection_code_is_in_the_rejections_table() -> None:
    missing_rejections, _ = undocumented_codes(load_doc(), module_sources())
    assert not missing_rejections, f"rejection codes not in the ### {REJECTIONS} table: {missing_rejections}"


def test_every_warning_code_is_in_the_warnings_table() -> None:
    _, missing_warnings = undocumented_codes(load_doc(), module_sources())
    assert not missing_warnings, f"warning codes not in the ### {WARNINGS} table: {missing_warnings}"


def test_every_documented_code_exists() -> None:
    doc = load_doc()
    uses = all_code_uses(module_sources())
    rejections, warnings = documented(doc, REJECTIONS), documented(doc, WARNINGS)
    assert len(rejections) == len(set(rejections)) and len(warnings) == len(set(warnings)), "a code is listed twice"
    assert not set(rejections) & set(warnings), "a code is both a rejection and a warning"
    assert sorted(set(rejections) - {u.code for u in uses if not u.warning}) == [], "documented rejections the code no longer raises"
    assert sorted(set(warnings) - {u.code for u in uses if u.warning}) == [], "documented warnings the code no longer records"


def test_an_undocumented_code_is_caught() -> None:
    """Self-check on a copy of a module's source: new codes of either kind are reported."""
    sources = module_sources()
    sources["snapshot_loader.py"] += '\n\ndef _new(issues):\n    issues.append(Issue("x", "y", "brand_new_rejection"))\n'
    sources["entitlements.py"] += '\n\ndef _new(self):\n    self.warnings.append(Issue("x", "y", code="brand_new_warning"))\n'
    sources["context_feed.py"] += '\n\ndef _new2(issues):\n    issues.append(Issue("x", "y"))\n'
    missing_rejections, missing_warnings = undocumented_codes(load_doc(), sources)
    assert {"brand_new_rejection", _ISSUE_DEFAULT_CODE} <= set(missing_rejections)
    assert "brand_new_warning" in missing_warnings
    assert "brand_new_warning" not in missing_rejections


# --------------------------------------------------------------------------------------------
# Normalized columns, feed types, store status, CLI options


def test_normalized_columns_table_lists_every_column() -> None:
    body = section_body(load_doc(), "2.3 Normalized columns", 3)
    names = table_first_cells(body, "2.3 Normalized columns")
    assert sorted(names) == sorted(COLUMNS) and len(names) == len(set(names))
    rows = table_rows(body)
    required = {c for c, row in rows.items() if row.split("|")[2].strip() == "yes"}
    assert required == set(REQUIRED_COLUMNS)


@pytest.mark.parametrize(
    ("column", "values"),
    [
        ("subject_type", tuple(SUBJECT_TYPES)),
        ("subject_status", SUBJECT_STATUSES),
        ("privilege_level", PRIVILEGE_LEVELS),
        ("assignment_state", ASSIGNMENT_STATES),
    ],
)
def test_enumerated_values_are_listed(column: str, values: tuple[str, ...]) -> None:
    row = table_rows(section_body(load_doc(), "2.3 Normalized columns", 3))[column]
    listed = re.findall(r"`([^`]+)`", row.split("|")[3])
    assert set(values) <= set(listed), f"{column}: {sorted(set(values) - set(listed))} not listed"


def test_feed_column_types_table_lists_every_converter() -> None:
    title = "8.2 Rows, windows and typed columns"
    assert sorted(documented(load_doc(), title)) == sorted(_CONVERTERS)


def test_status_table_lists_every_status_field(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, clock=lambda: datetime(2026, 11, 28, tzinfo=UTC))
    fields = list(store.status()["entitlements"])
    assert sorted(documented(load_doc(), "9.3 Status")) == sorted(fields)


def test_check_options_table_lists_every_option() -> None:
    options = [p for p in cli.entitlements_check.params if isinstance(p, click.Option)]
    names = sorted(max(p.opts, key=len) for p in options)
    assert sorted(documented(load_doc(), "10. `kpb entitlements check`", level=2)) == names
