"""CEL expressions: compiled once when a policy loads, evaluated per request.

Built on ``common-expression-language`` (the Rust ``cel`` crate through PyO3). That library has no
type checker, so this module adds the static checks a policy author needs at load time: syntax,
references to variables that do not exist, and functions the runtime does not provide. Whatever
still fails at run time (a missing map key, a type mismatch) raises ``ConditionRuntimeError``,
and the engine fails closed on it. Nor has it an evaluation budget, and a running expression
cannot be interrupted: ``estimate_cost`` bounds the work of an expression before it is ever run.

Measured on the target machine: ``Program.execute`` costs ~0.6 us over a prebuilt ``cel.Context``
but ~20 us over a plain dict of the same content (the dict is converted on every call), so the
engine builds one context per evaluation pass and runs every program against it, and only when
an expression needs CEL: the simple shapes also get a native closure (``Expression.native``,
see ``cel_native``) that gives the same values without a context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import cel

from keycloak_policy_bridge.cel_native import Program as NativeProgram
from keycloak_policy_bridge.cel_native import compile_native

# Variables the engine provides to every expression (see docs/policy-language.md).
BUILTIN_VARIABLES: frozenset[str] = frozenset(
    {
        "principal",
        "subject",
        "actor",
        "actors",
        "delegated",
        "client",
        "request",
        "context",
        "entitlements",
        "now",
        "snapshot",
        "feeds",
    }
)

# CEL type identifiers appear as variables in `type(x) == int`; they are not references.
_TYPE_NAMES = frozenset({"int", "uint", "double", "string", "bytes", "bool", "list", "map", "null_type", "type"})

# Functions the pinned runtime (common-expression-language 0.10) implements natively; a test
# evaluates each one so this list cannot silently drift from the library.
KNOWN_FUNCTIONS: frozenset[str] = frozenset(
    {
        # strings and size
        "contains",
        "size",
        "startsWith",
        "endsWith",
        "matches",
        # conversions and types
        "duration",
        "timestamp",
        "string",
        "bytes",
        "double",
        "int",
        "uint",
        "dyn",
        "type",
        # macros
        "has",
        "exists",
        "all",
        "exists_one",
        "map",
        "filter",
        # timestamp accessors
        "getFullYear",
        "getMonth",
        "getDayOfYear",
        "getDayOfMonth",
        "getDate",
        "getDayOfWeek",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
    }
)

MAX_EXPRESSION_LENGTH = 4096

# Macro binders (`list.exists(e, ...)`) are reported by the runtime as variables; they are
# local to the macro, so they must not count as unknown references.
_BINDER = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")


class ConditionSyntaxError(ValueError):
    """Raised by ``compile_expression`` when the source does not parse or is too long."""


class ConditionRuntimeError(RuntimeError):
    """Raised by ``Expression.run`` when evaluation fails (missing key, type mismatch...)."""


# Which first-level fields of each variable an expression reads; None means the whole value.
Fields = dict[str, "frozenset[str] | None"]

_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|" + r'"(?:[^"\\]|\\.)*"')
_ACCESS = re.compile(r"(?<![\w.])([A-Za-z_][A-Za-z0-9_]*)(?:\s*\.\s*([A-Za-z_][A-Za-z0-9_]*))?")


@dataclass(frozen=True)
class Expression:
    """A compiled CEL expression and what it references."""

    source: str
    program: Any  # cel.Program; the extension module ships no type stubs
    variables: frozenset[str]  # free variables (builtins and policy variables), binders removed
    functions: frozenset[str]  # named functions, operators removed
    fields: Fields = None  # type: ignore[assignment]  # set by compile_expression
    # The fast path (``cel_native``): a closure giving CEL's value or raising ``Bail``; None
    # when the expression is not a native shape and runs in CEL only.
    native: NativeProgram | None = None

    def run(self, context: Any) -> Any:
        """Evaluate over a ``cel.Context``; return the Python value.

        Raises:
            ConditionRuntimeError: whatever the runtime raised, with its message.
        """
        try:
            return self.program.execute(context)
        except Exception as exc:  # noqa: BLE001 - the runtime raises KeyError, TypeError, RuntimeError, ...
            raise ConditionRuntimeError(_runtime_message(exc)) from None


def compile_expression(source: str) -> Expression:
    """Parse ``source`` once and record its references.

    Raises:
        ConditionSyntaxError: the source is empty, too long, or does not parse.
    """
    if not source.strip():
        raise ConditionSyntaxError("expression is empty")
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ConditionSyntaxError(f"expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        program = cel.compile(source)
    except Exception as exc:  # noqa: BLE001 - ValueError from the parser, with a caret diagram
        raise ConditionSyntaxError(_syntax_message(exc)) from None
    refs = program.references()
    binders = set(_BINDER.findall(source))
    variables = frozenset(v for v in refs["variables"] if v not in binders and v not in _TYPE_NAMES)
    functions = frozenset(f for f in refs["functions"] if not f.startswith(("_", "@", "!", "-")))
    fields = field_uses(source, variables)
    return Expression(source, program, variables, functions, fields, compile_native(source, variables, fields))


def field_uses(source: str, variables: frozenset[str]) -> Fields:
    """Which first-level fields of each variable ``source`` reads (``principal.kind`` -> kind).

    Converting a Python value into CEL costs about 2.5 us per leaf, which would dominate a
    decision if whole request documents were handed over; so the engine passes only the fields
    read. Conservative by construction: any use other than ``var.field`` (the bare variable, an
    index, a method call on it, a macro) means the whole value.
    """
    text = _STRING_LITERAL.sub("''", source)
    uses: Fields = {}
    for match in _ACCESS.finditer(text):
        name, field = match.group(1), match.group(2)
        if name not in variables:
            continue
        if field is not None and text[match.end() :].lstrip().startswith("("):
            field = None  # `var.size()`: a method on the value itself
        known = uses.get(name, frozenset())
        uses[name] = None if field is None or known is None else known | {field}
    return uses


def merge_fields(*parts: Fields) -> Fields:
    """Union of field uses; a whole-value use wins."""
    merged: Fields = {}
    for part in parts:
        for name, fields in part.items():
            known = merged.get(name, frozenset())
            merged[name] = None if fields is None or known is None else known | fields
    return merged


def prune(value: Any, fields: frozenset[str] | None) -> Any:
    """``value`` restricted to ``fields`` when it is a map; otherwise unchanged."""
    if fields is None or not isinstance(value, dict):
        return value
    return {k: value[k] for k in fields if k in value}


def unknown_references(expr: Expression, defined: frozenset[str]) -> list[str]:
    """Return messages for every variable or function ``expr`` uses that does not exist."""
    problems = []
    for name in sorted(expr.variables - BUILTIN_VARIABLES - defined):
        problems.append(f"unknown variable '{name}'")
    for name in sorted(expr.functions - KNOWN_FUNCTIONS):
        problems.append(f"unknown function '{name}'")
    return problems


def make_context(variables: dict[str, Any]) -> Any:
    """Build the ``cel.Context`` an evaluation pass runs its expressions against."""
    return cel.Context(variables=variables)


def _syntax_message(exc: Exception) -> str:
    text = str(exc)
    # The parser repeats the whole source after the message; keep the "ERROR: <input>:l:c: ..."
    # line and the caret diagram, which locate the problem inside the expression.
    marker = text.find("ERROR:")
    return text[marker:] if marker >= 0 else text


def _runtime_message(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no such key: {exc.args[0]!s}" if exc.args else "no such key"
    message = str(exc).split(". Check that", 1)[0]
    return message.split(". CEL does not coerce", 1)[0] or type(exc).__name__
