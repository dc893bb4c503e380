"""The cost limit of CEL conditions: a static upper bound on the work of one evaluation.

The runtime has no evaluation budget and cannot be interrupted: ``Program.execute`` holds the
GIL until it returns (no other thread runs, a signal handler waits), so a running expression
can only be bounded before it runs. ``estimate_cost`` gives an upper bound on the work of one
evaluation in abstract units, and the policy compiler refuses an expression over
``MAX_EXPRESSION_COST`` (docs/policy-language.md, section 5.7).

One unit is about one evaluation step: ~27 ns per node of a comprehension body, ~70 ns per
element copied by map/filter, ~170 ns per iteration, ~100 us to compile a 100-character regex
(measured on the target machine, 2 vCPUs, common-expression-language 0.10; over a set of
worst-case shapes, 15-40 ns of wall time per estimated unit). Two runtime facts drive the model:
comprehensions multiply (the body runs once per element of the range), and map/filter copy
their accumulator at every iteration, so they are quadratic in the length of their range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MAX_EXPRESSION_COST = 8_000_000  # 0.1-0.3 s of CEL at worst on the target machine
ITERATION_COST = 8  # one comprehension step, beyond its body
COPY_COST = 3  # one element copied into a map/filter accumulator
STRING_COST = 64  # contains/startsWith/endsWith/timestamp/duration over a string of <= 64 KiB
REGEX_COST = 3072  # matches: the pattern is compiled at every call
REGEX_CHAR_COST = 16  # ... plus this per character of the pattern

# Bounds on the inputs, as a number of values (every list element and map entry counts once,
# nested ones too). A request body is at most 64 KiB (Settings.max_body_bytes) and the smallest
# list element in JSON is two bytes ("0,"), so no request-derived value holds more than 32768;
# fields the request schema caps are tighter. Snapshot-derived values (entitlements, feeds)
# are assumed to hold at most SNAPSHOT_VALUES per principal; the runtime budget in the engine
# backs the assumption (docs/service.md, section 6).
BODY_VALUES = 32_768
SNAPSHOT_VALUES = 1_024
_PRINCIPAL_FIELDS = {"groups": 1_025, "directory_roles": 1_025, "auth": 40, "owner": 8}
INPUT_BOUNDS: dict[str, int] = {
    "principal": BODY_VALUES,
    "subject": BODY_VALUES,
    "actor": 32,
    "actors": 16 * 32 + 1,
    "delegated": 1,
    "client": BODY_VALUES,
    "request": 512,
    "context": BODY_VALUES,
    "entitlements": SNAPSHOT_VALUES,
    "now": 1,
    "snapshot": 8,
    "feeds": SNAPSHOT_VALUES,
}
FIELD_BOUNDS: dict[tuple[str, str], int] = {
    **{(p, f): n for p in ("principal", "subject") for f, n in _PRINCIPAL_FIELDS.items()},
    ("request", "scopes"): 257,
    ("request", "audience"): 65,
}

_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_TOKEN = re.compile(
    r"""(?P<ws>\s+|//[^\n]*)
    |(?P<str>(?:[rR][bB]?|[bB][rR]?)?(?:'''[\s\S]*?'''|\"\"\"[\s\S]*?\"\"\"|'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"))
    |(?P<num>0[xX][0-9a-fA-F]+[uU]?|(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+[uU]?)
    |(?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]*`)
    |(?P<op>==|!=|<=|>=|&&|\|\||[-+*/%!<>?:.,()\[\]{}])""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Cost:
    """An upper bound on evaluating an expression: ``cost`` in units, ``size`` of its value (values)."""

    cost: int
    size: int


class CostEstimateError(ValueError):
    """The estimator could not read an expression the runtime accepted (treated as over budget)."""


# Bounds are linear forms over the sizes of the comprehension binders in scope: {binder key: coefficient,
# "": constant}. Keeping them symbolic is what makes a projection like `records.map(r, r.value)` cost
# |records| per pass rather than |records| per element: the sizes of all elements add up to the size of
# the range, not to |range| times it.
_Form = dict[str, int]


def estimate_cost(source: str, variable_sizes: dict[str, int]) -> Cost:
    """Upper bound on the work of evaluating ``source`` once, and on the size of its value.

    ``variable_sizes`` gives the size bound of each policy variable (a variable is evaluated once
    per pass, so reading it costs one unit; its size matters where it is iterated or copied).
    Built-in variables take ``INPUT_BOUNDS``/``FIELD_BOUNDS``; a name in neither is bounded by
    ``BODY_VALUES``. Raises ``CostEstimateError`` when the source does not parse (the runtime
    parser accepted it, so this would be a gap in this estimator; callers refuse the expression).
    """
    try:
        parser = _Parser(source)
        tree = parser.expr()
        if parser.peek() is not None:
            raise CostEstimateError(f"unexpected {parser.peek()!r}")
        estimator = _Estimator(variable_sizes)
        cost, size = estimator.node(tree, {})
    except RecursionError:  # the runtime accepts ~100 levels of nesting; ~6 frames a level here
        raise CostEstimateError("nested too deeply") from None
    return Cost(estimator.crude(cost, {}), estimator.crude(size, {}))


class _Parser:
    """Recursive descent over the CEL grammar (cel-spec), building tuples. Precedence, lowest
    first: ?:, ||, &&, relations (== != < <= > >= in), + -, * / %, unary ! -, member access."""

    def __init__(self, source: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(source):
            match = _TOKEN.match(source, pos)
            if match is None:
                raise CostEstimateError(f"unexpected character at {pos}")
            pos = match.end()
            kind = match.lastgroup or ""
            if kind != "ws":
                self.tokens.append((kind, match.group()))
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens) or (expected is not None and self.tokens[self.pos][1] != expected):
            raise CostEstimateError(f"expected {expected or 'a token'} at token {self.pos}")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def expr(self) -> Any:
        cond = self.binary()
        if self.peek() == "?":
            self.take()
            then = self.binary()
            self.take(":")
            return ("cond", cond, then, self.expr())
        return cond

    _LEVELS = {"||": 0, "&&": 1, "==": 2, "!=": 2, "<": 2, "<=": 2, ">": 2, ">=": 2, "in": 2, "+": 3, "-": 3, "*": 4, "/": 4, "%": 4}

    def binary(self, lowest: int = 0) -> Any:
        """Precedence climbing (left-associative): one frame per operand, not one per level."""
        left = self.unary()
        while self.pos < len(self.tokens) and self.tokens[self.pos][0] in ("op", "id"):
            level = self._LEVELS.get(self.tokens[self.pos][1], -1)
            if level < lowest:
                break
            op = self.take()[1]
            left = ("op", op, left, self.binary(level + 1))
        return left

    def unary(self) -> Any:
        if self.peek() in ("!", "-"):
            op = self.take()[1]
            return ("unary", op, self.unary())
        return self.member()

    def member(self) -> Any:
        node = self.primary()
        while self.peek() in (".", "[", "{"):
            tok = self.take()[1]
            if tok == ".":
                name = self.take()[1]
                if self.peek() == "(":
                    node = ("call", node, name, self.args(")"))
                else:
                    node = ("select", node, name)
            elif tok == "[":
                index = self.expr()
                self.take("]")
                node = ("index", node, index)
            else:  # message construction: Type{field: value, ...}
                node = ("literal", self.inits("}", keyed=False))
        return node

    def primary(self) -> Any:
        kind, tok = self.take()
        if tok == ".":  # a leading dot: the root namespace
            kind, tok = self.take()
        if kind == "id":
            if tok in ("true", "false", "null"):
                return ("const", 1)
            if self.peek() == "(":
                return ("call", None, tok, self.args(")"))
            return ("ident", tok)
        if kind == "str":
            return ("string", tok)
        if kind == "num":
            return ("const", 1)
        if tok == "(":
            inner = self.expr()
            self.take(")")
            return inner
        if tok == "[":
            return ("literal", self.args("]", opened=True))
        if tok == "{":
            return ("literal", self.inits("}", keyed=True))
        raise CostEstimateError(f"unexpected {tok!r}")

    def args(self, close: str, opened: bool = False) -> list[Any]:
        if not opened:
            self.take("(")
        items: list[Any] = []
        while self.peek() != close:
            items.append(self.expr())
            if self.peek() != ",":
                break
            self.take(",")
        self.take(close)
        return items

    def inits(self, close: str, keyed: bool) -> list[Any]:
        items: list[Any] = []
        while self.peek() != close:
            items.append(self.expr() if keyed else ("const", 1))
            if not keyed:
                self.take()  # the field name
            self.take(":")
            items.append(self.expr())
            if self.peek() != ",":
                break
            self.take(",")
        self.take(close)
        return items


def _add(*forms: _Form) -> _Form:
    total: _Form = {}
    for form in forms:
        for key, coefficient in form.items():
            total[key] = total.get(key, 0) + coefficient
    return total


def _const(value: int) -> _Form:
    return {"": value}


class _Estimator:
    """Evaluates a parsed expression over bounds instead of values; see ``estimate_cost``."""

    def __init__(self, variable_sizes: dict[str, int]) -> None:
        self.variable_sizes = variable_sizes
        self.binders = 0

    @staticmethod
    def crude(form: _Form, env: dict[str, int]) -> int:
        """The form with every binder at its own bound: a plain number."""
        return sum(c * (1 if k == "" else env[k]) for k, c in form.items())

    def mul(self, a: _Form, b: _Form, env: dict[str, int]) -> _Form:
        """Upper bound of a product of two forms, linear where one side is a constant."""
        if set(a) <= {""}:
            return {k: c * a.get("", 0) for k, c in b.items()}
        if set(b) <= {""}:
            return {k: c * b.get("", 0) for k, c in a.items()}
        factor = self.crude(a, env)
        return {k: c * factor for k, c in b.items()}

    def lesser(self, a: _Form, b: _Form, env: dict[str, int]) -> _Form:
        return a if self.crude(a, env) <= self.crude(b, env) else b

    @staticmethod
    def greater(a: _Form, b: _Form) -> _Form:
        return {k: max(a.get(k, 0), b.get(k, 0)) for k in set(a) | set(b)}

    def node(self, n: Any, env: dict[str, int]) -> tuple[_Form, _Form]:
        """(cost, size) of node ``n``; ``env`` maps binder keys in scope to their size bounds."""
        tag = n[0]
        if tag == "const":
            return _const(1), _const(1)
        if tag == "string":
            return _const(1), _const(1)
        if tag == "ident":
            name = n[1]
            bound = env.get(f"{name}#binder")
            if bound is not None:
                return _const(1), {_env_key(env, name): 1}
            bound = self.variable_sizes.get(name, INPUT_BOUNDS.get(name, BODY_VALUES))
            return _const(1), _const(bound)
        if tag == "select":
            base = n[1]
            if base[0] == "ident" and (base[1], n[2]) in FIELD_BOUNDS and f"{base[1]}#binder" not in env:
                return _const(2), _const(FIELD_BOUNDS[(base[1], n[2])])
            cost, size = self.node(base, env)
            return _add(cost, _const(1)), size
        if tag == "index":
            base_cost, size = self.node(n[1], env)
            index_cost, _ = self.node(n[2], env)
            return _add(base_cost, index_cost, _const(1)), size
        if tag == "unary":
            cost, size = self.node(n[2], env)
            return _add(cost, _const(1)), _const(1)
        if tag == "cond":
            parts = [self.node(part, env) for part in n[1:]]
            return _add(*(c for c, _ in parts), _const(1)), self.greater(parts[1][1], parts[2][1])
        if tag == "literal":
            parts = [self.node(item, env) for item in n[1]]
            return _add(*(c for c, _ in parts), _const(len(parts) + 1)), _add(*(s for _, s in parts), _const(1))
        if tag == "op":
            return self.operator(n[1], n[2], n[3], env)
        return self.call(n[1], n[2], n[3], env)

    def operator(self, op: str, left: Any, right: Any, env: dict[str, int]) -> tuple[_Form, _Form]:
        (lc, ls), (rc, rs) = self.node(left, env), self.node(right, env)
        cost = _add(lc, rc, _const(1))
        if op == "+":  # concatenation copies both sides (numbers: two units)
            return _add(cost, ls, rs), _add(ls, rs)
        if op in ("==", "!="):  # stops at the smaller side
            return _add(cost, self.lesser(ls, rs, env)), _const(1)
        if op == "in":  # scans the list (a map lookup is cheaper)
            return _add(cost, rs), _const(1)
        return cost, _const(1)

    def call(self, target: Any, name: str, args: list[Any], env: dict[str, int]) -> tuple[_Form, _Form]:
        if target is not None and name in _MACROS and len(args) in (2, 3) and args[0][0] == "ident":
            return self.comprehension(target, name, args[0][1], args[1:], env)
        parts = [self.node(a, env) for a in ([target] if target is not None else []) + args]
        cost = _add(*(c for c, _ in parts), _const(1))
        sizes = [s for _, s in parts]
        if name in ("size", "has", "int", "uint", "double", "bool", "type") or name.startswith("get"):
            return cost, _const(1)
        if name in ("contains", "startsWith", "endsWith", "timestamp", "duration"):
            return _add(cost, _const(STRING_COST)), _const(1)
        if name == "matches":
            pattern: Any = args[-1] if args else ("const", 1)
            length = len(pattern[1]) if pattern[0] == "string" else 2 * BODY_VALUES  # a request string: <= 64 KiB
            return _add(cost, _const(STRING_COST + REGEX_COST + REGEX_CHAR_COST * length)), _const(1)
        if name in ("string", "bytes", "dyn"):
            size = sizes[0] if sizes else _const(1)
            return _add(cost, size), size
        size = _const(1)
        for s in sizes:
            size = self.greater(size, s)
        return cost, size

    def comprehension(self, target: Any, name: str, binder: str, bodies: list[Any], env: dict[str, int]) -> tuple[_Form, _Form]:
        range_cost, range_size = self.node(target, env)
        self.binders += 1
        key = f"{binder}#{self.binders}"
        inner = {**env, key: self.crude(range_size, env), f"{binder}#binder": self.binders}
        parts = [self.node(body, inner) for body in bodies]
        per_element = _add(*(c for c, _ in parts), _const(ITERATION_COST))
        # Summed over the elements: the binder's share adds up to the range's size, the rest
        # is paid once per element (and there are at most size-of-range elements).
        total = self.mul(self.over_range(per_element, key), range_size, env)
        cost = _add(range_cost, total)
        if name == "map":
            produced = self.mul(self.over_range(parts[-1][1], key), range_size, env)
            copies = self.mul(produced, range_size, env)  # the accumulator is copied each step
            return _add(cost, {k: c * COPY_COST for k, c in copies.items()}), _add(produced, _const(1))
        if name == "filter":
            copies = self.mul(range_size, range_size, env)
            return _add(cost, {k: c * COPY_COST for k, c in copies.items()}), range_size
        return cost, _const(1)

    @staticmethod
    def over_range(form: _Form, key: str) -> _Form:
        """``form`` with the binder folded in: per element, binder share + the rest, to be
        multiplied by the range's size (sum of binder sizes <= range size; count <= range size)."""
        rest = {k: c for k, c in form.items() if k != key}
        return _add(rest, _const(form.get(key, 0)))


def _env_key(env: dict[str, int], name: str) -> str:
    """The key of the innermost binder called ``name`` in ``env``."""
    return f"{name}#{env[name + '#binder']}"
