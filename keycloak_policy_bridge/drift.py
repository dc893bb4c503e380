"""Drift: live tokens whose claims the current policy and entitlements no longer justify.

A token outlives its decision: it stays valid until it expires, whatever happens in the IGA
meanwhile. ``drift`` takes every permitted decision whose token can still be live at ``now``
(``evaluated_at`` + its TTL > ``now``), re-evaluates the recorded request against the *current*
policy, snapshot and feeds at ``now``, and reports, per subject, the claim values its live
tokens carry but would no longer get, or that it would now be denied outright. Values it would
newly get are not drift: a token that carries less than it could is not a risk.

A record whose subject was joined by a masked key (``subject.email``...) cannot be joined to
the current snapshot without the masking key; it is reported as ``unresolvable`` rather than
as drift, because "unknown principal" would be an artefact of the masking, not a fact.
Nothing here reads the clock: ``now`` is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keycloak_policy_bridge.context_feed import ContextFeed
from keycloak_policy_bridge.decision import Decision
from keycloak_policy_bridge.decision_log import SQLiteDecisionLog
from keycloak_policy_bridge.decision_record import Masker
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.policy import Policy
from keycloak_policy_bridge.errors import UnresolvableRecordError
from keycloak_policy_bridge.replay import Rebuilder, claim_changes, describe_error, value_key
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339


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
            "subject_id": self.subject_id, "keycloak_user_id": self.keycloak_user_id, "decisions": list(self.decisions),
            "claims": self.claims, "denied_now": self.denied_now, "reasons": list(self.reasons),
            "token_expires_at": self.token_expires_at,
        }  # fmt: skip


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
        return {"decision_id": self.decision_id, "subject_id": self.subject_id, "keycloak_user_id": self.keycloak_user_id,
                "token_expires_at": self.token_expires_at, "reason": self.reason}  # fmt: skip


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
            "now": self.now, "policy": self.policy, "snapshot": self.snapshot, "checked": self.checked,
            "subjects": [s.to_dict() for s in self.subjects],
            "unresolvable": [u.to_dict() for u in self.unresolvable], "errors": [e.to_dict() for e in self.errors],
        }  # fmt: skip


@dataclass
class _Group:
    subject_id: str | None
    keycloak_user_id: str | None
    expires: datetime  # of the last of the subject's drifted tokens
    decisions: list[str] = field(default_factory=list)
    claims: dict[str, dict[str, Any]] = field(default_factory=dict)
    denied_now: bool = False
    reasons: set[str] = field(default_factory=set)

    def freeze(self) -> DriftedSubject:
        return DriftedSubject(
            subject_id=self.subject_id, keycloak_user_id=self.keycloak_user_id, decisions=tuple(self.decisions),
            claims={c: [values[k] for k in sorted(values)] for c, values in sorted(self.claims.items())},
            denied_now=self.denied_now, reasons=tuple(sorted(self.reasons)), token_expires_at=format_rfc3339(self.expires),
        )  # fmt: skip


def drift(
    log: SQLiteDecisionLog,
    policy: Policy,
    snapshot: Snapshot,
    feeds: Mapping[str, ContextFeed] | None,
    now: datetime,
    *,
    masker: Masker | None = None,
) -> DriftReport:
    """Re-evaluate the live decisions of ``log`` at ``now`` against the current inputs.

    Args:
        log: the decision log (its ``default_token_ttl`` applies to records without a TTL).
        policy: the current compiled policy.
        snapshot: the current entitlement snapshot.
        feeds: the current context feeds by name.
        now: the instant (aware) at which tokens are judged live and decisions re-made.
        masker: carries the key records were masked with; with it, masked join keys are
            matched to the snapshot's clear values.
    """
    inputs = Rebuilder(snapshot, dict(feeds or {}), masker)
    groups: dict[str, _Group] = {}
    unresolvable: list[UncheckedDecision] = []
    errors: list[UncheckedDecision] = []
    checked = 0
    for record in log.live(now):
        try:
            expires = _expiry(record, log.default_token_ttl)
        except Exception as exc:  # noqa: BLE001 - bad recorded data is reported, the rest is still checked
            errors.append(_unchecked(record, None, describe_error(exc)))
            continue
        try:
            request, current, current_feeds = inputs.inputs(record)
            decision = evaluate(policy, current, request, now, current_feeds)
            inputs.check_join(record, decision)
            lost = _unjustified(record["result"].get("claims") or {}, decision)
        except UnresolvableRecordError as exc:
            unresolvable.append(_unchecked(record, expires, exc.message))
            continue
        except Exception as exc:  # noqa: BLE001 - bad recorded data is reported, the rest is still checked
            errors.append(_unchecked(record, expires, describe_error(exc)))
            continue
        checked += 1
        if not lost and decision.permitted:
            continue
        key = record.get("subject_id") or record.get("keycloak_user_id") or record["decision_id"]
        group = groups.setdefault(key, _Group(record.get("subject_id"), record.get("keycloak_user_id"), expires))
        group.decisions.append(record["decision_id"])
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
        checked=checked, subjects=subjects, unresolvable=tuple(unresolvable), errors=tuple(errors),
    )  # fmt: skip


def _unjustified(carried: Mapping[str, Any], decision: Decision) -> dict[str, list[Any]]:
    """The claim values a token carries that ``decision`` no longer grants (all, on a deny)."""
    if decision.permitted:
        return claim_changes(carried, decision.claims)[1]
    return {claim: list(v) if isinstance(v, list) else [v] for claim, v in carried.items()}


def _expiry(record: Mapping[str, Any], default_ttl: timedelta) -> datetime:
    """When the record's token expires: the same rule the log's live index uses."""
    ttl = record.get("token_ttl_seconds")
    return parse_rfc3339(record["evaluated_at"]) + (timedelta(seconds=ttl) if isinstance(ttl, int) else default_ttl)


def _unchecked(record: Mapping[str, Any], expires: datetime | None, reason: str) -> UncheckedDecision:
    return UncheckedDecision(
        decision_id=str(record.get("decision_id") or "?"), subject_id=record.get("subject_id"),
        keycloak_user_id=record.get("keycloak_user_id"),
        token_expires_at=format_rfc3339(expires) if expires is not None else None, reason=reason,
    )  # fmt: skip
