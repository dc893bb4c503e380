"""The result of one evaluation: effect, claims, and why.

A ``Decision`` is a value: the engine builds it, the decision log records it, replay compares
two of them. ``response`` renders the wire shape of contract-v1 section 1 plus additive fields
(``provenance``, ``principals``, ``evaluated_at``) that explain and audit rely on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keycloak_policy_bridge.entitlements import EntitlementRecord, Identity
from keycloak_policy_bridge.timeutil import format_rfc3339

PERMIT = "permit"
DENY = "deny"


@dataclass(frozen=True)
class Reason:
    """One line of explanation.

    ``kind`` is ``deny`` (a rule denied), ``omit`` (a value was left out: freshness,
    certification, delegation bound, ambiguity), ``error`` (a rule failed at run time; the engine
    failed closed), or ``exception`` (a time-bound exception applied or has expired).
    Built-in checks use rule names starting with ``kpb:``.
    """

    rule: str
    message: str
    kind: str
    claim: str | None = None
    evaluation_pass: str | None = None  # "subject" or "actor" for rule reasons

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message, "kind": self.kind}
        if self.claim is not None:
            out["claim"] = self.claim
        if self.evaluation_pass is not None:
            out["pass"] = self.evaluation_pass
        return out


@dataclass(frozen=True)
class ValueSource:
    """Which rule granted a value, in which pass, from which entitlement records."""

    rule: str
    evaluation_pass: str
    records: tuple[EntitlementRecord, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "pass": self.evaluation_pass,
            "records": [r.evidence() for r in self.records],
        }


@dataclass(frozen=True)
class ClaimValue:
    """One value of a governed claim with every source that granted it."""

    value: Any
    sources: tuple[ValueSource, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "sources": [s.to_dict() for s in self.sources]}


@dataclass(frozen=True)
class PrincipalInfo:
    """How a Keycloak principal was joined to the IGA snapshot."""

    role: str  # "subject" or "actor[0]"...
    subject_id: str | None
    kind: str
    status: str
    matched_by: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "subject_id": self.subject_id,
            "kind": self.kind,
            "status": self.status,
            "matched_by": self.matched_by,
        }


@dataclass(frozen=True)
class Decision:
    """The outcome of ``engine.evaluate``. Claims are empty when the effect is deny."""

    effect: str
    claims: dict[str, Any]
    remove_claims: tuple[str, ...]
    max_ttl_seconds: int | None
    reasons: tuple[Reason, ...]
    provenance: dict[str, tuple[ClaimValue, ...]]
    policy_id: str
    policy_version: str
    policy_digest: str
    snapshot_digest: str
    snapshot_generated_at: datetime
    snapshot_age_seconds: int
    snapshot_stale: bool
    evaluated_at: datetime
    principals: tuple[PrincipalInfo, ...] = field(default=())
    feeds: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> digest, generated_at, age, stale
    # What the evaluation read, for the decision record (not part of the wire response):
    inputs: tuple[Identity, ...] = ()  # every IGA identity read (principals, owners, ambiguous candidates)
    feed_reads: tuple[tuple[str, str], ...] = ()  # (feed name, subject_id) pairs handed to CEL

    @property
    def permitted(self) -> bool:
        return self.effect == PERMIT

    def response(self, decision_id: str) -> dict[str, Any]:
        """The contract-v1 response document for this decision."""
        out: dict[str, Any] = {
            "decision_id": decision_id,
            "effect": self.effect,
            "claims": self.claims,
            "remove_claims": list(self.remove_claims),
        }
        if self.max_ttl_seconds is not None:
            out["max_ttl_seconds"] = self.max_ttl_seconds
        out["reasons"] = [r.to_dict() for r in self.reasons]
        out["policy"] = {"id": self.policy_id, "version": self.policy_version, "digest": self.policy_digest}
        out["entitlements"] = {
            "snapshot": self.snapshot_digest,
            "generated_at": format_rfc3339(self.snapshot_generated_at),
            "age_seconds": self.snapshot_age_seconds,
            "stale": self.snapshot_stale,
        }
        out["evaluated_at"] = format_rfc3339(self.evaluated_at)
        out["principals"] = [p.to_dict() for p in self.principals]
        if self.feeds:
            out["context_feeds"] = self.feeds
        out["provenance"] = {
            claim: [v.to_dict() for v in values] for claim, values in sorted(self.provenance.items())
        }
        return out
