"""The JSON Schemas the bridge ships (``keycloak_policy_bridge/schemas/``) and how its modules use them.

``load_schema(name)`` reads one shipped schema (once per process); ``validator(name)`` compiles it
into a ``jsonschema`` Draft 2020-12 validator (once per process; validators are immutable and
safe to share between threads); ``schema_issues(name, document)`` is every problem of a document
as ``Issue`` objects located by ``json_path``, sorted by path. ``policy``, ``request``, ``profile``
and ``policy_suite`` validate their documents through here, so that none of them imports another
for its schema helpers.

The module is ``json_schema``, not ``schemas``: that name is the directory holding the files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from keycloak_policy_bridge.errors import Issue


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``keycloak_policy_bridge/schemas/<name>``, parsed once. Callers must not
    modify it (copy it first, as ``request`` does to compile it with fastjsonschema)."""
    text = resources.files("keycloak_policy_bridge").joinpath("schemas", name).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def validator(name: str, *, check_formats: bool = False) -> jsonschema.Draft202012Validator:
    """A validator for the shipped schema ``name``, compiled once; ``check_formats`` also checks
    ``format`` keywords (``date-time``...), which the schemas otherwise only annotate."""
    return jsonschema.Draft202012Validator(load_schema(name), format_checker=jsonschema.FormatChecker() if check_formats else None)


def schema_issues(name: str, document: Any, code: str = "schema") -> list[Issue]:
    """Every way ``document`` fails the shipped schema ``name``, as ``Issue(path, message, code)``
    sorted by path; empty when it is valid. The messages are jsonschema's, which may quote the
    value: use it for files an operator wrote (profiles, policy tests), not for requests."""
    issues = [Issue(json_path(e.absolute_path), e.message, code) for e in validator(name).iter_errors(document)]
    return sorted(issues, key=lambda i: i.path)


def json_path(parts: Iterable[Any]) -> str:
    """Render a sequence of keys and indexes as a JSON path like ``$.rules[2].claims.roles``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.replace("_", "a").replace("-", "a").isalnum():
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out
