"""Reading ``kpb-decision/1`` records (written before 2026-12; read, never written).

A ``/1`` record holds everything inline: the request, the full response as the caller got it
(provenance with whole evidence documents), the policy and snapshot identities and the recorded
inputs (identity documents, feed rows). ``from_v1`` turns one into a ``DecisionRecord`` with the
same meaning as a ``/2`` record, so every reader handles both alike; the response is kept as
recorded (``DecisionRecord.recorded_response``) because older code shaped it slightly
differently (no ``principals``, no ``user_message``...), and a reproduction must compare with
what was really answered. Logs need no migration step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keycloak_policy_bridge.decision import ClaimValue, Decision, ValueSource
from keycloak_policy_bridge.entitlements import EntitlementRecord
from keycloak_policy_bridge.record.codec import RecordFormatError, principal_from_document, reason_from_document
from keycloak_policy_bridge.record.inputs import feed_row_from_document, identity_from_document
from keycloak_policy_bridge.record.model import RECORD_SCHEMA_V1, DecisionRecord, FeedInput, SnapshotRef
from keycloak_policy_bridge.timeutil import parse_rfc3339


def from_v1(document: Mapping[str, Any]) -> DecisionRecord:
    """The record a ``/1`` document describes.

    Raises:
        RecordFormatError: a field is missing or malformed.
    """
    try:
        identities = tuple(identity_from_document(i) for i in document["inputs"]["identities"])
        by_origin = {(r.subject_id, r.file, r.line): r for identity in identities for r in identity.records}
        feeds: dict[str, FeedInput] = {}
        reads: list[tuple[str, str]] = []
        for name, entry in document["inputs"]["feeds"].items():
            rows = {subject_id: tuple(feed_row_from_document(item) for item in items) for subject_id, items in entry["rows"].items()}
            reads.extend((name, subject_id) for subject_id in entry["rows"])
            feeds[name] = FeedInput(name, entry["snapshot_id"], entry["digest"], parse_rfc3339(entry["generated_at"]), rows)
        result, snap, policy = document["result"], document["snapshot"], document["policy"]
        entitlements = result.get("entitlements") or {}
        decision = Decision(
            effect=result.get("effect", document["effect"]),
            claims=result.get("claims") or {},
            remove_claims=tuple(result.get("remove_claims", ())),
            max_ttl_seconds=result.get("max_ttl_seconds"),
            reasons=tuple(reason_from_document(r) for r in result.get("reasons", ())),
            provenance={
                claim: tuple(ClaimValue(v["value"], tuple(_source(s, by_origin) for s in v["sources"])) for v in values)
                for claim, values in (result.get("provenance") or {}).items()
            },
            policy_id=policy["id"],
            policy_version=policy["version"],
            policy_digest=policy["digest"],
            snapshot_digest=snap["digest"],
            snapshot_generated_at=parse_rfc3339(snap["generated_at"]),
            snapshot_age_seconds=int(entitlements.get("age_seconds", 0)),
            snapshot_stale=bool(entitlements.get("stale", False)),
            evaluated_at=parse_rfc3339(document["evaluated_at"]),
            principals=tuple(principal_from_document(p) for p in result.get("principals", ())),
            feeds=dict(result.get("context_feeds") or {}),
            inputs=identities,
            feed_reads=tuple(sorted(reads)),
            user_message=result.get("user_message"),
        )
        return DecisionRecord(
            decision_id=document["decision_id"],
            request=document["request"],
            masked=tuple(document.get("masked") or ()),
            decision=decision,
            snapshot=SnapshotRef(snap["id"], snap["digest"], parse_rfc3339(snap["generated_at"]), snap.get("source_system")),
            feeds=feeds,
            token_ttl_seconds=document.get("token_ttl_seconds"),
            schema=RECORD_SCHEMA_V1,
            recorded_response=result,
        )
    except KeyError as exc:
        raise RecordFormatError(f"the record lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise RecordFormatError(f"the record is malformed ({type(exc).__name__})") from None


def _source(document: Mapping[str, Any], by_origin: Mapping[tuple[str, str, int], EntitlementRecord]) -> ValueSource:
    return ValueSource(document["rule"], document["pass"], tuple(_evidence(e, by_origin) for e in document.get("records", ())))


def _evidence(evidence: Mapping[str, Any], by_origin: Mapping[tuple[str, str, int], EntitlementRecord]) -> EntitlementRecord:
    """The recorded entitlement record an evidence document points at (by subject, file and line);
    rebuilt from the evidence itself when the inputs lack it (its ``evidence()`` is the same)."""
    origin = evidence.get("origin") or {}
    key = (evidence["subject_id"], origin.get("file", ""), int(origin.get("line", 0)))
    found = by_origin.get(key)
    if found is not None:
        return found
    certified = evidence.get("last_certified_at")
    return EntitlementRecord(
        key[0],
        evidence["source"],
        evidence["entitlement_kind"],
        evidence["entitlement_value"],
        evidence.get("account", ""),
        evidence.get("privilege_level", "none"),
        evidence.get("via", ""),
        evidence.get("via_id", ""),
        last_certified_at=parse_rfc3339(certified) if certified else None,
        file=key[1],
        line=key[2],
    )
