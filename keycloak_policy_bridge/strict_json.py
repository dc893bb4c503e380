"""Strict JSON parsing for untrusted documents: claims requests, admin bodies, policy and request files.

``loads`` accepts exactly RFC 8259 JSON that the rest of the bridge can hold, hash and record,
and refuses everything else with ``StrictJsonError`` before any of it is used:

* syntax errors (as ``json.loads`` finds them);
* nesting deeper than ``max_depth`` (default ``MAX_DEPTH``, 64) arrays and objects: Python's
  parser and every recursive walk after it (validation, canonical JSON) would otherwise fail on
  thousands of levels with a ``RecursionError``;
* an integer of more than ``MAX_INT_DIGITS`` (100) digits: Python refuses to convert more than
  4,300 digits anyway (a ``ValueError`` outside the JSON errors), and no claim, risk score or
  timestamp needs more;
* ``NaN``, ``Infinity`` and ``-Infinity`` (not JSON, though Python's parser accepts them), and a
  number that overflows a float (``1e999`` would become ``inf``): canonical JSON refuses them
  all, so a decision using one could not be recorded;
* a lone UTF-16 surrogate escape (``"\\ud800"`` without its pair): the string cannot be encoded
  as UTF-8, so it could be neither recorded nor answered;
* a key repeated in one object: parsers disagree on which value wins (the mapper's and ours
  might not), so a repeated key is refused rather than silently resolved;
* bytes that are not UTF-8 (a UTF-8 byte order mark is allowed).

Every error names where (the JSON path of the offending value, like ``$.context.risk``, and its
line and column) and what, never the value: the input is untrusted and messages reach logs.
Object keys appear in a path only when they look like identifiers (``[A-Za-z_][A-Za-z0-9_-]*``,
at most 64 characters); other keys show as ``[?]``.

Pure: no I/O, no global state. Cost: a few regular-expression passes over the text around
``json.loads`` (about 30 us for the acme claims request, against 6 us for ``json.loads`` alone);
a token-by-token walk, to locate the problem, only for a document those passes find suspicious.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 64
MAX_INT_DIGITS = 100

# One JSON token at a time. Strings are matched whole (unrolled loop, no backtracking blow-up);
# anything that is not a token stops the scan and is left to json.loads, which reports it.
_TOKEN = re.compile(
    r"""(?P<ws>[ \t\n\r]+)
      |(?P<string>"[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*")
      |(?P<number>-?(?:0|[1-9][0-9]*)(?P<fraction>(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?))
      |(?P<open>[\[{])
      |(?P<close>[\]}])
      |(?P<colon>:)
      |(?P<comma>,)
      |(?P<word>-?[A-Za-z]+)""",
    re.VERBOSE,
)
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# NaN/Infinity, an integer of over MAX_INT_DIGITS digits, a 3-digit exponent (1e999), a long mantissa.
_SUSPICIOUS = re.compile(r"NaN|Infinity|[0-9]{%d}|[eE][+-]?[0-9]{3}" % (MAX_INT_DIGITS + 1))  # noqa: UP031 - a regex: {} are quantifiers
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_BRACKETS = re.compile(r"[\[\]{}]")
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class StrictJsonError(ValueError):
    """The text is not acceptable JSON. ``path`` is a JSON path (``$`` for the document or when
    no value can be named), ``line`` and ``column`` count from 1, ``reason`` says what is wrong
    without quoting the input."""

    path: str
    line: int
    column: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path} (line {self.line} column {self.column}): {self.reason}"


@dataclass
class _Frame:
    array: bool
    index: int = 0
    key: str | None = None
    expect_key: bool = True
    keys: set[str] | None = None


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` (UTF-8 bytes, or text) as strict JSON; see the module docstring.

    Raises:
        StrictJsonError: the first problem found, located.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            raise StrictJsonError("$", line, column, "the text is not UTF-8") from None
    else:
        text = data
    if _suspect(text, max_depth):
        _scan(text, max_depth)  # raises, located, for what it finds
    try:
        return json.loads(text, parse_constant=_constant, object_pairs_hook=_unique)
    except json.JSONDecodeError as exc:
        raise StrictJsonError("$", exc.lineno, exc.colno, f"not JSON: {exc.msg}") from None
    except (ValueError, RecursionError):  # a repeated key (the hook), or what the scan would have found
        _scan(text, max_depth)
        raise StrictJsonError("$", 1, 1, "a value is not acceptable JSON") from None


def _suspect(text: str, max_depth: int) -> bool:
    """Whether ``text`` may break a limit; ``False`` means it certainly does not. Regular
    expressions at C speed, so that the token walk (~100x slower than json.loads) runs only
    for documents that need it: deep ones, and those with suspicious numbers, words or escapes."""
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        return True
    bare = _STRINGS.sub('""', text)
    if _SUSPICIOUS.search(bare):
        return True
    if bare.count("[") + bare.count("{") <= max_depth:
        return False
    depth = deepest = 0
    for bracket in _BRACKETS.findall(bare):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest > max_depth


def _scan(text: str, max_depth: int) -> None:
    """Check the limits token by token, following the document's structure for paths. Stops
    quietly at the first thing that is not JSON, for ``json.loads`` to report."""
    stack: list[_Frame] = []
    position, end = 0, len(text)
    while position < end:
        match = _TOKEN.match(text, position)
        if match is None:
            return
        kind, token, start = match.lastgroup, match.group(), position
        position = match.end()
        if kind == "ws":
            continue
        top = stack[-1] if stack else None
        if kind == "comma":
            if top is not None:
                if top.array:
                    top.index += 1
                else:
                    top.expect_key, top.key = True, None
            continue
        if kind == "colon":
            if top is not None and not top.array:
                top.expect_key = False
            continue
        if kind == "close":
            if not stack:
                return
            stack.pop()
            continue
        if kind == "string" and top is not None and not top.array and top.expect_key:
            key = _string(token, text, start, stack, decode=True)
            if top.keys is None:
                top.keys = set()
            if key in top.keys:
                top.key = key
                _fail(text, start, stack, "this key appears more than once in its object")
            top.keys.add(key)
            top.key = key
            continue
        # a value
        if kind == "open":
            if len(stack) >= max_depth:
                _fail(text, start, stack, f"arrays and objects are nested more than {max_depth} deep")
            stack.append(_Frame(array=token == "["))
        elif kind == "string":
            _string(token, text, start, stack, decode=False)
        elif kind == "number":
            if match.group("fraction"):
                if not math.isfinite(float(token)):
                    _fail(text, start, stack, "the number is too large for a float")
            elif len(token) - token.startswith("-") > MAX_INT_DIGITS:
                _fail(text, start, stack, f"the integer has more than {MAX_INT_DIGITS} digits")
        elif kind == "word" and token.lstrip("-") in ("NaN", "Infinity"):
            _fail(text, start, stack, "NaN and Infinity are not JSON numbers")


def _string(token: str, text: str, start: int, stack: list[_Frame], *, decode: bool) -> str:
    """The string ``token`` (decoded when ``decode``), refusing lone surrogate escapes."""
    if "\\" not in token:
        return token[1:-1]
    low_expected_at: int | None = None  # just after a high surrogate escape: its pair must follow at once
    lone = False
    for escape in _ESCAPE.finditer(token, 1, len(token) - 1):
        code = escape.group(1)
        unit = int(code[1:], 16) if len(code) == 5 else None
        if low_expected_at is not None:
            if escape.start() != low_expected_at or unit is None or not 0xDC00 <= unit <= 0xDFFF:
                lone = True
                break
            low_expected_at = None
        elif unit is not None and 0xD800 <= unit <= 0xDBFF:
            low_expected_at = escape.end()
        elif unit is not None and 0xDC00 <= unit <= 0xDFFF:
            lone = True
            break
    if lone or low_expected_at is not None:
        _fail(text, start, stack, "the string has an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)")
    if not decode:
        return token
    try:
        decoded: str = json.loads(token)
    except ValueError:
        return token  # a malformed escape: json.loads reports it
    return decoded


def _fail(text: str, offset: int, stack: list[_Frame], reason: str) -> None:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    raise StrictJsonError(_path(stack), line, column, reason)


def _path(stack: list[_Frame]) -> str:
    parts = []
    for frame in stack:
        if frame.array:
            parts.append(f"[{frame.index}]")
        elif frame.key is not None:
            parts.append(f".{frame.key}" if _NAME.fullmatch(frame.key) else "[?]")
    if len(parts) > 12:  # a deep document: the start and the end of its path are enough
        parts = [*parts[:6], "...", *parts[-4:]]
    return "$" + "".join(parts)


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("a key appears more than once in an object")
    return document
