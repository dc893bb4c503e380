"""A record's inputs as engine inputs: the snapshot and feeds its evaluation saw.

``recorded_snapshot`` holds exactly the identities the evaluation read. Resolving against it
gives the same result as against the full snapshot: it contains every identity any tried join
key reached (principals, owners, ambiguous candidates). Masked join keys are hashed on both
sides (request and identities), so they join without the masking key. An identity recorded
without entitlement records cannot be rebuilt from rows and is left out, as it always was.
"""

from __future__ import annotations

from keycloak_policy_bridge.context_feed import ContextFeed
from keycloak_policy_bridge.entitlements import Snapshot, SnapshotBuilder
from keycloak_policy_bridge.record.inputs import entitlement_document
from keycloak_policy_bridge.record.model import DecisionRecord


def recorded_snapshot(record: DecisionRecord) -> Snapshot:
    builder = SnapshotBuilder()
    for identity in record.identities:
        for r in identity.records:
            e = entitlement_document(r)
            builder.add(
                {
                    "subject_id": identity.subject_id,
                    "subject_type": identity.subject_type,
                    "subject_status": identity.status,
                    "subject_owner_id": identity.owner_id or "",
                    "keycloak_user_id": identity.keycloak_user_id or "",
                    "keycloak_client_id": identity.keycloak_client_id or "",
                    "username": identity.username or "",
                    "email": identity.email or "",
                    "source": r.source,
                    "account": r.account,
                    "entitlement_kind": r.kind,
                    "entitlement_value": r.value,
                    "privilege_level": r.privilege_level,
                    "via": r.via,
                    "via_id": r.via_id,
                    "assignment_state": r.assignment_state,
                    "start_at": e["start_at"] or "",
                    "end_at": e["end_at"] or "",
                    "last_certified_at": e["last_certified_at"] or "",
                },
                r.file,
                r.line,
            )
    snap = record.snapshot
    # Records from before source_system was recorded replay under the strict join (no opt-out).
    return builder.finish(snap.id, snap.source_system or "recorded", snap.generated_at, snap.digest)


def recorded_feeds(record: DecisionRecord) -> dict[str, ContextFeed]:
    """The context feeds as the record's evaluation saw them (only the rows it read)."""
    return {
        name: ContextFeed(name, feed.snapshot_id, feed.generated_at, feed.digest, dict(feed.rows), sum(len(v) for v in feed.rows.values()))
        for name, feed in record.feeds.items()
    }
