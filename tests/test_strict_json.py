"""strict_json: the one parser of untrusted JSON (claims requests, admin bodies, policy and request files)."""

from __future__ import annotations

import json

import pytest

from conftest import ACME
from keycloak_policy_bridge.strict_json import MAX_DEPTH, MAX_INT_DIGITS, StrictJsonError, loads

ALICE = (ACME / "requests" / "alice-login.json").read_bytes()


def refused(text: str | bytes) -> StrictJsonError:
    with pytest.raises(StrictJsonError) as caught:
        loads(text)
    return caught.value


def test_ordinary_documents_parse_as_json_loads_does() -> None:
    for data in (ALICE, (ACME / "policy.json").read_bytes(), b'{"a": [1, -2.5, 3e10, true, false, null, "\\ud83d\\ude00 \\\\ud800"]}'):
        assert loads(data) == json.loads(data)
    assert loads(b"\xef\xbb\xbf[1]") == [1]  # a UTF-8 byte order mark
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    assert loads("9" * MAX_INT_DIGITS) == int("9" * MAX_INT_DIGITS)
    assert loads('{"a": "NaN Infinity 1e999 \\u00e9"}') == {"a": "NaN Infinity 1e999 é"}
    assert loads("1e308") == 1e308


@pytest.mark.parametrize(
    ("text", "path", "line", "column", "words"),
    [
        ("[" * 10_000 + "]" * 10_000, "$[0][0][0][0][0][0]...[0][0][0][0]", 1, MAX_DEPTH + 1, "nested more than 64 deep"),
        ('{"a":' * 65 + "1" + "}" * 65, "$.a.a.a.a.a.a....a.a.a.a", 1, 5 * 64 + 1, "nested more than 64 deep"),
        ('{"context": {"risk": ' + "9" * 5000 + "}}", "$.context.risk", 1, 22, "more than 100 digits"),
        ('{"context": {"risk": -' + "9" * 101 + "}}", "$.context.risk", 1, 22, "more than 100 digits"),
        ('{"context": {"risk": NaN}}', "$.context.risk", 1, 22, "NaN and Infinity"),
        ('{"context":\n {"risk": Infinity}}', "$.context.risk", 2, 11, "NaN and Infinity"),
        ('{"context": {"risk": -Infinity}}', "$.context.risk", 1, 22, "NaN and Infinity"),
        ('{"context": {"risk": 1e999}}', "$.context.risk", 1, 22, "too large for a float"),
        ('{"context": {"risk": -' + "9" * 400 + ".5}}", "$.context.risk", 1, 22, "too large for a float"),
        ('{"subject": {"id": "a\\ud800"}}', "$.subject.id", 1, 20, "unpaired UTF-16 surrogate"),
        ('["ok", "\\udc00\\ud800"]', "$[1]", 1, 8, "unpaired UTF-16 surrogate"),
        ('["\\ud800x"]', "$[0]", 1, 2, "unpaired UTF-16 surrogate"),
        ('{"\\ud800": 1}', "$", 1, 2, "unpaired UTF-16 surrogate"),
        ('{"a": {"b": 1, "b": 2}}', "$.a.b", 1, 16, "appears more than once"),
        ('{"a": 1, "\\u0061": 2}', "$.a", 1, 10, "appears more than once"),
        ('{"x y": {"k": 1, "k": 2}}', "$[?].k", 1, 18, "appears more than once"),
        ('{"a": 1,,}', "$", 1, 9, "Expecting property name"),
    ],
)
def test_hostile_documents_are_refused_with_where_and_never_the_value(text: str, path: str, line: int, column: int, words: str) -> None:
    error = refused(text)
    assert (error.path, error.line, error.column) == (path, line, column)
    assert words in error.reason and words in str(error)
    assert "99999" not in str(error) and "\\ud800" not in str(error).replace("(\\ud800-\\udfff)", "")


def test_bytes_that_are_not_utf8_are_refused_where_they_are() -> None:
    error = refused(b'{"a":\n "\xff"}')
    assert (error.path, error.line, error.column, error.reason) == ("$", 2, 3, "the text is not UTF-8")


def test_a_custom_depth() -> None:
    assert loads("[[1]]", max_depth=2) == [[1]]
    assert refused_depth("[[[1]]]", 2).path == "$[0][0]"  # the array that is one level too deep


def refused_depth(text: str, depth: int) -> StrictJsonError:
    with pytest.raises(StrictJsonError) as caught:
        loads(text, max_depth=depth)
    return caught.value
