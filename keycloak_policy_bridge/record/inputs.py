"""Recorded inputs: the IGA identities and context-feed rows a decision read, as stored documents.

A decision record does not repeat its inputs: it references each one by the SHA-256 of its
canonical JSON (``input_ref``), and the log stores every distinct input once. An identity read
under one snapshot is the same document in every decision that read it, and so is a feed row, so
a subject's thousand logins store its identity once per export.

The documents are the ``kpb-decision/1`` inline shapes (identity with its entitlement records,
feed row with its typed timestamps), so that both record versions are read by the same code.
Masked join keys are stored as recorded: keyed hashes (``record.masking``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.context_feed import FeedRow
from keycloak_policy_bridge.entitlements import EntitlementRecord, Identity
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339


def input_ref(document: Mapping[str, Any]) -> str:
    """An input document's reference: the lowercase hex SHA-256 of its canonical JSON."""
    return hashlib.sha256(canonical_json(document)).hexdigest()


def identity_document(identity: Identity) -> dict[str, Any]:
    """An identity and all its records, as recorded (every record, not only the effective ones:
    replay re-derives effectiveness at the record's own instant)."""
    return {
        "subject_id": identity.subject_id,
        "subject_type": identity.subject_type,
        "status": identity.status,
        "owner_id": identity.owner_id,
        "keycloak_user_id": identity.keycloak_user_id,
        "keycloak_client_id": identity.keycloak_client_id,
        "username": identity.username,
        "email": identity.email,
        "records": [entitlement_document(r) for r in identity.records],
    }


def entitlement_document(r: EntitlementRecord) -> dict[str, Any]:
    return {
        "source": r.source,
        "kind": r.kind,
        "value": r.value,
        "account": r.account,
        "privilege_level": r.privilege_level,
        "via": r.via,
        "via_id": r.via_id,
        "assignment_state": r.assignment_state,
        "start_at": _time(r.start_at),
        "end_at": _time(r.end_at),
        "last_certified_at": _time(r.last_certified_at),
        "file": r.file,
        "line": r.line,
    }


def identity_from_document(document: Mapping[str, Any]) -> Identity:
    """The ``Identity`` a recorded identity document describes (its records in recorded order).

    Raises:
        KeyError, TypeError, ValueError: the document is malformed (callers name the record).
    """
    subject_id = document["subject_id"]
    records = tuple(
        EntitlementRecord(
            subject_id,
            r["source"],
            r["kind"],
            r["value"],
            r["account"],
            r["privilege_level"],
            r["via"],
            r["via_id"],
            r["assignment_state"],
            _parse(r["start_at"]),
            _parse(r["end_at"]),
            _parse(r["last_certified_at"]),
            r["file"],
            int(r["line"]),
        )
        for r in document["records"]
    )
    timeless, windowed = Identity.split(records)
    return Identity(
        subject_id,
        document["subject_type"],
        document["status"],
        document["owner_id"] or None,
        document["keycloak_user_id"] or None,
        document["keycloak_client_id"] or None,
        document["username"] or None,
        document["email"] or None,
        records,
        timeless,
        windowed,
    )


def feed_row_document(row: FeedRow) -> dict[str, Any]:
    values = {k: (format_rfc3339(v) if isinstance(v, datetime) else v) for k, v in row.values.items()}
    typed = sorted(k for k, v in row.values.items() if isinstance(v, datetime))
    return {"values": values, "typed_timestamps": typed, "file": row.file, "line": row.line}


def feed_row_from_document(document: Mapping[str, Any]) -> FeedRow:
    typed = set(document["typed_timestamps"])
    values = {k: parse_rfc3339(v) if k in typed else v for k, v in document["values"].items()}
    start, end = document["values"].get("start_at"), document["values"].get("end_at")
    return FeedRow(
        values, parse_rfc3339(start) if start else None, parse_rfc3339(end) if end else None, document["file"], int(document["line"])
    )


def _time(value: datetime | None) -> str | None:
    return format_rfc3339(value) if value is not None else None


def _parse(value: str | None) -> datetime | None:
    return parse_rfc3339(value) if value else None
