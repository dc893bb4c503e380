"""CEL compilation and the static reference checks layered on the runtime."""

from __future__ import annotations

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
    "contains": "'ab'.contains('a')", "size": "size('a') == 1", "startsWith": "'a'.startsWith('a')",
    "endsWith": "'a'.endsWith('a')", "matches": "'a'.matches('^a$')", "duration": "duration('1s')",
    "timestamp": "timestamp('2020-01-01T00:00:00Z')", "string": "string(1)", "bytes": "bytes('a')",
    "double": "double(1)", "int": "int(1.0)", "uint": "uint(1)", "dyn": "dyn(1)", "type": "type(1)",
    "has": "has({'a': 1}.a)", "exists": "[1].exists(x, x == 1)", "all": "[1].all(x, x == 1)",
    "exists_one": "[1].exists_one(x, x == 1)", "map": "[1].map(x, x)", "filter": "[1].filter(x, x == 1)",
    "getFullYear": "now.getFullYear()", "getMonth": "now.getMonth()", "getDayOfYear": "now.getDayOfYear()",
    "getDayOfMonth": "now.getDayOfMonth()", "getDate": "now.getDate()", "getDayOfWeek": "now.getDayOfWeek()",
    "getHours": "now.getHours()", "getMinutes": "now.getMinutes()", "getSeconds": "now.getSeconds()",
    "getMilliseconds": "now.getMilliseconds()",
}  # fmt: skip


def test_every_known_function_has_a_sample() -> None:
    assert set(SAMPLES) == KNOWN_FUNCTIONS


@pytest.mark.parametrize("name", sorted(KNOWN_FUNCTIONS))
def test_known_functions_really_exist_in_the_runtime(name: str) -> None:
    from datetime import datetime, timezone

    expr = compile_expression(SAMPLES[name])
    macros = {"has", "all", "exists", "exists_one", "map", "filter"}  # expanded by the parser, not calls
    assert name in expr.functions or name in macros
    expr.run(make_context({"now": datetime(2026, 1, 1, tzinfo=timezone.utc)}))


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


# -- cost limit (security defect 3: a condition could run for minutes) ----------------------------

HOSTILE = "!(L.all(x0, L.all(x1, L.all(x2, L.all(x3, x0+x1+x2+x3 >= 0)))))"


def test_the_hostile_nesting_is_estimated_far_over_the_budget() -> None:
    from keycloak_policy_bridge.condition import MAX_EXPRESSION_COST, estimate_cost

    # L as a 100-element policy variable (size 101) or a request-derived list: both are refused.
    assert estimate_cost(HOSTILE, {"L": 101}).cost > 100 * MAX_EXPRESSION_COST
    assert estimate_cost(HOSTILE.replace("L.", "context.risk.l."), {}).cost > MAX_EXPRESSION_COST


@pytest.mark.parametrize(
    "source",
    [
        "principal.groups.exists(g, g in entitlements.app_role)",  # two request/snapshot lists: quadratic but bounded
        "entitlements.app_role.map(v, 'x-' + v)",
        "feeds.exceptions.records.filter(e, e.claim == 'roles').map(e, e.value)",
        "request.scopes.filter(s, s.startsWith('crm'))",
        "'app_role' in entitlements && 'finance:approve' in entitlements.app_role && "
        "!(has(subject.auth.amr) && subject.auth.amr.exists(m, m == 'otp'))",
        "actors.exists(a, a.kind == 'agent') ? [1, 2.5, -3u, \"s\", b'x', r'\\d', '''t''', {'k': null}] : []",
        "subject.email.matches('^[a-z]+@acme\\\\.example$') && now.getHours() < 20 && "
        "timestamp('2020-01-01T00:00:00Z') < now",
    ],
)
def test_ordinary_expressions_are_within_the_budget(source: str) -> None:
    from keycloak_policy_bridge.condition import MAX_EXPRESSION_COST, estimate_cost

    compile_expression(source)  # the runtime parses it too
    assert estimate_cost(source, {}).cost <= MAX_EXPRESSION_COST


@pytest.mark.parametrize(
    "source",
    [
        "context.risk.l.map(x, x).size() > 0",  # map/filter copy their accumulator: quadratic in the range
        "context.risk.l.filter(x, true).size() > 0",
        "context.risk.l.all(x, x in context.risk.l)",  # `in` is linear: quadratic inside a comprehension
        "principal.groups.all(g, principal.groups.all(h, principal.groups.all(i, g + h + i != '')))",
        "principal.groups.all(g, g.matches(context.pattern))",  # a regex compiled per element
        "entitlements.app_role.map(v, entitlements.app_role).size() > 0",
    ],
)
def test_super_linear_expressions_are_over_the_budget(source: str) -> None:
    from keycloak_policy_bridge.condition import MAX_EXPRESSION_COST, estimate_cost

    compile_expression(source)
    assert estimate_cost(source, {}).cost > MAX_EXPRESSION_COST


def test_a_variable_that_doubles_a_list_carries_its_size() -> None:
    from keycloak_policy_bridge.condition import estimate_cost

    small = estimate_cost("[1, 2, 3]", {})
    doubled = estimate_cost("v + v", {"v": small.size})
    assert doubled.size >= 2 * small.size and doubled.size < 3 * small.size


def test_the_estimate_is_an_upper_bound_of_measured_work() -> None:
    """Within the budget means fast: an expression just under it runs in well under a second."""
    import time

    from keycloak_policy_bridge.condition import MAX_EXPRESSION_COST, estimate_cost

    source = "L.all(x, L.all(y, x >= y || true))"
    estimate = estimate_cost(source, {"L": 301})
    assert estimate.cost <= MAX_EXPRESSION_COST
    expr = compile_expression(source)
    context = make_context({"L": list(range(300))})
    started = time.perf_counter()
    expr.run(context)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "source",
    [
        "'a || b && c' == \"x ? y : z\"", "'''multi\nline''' + \"\"\"x\"\"\"", "r'\\d+\\.' + R\"x\"", "b'abc' == B\"abc\"",
        "1 // comment\n + 2", "'it\\'s' != \"q\\\"\"", "x in [1, 2, 3,]", "{'a': 1, 'b': [2],}['a'] == 1",
        "-(-1) == 1 && !!true", "1e3 > 2.5e-2 && 0x1F == 31 && 3u == 3u", ".principal.kind == 'human'",
        "[1,2].map(x, x > 1, x * 2)", "google.protobuf.Int64Value{value: 1} == 1", "a ? b : c ? d : e",
        "(" * 95 + "1" + ")" * 95, "[" * 95 + "1" + "]" * 95, "size(" * 95 + "'a'" + ")" * 95,
    ],
)
def test_the_estimator_reads_whatever_the_runtime_parses(source: str) -> None:
    from keycloak_policy_bridge.condition import estimate_cost

    compile_expression(source)
    assert estimate_cost(source, {}).cost >= 1
