"""Explain a recorded decision: why each claim value was granted, and whether it still would be.

``explain`` reads a decision record (``record.DecisionRecord``) and the policy it was evaluated
with, and answers the auditor's question "why did this token carry this claim?" down to the
export row: for every claim value, the rule that granted it (id, description, condition, JSON
path), the evaluation pass, and the entitlement records behind it (source, kind, value,
privilege, via, file and line, last certification). A deny is explained by its reasons, each with
the rule's condition.

Given current inputs (policy, snapshot, feeds) and an instant, the recorded request is
re-evaluated (``reevaluate``, as replay and drift do) and each value is marked still granted or
not, with the reasons when not. Masked *join keys* are undone the one way replay undoes them
(``record.masking.JoinKeyClearer``): with the masking key, each keyed hash becomes the current
snapshot's clear value that hashes to it. Without the key, a subject joined by a masked key
cannot be joined as it was: the recorded decision is still explained, and the current part is
reported as unresolvable with the reason (``Explanation.unresolvable``) rather than guessed.
Other masked paths are re-evaluated as their hashes, which ``masked`` discloses.

Pure: nothing here reads the clock, the environment or files; ``now`` is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keycloak_policy_bridge.context_feed import ContextFeed
from keycloak_policy_bridge.decision import ClaimValue, Decision, ValueSource, claim_values, value_key
from keycloak_policy_bridge.entitlements import EntitlementRecord, Snapshot
from keycloak_policy_bridge.errors import DecisionLogError, UnresolvableRecordError
from keycloak_policy_bridge.join_keys import BY_PATH
from keycloak_policy_bridge.policy import ClaimGrant, Policy, Rule
from keycloak_policy_bridge.record import DecisionRecord, Masker
from keycloak_policy_bridge.reevaluate import Inputs, reevaluate
from keycloak_policy_bridge.timeutil import format_rfc3339

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
        return {
            "id": self.id,
            "known": self.known,
            "builtin": self.builtin,
            "effect": self.effect,
            "description": self.description,
            "condition": self.condition,
            "path": self.path,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class RecordEvidence:
    """One entitlement export row behind a value (the recorded provenance)."""

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
        return {
            "subject_id": self.subject_id,
            "source": self.source,
            "kind": self.kind,
            "value": self.value,
            "privilege_level": self.privilege_level,
            "via": self.via,
            "via_id": self.via_id,
            "account": self.account,
            "origin": {"file": self.file, "line": self.line},
            "last_certified_at": self.last_certified_at,
        }


@dataclass(frozen=True)
class GrantSource:
    """One rule that granted a value in one pass, how its claim is defined, and its records."""

    rule: RuleInfo
    evaluation_pass: str
    grant_path: str | None  # e.g. "$.rules[7].claims.roles"
    grant_form: str | None  # "from_entitlements $.selectors.app-roles", "expr: <CEL>", "literal value"
    records: tuple[RecordEvidence, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.to_dict(),
            "pass": self.evaluation_pass,
            "grant_path": self.grant_path,
            "grant_form": self.grant_form,
            "records": [r.to_dict() for r in self.records],
        }


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
        return {
            "claim": self.claim,
            "value": self.value,
            "sources": [s.to_dict() for s in self.sources],
            "note": self.note,
            "still_granted": self.still_granted,
            "now_reasons": list(self.now_reasons),
        }


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
        return {
            "effect": self.effect,
            "evaluated_at": self.evaluated_at,
            "policy": self.policy,
            "snapshot_digest": self.snapshot_digest,
            "claims": self.claims,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Explanation:
    """Why a recorded decision came out as it did (see the module docstring).

    ``unresolvable`` says why the current part is unknown (current inputs were given, but the
    subject was joined by a masked key that cannot be matched); ``current`` is None then and
    every ``still_granted`` stays None. It is in ``to_dict`` only when set, so an explanation
    that has none reads as it always did.
    """

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
    unresolvable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
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
        if self.unresolvable is not None:
            out["unresolvable"] = self.unresolvable
        return out


CurrentInputs = tuple[Policy, Snapshot, Mapping[str, ContextFeed]]


def explain(
    record: DecisionRecord,
    recorded_policy: Policy,
    *,
    current: CurrentInputs | None,
    now: datetime,
    masker: Masker | None = None,
) -> Explanation:
    """Explain the decision in ``record``.

    Args:
        record: the record (``DecisionLogReader.get``), of either record version.
        recorded_policy: the compiled policy the decision was evaluated with (its digest must be
            the record's policy digest); rules are looked up in it by id.
        current: (policy, snapshot, feeds) to judge whether each value would still be granted;
            None to skip that part (``still_granted`` stays None).
        now: the instant of the re-evaluation (aware); unused when ``current`` is None.
        masker: carries the key the record was masked with (its paths are not used), to join a
            subject joined by a masked key against the current snapshot.

    Raises:
        DecisionLogError: ``recorded_policy`` is not the policy the record names, or the
            recorded request cannot be re-read.
        ValueError: ``now`` is naive.
    """
    d = record.decision
    if recorded_policy.digest != d.policy_digest:
        raise DecisionLogError(
            f"decision {record.decision_id}: the policy given is {recorded_policy.digest[:19]}, "
            f"but the decision was evaluated with {d.policy_digest[:19]}"
        )
    rules = {r.id: r for r in recorded_policy.rules}
    outcome: Decision | None = None
    unresolvable: str | None = None
    if current is not None:
        try:
            outcome = _reevaluate(record, current, now, masker)
        except UnresolvableRecordError as exc:
            unresolvable = exc.message
    notes = []
    if outcome is not None and set(record.masked) - set(BY_PATH):
        notes.append("masked request paths other than join keys were re-evaluated as their keyed hashes")
    return Explanation(
        decision_id=record.decision_id,
        effect=d.effect,
        evaluated_at=format_rfc3339(d.evaluated_at),
        policy_id=d.policy_id,
        policy_version=d.policy_version,
        policy_digest=d.policy_digest,
        snapshot_digest=record.snapshot.digest,
        masked=record.masked,
        # In the order of the keys as stored (canonical JSON: sorted), as explain has always shown them.
        principals=tuple(dict(sorted(p.to_dict().items())) for p in d.principals),
        claims=dict(d.claims),
        remove_claims=d.remove_claims,
        max_ttl_seconds=d.max_ttl_seconds,
        values=_values(d, rules, outcome),
        reasons=tuple(ReasonExplanation(_rule_info(r.rule, rules), r.kind, r.message, r.claim, r.evaluation_pass) for r in d.reasons),
        current=_current(outcome),
        notes=tuple(notes),
        unresolvable=unresolvable,
    )


def _values(decision: Decision, rules: Mapping[str, Rule], outcome: Decision | None) -> tuple[ValueExplanation, ...]:
    out: list[ValueExplanation] = []
    for claim, claim_value in decision.claims.items():
        entries: tuple[ClaimValue, ...] | None = decision.provenance.get(claim)
        if entries is None:
            # Only the engine issues a claim without provenance (the act claim from the actor chain).
            note = _BUILTINS["kpb:act"] if claim == "act" else "no provenance recorded for this claim"
            out.append(_judge(ValueExplanation(claim, claim_value, (), note), outcome))
            continue
        for entry in entries:
            sources = tuple(_source(claim, s, rules) for s in entry.sources)
            out.append(_judge(ValueExplanation(claim, entry.value, sources), outcome))
    return tuple(out)


def _source(claim: str, source: ValueSource, rules: Mapping[str, Rule]) -> GrantSource:
    rule = rules.get(source.rule)
    grant = next((g for g in rule.claims if g.claim == claim), None) if rule is not None else None
    records = tuple(_evidence(r) for r in source.records)
    return GrantSource(_rule_info(source.rule, rules), source.evaluation_pass, grant.path if grant else None, _grant_form(grant), records)


def _evidence(r: EntitlementRecord) -> RecordEvidence:
    certified = format_rfc3339(r.last_certified_at) if r.last_certified_at is not None else None
    return RecordEvidence(r.subject_id, r.source, r.kind, r.value, r.privilege_level, r.via, r.via_id, r.account, r.file, r.line, certified)


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
        return RuleInfo(
            rule.id, True, False, rule.effect, rule.description, rule.condition.source if rule.condition else None, rule.path, rule.reason
        )
    if rule_id.startswith("kpb:"):
        return RuleInfo(rule_id, True, True, None, _BUILTINS.get(rule_id, "built-in engine check"))
    return RuleInfo(rule_id, False)


# -- re-evaluation ------------------------------------------------------------------------------


def _reevaluate(record: DecisionRecord, current: CurrentInputs, now: datetime, masker: Masker | None) -> Decision:
    policy, snapshot, feeds = current
    try:
        return reevaluate(record, policy, Inputs(snapshot, feeds, masker=masker), now)
    except (KeyError, TypeError, AttributeError):
        raise DecisionLogError(f"decision {record.decision_id}: the recorded request cannot be re-read") from None


def _judge(value: ValueExplanation, outcome: Decision | None) -> ValueExplanation:
    if outcome is None:
        return value
    if not outcome.permitted:
        denies = tuple(r.to_dict() for r in outcome.reasons if r.kind in ("deny", "error"))
        why = denies or tuple(r.to_dict() for r in outcome.reasons)
        return ValueExplanation(value.claim, value.value, value.sources, value.note, False, why)
    # Value identity as replay and drift compare values (``decision.value_key``).
    if value.claim in outcome.claims and value_key(value.value) in claim_values(outcome.claims[value.claim]):
        return ValueExplanation(value.claim, value.value, value.sources, value.note, True)
    about = [r for r in outcome.reasons if r.claim == value.claim]
    named = [r for r in about if isinstance(value.value, str) and repr(value.value) in r.message]
    why = tuple(r.to_dict() for r in (named or about))
    if not why:
        why = ({"rule": "", "kind": "omit", "message": "no rule grants this value under the current policy and entitlements"},)
    return ValueExplanation(value.claim, value.value, value.sources, value.note, False, why)


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
