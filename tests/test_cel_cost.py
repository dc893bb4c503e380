"""The static cost limit of CEL conditions (security review, defect 3: a condition could run for minutes)."""

from __future__ import annotations

import time

import pytest

from keycloak_policy_bridge.cel_cost import MAX_EXPRESSION_COST, estimate_cost
from keycloak_policy_bridge.condition import compile_expression, make_context

HOSTILE = "!(L.all(x0, L.all(x1, L.all(x2, L.all(x3, x0+x1+x2+x3 >= 0)))))"


def test_the_hostile_nesting_is_estimated_far_over_the_budget() -> None:
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
        "subject.email.matches('^[a-z]+@acme\\\\.example$') && now.getHours() < 20 && timestamp('2020-01-01T00:00:00Z') < now",
    ],
)
def test_ordinary_expressions_are_within_the_budget(source: str) -> None:
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
    compile_expression(source)
    assert estimate_cost(source, {}).cost > MAX_EXPRESSION_COST


def test_a_variable_that_doubles_a_list_carries_its_size() -> None:
    small = estimate_cost("[1, 2, 3]", {})
    doubled = estimate_cost("v + v", {"v": small.size})
    assert doubled.size >= 2 * small.size and doubled.size < 3 * small.size


def test_the_estimate_is_an_upper_bound_of_measured_work() -> None:
    """Within the budget means fast: an expression just under it runs in well under a second."""
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
        "'a || b && c' == \"x ? y : z\"",
        "'''multi\nline''' + \"\"\"x\"\"\"",
        "r'\\d+\\.' + R\"x\"",
        "b'abc' == B\"abc\"",
        "1 // comment\n + 2",
        "'it\\'s' != \"q\\\"\"",
        "x in [1, 2, 3,]",
        "{'a': 1, 'b': [2],}['a'] == 1",
        "-(-1) == 1 && !!true",
        "1e3 > 2.5e-2 && 0x1F == 31 && 3u == 3u",
        ".principal.kind == 'human'",
        "[1,2].map(x, x > 1, x * 2)",
        "google.protobuf.Int64Value{value: 1} == 1",
        "a ? b : c ? d : e",
        "(" * 95 + "1" + ")" * 95,
        "[" * 95 + "1" + "]" * 95,
        "size(" * 95 + "'a'" + ")" * 95,
    ],
)
def test_the_estimator_reads_whatever_the_runtime_parses(source: str) -> None:
    compile_expression(source)
    assert estimate_cost(source, {}).cost >= 1
