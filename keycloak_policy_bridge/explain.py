"""Explain a recorded decision: why each claim value was granted, and whether it still would be.

``explain`` reads a decision record (``decision_record``) and the policy it was evaluated with,
and answers the auditor's question "why did this token carry this claim?" down to the export
row: for every claim value, the rule that granted it (id, description, condition, JSON path),
the evaluation pass, and the entitlement records behind it (source, kind, value, privilege,
via, file and line, last certification). A deny is explained by its reasons, each with the
rule's condition.

Given current inputs (policy, snapshot, feeds) and an instant, the recorded request is
re-evaluated and each value is marked still granted or not, with the reasons when not. The
record's request is re-read with ``validate=False`` (it was validated when received; masking
may have lengthened fields). Masked *join keys* (``subject.id``, ``subject.username``,
``subject.email``, ``subject.service_account_client_id``) are replaced by the keys of the
identity the recorded evaluation joined, because a keyed hash matches nothing in a current
snapshot; other masked paths are re-evaluated as their hashes, which ``masked`` discloses.

Pure: nothing here reads the clock, the environment or files; ``now`` is an argument.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.context_feed import ContextFeed
from keycloak_policy_bridge.decision import Decision
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.errors import DecisionLogError
from keycloak_policy_bridge.policy import ClaimGrant, Policy, Rule
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.timeutil import format_rfc3339

# Masked request path -> the recorded identity field that holds the same join key.
_JOIN_KEYS = {
    "subject.id": "keycloak_user_id",
    "subject.service_account_client_id": "keycloak_client_id",
    "subject.username": "username",
    "subject.email": "email",
}
# Descriptions of the engine's built-in checks (rule names starting with ``kpb:``).
_BUILTINS = {
    "kpb:identity": "built-in: joining a Keycloak principal to exactly one IGA identity",
    "kpb:identity-mismatch": "built-in: an IGA identity pinned to another Keycloak id, reached by username or e-mail",
    "kpb:freshness": "built-in: snapshot and context-feed age limits (policy 'freshness')",
    "kpb:delegation": "built-in: delegation checks and the actor bound (policy 'delegation')",
    "kpb:claims": "built-in: merging claim values from several rules",
    "kpb:act": "built-in: the act claim, written from the verified actor chain",
}


@dataclass(frozen=True)
class RuleInfo:
    """A rule as the recorded policy defines it; ``known`` is false for an id the policy lacks."""

    id: str
    known: bool
    builtin: bool = False
    effect: str | None = None
    description: str = ""
    condition: str | None = None  # CEL source; None: the rule applies whenever its scope matches
    path: str | None = None  # JSON path in the policy document, e.g. "$.rules[7]"
    reason: str | None = None  # a deny rule's reason

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "known": self.known, "builtin": self.builtin, "effect": self.effect,
                "description": self.description, "condition": self.condition, "path": self.path, "reason": self.reason}  # fmt: skip


@dataclass(frozen=True)
class RecordEvidence:
    """One entitlement export row behind a value (``decision_record`` provenance)."""

    subject_id: str
    source: str
    kind: str
    value: str
    privilege_level: str
    via: str
    via_id: str
    account: str
    file: str
    line: int
    last_certified_at: str | None

    @property
    def origin(self) -> str:
        return f"{self.file}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        return {"subject_id": self.subject_id, "source": self.source, "kind": self.kind, "value": self.value,
                "privilege_level": self.privilege_level, "via": self.via, "via_id": self.via_id, "account": self.account,
                "origin": {"file": self.file, "line": self.line}, "last_certified_at": self.last_certified_at}  # fmt: skip


@dataclass(frozen=True)
class GrantSource:
    """One rule that granted a value in one pass, how its claim is defined, and its records."""

    rule: RuleInfo
    evaluation_pass: str
    grant_path: str | None  # e.g. "$.rules[7].claims.roles"
    grant_form: str | None  # "from_entitlements $.selectors.app-roles", "expr: <CEL>", "literal value"
    records: tuple[RecordEvidence, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.to_dict(), "pass": self.evaluation_pass, "grant_path": self.grant_path,
                "grant_form": self.grant_form, "records": [r.to_dict() for r in self.records]}  # fmt: skip


@dataclass(frozen=True)
class ValueExplanation:
    """One value of one claim: its sources, and whether the current inputs still grant it.

    ``still_granted`` is None when no current inputs were given. When it is False, ``now_reasons``
    holds why: the current decision's deny reasons, or the reasons that left this value out.
    """

    claim: str
    value: Any
    sources: tuple[GrantSource, ...]
    note: str | None = None  # for values no rule granted (the engine's act claim)
    still_granted: bool | None = None
    now_reasons: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "value": self.value, "sources": [s.to_dict() for s in self.sources], "note": self.note,
                "still_granted": self.still_granted, "now_reasons": list(self.now_reasons)}  # fmt: skip


@dataclass(frozen=True)
class ReasonExplanation:
    """A recorded reason (deny, omit, error, exception) with the rule it names."""

    rule: RuleInfo
    kind: str
    message: str
    claim: str | None
    evaluation_pass: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.to_dict(), "kind": self.kind, "message": self.message, "claim": self.claim, "pass": self.evaluation_pass}


@dataclass(frozen=True)
class CurrentOutcome:
    """The recorded request re-evaluated against the current policy, snapshot and feeds."""

    effect: str
    evaluated_at: str
    policy: dict[str, str]
    snapshot_digest: str
    claims: dict[str, Any]
    reasons: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"effect": self.effect, "evaluated_at": self.evaluated_at, "policy": self.policy,
                "snapshot_digest": self.snapshot_digest, "claims": self.claims, "reasons": list(self.reasons)}  # fmt: skip


@dataclass(frozen=True)
class Explanation:
    """Why a recorded decision came out as it did (see the module docstring)."""

    decision_id: str
    effect: str
    evaluated_at: str
    policy_id: str
    policy_version: str
    policy_digest: str
    snapshot_digest: str
    masked: tuple[str, ...]
    principals: tuple[dict[str, Any], ...]
    claims: dict[str, Any]
    remove_claims: tuple[str, ...]
    max_ttl_seconds: int | None
    values: tuple[ValueExplanation, ...]
    reasons: tuple[ReasonExplanation, ...]
    current: CurrentOutcome | None = None
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "effect": self.effect,
            "evaluated_at": self.evaluated_at,
            "policy": {"id": self.policy_id, "version": self.policy_version, "digest": self.policy_digest},
            "snapshot_digest": self.snapshot_digest,
            "masked": list(self.masked),
            "principals": list(self.principals),
            "claims": self.claims,
            "remove_claims": list(self.remove_claims),
            "max_ttl_seconds": self.max_ttl_seconds,
            "values": [v.to_dict() for v in self.values],
            "reasons": [r.to_dict() for r in self.reasons],
            "current": self.current.to_dict() if self.current is not None else None,
            "notes": list(self.notes),
        }


CurrentInputs = tuple[Policy, Snapshot, Mapping[str, ContextFeed]]


def explain(record: Mapping[str, Any], recorded_policy: Policy, *, current: CurrentInputs | None, now: datetime) -> Explanation:
    """Explain the decision in ``record`` (a ``kpb-decision/1`` record body).

    Args:
        record: the record, as ``SQLiteDecisionLog.get`` returns it.
        recorded_policy: the compiled policy the decision was evaluated with (its digest must be
            the record's ``policy.digest``); rules are looked up in it by id.
        current: (policy, snapshot, feeds) to judge whether each value would still be granted;
            None to skip that part (``still_granted`` stays None).
        now: the instant of the re-evaluation (aware); unused when ``current`` is None.

    Raises:
        DecisionLogError: the record is malformed, or ``recorded_policy`` is not the policy the
            record names.
        ValueError: ``now`` is naive.
    """
    try:
        result = record["result"]
        policy_ref = record["policy"]
        decision_id = record["decision_id"]
    except (KeyError, TypeError):
        raise DecisionLogError("the decision record is malformed (no result, policy or decision_id)") from None
    if recorded_policy.digest != policy_ref.get("digest"):
        raise DecisionLogError(f"decision {decision_id}: the policy given is {recorded_policy.digest[:19]}, "
                               f"but the decision was evaluated with {str(policy_ref.get('digest'))[:19]}")  # fmt: skip
    rules = {r.id: r for r in recorded_policy.rules}
    outcome = _reevaluate(record, current, now) if current is not None else None
    notes = []
    if outcome is not None and set(record.get("masked", ())) - set(_JOIN_KEYS):
        notes.append("masked request paths other than join keys were re-evaluated as their keyed hashes")
    values = _values(result, rules, outcome)
    reasons = tuple(
        ReasonExplanation(_rule_info(r.get("rule", ""), rules), r.get("kind", ""), r.get("message", ""), r.get("claim"), r.get("pass"))
        for r in result.get("reasons", ())
    )
    return Explanation(
        decision_id=decision_id,
        effect=result.get("effect", record.get("effect", "")),
        evaluated_at=record.get("evaluated_at", result.get("evaluated_at", "")),
        policy_id=policy_ref.get("id", ""),
        policy_version=policy_ref.get("version", ""),
        policy_digest=policy_ref.get("digest", ""),
        snapshot_digest=record.get("snapshot", {}).get("digest", ""),
        masked=tuple(record.get("masked", ())),
        principals=tuple(result.get("principals", ())),
        claims=dict(result.get("claims", {})),
        remove_claims=tuple(result.get("remove_claims", ())),
        max_ttl_seconds=result.get("max_ttl_seconds"),
        values=values,
        reasons=reasons,
        current=_current(outcome),
        notes=tuple(notes),
    )


def _values(result: Mapping[str, Any], rules: Mapping[str, Rule], outcome: Decision | None) -> tuple[ValueExplanation, ...]:
    provenance = result.get("provenance", {})
    out: list[ValueExplanation] = []
    for claim, claim_value in result.get("claims", {}).items():
        entries = provenance.get(claim)
        if entries is None:
            # Only the engine issues a claim without provenance (the act claim from the actor chain).
            note = _BUILTINS["kpb:act"] if claim == "act" else "no provenance recorded for this claim"
            out.append(_judge(ValueExplanation(claim, claim_value, (), note), outcome))
            continue
        for entry in entries:
            sources = tuple(_source(claim, s, rules) for s in entry.get("sources", ()))
            out.append(_judge(ValueExplanation(claim, entry.get("value"), sources), outcome))
    return tuple(out)


def _source(claim: str, source: Mapping[str, Any], rules: Mapping[str, Rule]) -> GrantSource:
    rule_id = source.get("rule", "")
    rule = rules.get(rule_id)
    grant = next((g for g in rule.claims if g.claim == claim), None) if rule is not None else None
    records = tuple(_evidence(r) for r in source.get("records", ()))
    return GrantSource(_rule_info(rule_id, rules), source.get("pass", ""), grant.path if grant else None, _grant_form(grant), records)


def _evidence(r: Mapping[str, Any]) -> RecordEvidence:
    origin = r.get("origin", {})
    return RecordEvidence(r.get("subject_id", ""), r.get("source", ""), r.get("entitlement_kind", ""), r.get("entitlement_value", ""),
                          r.get("privilege_level", ""), r.get("via", ""), r.get("via_id", ""), r.get("account", ""),
                          origin.get("file", ""), int(origin.get("line", 0)), r.get("last_certified_at"))  # fmt: skip


def _grant_form(grant: ClaimGrant | None) -> str | None:
    if grant is None:
        return None
    if grant.is_literal:
        return "literal value"
    if grant.expr is not None:
        return f"expr: {grant.expr.source}"
    if grant.selector is not None:
        return f"from_entitlements {grant.selector.path}"
    return None


def _rule_info(rule_id: str, rules: Mapping[str, Rule]) -> RuleInfo:
    rule = rules.get(rule_id)
    if rule is not None:
        return RuleInfo(rule.id, True, False, rule.effect, rule.description, rule.condition.source if rule.condition else None,
                        rule.path, rule.reason)  # fmt: skip
    if rule_id.startswith("kpb:"):
        return RuleInfo(rule_id, True, True, None, _BUILTINS.get(rule_id, "built-in engine check"))
    return RuleInfo(rule_id, False)


# -- re-evaluation ------------------------------------------------------------------------------


def _reevaluate(record: Mapping[str, Any], current: CurrentInputs, now: datetime) -> Decision:
    policy, snapshot, feeds = current
    try:
        document = _unmask_join_keys(record, snapshot)
        request = parse_request(document, validate=False)
    except (KeyError, TypeError, AttributeError):
        raise DecisionLogError(f"decision {record.get('decision_id')}: the recorded request cannot be re-read") from None
    return evaluate(policy, snapshot, request, now, feeds)


def _unmask_join_keys(record: Mapping[str, Any], snapshot: Snapshot | None = None) -> dict[str, Any]:
    """The recorded request with masked subject join keys replaced by the joined identity's keys.

    A keyed hash matches nothing in a current snapshot; the identity the recorded evaluation
    joined (its ``subject_id``) is the one the request named, so its keys in the current
    snapshot stand in (the record itself holds only their hashes). When the subject did not
    join, or is gone from the current snapshot, a masked key is dropped: it matches nothing.
    """
    document: dict[str, Any] = copy.deepcopy(dict(record["request"]))
    masked = [p for p in record.get("masked", ()) if p in _JOIN_KEYS]
    if not masked:
        return document
    principals = record["result"].get("principals", ())
    subject_id = next((p.get("subject_id") for p in principals if p.get("role") == "subject"), None)
    current = snapshot.identity(subject_id) if snapshot is not None and subject_id is not None else None
    subject = document.setdefault("subject", {})
    for path in masked:
        name = path.split(".", 1)[1]
        value = getattr(current, _JOIN_KEYS[path], None) if current is not None else None
        if value:
            subject[name] = value
        else:
            subject.pop(name, None)
    return document


def _judge(value: ValueExplanation, outcome: Decision | None) -> ValueExplanation:
    if outcome is None:
        return value
    if not outcome.permitted:
        denies = tuple(r.to_dict() for r in outcome.reasons if r.kind in ("deny", "error"))
        why = denies or tuple(r.to_dict() for r in outcome.reasons)
        return ValueExplanation(value.claim, value.value, value.sources, value.note, False, why)
    granted = _contains(outcome.claims.get(value.claim, _MISSING), value.value)
    if granted:
        return ValueExplanation(value.claim, value.value, value.sources, value.note, True)
    about = [r for r in outcome.reasons if r.claim == value.claim]
    named = [r for r in about if isinstance(value.value, str) and repr(value.value) in r.message]
    why = tuple(r.to_dict() for r in (named or about))
    if not why:
        why = ({"rule": "", "kind": "omit", "message": "no rule grants this value under the current policy and entitlements"},)
    return ValueExplanation(value.claim, value.value, value.sources, value.note, False, why)


_MISSING = object()


def _contains(current: Any, value: Any) -> bool:
    """True when a current claim (list or scalar) holds ``value``; compared as canonical JSON."""
    if current is _MISSING:
        return False
    key = canonical_json(value)
    if isinstance(current, list):
        return any(canonical_json(v) == key for v in current)
    return canonical_json(current) == key


def _current(outcome: Decision | None) -> CurrentOutcome | None:
    if outcome is None:
        return None
    return CurrentOutcome(
        effect=outcome.effect,
        evaluated_at=format_rfc3339(outcome.evaluated_at),
        policy={"id": outcome.policy_id, "version": outcome.policy_version, "digest": outcome.policy_digest},
        snapshot_digest=outcome.snapshot_digest,
        claims=outcome.claims,
        reasons=tuple(r.to_dict() for r in outcome.reasons),
    )
