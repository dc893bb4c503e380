"""json_schema.py: the shipped schemas, loaded and compiled once, used by policy, request, profile
and policy_suite without any of them importing another for it."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from conftest import ROOT
from keycloak_policy_bridge.json_schema import json_path, load_schema, schema_issues, validator

PACKAGE = ROOT / "keycloak_policy_bridge"
SHIPPED = sorted(p.name for p in (PACKAGE / "schemas").glob("*.schema.json"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_schema_loads_and_compiles_once(name: str) -> None:
    assert load_schema(name) is load_schema(name)
    assert validator(name) is validator(name)
    assert validator(name).schema is load_schema(name)


def test_schema_issues_locates_each_problem_by_json_path() -> None:
    issues = schema_issues("profile.v1.schema.json", {"columns": {"subject_id": 7}})
    assert all(i.code == "schema" for i in issues)
    assert [i.path for i in issues] == sorted(i.path for i in issues)
    assert {i.path for i in issues} == {"$", "$.columns", "$.columns.subject_id"}
    assert "$: 'spec' is a required property" in {str(i) for i in issues}
    assert schema_issues("policy-tests.v1.schema.json", {"spec": "kpb-policy-tests/1"}, code="bad") != []
    assert all(i.code == "bad" for i in schema_issues("policy-tests.v1.schema.json", {}, code="bad"))


def test_format_checking_is_asked_for_explicitly() -> None:
    assert validator("policy.v1.schema.json", check_formats=True).format_checker is not None
    assert validator("policy.v1.schema.json").format_checker is None


@pytest.mark.parametrize(
    ("parts", "path"),
    [([], "$"), (["rules", 2, "claims"], "$.rules[2].claims"), (["a-b_c"], "$.a-b_c"), (["with space", "x.y"], '$["with space"]["x.y"]')],
)
def test_json_path(parts: list[object], path: str) -> None:
    assert json_path(parts) == path


@pytest.mark.parametrize("module", ["request", "profile"])
def test_request_and_profile_do_not_import_the_policy_module(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "keycloak_policy_bridge.policy" not in imported
    code = f"import sys, keycloak_policy_bridge.{module}; print('keycloak_policy_bridge.policy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
