"""Drift: live tokens whose claims the current policy and entitlements no longer justify.

A token outlives its decision: it stays valid until it expires, whatever happens in the IGA
meanwhile. ``drift`` takes every permitted decision whose token can still be live at ``now``
(``DecisionRecord.token_expires_at`` after ``now``: the rule the log's ``live`` index uses),
re-evaluates the recorded request against the *current* policy, snapshot and feeds at ``now``
(``reevaluate``), and reports, per subject, the claim values its live tokens carry but would no
longer get, or that it would now be denied outright. Values it would newly get are not drift: a
token that carries less than it could is not a risk.

A record whose subject was joined by a masked key (``subject.email``...) cannot be joined to
the current snapshot without the masking key; it is reported as ``unresolvable`` rather than
as drift, because "unknown principal" would be an artefact of the masking, not a fact. A stored
record the log cannot read, or bad recorded data, is an error; the rest is still checked.
Nothing here reads the clock: ``now`` is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keycloak_policy_bridge.context_feed import ContextFeed
from keycloak_policy_bridge.decision import Decision, claim_changes, claim_values, value_key, value_order
from keycloak_policy_bridge.decision_log import DecisionLogReader, UnreadableRecord
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.errors import UnresolvableRecordError
from keycloak_policy_bridge.policy import Policy
from keycloak_policy_bridge.record import DecisionRecord, Masker
from keycloak_policy_bridge.reevaluate import Inputs, describe_error, reevaluate
from keycloak_policy_bridge.timeutil import format_rfc3339


@dataclass(frozen=True)
class DriftedSubject:
    """One subject whose live tokens carry claims it would no longer get.

    ``claims`` maps a claim to the values no longer justified (all of them when
    ``denied_now``); ``reasons`` are the current deny reasons, if any.
    ``token_expires_at`` is when the last of these tokens expires.
    """

    subject_id: str | None
    keycloak_user_id: str | None
    decisions: tuple[str, ...]
    claims: dict[str, list[Any]]
    denied_now: bool
    reasons: tuple[str, ...]
    token_expires_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject_id": self.subject_id,
            "keycloak_user_id": self.keycloak_user_id,
            "decisions": list(self.decisions),
            "claims": self.claims,
            "denied_now": self.denied_now,
            "reasons": list(self.reasons),
            "token_expires_at": self.token_expires_at,
        }


@dataclass(frozen=True)
class UncheckedDecision:
    """A live decision that could not be re-evaluated: ``unresolvable`` (masked join key) or an
    error in the recorded data."""

    decision_id: str
    subject_id: str | None
    keycloak_user_id: str | None
    token_expires_at: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "subject_id": self.subject_id,
            "keycloak_user_id": self.keycloak_user_id,
            "token_expires_at": self.token_expires_at,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class DriftReport:
    """Subjects with unjustified live claims, sorted by subject; ``checked`` live decisions
    were re-evaluated (drifted or not), plus the ones that could not be."""

    now: str
    policy: dict[str, str]
    snapshot: dict[str, str]
    checked: int
    subjects: tuple[DriftedSubject, ...]
    unresolvable: tuple[UncheckedDecision, ...] = ()
    errors: tuple[UncheckedDecision, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "policy": self.policy,
            "snapshot": self.snapshot,
            "checked": self.checked,
            "subjects": [s.to_dict() for s in self.subjects],
            "unresolvable": [u.to_dict() for u in self.unresolvable],
            "errors": [e.to_dict() for e in self.errors],
        }


@dataclass
class _Group:
    subject_id: str | None
    keycloak_user_id: str | None
    expires: datetime  # of the last of the subject's drifted tokens
    decisions: list[str] = field(default_factory=list)
    claims: dict[str, dict[str | bytes, Any]] = field(default_factory=dict)
    denied_now: bool = False
    reasons: set[str] = field(default_factory=set)

    def freeze(self) -> DriftedSubject:
        return DriftedSubject(
            subject_id=self.subject_id,
            keycloak_user_id=self.keycloak_user_id,
            decisions=tuple(self.decisions),
            claims={c: [values[k] for k in sorted(values, key=value_order)] for c, values in sorted(self.claims.items())},
            denied_now=self.denied_now,
            reasons=tuple(sorted(self.reasons)),
            token_expires_at=format_rfc3339(self.expires),
        )


def drift(
    log: DecisionLogReader,
    policy: Policy,
    snapshot: Snapshot,
    feeds: Mapping[str, ContextFeed] | None,
    now: datetime,
    *,
    masker: Masker | None = None,
) -> DriftReport:
    """Re-evaluate the live decisions of ``log`` at ``now`` against the current inputs.

    Args:
        log: the decision log; ``live`` selects the decisions and its ``default_token_ttl``
            applies to records without a TTL (``DecisionRecord.token_expires_at``).
        policy: the current compiled policy.
        snapshot: the current entitlement snapshot.
        feeds: the current context feeds by name.
        now: the instant (aware) at which tokens are judged live and decisions re-made.
        masker: carries the key records were masked with; with it, masked join keys are
            matched to the snapshot's clear values.
    """
    inputs = Inputs(snapshot, dict(feeds or {}), masker=masker)
    groups: dict[str, _Group] = {}
    unresolvable: list[UncheckedDecision] = []
    errors: list[UncheckedDecision] = []
    checked = 0
    for item in log.live(now):
        if isinstance(item, UnreadableRecord):
            # Its expiry is unknown: the row is live by the log's index, the body unreadable.
            errors.append(UncheckedDecision(item.decision_id, item.subject_id, None, None, item.reason))
            continue
        record = item
        expires = record.token_expires_at(log.default_token_ttl)
        try:
            decision = reevaluate(record, policy, inputs, now)
        except UnresolvableRecordError as exc:
            unresolvable.append(_unchecked(record, expires, exc.message))
            continue
        except Exception as exc:  # noqa: BLE001 - bad recorded data is reported, the rest is still checked
            errors.append(_unchecked(record, expires, describe_error(exc)))
            continue
        checked += 1
        lost = _unjustified(record.decision.claims, decision)
        if not lost and decision.permitted:
            continue
        key = record.subject_id or record.keycloak_user_id or record.decision_id
        group = groups.setdefault(key, _Group(record.subject_id, record.keycloak_user_id, expires))
        group.decisions.append(record.decision_id)
        for claim, values in lost.items():
            bucket = group.claims.setdefault(claim, {})
            for value in values:
                bucket.setdefault(value_key(value), value)
        if not decision.permitted:
            group.denied_now = True
            group.reasons.update(f"{r.rule}: {r.message}" for r in decision.reasons if r.kind in ("deny", "error"))
        group.expires = max(group.expires, expires)
    subjects = tuple(group.freeze() for _, group in sorted(groups.items()))
    return DriftReport(
        now=format_rfc3339(now),
        policy={"id": policy.policy_id, "version": policy.version, "digest": policy.digest},
        snapshot={"id": snapshot.snapshot_id, "digest": snapshot.digest, "generated_at": format_rfc3339(snapshot.generated_at)},
        checked=checked,
        subjects=subjects,
        unresolvable=tuple(unresolvable),
        errors=tuple(errors),
    )


def _unjustified(carried: Mapping[str, Any], decision: Decision) -> dict[str, list[Any]]:
    """The claim values a token carries that ``decision`` no longer grants (all, on a deny)."""
    if decision.permitted:
        return claim_changes(carried, decision.claims)[1]
    return {claim: list(claim_values(v).values()) for claim, v in carried.items()}


def _unchecked(record: DecisionRecord, expires: datetime, reason: str) -> UncheckedDecision:
    return UncheckedDecision(
        decision_id=record.decision_id,
        subject_id=record.subject_id,
        keycloak_user_id=record.keycloak_user_id,
        token_expires_at=format_rfc3339(expires),
        reason=reason,
    )
