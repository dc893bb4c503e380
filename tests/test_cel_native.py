"""The native fast path of CEL (``cel_native``, issue 13) against CEL itself.

A native program either gives the value CEL gives or bails (``Bail``), and the engine then runs
CEL, which also gives every error. So "the fast path and CEL agree" means: wherever a native
program decides, CEL decides the same value (same type too); errors are CEL's by construction.
Checked here over every expression of the example policies and of bench/engine.py's 200-rule
policy with generated variables (missing fields, wrong types, nulls, big ints, NaN, bytes), over
generated expressions of the native grammar, and at the engine's level: decisions with the fast
path equal decisions without it, on bench/engine.py's requests and on every policy test suite.
"""

from __future__ import annotations

import importlib.util
import math
import random
import re
import sys
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from conftest import NOW, make_policy, make_request, make_snapshot, record
from keycloak_policy_bridge import cel_native, cel_scope, engine, policy_suite
from keycloak_policy_bridge.condition import (
    ConditionRuntimeError,
    ConditionSyntaxError,
    Expression,
    compile_expression,
    make_context,
    prune,
)
from keycloak_policy_bridge.context_feed import feed_from_document
from keycloak_policy_bridge.decision import Decision
from keycloak_policy_bridge.policy import Policy, compile_policy, load_policy

ROOT = Path(__file__).resolve().parent.parent
POLICY_FILES = sorted((ROOT / "examples").glob("**/*policy.json"))
SUITES = sorted((ROOT / "examples").glob("*/tests/*.json"))


@cache
def bench() -> Any:
    """bench/engine.py as a module (its generators: policy, estate, requests)."""
    spec = importlib.util.spec_from_file_location("kpb_bench_engine", ROOT / "bench" / "engine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def policies() -> list[tuple[str, Policy]]:
    out = [(str(path.relative_to(ROOT)), load_policy(path)) for path in POLICY_FILES]
    return [*out, ("bench/engine.py", compile_policy(bench().make_policy(200)))]


def policy_expressions() -> list[Expression]:
    found: dict[str, Expression] = {}
    for _, policy in policies():
        exprs = [e for _, e in policy.variables]
        exprs += [r.condition for r in policy.rules if r.condition is not None]
        exprs += [g.expr for r in policy.rules for g in r.claims if g.expr is not None]
        for expr in exprs:
            found.setdefault(expr.source, expr)
    return [found[s] for s in sorted(found)]


# -- comparing ------------------------------------------------------------------------------


def cel_outcome(expr: Expression, env: dict[str, Any]) -> tuple[str, Any]:
    """What CEL gives, over the variables pruned to the fields read, as the engine hands them."""
    values = {name: prune(value, expr.fields.get(name)) for name, value in env.items() if name in expr.variables}
    try:
        return ("value", expr.run(make_context(values)))
    except ConditionRuntimeError as exc:
        return ("error", str(exc))


def native_outcome(expr: Expression, env: dict[str, Any]) -> tuple[str, Any] | None:
    """What the native program gives (None: it bailed, CEL decides)."""
    assert expr.native is not None
    try:
        return ("value", cel_native.export(expr.native(env)))
    except cel_native.Bail:
        return None


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types all the way down (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


class Tally:
    """Counts of a differential run, so that a run that decided nothing natively fails."""

    def __init__(self) -> None:
        self.cases = self.native = self.errors = 0
        self.mismatches: list[str] = []

    def check(self, expr: Expression, env: dict[str, Any]) -> bool:
        self.cases += 1
        cel = cel_outcome(expr, env)
        self.errors += cel[0] == "error"
        native = native_outcome(expr, env)
        if native is None:
            return False
        self.native += 1
        if cel[0] != "value" or not same(native[1], cel[1]):
            self.mismatches.append(f"{expr.source!r} over {env!r}: native {native!r}, CEL {cel!r}")
        return True


# -- generated values -----------------------------------------------------------------------

_STRING_LITERAL = re.compile(r"'([^'\\]*)'|\"([^\"\\]*)\"")
_PATH = re.compile(r"(?<![\w.])([A-Za-z_]\w*)((?:\s*\.\s*[A-Za-z_]\w*)*)")
_LEAF_SCALARS: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    60,
    70,
    79,
    80,
    95,
    100,
    79.5,
    95.0,
    0.5,
    float("nan"),
    2**53 + 1,
    2**63,
    -(2**63) - 1,
    "",
    "x",
    "é",
    b"human",
]


def literal_pool(sources: list[str]) -> list[str]:
    return sorted({a or b for s in sources for a, b in _STRING_LITERAL.findall(s)} | {"active", "human", "otp", "admin"})


def access_tree(expr: Expression) -> dict[str, Any]:
    """The variable paths ``expr`` reads (``principal.owner.kind``) as a tree of names."""
    tree: dict[str, Any] = {}
    text = _STRING_LITERAL.sub("''", expr.source)
    for name, rest in _PATH.findall(text):
        if name not in expr.variables:
            continue
        node = tree.setdefault(name, {})
        for part in re.findall(r"[A-Za-z_]\w*", rest):
            node = node.setdefault(part, {})
    return tree


def leaf(rng: random.Random, pool: list[str]) -> Any:
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(pool)
    if roll < 0.7:
        return rng.choice(_LEAF_SCALARS)
    if roll < 0.9:
        return [rng.choice(pool) if rng.random() < 0.8 else rng.choice(_LEAF_SCALARS) for _ in range(rng.randrange(4))]
    return {}


def shaped(tree: dict[str, Any], rng: random.Random, pool: list[str]) -> Any:
    """Mostly the shape the expression reads (each field present with p=0.85), else any leaf."""
    if tree and rng.random() < 0.8:
        out = {key: shaped(sub, rng, pool) for key, sub in tree.items() if rng.random() < 0.85}
        if rng.random() < 0.2:
            out["noise"] = leaf(rng, pool)
        return out
    return leaf(rng, pool)


# -- the policies' own expressions ------------------------------------------------------------


def test_every_expression_of_the_example_and_bench_policies_is_native() -> None:
    # Not a semantic requirement, but the point of the fast path: a change that makes these
    # shapes fall back to CEL would pass every other test and quietly undo issue 13.
    refused = [e.source for e in policy_expressions() if e.native is None]
    assert refused == []


def test_policy_expressions_agree_with_cel_over_generated_variables() -> None:
    exprs = policy_expressions()
    pool = literal_pool([e.source for e in exprs])
    rng = random.Random(13)
    tally = Tally()
    for expr in exprs:
        tree = access_tree(expr)
        decided = 0
        for _ in range(300):
            env = {name: shaped(tree.get(name, {}), rng, pool) for name in expr.variables}
            decided += tally.check(expr, env)
        assert decided > 0, f"{expr.source!r}: never decided natively"
    assert tally.mismatches == []
    assert tally.native >= tally.cases // 4, (tally.native, tally.cases)
    assert tally.errors >= tally.cases // 20, (tally.errors, tally.cases)


# -- generated expressions --------------------------------------------------------------------

_KEYS = ["a", "b", "l", "s"]
_INDEXES = ["0", "1", "-1", "'a'", "x"]


class ExpressionGenerator:
    """Random CEL expressions of the native grammar over x, y, m (a map) and n (null), with
    parentheses left out at random so that precedence is exercised too."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def literal(self) -> str:
        choices = ["0", "1", "-1", "70", "2.5", "-0.5", "1e2", "'a'", "'é'", "''", '"b"', "true", "false", "null", "9007199254740993"]
        if self.rng.random() < 0.15:
            return "[" + ", ".join(self.literal() for _ in range(self.rng.randrange(3))) + "]"
        return self.rng.choice(choices)

    def atom(self, binders: list[str]) -> str:
        roll = self.rng.random()
        if roll < 0.3:
            return self.literal()
        if roll < 0.5:
            return self.rng.choice(["x", "y", "n", "m", *binders])
        if roll < 0.8:
            return f"m.{self.rng.choice(_KEYS)}"
        return f"m.{self.rng.choice(_KEYS)}.{self.rng.choice(_KEYS)}"

    def wrap(self, text: str) -> str:
        return f"({text})" if self.rng.random() < 0.5 else text

    def expr(self, depth: int, binders: list[str]) -> str:
        if depth == 0:
            return self.atom(binders)

        def sub() -> str:
            return self.wrap(self.expr(depth - 1, binders))

        roll = self.rng.randrange(14)
        if roll == 0:
            return self.atom(binders)
        if roll == 1:
            return f"!{self.rng.choice(['', '!'])}({self.expr(depth - 1, binders)})"
        if roll in (2, 3):
            return f"{sub()} {self.rng.choice(['&&', '||'])} {sub()}"
        if roll in (4, 5):
            return f"{sub()} {self.rng.choice(['==', '!=', '<', '<=', '>', '>=', 'in'])} {sub()}"
        if roll == 6:
            return f"({self.expr(depth - 1, binders)}) ? {sub()} : {sub()}"
        if roll == 7:
            return f"has({self.rng.choice(['m', 'x', 'm.a', 'm.l'])}.{self.rng.choice(_KEYS)})"
        if roll == 8:
            return self.rng.choice([f"size({self.expr(depth - 1, binders)})", f"({self.expr(depth - 1, binders)}).size()"])
        if roll == 9:
            return f"({self.expr(depth - 1, binders)})[{self.rng.choice(_INDEXES)}]"
        if roll == 10:
            function = self.rng.choice(["startsWith", "endsWith", "contains"])
            return f"({self.expr(depth - 1, binders)}).{function}({self.expr(depth - 1, binders)})"
        if roll == 11:
            binder = self.rng.choice(["v", "w"])
            receiver = self.rng.choice(["m.l", "m", "x", "[1, 'a', null]", "['a', 'b']"])
            return f"{receiver}.{self.rng.choice(['exists', 'all'])}({binder}, {self.expr(depth - 1, [*binders, binder])})"
        return self.atom(binders)


def generated_env(rng: random.Random, pool: list[str]) -> dict[str, Any]:
    def value(depth: int) -> Any:
        if depth > 0 and rng.random() < 0.3:
            return {k: value(depth - 1) for k in _KEYS if rng.random() < 0.7}
        return leaf(rng, pool)

    m = {k: value(1) for k in _KEYS if rng.random() < 0.85}
    return {"x": value(1), "y": value(0), "m": m, "n": None}


def test_generated_expressions_agree_with_cel() -> None:
    rng = random.Random(2026)
    generator = ExpressionGenerator(rng)
    pool = ["a", "b", "é", "ab", ""]
    tally = Tally()
    compiled = 0
    for _ in range(4000):
        source = generator.expr(rng.randrange(1, 4), [])
        try:
            expr = compile_expression(source)
        except ConditionSyntaxError:
            continue
        if expr.native is None:
            continue
        compiled += 1
        for _ in range(4):
            tally.check(expr, generated_env(rng, pool))
    assert tally.mismatches[:5] == []
    assert compiled >= 2000, compiled
    assert tally.native >= tally.cases // 5, (tally.native, tally.cases)
    assert tally.errors >= tally.cases // 5, (tally.errors, tally.cases)


# -- chosen cases ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "env", "decided"),
    [
        ("size('héllo') == 6", {}, True),  # this runtime counts UTF-8 bytes
        ("size(x)", {"x": "é"}, True),
        ("1 == 1.0", {}, True),
        ("x == 9007199254740992.0", {"x": 2**53 + 1}, False),  # CEL compares as doubles: true; Python: false
        ("x == 1", {"x": 2**63}, False),  # a uint in CEL
        ("x < 1", {"x": float("nan")}, False),
        ("[1] == 1", {}, True),
        ("x == null", {"x": {"a": 1}}, True),
        ("x == y", {"x": [1], "y": [1]}, False),  # element-wise equality is left to CEL
        ("x == true", {"x": 1}, True),
        ("x in y", {"x": "a", "y": {"a": 1}}, True),
        ("x in y", {"x": 1, "y": ["a", 1.0]}, True),
        ("x in y", {"x": "a", "y": "abc"}, False),  # CEL: no such overload
        ("has(x.a)", {"x": {"a": None}}, True),
        ("has(x.a)", {"x": None}, False),  # CEL: an error
        ("x.a", {"x": {}}, False),  # CEL: no such key
        ("false && x.a", {"x": {}}, True),
        ("x.a && false", {"x": {}}, False),  # CEL absorbs the error: false; native leaves that to CEL
        ("true || x.a", {"x": {}}, True),
        ("x && true", {"x": 1}, False),
        ("x ? 1 : 2", {"x": 1}, False),
        ("x[1]", {"x": ["a", "b"]}, True),
        ("x[-1]", {"x": ["a", "b"]}, False),
        ("x[true]", {"x": ["a", "b"]}, False),
        ("x.exists(v, v > 1)", {"x": ["a", 2]}, False),  # CEL errors on 'a' > 1 first
        ("x.exists(v, v > 1)", {"x": [2, "a"]}, True),  # CEL stops at the first true, before 'a'
        ("x.all(v, v > 1)", {"x": [2, 3]}, True),
        ("x.all(v, v > 1)", {"x": [0, "a"]}, True),  # false at 0, before 'a'
        ("x.exists(v, v == 'a')", {"x": {"a": 1, "b": 2}}, True),
        ("x.exists(v, v > 'a')", {"x": {"b": 1, 2: 2}}, False),  # a non-string key
        ("x.startsWith('a')", {"x": "abc"}, True),
        ("x.startsWith('a')", {"x": b"abc"}, False),
        ("x", {"x": (1, 2)}, False),  # CEL hands a tuple back as a list
        ("x", {"x": {"a": 1}}, False),  # a map: CEL's key order
        ("x", {"x": ["a", 1, None, 2.5]}, True),
        ("!x == false", {"x": True}, True),  # `!` binds tighter than `==`
        ("x == 1 == true", {"x": 1}, True),
        ("x ? 'a' : y ? 'b' : 'c'", {"x": False, "y": True}, True),
    ],
)
def test_chosen_semantics(source: str, env: dict[str, Any], decided: bool) -> None:
    expr = compile_expression(source)
    assert expr.native is not None
    native = native_outcome(expr, env)
    assert (native is not None) == decided, native
    if native is not None:
        cel = cel_outcome(expr, env)
        assert cel[0] == "value" and same(native[1], cel[1]), (native, cel)


@pytest.mark.parametrize(
    "source",
    [
        "x + 1 > 2",
        "x == 'a\\n'",
        "x == 1u",
        "{'a': 1}.a == x",
        "x.matches('^a')",
        "x == b'a'",
        "x == r'a'",
        "x == '''a'''",
        "x == 0x10",
        "-x < 0",
        "int(x) == 1",
        "x.exists_one(v, v)",
        "x.map(v, v) == []",
        "now.getHours() > 1",
        "type(x) == int",
        "dyn(x)",
        "x == 1 // a comment",
        "x % 2 == 0",
        "x == 1.0e400",
    ],
)
def test_other_shapes_stay_cel(source: str) -> None:
    try:
        expr = compile_expression(source)
    except ConditionSyntaxError:
        return  # CEL refuses it: it never reaches the fast path
    assert expr.native is None


def test_a_program_reading_fields_cel_would_not_be_handed_is_refused() -> None:
    # field_uses says `principal` is read as principal.kind only; a program must not read more.
    assert (
        cel_native.compile_native(
            "principal.kind == 'a' && principal.status == 'b'", frozenset({"principal"}), {"principal": frozenset({"kind"})}
        )
        is None
    )
    assert cel_native.compile_native("principal.kind == 'a'", frozenset({"principal"}), {"principal": frozenset({"kind"})}) is not None


# -- the engine ------------------------------------------------------------------------------


def evaluate_both(monkeypatch: pytest.MonkeyPatch, *args: Any, **kwargs: Any) -> tuple[Decision, Decision]:
    monkeypatch.setattr(cel_native, "ENABLED", True)
    fast = engine.evaluate(*args, **kwargs)
    monkeypatch.setattr(cel_native, "ENABLED", False)
    slow = engine.evaluate(*args, **kwargs)
    monkeypatch.setattr(cel_native, "ENABLED", True)
    return fast, slow


def test_decisions_equal_with_and_without_the_fast_path_on_bench_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    b = bench()
    rng = random.Random(20261201)
    subjects = b.make_subjects(rng, 400)
    b.assign_row_counts(rng, subjects, 4000)
    rows = b.make_rows(rng, subjects, b.Counter())
    from keycloak_policy_bridge import entitlements, request

    snapshot = entitlements.build_snapshot(rows, snapshot_id="t", source_system="bench_synthetic", generated_at=b.GENERATED_AT)
    policy = compile_policy(b.make_policy(200))
    requests = [request.parse_request(doc) for _, doc in b.make_requests(rng, subjects, 300)]
    effects: set[str] = set()
    # Fresh, past the privileged limit (privileged values left out), past the deny limit.
    for now in (b.NOW, b.NOW + timedelta(days=1, hours=1), b.NOW + timedelta(days=4)):
        for req in requests:
            fast, slow = evaluate_both(monkeypatch, policy, snapshot, req, now)
            assert fast == slow, req.raw
            effects.add(fast.effect)
    assert effects == {"permit", "deny"}


@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.name)
def test_policy_suites_pass_and_decide_the_same_without_the_fast_path(suite: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = load_policy(suite.parent.parent / "policy.json")
    decisions: list[tuple[Decision, Decision]] = []

    def both(*args: Any, **kwargs: Any) -> Decision:
        fast, slow = evaluate_both(monkeypatch, *args, **kwargs)
        decisions.append((fast, slow))
        return fast

    monkeypatch.setattr(policy_suite, "evaluate", both)
    results = policy_suite.run_suite(policy, suite)
    assert results and all(r.passed for r in results), [r.failures for r in results if not r.passed]
    assert all(fast == slow for fast, slow in decisions)


def test_no_cel_context_is_built_when_every_expression_is_native(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, Any]] = []

    def counting(values: dict[str, Any]) -> Any:
        built.append(values)
        return make_context(values)

    monkeypatch.setattr(cel_scope, "make_context", counting)
    policy = make_policy(
        [
            {"id": "d", "effect": "deny", "condition": "principal.status != 'active'", "reason": "inactive"},
            {"id": "g", "effect": "grant", "condition": "has(context.tenant)", "claims": {"t": {"expr": "context.tenant"}}},
        ]
    )
    fast, slow = evaluate_both(monkeypatch, policy, make_snapshot([record()]), make_request(context={"tenant": "eu"}), NOW)
    assert fast == slow and fast.claims == {"t": "eu"}
    assert len(built) == 1  # the run with the fast path off, only


def test_cel_errors_and_variable_failures_read_the_same_through_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = make_policy(
        [
            {"id": "g1", "effect": "grant", "condition": "context.risk.score > 70", "claims": {"a": {"value": "x"}}},
            {"id": "g2", "effect": "grant", "condition": "broken && true", "claims": {"b": {"value": "x"}}},
            {"id": "g3", "effect": "grant", "condition": "fine", "claims": {"c": {"expr": "context.nope"}, "d": {"expr": "context.risk"}}},
            {"id": "d", "effect": "deny", "condition": "context.risk.level == 'high'", "reason": "risky"},
        ],
        variables={"broken": "context.missing == 1", "fine": "has(context.risk) || principal.found"},
    )
    fast, slow = evaluate_both(monkeypatch, policy, make_snapshot([record()]), make_request(context={"risk": {}}), NOW)
    assert fast == slow
    assert [r.message for r in fast.reasons] == [
        "$.rules[3].condition failed: no such key: level; denied (fail closed)",
        "risky",
    ]
    fast, slow = evaluate_both(monkeypatch, policy, make_snapshot([record()]), make_request(context={"risk": {"level": "low"}}), NOW)
    assert fast == slow
    assert fast.claims == {"d": {"level": "low"}}
    assert [r.message for r in fast.reasons] == [
        "$.rules[0].condition failed: no such key: score; rule skipped",
        "$.rules[1].condition failed: variable 'broken' failed: no such key: missing; rule skipped",
        "$.rules[2].claims.c.expr failed: no such key: nope; claim value skipped",
    ]


def test_feed_reads_are_recorded_when_the_first_expression_of_a_pass_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # The deny rule denies, so the grant rule that reads `feeds` never runs; the decision still
    # records the feed rows handed over with the pass, as it did when CEL ran every expression.
    policy = make_policy(
        [
            {"id": "d", "effect": "deny", "condition": "principal.status == 'active'", "reason": "no"},
            {"id": "g", "effect": "grant", "condition": "feeds.risk.present", "claims": {"a": {"value": "x"}}},
        ]
    )
    feed = feed_from_document("risk", {"generated_at": "2026-11-28T07:00:00Z", "records": [{"subject_id": "E1", "score": 1}]})
    fast, slow = evaluate_both(monkeypatch, policy, make_snapshot([record()]), make_request(), NOW, {"risk": feed})
    assert fast == slow
    assert fast.effect == "deny" and fast.feed_reads == (("risk", "E1"),)
