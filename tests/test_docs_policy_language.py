"""Keep docs/policy-language.md and the policy schema in agreement.

The reference documents every schema object in a section headed ``### <object>`` whose first
table lists the object's fields, one per row, with the field name in backticks in the first
column. These tests parse those tables and compare them with the property names of the
corresponding schema objects, so adding (or removing, or renaming) a field in
``policy.v1.schema.json`` without updating the reference fails the suite. They also check that
every reserved claim, built-in CEL variable and CEL function the code knows is named in the
document.

The root object's ``$schema`` and ``$comment`` properties are compared like any other field: the
reference lists them in the ``policy`` table.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

import doc_tables
from doc_tables import name_mismatches, schema_object, table_first_cells
from keycloak_policy_bridge.condition import BUILTIN_VARIABLES, KNOWN_FUNCTIONS
from keycloak_policy_bridge.policy import RESERVED_CLAIMS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "policy-language.md"
SCHEMA = ROOT / "keycloak_policy_bridge" / "schemas" / "policy.v1.schema.json"

# Section heading (after "### ") -> path of the schema object whose "properties" it documents.
SECTIONS: dict[str, tuple[str, ...]] = {
    "policy": (),
    "freshness": ("$defs", "freshness"),
    "feedFreshness": ("$defs", "feedFreshness"),
    "delegation": ("$defs", "delegation"),
    "delegation.allow[]": ("$defs", "delegation", "properties", "allow", "items"),
    "identityJoin": ("$defs", "identityJoin"),
    "selector": ("$defs", "selector"),
    "claimGrant": ("$defs", "claimGrant"),
    "when": ("$defs", "when"),
    "exception": ("$defs", "exception"),
    "rule": ("$defs", "rule"),
}

# Nested objects documented in their own sub-tables (checked too, so they cannot drift either).
SUBSECTIONS: dict[str, tuple[str, ...]] = {
    "selector.certification": ("$defs", "selector", "properties", "certification"),
}


def load_doc() -> str:
    return DOC.read_text(encoding="utf-8")


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return schema


def section_body(doc: str, title: str, level: int) -> list[str]:
    return doc_tables.section_body(doc, title, level, DOC.name)


def mismatches(doc: str, schema: dict[str, Any]) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """Per section: (undocumented schema fields, documented fields not in the schema, duplicates)."""
    out: dict[str, tuple[list[str], list[str], list[str]]] = {}
    targets = [(title, path, 3) for title, path in SECTIONS.items()]
    targets += [(title, path, 4) for title, path in SUBSECTIONS.items()]
    for title, path, level in targets:
        documented = table_first_cells(section_body(doc, title, level), title)
        mismatch = name_mismatches(documented, set(schema_object(schema, path)["properties"]))
        if mismatch:
            out[title] = mismatch
    return out


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("title", [*SECTIONS, *SUBSECTIONS])
def test_section_table_matches_schema(title: str) -> None:
    doc, schema = load_doc(), load_schema()
    level = 3 if title in SECTIONS else 4
    path = SECTIONS[title] if title in SECTIONS else SUBSECTIONS[title]
    documented = table_first_cells(section_body(doc, title, level), title)
    properties = sorted(schema_object(schema, path)["properties"])
    assert sorted(documented) == properties, f"### {title}: documented fields {sorted(documented)} != schema properties {properties}"
    assert len(documented) == len(set(documented)), f"### {title}: a field is listed twice"


def test_all_sections_agree() -> None:
    assert mismatches(load_doc(), load_schema()) == {}


@pytest.mark.parametrize(
    "path",
    [p for p in SECTIONS.values()] + [p for p in SUBSECTIONS.values()],
    ids=[*SECTIONS, *SUBSECTIONS],
)
def test_an_undocumented_schema_field_is_caught(path: tuple[str, ...]) -> None:
    """Self-check on a copy of the schema: a new field in any documented object must be reported."""
    schema = copy.deepcopy(load_schema())
    schema_object(schema, path)["properties"]["brand_new_field"] = {"type": "string"}
    found = mismatches(load_doc(), schema)
    assert any("brand_new_field" in missing for missing, _, _ in found.values()), found


def test_a_removed_schema_field_is_caught() -> None:
    schema = copy.deepcopy(load_schema())
    del schema["$defs"]["when"]["properties"]["pass"]
    found = mismatches(load_doc(), schema)
    assert found.get("when") == ([], ["pass"], [])


def test_every_schema_object_with_properties_is_documented() -> None:
    """A new object type in $defs must get its own section (or be added to SECTIONS here)."""
    schema = load_schema()
    documented = {path for path in [*SECTIONS.values(), *SUBSECTIONS.values()]}
    found = set()

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            if "properties" in node and isinstance(node["properties"], dict):
                found.add(path)
            for key, value in node.items():
                walk(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, (*path, str(i)))

    walk(schema, ())
    # Combinator branches (oneOf/allOf/if/then) hold "properties" that only constrain the
    # parent's own fields; they are not objects of their own.
    combinators = {"oneOf", "anyOf", "allOf", "if", "then", "else", "not"}
    objects = {p for p in found if not combinators.intersection(p)}
    assert objects <= documented, f"schema objects without a reference section: {sorted(objects - documented)}"


def _backticked(doc: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", doc))


@pytest.mark.parametrize("name", sorted(RESERVED_CLAIMS))
def test_reserved_claim_is_documented(name: str) -> None:
    assert name in _backticked(load_doc()), f"reserved claim `{name}` is not in {DOC.name}"


def test_reserved_claims_are_listed_exactly() -> None:
    """Section 11 lists exactly policy.RESERVED_CLAIMS, no more, no fewer."""
    body = "\n".join(section_body(load_doc(), "11. Reserved claims", 2))
    # The list is the paragraph of backticked names that ends with a period.
    paragraphs = [p for p in body.split("\n\n") if p.strip().startswith("`iss`")]
    assert len(paragraphs) == 1, "section 11 must hold one paragraph listing the reserved claims"
    listed = re.findall(r"`([^`]+)`", paragraphs[0])
    assert sorted(listed) == sorted(RESERVED_CLAIMS)
    assert len(listed) == len(set(listed))


@pytest.mark.parametrize("name", sorted(BUILTIN_VARIABLES))
def test_builtin_variable_is_documented(name: str) -> None:
    body = section_body(load_doc(), "5.1 Built-in variables", 3)
    names = table_first_cells(body, "5.1 Built-in variables")
    assert name in names, f"built-in variable `{name}` has no row in section 5.1"


def test_builtin_variable_table_has_no_extra_rows() -> None:
    body = section_body(load_doc(), "5.1 Built-in variables", 3)
    assert sorted(table_first_cells(body, "5.1 Built-in variables")) == sorted(BUILTIN_VARIABLES)


@pytest.mark.parametrize("name", sorted(KNOWN_FUNCTIONS))
def test_known_function_is_documented(name: str) -> None:
    body = "\n".join(section_body(load_doc(), "5.2 Functions", 3))
    assert f"`{name}`" in body, f"CEL function `{name}` is not in section 5.2"
