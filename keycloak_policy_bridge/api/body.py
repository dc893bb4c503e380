"""The one way the HTTP API reads a request body: bounded, however it is framed.

``read_body(limit)`` returns the whole body of the current request, or raises:

* ``BodyTooLargeError`` (413 ``body_too_large``) when the body is larger than ``limit`` bytes:
  at once when ``Content-Length`` says so, otherwise (``Transfer-Encoding: chunked``) as soon
  as the bytes read pass the limit. Nothing past ``limit + 1`` bytes is read, and a body over
  the limit is never cut to the limit and used;
* ``HttpProtocolError`` (400 ``bad_request``) when the body ends before its ``Content-Length``,
  or cannot be read (malformed chunk framing, a broken connection);
* ``RequestTimeoutError`` (408 ``request_timeout``) as the server raised it: the body did not
  arrive within the read deadline (``workers``).

``parse_json_body(body)`` parses it with ``strict_json`` (depth, number and surrogate limits,
no repeated keys) and raises ``InvalidJsonError`` (400 ``invalid_json``) naming where, never what.

``read_body`` reads the WSGI input directly, not through Werkzeug's request stream, whose limit only
applies to a declared ``Content-Length``: a chunked body used to be cut silently at
``MAX_CONTENT_LENGTH`` and decided. Callers read the body before checking any credential that
covers it, so these answers come first.
"""

from __future__ import annotations

from typing import Any

from flask import request

from keycloak_policy_bridge import strict_json
from keycloak_policy_bridge.errors import BodyTooLargeError, BridgeError, HttpProtocolError, InvalidJsonError

_CHUNK = 64 * 1024


def read_body(limit: int) -> bytes:
    """The current request's body, at most ``limit`` bytes; see the module docstring."""
    environ = request.environ
    declared = environ.get("CONTENT_LENGTH") or None
    length: int | None = None
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise HttpProtocolError("the Content-Length header is not a number")
        length = int(declared)
        if length > limit:
            raise BodyTooLargeError(f"the request body exceeds {limit} bytes")
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower() or bool(environ.get("wsgi.input_terminated"))
    if length is None and not chunked:
        return b""
    stream = environ["wsgi.input"]
    want = length if length is not None else limit + 1
    parts: list[bytes] = []
    size = 0
    try:
        while size < want:
            part = stream.read(min(_CHUNK, want - size))
            if not part:
                break
            parts.append(part)
            size += len(part)
    except BridgeError:
        raise
    except Exception:  # noqa: BLE001 - the server's parse or socket errors, by whatever class it uses
        raise HttpProtocolError("the request body could not be read (malformed framing or a broken connection)") from None
    if size > limit:
        raise BodyTooLargeError(f"the request body exceeds {limit} bytes")
    if length is not None and size < length:
        raise HttpProtocolError("the request body ended before its Content-Length")
    return b"".join(parts)


def parse_json_body(body: bytes) -> Any:
    """``body`` parsed as strict JSON (``strict_json.loads``).

    Raises:
        InvalidJsonError: the first problem, by JSON path, line and column, never the value.
    """
    try:
        return strict_json.loads(body)
    except strict_json.StrictJsonError as exc:
        raise InvalidJsonError(f"the request body is not acceptable JSON: {exc}") from None
