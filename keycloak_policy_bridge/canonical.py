"""Canonical JSON and content digests.

A policy or a snapshot is identified by the SHA-256 of its canonical JSON form (sorted keys, no
insignificant white space, UTF-8), so the same content always has the same digest whatever the
formatting of the file it came from.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# One encoder for every call: json.dumps with options builds a new one each time, which measured
# twice as slow on a 4.9 KB decision record (88 vs 44 us). The output is the same; an encoder's
# settings are read-only, so sharing it between threads is safe. Without the circular-reference
# check a self-referencing value would recurse until RecursionError instead of ValueError;
# canonical JSON only ever sees trees parsed from JSON or built by this package.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False)


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` deterministically: sorted keys, compact separators, UTF-8.

    Raises:
        TypeError: if ``value`` holds something JSON cannot represent.
        ValueError: if it holds NaN or an infinity.
    """
    return _CANONICAL.encode(value).encode("utf-8")


def digest(value: Any) -> str:
    """Return ``sha256:<hex>`` of the canonical JSON of ``value``."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def digest_bytes(data: bytes) -> str:
    """Return ``sha256:<hex>`` of raw bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
