"""Structured logs: one JSON object per line, keyed by decision id (issue 5).

``JsonFormatter`` writes ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``pid``
(several gunicorn workers share one stream), ``message``, ``decision_id`` when the call passes
``extra={"decision_id": ...}``, and ``exception`` when the record carries one.

Nothing else from ``extra`` is written: the formatter works from an allowlist, so a careless
``extra={"body": ...}`` or ``extra={"headers": ...}`` never reaches the log. Request bodies,
tokens, secrets and claim values must not be put into messages either; as a backstop, anything
in the message or traceback that looks like a JWT or a bearer credential is replaced by
``[redacted]``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

_HANDLER_NAME = "kpb-json"
# A compact JWS/JWE (the header always starts with base64url '{"' -> "eyJ") and an HTTP bearer
# credential. Both are cheap to spot and catastrophic to leak.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]*")
# A credential is a run of RFC 6750 token68 characters that looks like one: 20 or more of them, or
# a digit, or punctuation inside the run. Plain prose ("the bearer token was refused.") is kept.
_BEARER = re.compile(
    r"(?i)\b(bearer)\s+(?=[A-Za-z0-9._~+/=-]{20}|[A-Za-z]*[0-9]|[A-Za-z0-9]*[._~+/=-][A-Za-z0-9._~+/=-])[A-Za-z0-9._~+/=-]+"
)


def redact(text: str) -> str:
    """``text`` with JWTs and bearer credentials replaced by ``[redacted]``."""
    if "eyJ" in text:
        text = _JWT.sub("[redacted]", text)
    if "bearer" in text.lower():
        text = _BEARER.sub(r"\1 [redacted]", text)
    return text


# ensure_ascii keeps the line one line whatever the message holds (json escapes \n too); one
# shared encoder, since json.dumps would build one per log line.
_LINE = json.JSONEncoder(ensure_ascii=True, default=str)


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": redact(record.getMessage()),
        }
        decision_id = getattr(record, "decision_id", None)
        if decision_id is not None:
            out["decision_id"] = str(decision_id)
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = redact(record.exc_text)
        return _LINE.encode(out)


def configure(level: int | str = logging.INFO, *, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record (the root logger) to ``stream`` (stderr) as JSON lines at ``level``.

    Idempotent: a handler installed by an earlier call is replaced, not duplicated. Handlers
    installed by others (gunicorn's own, pytest's) are left alone.

    Returns:
        The installed handler.

    Raises:
        ValueError: ``level`` is not a level name or number.
    """
    resolved = logging.getLevelNamesMapping().get(level.upper()) if isinstance(level, str) else level
    if resolved is None:
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(resolved)
    return handler
