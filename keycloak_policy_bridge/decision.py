"""The result of one evaluation: effect, claims, and why.

A ``Decision`` is a value: the engine builds it, the decision log records it, replay compares
two of them. ``response`` renders the wire shape of contract-v1 section 1 plus additive fields
(``provenance``, ``principals``, ``evaluated_at``) that explain and audit rely on, and, on deny,
``user_message``: the only text meant for the end user (the mapper's ``error_description``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.entitlements import EntitlementRecord, Identity
from keycloak_policy_bridge.timeutil import format_rfc3339

PERMIT = "permit"
DENY = "deny"

# What the end user reads when a token is refused (the mapper puts it in the OAuth
# error_description, followed by the decision id). Reasons name rules, conditions and export
# rows: they are for the decision log and admins, never for the person being refused.
DEFAULT_USER_MESSAGE = "Access was denied by your organisation's access policy."
# Built-in denials: neutral texts, one per check, saying what the user can do, never why in
# policy terms. An unknown ``kpb:`` name gets the default.
BUILTIN_USER_MESSAGES: dict[str, str] = {
    "kpb:identity": "Your account could not be matched to your organisation's records. Contact the service desk.",
    "kpb:freshness": "Access cannot be granted right now because access information is out of date. Try again later.",
    "kpb:delegation": "This application may not act on your behalf for this request.",
    "kpb:claims": "Access could not be granted because of a problem with the access policy. Contact the service desk.",
}


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
    # The end user's text of a deny: the first denial's (a deny rule's user_message, else the
    # default; a built-in check's neutral text). None on permit.
    user_message: str | None = None

    @property
    def permitted(self) -> bool:
        return self.effect == PERMIT

    def rules(self) -> tuple[str, ...]:
        """Every rule the decision names, in its reasons or its provenance, sorted (the decision
        log's ``rules`` column and query, replay's attribution, the metrics)."""
        rules = {r.rule for r in self.reasons}
        rules.update(s.rule for values in self.provenance.values() for v in values for s in v.sources)
        return tuple(sorted(rules))

    def response(self, decision_id: str, *, minimal: bool = False) -> dict[str, Any]:
        """The contract-v1 response document for this decision.

        ``minimal`` (the caller sent ``Prefer: return=minimal``, as the mapper does): only the
        fields a token needs, ``decision_id``, ``effect``, ``claims``, ``remove_claims``,
        ``max_ttl_seconds``, ``user_message`` and ``reasons``; the rest (policy, entitlements,
        principals, provenance) is in the decision record, under the same ``decision_id``.
        """
        out: dict[str, Any] = {
            "decision_id": decision_id,
            "effect": self.effect,
            "claims": self.claims,
            "remove_claims": list(self.remove_claims),
        }
        if self.max_ttl_seconds is not None:
            out["max_ttl_seconds"] = self.max_ttl_seconds
        if not self.permitted:
            # Additive optional field (contract v1): only on deny; an older mapper ignores it.
            out["user_message"] = self.user_message or DEFAULT_USER_MESSAGE
        out["reasons"] = [r.to_dict() for r in self.reasons]
        if minimal:
            return out
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
        out["provenance"] = {claim: [v.to_dict() for v in values] for claim, values in sorted(self.provenance.items())}
        return out

    def renders_like(self, other: Decision) -> bool:
        """True only if ``response`` renders the two decisions alike: every field it reads is
        equal (kept beside ``response``, which it must follow). False says nothing; replay then
        compares the two responses whole. Cheaper than rendering both."""
        return (
            self.effect == other.effect
            and self.claims == other.claims
            and self.remove_claims == other.remove_claims
            and self.max_ttl_seconds == other.max_ttl_seconds
            and self.user_message == other.user_message
            and self.reasons == other.reasons
            and self.policy_id == other.policy_id
            and self.policy_version == other.policy_version
            and self.policy_digest == other.policy_digest
            and self.snapshot_digest == other.snapshot_digest
            and self.snapshot_generated_at == other.snapshot_generated_at
            and self.snapshot_age_seconds == other.snapshot_age_seconds
            and self.snapshot_stale == other.snapshot_stale
            and self.evaluated_at == other.evaluated_at
            and self.principals == other.principals
            and self.feeds == other.feeds
            and self.provenance == other.provenance
        )


# -- claim values ---------------------------------------------------------------------------------
# A claim's values are compared as a set, each value identified by ``value_key``: the engine's
# merging, replay's diff, drift's "no longer justified" and explain's "still granted" agree on it.


def value_key(value: Any) -> str | bytes:
    """A claim value's identity: the string itself (the common case, and cheap), else its canonical
    JSON as bytes, so that the string ``"1"`` and the number ``1`` stay two values."""
    return value if type(value) is str else canonical_json(value)


def value_order(key: str | bytes) -> tuple[int, str | bytes]:
    """Sort key of ``value_key`` keys: strings first, then the other values by canonical JSON."""
    return (1, key) if isinstance(key, bytes) else (0, key)


def value_label(value: Any) -> str:
    """A claim value as report text: the string itself, else its canonical JSON."""
    return value if type(value) is str else canonical_json(value).decode("utf-8")


def claim_values(claim_value: Any) -> dict[str | bytes, Any]:
    """A claim's values by ``value_key`` (a scalar claim is a one-value set)."""
    items = claim_value if isinstance(claim_value, list) else [claim_value]
    return {value_key(v): v for v in items}


def claim_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """(added, removed) claim values from ``before`` to ``after`` (claims documents); a changed
    single value is the old one removed and the new one added."""
    added: dict[str, list[Any]] = {}
    removed: dict[str, list[Any]] = {}
    for claim in sorted(set(before) | set(after)):
        old = claim_values(before[claim]) if claim in before else {}
        new = claim_values(after[claim]) if claim in after else {}
        gained = [new[k] for k in sorted(new.keys() - old.keys(), key=value_order)]
        lost = [old[k] for k in sorted(old.keys() - new.keys(), key=value_order)]
        if gained:
            added[claim] = gained
        if lost:
            removed[claim] = lost
    return added, removed
