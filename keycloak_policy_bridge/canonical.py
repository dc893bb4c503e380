"""Canonical JSON and content digests.

A policy or a snapshot is identified by the SHA-256 of its canonical JSON form (sorted keys, no
insignificant white space, UTF-8), so the same content always has the same digest whatever the
formatting of the file it came from.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` deterministically: sorted keys, compact separators, UTF-8.

    Raises:
        TypeError: if ``value`` holds something JSON cannot represent.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def digest(value: Any) -> str:
    """Return ``sha256:<hex>`` of the canonical JSON of ``value``."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def digest_bytes(data: bytes) -> str:
    """Return ``sha256:<hex>`` of raw bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
