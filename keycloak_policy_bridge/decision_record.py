"""Decision records (``kpb-decision/1``): a decision with everything needed to re-run it.

A record holds the request as received (with configured paths masked), the full response with
per-claim provenance, the policy and snapshot identities, and the *recorded inputs*: every IGA
identity the evaluation read (principals, owners, ambiguous candidates) with all its records,
and the context-feed rows it handed to CEL. Replaying a record with its recorded policy and
inputs at its ``evaluated_at`` reproduces the decision exactly (``replay``), and explaining a
claim can point at the export row behind it (``explain``).

Masking: request paths such as ``context.ip`` or ``subject.email`` are stored as keyed hashes
(HMAC-SHA256 with an operator secret), so equality stays checkable and the value does not
leave the bridge; ``masked`` lists what was masked.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keycloak_policy_bridge.context_feed import ContextFeed, FeedRow
from keycloak_policy_bridge.decision import Decision
from keycloak_policy_bridge.entitlements import EntitlementRecord, Identity, Snapshot, SnapshotBuilder
from keycloak_policy_bridge.request import ClaimsRequest
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339

RECORD_SCHEMA = "kpb-decision/1"
MASK_PREFIX = "hmac-sha256:"


@dataclass(frozen=True)
class Masker:
    """Replaces configured request paths with keyed hashes.

    Args:
        paths: dotted request paths, e.g. ``("context.ip", "subject.email")``.
        key: the HMAC key (an operator secret; never stored in a record).
    """

    paths: tuple[str, ...]
    key: bytes

    def hash(self, value: Any) -> str:
        text = value if isinstance(value, str) else repr(value)
        return MASK_PREFIX + hmac.new(self.key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def apply(self, document: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """A masked deep copy of ``document`` and the paths that were present and masked.

        A configured path that the document lacks is not listed: the list says what *was*
        hidden, so a mask that matches nothing is visible as such.
        """
        out = copy.deepcopy(document)
        masked = []
        for path in self.paths:
            parts = path.split(".")
            node: Any = out
            for part in parts[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and parts[-1] in node and node[parts[-1]] is not None:
                value = node[parts[-1]]
                # Usernames and emails are compared case-insensitively, so they are hashed
                # lower-cased: equality stays checkable the way the join checks it.
                fold = parts[-1] in ("email", "username")
                node[parts[-1]] = [self.hash(v) for v in value] if isinstance(value, list) else self.hash(
                    value.lower() if fold and isinstance(value, str) else value
                )
                masked.append(path)
        return out, masked


def build_record(
    decision_id: str,
    decision: Decision,
    request: ClaimsRequest,
    snapshot: Snapshot,
    feeds: Mapping[str, ContextFeed] | None = None,
    *,
    masker: Masker | None = None,
    token_ttl_seconds: int | None = None,
) -> dict[str, Any]:
    """The canonical record body of one decision (without the chain fields)."""
    feeds = feeds or {}
    document, masked = masker.apply(request.raw) if masker else (request.raw, [])
    # Every loaded feed is recorded (its presence and age change decisions), with the rows of
    # the subjects the evaluation read.
    feed_inputs: dict[str, Any] = {
        name: {"snapshot_id": feed.snapshot_id, "digest": feed.digest, "generated_at": format_rfc3339(feed.generated_at), "rows": {}}
        for name, feed in feeds.items()
    }
    for name, subject_id in decision.feed_reads:
        if name in feeds:
            feed_inputs[name]["rows"][subject_id] = [_feed_row(r) for r in feeds[name].rows.get(subject_id, ())]
    subject = decision.principals[0] if decision.principals else None
    ttl = decision.max_ttl_seconds if decision.max_ttl_seconds is not None else token_ttl_seconds
    if decision.max_ttl_seconds is not None and token_ttl_seconds is not None:
        ttl = min(decision.max_ttl_seconds, token_ttl_seconds)
    return {
        "schema": RECORD_SCHEMA,
        "decision_id": decision_id,
        "evaluated_at": format_rfc3339(decision.evaluated_at),
        "effect": decision.effect,
        "subject_id": subject.subject_id if subject else None,
        "keycloak_user_id": request.subject.get("id") if not masked or "subject.id" not in masked else document["subject"]["id"],
        "client_id": request.client_id,
        "rules": sorted({r.rule for r in decision.reasons} | {s.rule for values in decision.provenance.values() for v in values for s in v.sources}),
        "token_ttl_seconds": ttl,
        "request": document,
        "masked": masked,
        "result": decision.response(decision_id),
        "policy": {"id": decision.policy_id, "version": decision.policy_version, "digest": decision.policy_digest},
        # source_system: the policy's identity_join opt-outs are chosen by it, so replay needs it.
        "snapshot": {"id": snapshot.snapshot_id, "digest": snapshot.digest, "generated_at": format_rfc3339(snapshot.generated_at),
                     "source_system": snapshot.source_system},  # fmt: skip
        "inputs": {"identities": [_mask_identity(identity_to_dict(i), masked, masker) for i in decision.inputs], "feeds": feed_inputs},
    }


# A masked request join key masks the same key of the recorded identities: otherwise the value
# the operator asked to keep out of the log would sit in the record's inputs anyway.
_IDENTITY_FIELD_OF_PATH = {
    "subject.id": "keycloak_user_id",
    "subject.service_account_client_id": "keycloak_client_id",
    "subject.username": "username",
    "subject.email": "email",
}


def _mask_identity(identity: dict[str, Any], masked: list[str], masker: Masker | None) -> dict[str, Any]:
    if masker is None:
        return identity
    for path in masked:
        name = _IDENTITY_FIELD_OF_PATH.get(path)
        if name and identity.get(name):
            value = identity[name]
            identity[name] = masker.hash(value.lower() if name in ("username", "email") else value)
    return identity


def identity_to_dict(identity: Identity) -> dict[str, Any]:
    return {
        "subject_id": identity.subject_id,
        "subject_type": identity.subject_type,
        "status": identity.status,
        "owner_id": identity.owner_id,
        "keycloak_user_id": identity.keycloak_user_id,
        "keycloak_client_id": identity.keycloak_client_id,
        "username": identity.username,
        "email": identity.email,
        "records": [_record(r) for r in identity.records],
    }


def _record(r: EntitlementRecord) -> dict[str, Any]:
    def ts(value: datetime | None) -> str | None:
        return format_rfc3339(value) if value is not None else None

    return {
        "source": r.source, "kind": r.kind, "value": r.value, "account": r.account, "privilege_level": r.privilege_level,
        "via": r.via, "via_id": r.via_id, "assignment_state": r.assignment_state, "start_at": ts(r.start_at),
        "end_at": ts(r.end_at), "last_certified_at": ts(r.last_certified_at), "file": r.file, "line": r.line,
    }  # fmt: skip


def _feed_row(row: FeedRow) -> dict[str, Any]:
    values = {k: (format_rfc3339(v) if isinstance(v, datetime) else v) for k, v in row.values.items()}
    return {"values": values, "typed_timestamps": sorted(k for k, v in row.values.items() if isinstance(v, datetime)),
            "file": row.file, "line": row.line}  # fmt: skip


def recorded_snapshot(record: Mapping[str, Any], masker: Masker | None = None) -> Snapshot:
    """A snapshot holding exactly the identities the record's evaluation read.

    Resolution against it gives the same result as against the full snapshot: it is a subset
    that contains every identity any tried join key matched. Masked join keys were recorded
    hashed in both the request and the identities, so they still match; ``masker`` is accepted
    for symmetry and not needed.
    """
    builder = SnapshotBuilder()
    def key(identity: Mapping[str, Any], field: str, path: str) -> str:
        # Masked join keys are recorded hashed on both sides (request and identity), so they
        # match each other without the masking key.
        return identity[field] or ""

    for identity in record["inputs"]["identities"]:
        username, email = key(identity, "username", "subject.username"), key(identity, "email", "subject.email")
        user_id, client_id = key(identity, "keycloak_user_id", "subject.id"), key(identity, "keycloak_client_id", "subject.service_account_client_id")
        for r in identity["records"] or [None]:
            if r is None:
                continue  # an identity without records cannot be rebuilt from rows; see below
            builder.add(
                {
                    "subject_id": identity["subject_id"], "subject_type": identity["subject_type"],
                    "subject_status": identity["status"], "subject_owner_id": identity["owner_id"] or "",
                    "keycloak_user_id": user_id, "keycloak_client_id": client_id,
                    "username": username or "", "email": email or "", "source": r["source"], "account": r["account"],
                    "entitlement_kind": r["kind"], "entitlement_value": r["value"], "privilege_level": r["privilege_level"],
                    "via": r["via"], "via_id": r["via_id"], "assignment_state": r["assignment_state"],
                    "start_at": r["start_at"] or "", "end_at": r["end_at"] or "", "last_certified_at": r["last_certified_at"] or "",
                },  # fmt: skip
                r["file"],
                r["line"],
            )
    snap = record["snapshot"]
    # Records from before source_system was recorded replay under the strict join (no opt-out).
    return builder.finish(snap["id"], snap.get("source_system", "recorded"), parse_rfc3339(snap["generated_at"]), snap["digest"])


def recorded_feeds(record: Mapping[str, Any]) -> dict[str, ContextFeed]:
    """The context feeds as the record's evaluation saw them (only the rows it read)."""
    feeds = {}
    for name, entry in record["inputs"]["feeds"].items():
        rows = {}
        for subject_id, items in entry["rows"].items():
            rows[subject_id] = tuple(
                FeedRow(
                    {k: parse_rfc3339(v) if k in item["typed_timestamps"] else v for k, v in item["values"].items()},
                    parse_rfc3339(item["values"]["start_at"]) if item["values"].get("start_at") else None,
                    parse_rfc3339(item["values"]["end_at"]) if item["values"].get("end_at") else None,
                    item["file"],
                    item["line"],
                )
                for item in items
            )
        feeds[name] = ContextFeed(name, entry["snapshot_id"], parse_rfc3339(entry["generated_at"]), entry["digest"], rows,
                                  sum(len(v) for v in rows.values()))  # fmt: skip
    return feeds
