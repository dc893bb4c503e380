"""Recording a decision: ``build_record`` turns an evaluation into a ``DecisionRecord``.

On the request path: it copies nothing the engine already froze, masks what the operator asked
for (``record.masking``), and records every loaded context feed (its presence and age change
decisions) with the rows of the subjects the evaluation read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from keycloak_policy_bridge.context_feed import ContextFeed, FeedRow
from keycloak_policy_bridge.decision import Decision
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.record.masking import Masker
from keycloak_policy_bridge.record.model import DecisionRecord, FeedInput, SnapshotRef
from keycloak_policy_bridge.request import ClaimsRequest


def build_record(
    decision_id: str,
    decision: Decision,
    request: ClaimsRequest,
    snapshot: Snapshot,
    feeds: Mapping[str, ContextFeed] | None = None,
    *,
    masker: Masker | None = None,
    token_ttl_seconds: int | None = None,
) -> DecisionRecord:
    """The record of one decision.

    ``token_ttl_seconds`` is the realm's access-token lifetime; the recorded lifetime is the
    shorter of it and the decision's ``max_ttl_seconds`` (either alone when the other is unset).
    """
    feeds = feeds or {}
    document, masked = masker.apply(request.raw) if masker else (request.raw, ())
    reads: dict[str, dict[str, tuple[FeedRow, ...]]] = {name: {} for name in feeds}
    for name, subject_id in decision.feed_reads:
        if name in feeds:
            reads[name][subject_id] = tuple(feeds[name].rows.get(subject_id, ()))
    if masker is not None:
        # Every configured join-key path, carried by this request or not: an owner or candidate
        # read for a client-credentials grant must not sit in the log with the e-mail in clear.
        decision = _with_masked_inputs(decision, masker, masker.paths)
    ttls = [t for t in (decision.max_ttl_seconds, token_ttl_seconds) if t is not None]
    return DecisionRecord(
        decision_id=decision_id,
        request=document,
        masked=masked,
        decision=decision,
        snapshot=SnapshotRef(snapshot.snapshot_id, snapshot.digest, snapshot.generated_at, snapshot.source_system),
        feeds={
            name: FeedInput(name, feed.snapshot_id, feed.digest, feed.generated_at, reads[name]) for name, feed in sorted(feeds.items())
        },
        token_ttl_seconds=min(ttls) if ttls else None,
    )


def _with_masked_inputs(decision: Decision, masker: Masker, masked: tuple[str, ...]) -> Decision:
    # A masked request join key masks the same key of the recorded identities: otherwise the
    # value the operator asked to keep out of the log would sit in the record's inputs anyway.
    return replace(decision, inputs=tuple(masker.mask_identity(i, masked) for i in decision.inputs))
