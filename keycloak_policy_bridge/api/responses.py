"""The one way the HTTP API answers with JSON: documents, and errors.

``json_response(document, status)`` is ``document`` as UTF-8 JSON (non-ASCII characters kept as
they are). ``error_response(error, **extra)`` is the error body every route and error handler of
the API answers, ``{"error": "<code>", "message": "<what and where>", **extra}``, with:

* a ``BridgeError``: its class's stable ``code`` and ``http_status`` (``errors.py``); its
  ``issues``, if any, are appended to the message (the first 20), or with ``list_issues=True``
  listed in full as ``"issues": [{"path", "message", "code"}]`` and the message left alone;
* a Werkzeug ``HTTPException`` (routing: no such route, no such method): its status, and its
  name in snake case as the code (``not_found``, ``method_not_allowed``).

No other code of ``api/`` builds an error body, so the shape is the same everywhere and every code
is one ``docs/service.md`` section 6 lists. Nothing untrusted is added here: messages are the
errors' own, which name paths, never values.

Encoding: orjson (UTF-8, compact), about ten times faster than the standard library's encoder on a
decision (bench/RESULTS.md, issue 13); a document orjson refuses (an integer beyond 64 bits, a
non-string key) is encoded by the standard library instead, so the answer never depends on it.

``return_minimal(prefer)`` reads RFC 7240's ``Prefer`` request header: ``return=minimal`` asks
for the minimal representation (``/v1/claims``: the fields a token needs, ``Decision.response``).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from flask import Response
from werkzeug.exceptions import HTTPException

from keycloak_policy_bridge.errors import BridgeError

MAX_ISSUES_IN_MESSAGE = 20
_ENCODER = json.JSONEncoder(ensure_ascii=False)  # shared: json.dumps would build one per response


def json_response(document: Any, status: int = 200) -> Response:
    """``document`` as an ``application/json`` response with ``status``."""
    try:
        body = orjson.dumps(document)
    except TypeError:  # orjson.JSONEncodeError: a value orjson does not take; the standard encoder may
        body = _ENCODER.encode(document).encode("utf-8")
    return Response(body, status=status, mimetype="application/json")


def return_minimal(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header value (RFC 7240) holds the preference ``return=minimal``."""
    if not prefer:
        return False
    for preference in prefer.split(","):
        token, _, value = preference.split(";", 1)[0].partition("=")
        if token.strip().lower() == "return" and value.strip().strip('"').lower() == "minimal":
            return True
    return False


def error_response(error: BridgeError | HTTPException, /, *, list_issues: bool = False, **extra: Any) -> Response:
    """The error body for ``error`` (see the module docstring), with ``extra`` fields added.

    Args:
        error: the error to answer.
        list_issues: list a ``BridgeError``'s issues in full under ``"issues"`` (a rejected
            policy: every problem by JSON path) instead of summarizing them in the message.
        extra: more top-level fields (the replay report of a gated activation...).
    """
    if isinstance(error, HTTPException):
        status = error.code or 500
        code = (error.name or "http_error").lower().replace(" ", "_")
        return json_response({"error": code, "message": error.description or code, **extra}, status)
    message = error.message
    if list_issues:
        extra = {"issues": [{"path": i.path, "message": i.message, "code": i.code} for i in error.issues], **extra}
    elif error.issues:
        message += ": " + "; ".join(f"{i.path}: {i.message}" for i in error.issues[:MAX_ISSUES_IN_MESSAGE])
    return json_response({"error": error.code, "message": message, **extra}, error.http_status)
