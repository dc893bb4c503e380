"""Native evaluation of simple CEL shapes: the fast path under ``condition`` (issue 13).

Most policy conditions are field reads, comparisons with literals, ``in``, ``has()`` and boolean
connectives. Running them in CEL costs a ``cel.Context`` per pass (~25 us: every value handed
over is converted) plus ~3 us per program; as Python closures over the engine's own values they
cost about a microsecond. ``compile_native`` turns such an expression into a closure when the
policy loads; every other expression (arithmetic, timestamps, conversions, map literals,
``matches``, escapes in strings...) gets none and runs in CEL only.

The contract is one-sided, which is what makes it safe: a native program either returns the
value CEL would return for the same variables, or raises ``Bail``, and the caller then runs the
expression in CEL, which decides (value or error, with CEL's own message). A program bails on
anything it is not sure of: a missing key, a value of another type than the operator takes,
an int outside int64 (CEL turns those into uint or double), an int compared with a double
beyond 2**53 (CEL compares them as doubles), list or map equality, a map result (CEL's key
order), an error on either side of ``&&``/``||`` (no error absorption is attempted). So errors
are never produced here, only recognised as "not mine". The semantics followed are those of
the pinned runtime (common-expression-language 0.10), measured, not the CEL specification's:
``size('é')`` is 2 (UTF-8 bytes), ``1 == 1.0`` is true, ``[1] == 1`` is false, ``null == {}``
is false, and ``exists``/``all`` over a list stop at the first deciding element, in order (so a
program does too; over a map, whose key order in CEL is not Python's, it evaluates every key).
tests/test_cel_native.py checks native against CEL over every expression of the example and
benchmark policies and over generated expressions and values. The syntax is ``cel_syntax``'s.

Programs read variables from a mapping (the engine's per-pass values, not pruned: a program
only reads the fields ``condition.field_uses`` found, which the pruned CEL view keeps). They
are pure and share no state, so one compiled policy serves every thread. One input class is
not covered: a string with a lone surrogate, which CEL cannot even take (converting it fails);
requests never carry one (``strict_json`` refuses them).

The switch: ``ENABLED`` (module flag, default on) is read by the engine at each pass. This
module never reads the environment: the service's adapter (``wsgi.py``) sets the flag from the
setting ``KPB_CEL_NATIVE`` (``config.Settings.cel_native``), for an operator who wants every
expression run by CEL; tests set it directly. Decisions are the same either way, only slower.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from keycloak_policy_bridge.cel_syntax import Node, parse

ENABLED: bool = True

Env = Mapping[str, Any]
Program = Callable[[Env], Any]
Fields = dict[str, "frozenset[str] | None"]  # as condition.Fields: variable -> first-level fields read (None: all)


class Bail(Exception):  # noqa: N818 - not an error: the signal to run the expression in CEL
    """Raised by a native program that cannot decide; the caller runs the expression in CEL."""


class _Unsupported(Exception):  # noqa: N818 - internal to compile_native: "not a native shape"
    pass


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EXACT_DOUBLE = 2**53  # ints up to this magnitude convert to a double exactly
_NONE_TYPE = type(None)
_SCALARS = (str, bool, bytes, _NONE_TYPE)  # same type: Python == is CEL ==
_STRING_FUNCTIONS = {"startsWith": str.startswith, "endsWith": str.endswith, "contains": str.__contains__}

# -- values ---------------------------------------------------------------------------------


def _int(value: int) -> int:
    if _INT64_MIN <= value <= _INT64_MAX:
        return value
    raise Bail


def _numbers(a: Any, b: Any) -> tuple[Any, Any] | None:
    """``(a, b)`` as comparable numbers when both are CEL int/double, else None."""
    ta, tb = type(a), type(b)
    if ta is int and tb is int:
        return _int(a), _int(b)
    if ta is float and tb is float:
        return a, b
    if ta is int and tb is float or ta is float and tb is int:
        i = a if ta is int else b
        if -_EXACT_DOUBLE <= i <= _EXACT_DOUBLE:
            return a, b
        raise Bail  # CEL compares as doubles, Python exactly: they may differ
    return None


def _known(value: Any) -> None:
    """Bail on a value whose CEL conversion is not the obvious one (uint, double, tuple...)."""
    t = type(value)
    if t is int:
        _int(value)
    elif t not in (str, bool, float, bytes, list, dict, _NONE_TYPE):
        raise Bail


def equal(a: Any, b: Any) -> bool:
    """CEL ``==`` of the pinned runtime, or ``Bail``."""
    ta, tb = type(a), type(b)
    if ta is tb and ta in _SCALARS:
        return bool(a == b)
    numbers = _numbers(a, b)
    if numbers is not None:
        return bool(numbers[0] == numbers[1])
    _known(a)
    _known(b)
    if ta is tb:
        raise Bail  # two lists or two maps: element-wise equality is CEL's
    return False  # different types are unequal in this runtime (`[1] == 1`, `null == {}`: false)


def _order(a: Any, b: Any) -> tuple[Any, Any]:
    """Operands of ``<``-like operators that CEL orders the way Python does, or ``Bail``."""
    numbers = _numbers(a, b)
    if numbers is not None:
        if numbers[0] != numbers[0] or numbers[1] != numbers[1]:
            raise Bail  # NaN
        return numbers
    ta = type(a)
    if ta is type(b) and ta in (str, bool, bytes):
        return a, b
    raise Bail


def member(a: Any, b: Any) -> bool:
    """CEL ``a in b``: list membership by ``==``, map key membership; or ``Bail``."""
    tb = type(b)
    if tb is list:
        if type(a) is str:
            for item in b:
                if type(item) is not str:
                    break
            else:
                return a in b
        found = False
        for item in b:  # every element, so that one CEL might fail on is never skipped
            found = equal(a, item) or found
        return found
    if tb is dict and type(a) is str:
        return a in b
    raise Bail


def size(value: Any) -> int:
    t = type(value)
    if t is list or t is dict or t is bytes:
        return len(value)
    if t is str:
        try:
            return len(value.encode("utf-8"))  # this runtime counts UTF-8 bytes, not code points
        except UnicodeEncodeError:  # a lone surrogate: CEL cannot even take the string
            raise Bail from None
    raise Bail


def export(value: Any) -> Any:
    """``value`` as CEL would hand it back to Python, or ``Bail`` (maps: CEL's key order)."""
    t = type(value)
    if t is str or t is bool or t is float or value is None or t is bytes:
        return value
    if t is int:
        return _int(value)
    if t is list:
        return [export(v) for v in value]
    raise Bail


# -- compiling ------------------------------------------------------------------------------


def compile_native(source: str, variables: frozenset[str], fields: Fields) -> Program | None:
    """A native program for ``source``, or None when it must run in CEL.

    Args:
        source: a CEL expression that ``cel.compile`` accepted.
        variables: its free variables (``Expression.variables``).
        fields: the first-level fields it reads of each (``condition.field_uses``); a program
            that would read others is refused, since the engine hands CEL only those.

    A program takes the variables as a mapping and returns the value CEL would return, as the
    Python object it read (``export`` gives it as CEL hands it back), or raises ``Bail``.
    """
    tree = parse(source)
    if tree is None:
        return None
    try:
        _check_reads(tree, variables, fields, frozenset(), None)
        return _compile(tree)
    except _Unsupported:
        return None


def _check_reads(node: Node, variables: frozenset[str], fields: Fields, bound: frozenset[str], field: str | None) -> None:
    """Refuse a tree that reads a variable or field outside what CEL would be handed."""
    tag = node[0]
    if tag == "var":
        name = node[1]
        if name in bound:
            return
        if name not in variables or name not in fields:
            raise _Unsupported
        read = fields[name]
        if read is not None and (field is None or field not in read):
            raise _Unsupported
        return
    if tag in ("sel", "has"):
        _check_reads(node[1], variables, fields, bound, node[2])
        return
    if tag in ("exists", "all"):
        _check_reads(node[1], variables, fields, bound, None)
        _check_reads(node[3], variables, fields, bound | {node[2]}, None)
        return
    for child in node[1:]:
        if isinstance(child, tuple):
            _check_reads(child, variables, fields, bound, None)
        elif isinstance(child, list):
            for item in child:
                _check_reads(item, variables, fields, bound, None)


def _compile(node: Node) -> Program:
    tag = node[0]
    compiler = _COMPILERS.get(tag)
    if compiler is None:
        raise _Unsupported
    return compiler(node)


def _lit(node: Node) -> Program:
    value = node[1]
    return lambda env: value


def _list(node: Node) -> Program:
    items = [_compile(n) for n in node[1]]
    return lambda env: [item(env) for item in items]


def _var(node: Node) -> Program:
    name = node[1]

    def var(env: Env) -> Any:
        try:
            return env[name]
        except KeyError:
            raise Bail from None

    return var


def _path(node: Node) -> tuple[Node, tuple[str, ...]]:
    """``a.b.c`` as (a, ("b", "c")): one closure for a chain of field reads."""
    names: list[str] = []
    while node[0] == "sel":
        names.append(node[2])
        node = node[1]
    return node, tuple(reversed(names))


def _sel(node: Node) -> Program:
    root, names = _path(node)
    if root[0] == "var" and len(names) == 1:
        # `principal.kind`, the most common read of all: one closure, no loop.
        variable, name = root[1], names[0]

        def field(env: Env) -> Any:
            try:
                value = env[variable]
            except KeyError:
                raise Bail from None
            if type(value) is dict:
                try:
                    return value[name]
                except KeyError:
                    pass
            raise Bail  # CEL: no such key, or no field on a non-map

        return field
    base = _compile(root)

    def select(env: Env) -> Any:
        value = base(env)
        for name in names:
            if type(value) is not dict or name not in value:
                raise Bail
            value = value[name]
        return value

    return select


def _has(node: Node) -> Program:
    name = node[2]
    if node[1][0] == "var":
        variable = node[1][1]

        def has_field(env: Env) -> bool:
            try:
                value = env[variable]
            except KeyError:
                raise Bail from None
            if type(value) is not dict:
                raise Bail
            return name in value

        return has_field
    base = _compile(node[1])

    def has(env: Env) -> bool:
        value = base(env)
        if type(value) is not dict:
            raise Bail
        return name in value

    return has


def _index(node: Node) -> Program:
    base, index = _compile(node[1]), _compile(node[2])

    def item(env: Env) -> Any:
        value, key = base(env), index(env)
        if type(value) is list and type(key) is int and 0 <= key < len(value):
            return value[key]
        if type(value) is dict and type(key) is str and key in value:
            return value[key]
        raise Bail

    return item


def _not(node: Node) -> Program:
    operand = _compile(node[1])

    def negate(env: Env) -> bool:
        value = operand(env)
        if type(value) is not bool:
            raise Bail
        return not value

    return negate


def _and(node: Node) -> Program:
    left, right = _compile(node[1]), _compile(node[2])

    def conjunction(env: Env) -> bool:
        a = left(env)
        if a is False:
            return False  # CEL short-circuits: the right side is never an error then
        b = right(env)
        if a is True and type(b) is bool:
            return b
        raise Bail

    return conjunction


def _or(node: Node) -> Program:
    left, right = _compile(node[1]), _compile(node[2])

    def disjunction(env: Env) -> bool:
        a = left(env)
        if a is True:
            return True
        b = right(env)
        if a is False and type(b) is bool:
            return b
        raise Bail

    return disjunction


def _cond(node: Node) -> Program:
    test, then, otherwise = _compile(node[1]), _compile(node[2]), _compile(node[3])

    def choose(env: Env) -> Any:
        value = test(env)
        if value is True:
            return then(env)
        if value is False:
            return otherwise(env)
        raise Bail

    return choose


def _rel(node: Node) -> Program:
    op, left, right = node[1], _compile(node[2]), _compile(node[3])
    if op == "in":
        return lambda env: member(left(env), right(env))
    if op in ("==", "!="):
        want = op == "=="
        literal = node[3][1] if node[3][0] == "lit" else None
        if type(literal) is str:
            # The common shape `x.field == 'text'`: one type test instead of the general rules.
            def equal_text(env: Env) -> bool:
                a = left(env)
                if type(a) is str:
                    return (a == literal) is want
                return equal(a, literal) is want

            return equal_text
        return lambda env: equal(left(env), right(env)) is want
    compare = _ORDERINGS[op]

    def ordered(env: Env) -> bool:
        a, b = _order(left(env), right(env))
        return bool(compare(a, b))

    return ordered


_ORDERINGS: dict[str, Callable[[Any, Any], Any]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _size(node: Node) -> Program:
    operand = _compile(node[1])
    return lambda env: size(operand(env))


def _strfn(node: Node) -> Program:
    function, receiver, argument = _STRING_FUNCTIONS[node[1]], _compile(node[2]), _compile(node[3])

    def call(env: Env) -> bool:
        a, b = receiver(env), argument(env)
        if type(a) is not str or type(b) is not str:
            raise Bail
        return bool(function(a, b))

    return call


class _Frame(dict[str, Any]):
    """The variables inside a macro: its binder, then the enclosing variables."""

    __slots__ = ("parent",)

    def __init__(self, parent: Env) -> None:
        super().__init__()
        self.parent = parent

    def __missing__(self, name: str) -> Any:
        return self.parent[name]


def _macro(node: Node) -> Program:
    every = node[0] == "all"
    receiver, binder, body = _compile(node[1]), node[2], _compile(node[3])
    stop = not every  # `exists` stops at the first true, `all` at the first false

    def macro(env: Env) -> bool:
        items = receiver(env)
        frame = _Frame(env)
        if type(items) is list:
            # In order, stopping where CEL stops: this runtime evaluates a list's elements one
            # by one and returns at the first deciding one (`[2, 'a'].exists(x, x > 1)` is true,
            # `['a', 2]...` an error); an element before it that bails makes the whole bail.
            for item in items:
                frame[binder] = item
                value = body(frame)
                if type(value) is not bool:
                    raise Bail
                if value is stop:
                    return stop
            return not stop
        if type(items) is not dict:
            raise Bail
        # A map's keys: CEL's order is not Python's, so every key is evaluated (any bail bails).
        results = []
        for key in items:
            if type(key) is not str:
                raise Bail
            frame[binder] = key
            value = body(frame)
            if type(value) is not bool:
                raise Bail
            results.append(value)
        return all(results) if every else any(results)

    return macro


_COMPILERS: dict[str, Callable[[Node], Program]] = {
    "lit": _lit,
    "list": _list,
    "var": _var,
    "sel": _sel,
    "has": _has,
    "index": _index,
    "not": _not,
    "and": _and,
    "or": _or,
    "cond": _cond,
    "rel": _rel,
    "size": _size,
    "strfn": _strfn,
    "exists": _macro,
    "all": _macro,
}
