"""CEL compilation and the static reference checks layered on the runtime."""

from __future__ import annotations

from datetime import UTC

import pytest

from keycloak_policy_bridge.condition import (
    KNOWN_FUNCTIONS,
    ConditionRuntimeError,
    ConditionSyntaxError,
    compile_expression,
    make_context,
    unknown_references,
)

SAMPLES = {
    "contains": "'ab'.contains('a')",
    "size": "size('a') == 1",
    "startsWith": "'a'.startsWith('a')",
    "endsWith": "'a'.endsWith('a')",
    "matches": "'a'.matches('^a$')",
    "duration": "duration('1s')",
    "timestamp": "timestamp('2020-01-01T00:00:00Z')",
    "string": "string(1)",
    "bytes": "bytes('a')",
    "double": "double(1)",
    "int": "int(1.0)",
    "uint": "uint(1)",
    "dyn": "dyn(1)",
    "type": "type(1)",
    "has": "has({'a': 1}.a)",
    "exists": "[1].exists(x, x == 1)",
    "all": "[1].all(x, x == 1)",
    "exists_one": "[1].exists_one(x, x == 1)",
    "map": "[1].map(x, x)",
    "filter": "[1].filter(x, x == 1)",
    "getFullYear": "now.getFullYear()",
    "getMonth": "now.getMonth()",
    "getDayOfYear": "now.getDayOfYear()",
    "getDayOfMonth": "now.getDayOfMonth()",
    "getDate": "now.getDate()",
    "getDayOfWeek": "now.getDayOfWeek()",
    "getHours": "now.getHours()",
    "getMinutes": "now.getMinutes()",
    "getSeconds": "now.getSeconds()",
    "getMilliseconds": "now.getMilliseconds()",
}


def test_every_known_function_has_a_sample() -> None:
    assert set(SAMPLES) == KNOWN_FUNCTIONS


@pytest.mark.parametrize("name", sorted(KNOWN_FUNCTIONS))
def test_known_functions_really_exist_in_the_runtime(name: str) -> None:
    from datetime import datetime

    expr = compile_expression(SAMPLES[name])
    macros = {"has", "all", "exists", "exists_one", "map", "filter"}  # expanded by the parser, not calls
    assert name in expr.functions or name in macros
    expr.run(make_context({"now": datetime(2026, 1, 1, tzinfo=UTC)}))


def test_macro_binders_are_not_references() -> None:
    expr = compile_expression("entitlements.app_role.exists(r, r.startsWith('crm')) && actors.all(a, a.found)")
    assert expr.variables == {"entitlements", "actors"}
    assert unknown_references(expr, frozenset()) == []


def test_unknown_variables_and_functions() -> None:
    expr = compile_expression("principle.kind == 'x' && lowerAscii(subject.id) == 'a' && my_var")
    assert unknown_references(expr, frozenset({"my_var"})) == ["unknown variable 'principle'", "unknown function 'lowerAscii'"]


def test_type_identifiers_are_not_variables() -> None:
    assert compile_expression("type(principal.id) == string").variables == {"principal"}


@pytest.mark.parametrize("source", ["", "   ", "a ==", "x" * 5000])
def test_syntax_errors(source: str) -> None:
    with pytest.raises(ConditionSyntaxError):
        compile_expression(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [("context.tenant == 'x'", "no such key: tenant"), ("1 + 'a'", "No such overload"), ("[1][3]", "index out of bounds")],
)
def test_runtime_errors_are_wrapped(source: str, message: str) -> None:
    with pytest.raises(ConditionRuntimeError, match=message):
        compile_expression(source).run(make_context({"context": {}}))
