"""The syntax of the CEL shapes ``cel_native`` evaluates: a tokenizer and a parser (issue 13).

A recursive-descent parser over the CEL grammar (cel-spec ``langdef.md``: ``?:`` lowest, then
``||``, ``&&``, the relations ``== != < <= > >= in`` at one level, unary ``!`` and ``-``, then
member access, calls and indexing), for a subset only. It runs on sources ``cel.compile`` has
already accepted, so it need not report errors: whatever is outside the subset (arithmetic, map
literals, escapes or prefixes in string literals, uint, hex and out-of-range numbers, comments,
functions other than ``has``, ``size``, ``startsWith``, ``endsWith``, ``contains`` and the
``exists``/``all`` macros) makes ``parse`` return None, and the expression stays CEL's alone.

The tree is nested tuples, tag first: ``("lit", v)``, ``("list", [n...])``, ``("var", name)``,
``("sel", n, field)``, ``("has", n, field)``, ``("index", n, n)``, ``("not", n)``,
``("and", n, n)``, ``("or", n, n)``, ``("cond", n, n, n)``, ``("rel", op, n, n)``,
``("size", n)``, ``("strfn", name, receiver, argument)``, ``("exists"|"all", receiver, binder, body)``.
"""

from __future__ import annotations

import re
from typing import Any

Node = tuple[Any, ...]
STRING_METHODS = frozenset({"startsWith", "endsWith", "contains"})

_INT64_MAX = 2**63 - 1
_RELATIONS = frozenset({"==", "!=", "<", "<=", ">", ">=", "in"})
# CEL's reserved words (cel-spec syntax): never identifiers or field names of a native shape.
_RESERVED = frozenset(
    {"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if", "import", "let", "loop"}
    | {"package", "namespace", "return", "var", "void", "while"}
)
_TOKEN = re.compile(
    r"(?P<ws>[ \t\n\r\f]+)"
    r"|(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<str>'[^'\\\n\r]*'|\"[^\"\\\n\r]*\")"  # no escapes: a literal with a backslash stays CEL
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|[<>!?:()\[\],.\-])"
)


class _Unsupported(Exception):  # noqa: N818 - internal: "not a native shape", never raised out of parse
    pass


def parse(source: str) -> Node | None:
    """The syntax tree of ``source``, or None when it is not a native shape."""
    try:
        return _Parser(source).parse()
    except _Unsupported:
        return None


def _tokens(source: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        if match is None:
            raise _Unsupported
        kind, text, pos = match.lastgroup, match.group(), match.end()
        following = source[pos : pos + 1]
        if kind == "ws":
            continue
        if kind == "num":
            if following and (following.isalnum() or following in "_."):
                raise _Unsupported  # 1u, 0x1f, 1e, 1.size(): other literal forms
            if "." in text or "e" in text or "E" in text:
                number = float(text)
                mantissa = re.split("[eE]", text)[0]
                if number == float("inf") or number == 0.0 and mantissa.strip("0.") != "":
                    raise _Unsupported  # overflows or underflows a double
                out.append(("lit", number))
            elif len(text) > 1 and text[0] == "0":
                raise _Unsupported
            else:
                value = int(text)
                if value > _INT64_MAX:
                    raise _Unsupported
                out.append(("lit", value))
        elif kind == "str":
            if source.startswith(text[0] * 3, match.start()):
                raise _Unsupported  # triple-quoted
            out.append(("lit", text[1:-1]))
        elif kind == "ident":
            if following in ("'", '"'):
                raise _Unsupported  # r'...', b'...'
            out.append(("ident", text))
        else:
            out.append(("op", text))
    out.append(("end", None))
    return out


class _Parser:
    """Recursive descent over the CEL grammar (cel-spec), for the native subset only."""

    def __init__(self, source: str) -> None:
        self.tokens = _tokens(source)
        self.pos = 0

    def parse(self) -> Node:
        node = self.expr()
        if self.tokens[self.pos][0] != "end":
            raise _Unsupported
        return node

    def at(self, *ops: str) -> bool:
        kind, value = self.tokens[self.pos]
        return kind == "op" and value in ops

    def take(self) -> tuple[str, Any]:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, op: str) -> None:
        if not self.at(op):
            raise _Unsupported
        self.pos += 1

    def expr(self) -> Node:
        condition = self.disjunction()
        if not self.at("?"):
            return condition
        self.pos += 1
        then = self.disjunction()  # CEL: the middle operand is a ConditionalOr, not an Expr
        self.expect(":")
        return ("cond", condition, then, self.expr())

    def disjunction(self) -> Node:
        node = self.conjunction()
        while self.at("||"):
            self.pos += 1
            node = ("or", node, self.conjunction())
        return node

    def conjunction(self) -> Node:
        node = self.relation()
        while self.at("&&"):
            self.pos += 1
            node = ("and", node, self.relation())
        return node

    def relation(self) -> Node:
        node = self.unary()  # Addition and Multiplication are not native: their operators stop the parse
        while True:
            kind, value = self.tokens[self.pos]
            if not (kind == "op" and value in _RELATIONS or kind == "ident" and value == "in"):
                return node
            self.pos += 1
            node = ("rel", value, node, self.unary())

    def unary(self) -> Node:
        if self.at("!"):
            self.pos += 1
            return ("not", self.unary() if self.at("!") else self.member())
        if self.at("-"):
            self.pos += 1
            kind, value = self.take()
            if kind != "lit" or type(value) not in (int, float) or self.at(".", "["):
                raise _Unsupported  # only negative number literals
            return ("lit", -value)
        return self.member()

    def member(self) -> Node:
        node = self.primary()
        while True:
            if self.at("."):
                self.pos += 1
                name = self.name()
                node = self.method(node, name, self.arguments()) if self.at("(") else ("sel", node, name)
            elif self.at("["):
                self.pos += 1
                index = self.expr()
                self.expect("]")
                node = ("index", node, index)
            else:
                return node

    def name(self) -> str:
        kind, value = self.take()
        if kind != "ident" or value in _RESERVED:
            raise _Unsupported
        return str(value)

    def arguments(self) -> list[Node]:
        self.expect("(")
        return self.sequence(")")

    def sequence(self, close: str) -> list[Node]:
        items: list[Node] = []
        while not self.at(close):
            items.append(self.expr())
            if not self.at(close):
                self.expect(",")
        self.pos += 1
        return items

    def primary(self) -> Node:
        kind, value = self.take()
        if kind == "lit":
            return ("lit", value)
        if kind == "ident":
            if value in ("true", "false", "null"):
                return ("lit", {"true": True, "false": False, "null": None}[value])
            if value in _RESERVED:
                raise _Unsupported
            if not self.at("("):
                return ("var", value)
            args = self.arguments()
            if value == "has" and len(args) == 1 and args[0][0] == "sel":
                return ("has", args[0][1], args[0][2])
            if value == "size" and len(args) == 1:
                return ("size", args[0])
            raise _Unsupported
        if kind == "op" and value == "(":
            node = self.expr()
            self.expect(")")
            return node
        if kind == "op" and value == "[":
            return ("list", self.sequence("]"))
        raise _Unsupported

    @staticmethod
    def method(receiver: Node, name: str, args: list[Node]) -> Node:
        if name == "size" and not args:
            return ("size", receiver)
        if name in STRING_METHODS and len(args) == 1:
            return ("strfn", name, receiver, args[0])
        if name in ("exists", "all") and len(args) == 2 and args[0][0] == "var":
            return (name, receiver, args[0][1], args[1])
        raise _Unsupported
