"""Replay: re-run recorded decisions under a candidate policy, or reproduce them exactly.

Two questions, one mechanism (``reevaluate``):

* **Impact analysis** (``replay``): what would a candidate policy, optionally with other
  entitlements or feeds, have decided for the requests the log holds? Each recorded request is
  re-evaluated at its own ``evaluated_at`` and compared with the recorded decision: the effect,
  the claim values added and removed, the token lifetime cap and ``remove_claims``. The
  aggregates by rule and by claim have the shape of an IAM policy simulator's report.
* **Reproduction** (``reproduce``): with each record's own stored policy and recorded inputs,
  does the engine return the same response, field for field, as the caller got? Any difference
  means that a record, a stored policy or the engine has changed.

A record that cannot be replayed (a stored record the log cannot read, bad recorded data, an
unknown policy digest, a subject joined by a masked key without the masking key) counts as an
error with a message; it never stops the run. Nothing here reads the clock: every evaluation runs
at the record's ``evaluated_at``.

Masking (``reevaluate.Inputs``): against the recorded inputs no key is needed; against another
snapshot, a subject joined by a masked key (``subject.email``...) replays only with the masking
key. Masked values that CEL reads (``context.ip``) stay hashed: a policy whose conditions read a
masked path cannot be replayed exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from keycloak_policy_bridge.decision import DENY, Decision, claim_changes, value_key, value_label
from keycloak_policy_bridge.decision_log import PolicyStore, UnreadableRecord
from keycloak_policy_bridge.policy import Policy
from keycloak_policy_bridge.record import DecisionRecord, Masker
from keycloak_policy_bridge.reevaluate import RECORDED, Entitlements, Feeds, Inputs, PolicyCache, describe_error, reevaluate
from keycloak_policy_bridge.timeutil import format_rfc3339

Replayable = DecisionRecord | UnreadableRecord


@dataclass(frozen=True)
class ReplayedDecision:
    """One record whose replay changed something: what it decided then (``*_before``) and now
    (``*_after``), or, with ``error`` set, one that could not be replayed.

    ``added``/``removed`` map a claim to the values gained or lost; list claims are compared
    as sets and a changed single value is the old one removed plus the new one added.
    ``differences`` names every top-level response field that differs at all (policy and
    entitlements identities included). When ``error`` is set nothing else but the record's
    identity is meaningful.
    """

    decision_id: str
    evaluated_at: str | None
    subject_id: str | None
    client_id: str | None
    effect_before: str | None = None
    effect_after: str | None = None
    added: dict[str, list[Any]] = field(default_factory=dict)
    removed: dict[str, list[Any]] = field(default_factory=dict)
    ttl_before: int | None = None
    ttl_after: int | None = None
    remove_claims_before: tuple[str, ...] = ()
    remove_claims_after: tuple[str, ...] = ()
    rules_before: tuple[str, ...] = ()
    rules_after: tuple[str, ...] = ()
    differences: tuple[str, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "decision_id": self.decision_id,
            "evaluated_at": self.evaluated_at,
            "subject_id": self.subject_id,
            "client_id": self.client_id,
        }
        if self.error is not None:
            out["error"] = self.error
            return out
        out.update(
            {
                "effect_before": self.effect_before,
                "effect_after": self.effect_after,
                "added": self.added,
                "removed": self.removed,
                "ttl_before": self.ttl_before,
                "ttl_after": self.ttl_after,
                "remove_claims_before": list(self.remove_claims_before),
                "remove_claims_after": list(self.remove_claims_after),
                "rules_before": list(self.rules_before),
                "rules_after": list(self.rules_after),
                "differences": list(self.differences),
            }
        )
        return out


@dataclass(frozen=True)
class ReplayReport:
    """The outcome of a replay run.

    ``replayed`` = ``unchanged`` + ``changed`` + ``errors``. ``by_claim`` is
    ``{claim: {"added": {value: count}, "removed": {value: count}}}`` (values keyed by
    ``decision.value_label``). ``by_rule`` is ``{rule: {"decisions", "added", "removed",
    "effect"}}``: an added value counts for the rules that grant it now, a removed value for
    the rules that granted it before, except when the decision is now a deny, where the
    removed values count for the deny rules that fired; an effect change counts for the deny
    rules that fired on the deny side. ``mode`` is ``candidate`` (a policy under test) or
    ``recorded`` (each record's own policy: a reproduction check, where any difference in the
    response counts as changed).
    """

    mode: str
    policy: dict[str, str] | None
    entitlements: str
    feeds: str
    replayed: int
    unchanged: int
    changed: int
    errors: int
    changed_decisions: tuple[ReplayedDecision, ...]
    failed_decisions: tuple[ReplayedDecision, ...]
    by_claim: dict[str, dict[str, dict[str, int]]]
    by_rule: dict[str, dict[str, int]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "policy": self.policy,
            "entitlements": self.entitlements,
            "feeds": self.feeds,
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "changed": self.changed,
            "errors": self.errors,
            "by_rule": self.by_rule,
            "by_claim": self.by_claim,
            "changed_decisions": [d.to_dict() for d in self.changed_decisions],
            "failed_decisions": [d.to_dict() for d in self.failed_decisions],
        }


# -- entry points ------------------------------------------------------------------------------


def replay(
    records: Iterable[Replayable],
    candidate: Policy,
    *,
    entitlements: Entitlements = RECORDED,
    feeds: Feeds = RECORDED,
    masker: Masker | None = None,
) -> ReplayReport:
    """Re-evaluate each record's request under ``candidate`` at its ``evaluated_at``.

    Args:
        records: decision records (``DecisionLogReader.iterate``: unreadable ones count as
            errors), streamed once.
        candidate: the compiled policy under test.
        entitlements: ``"recorded"`` (each record's recorded identities) or a snapshot.
        feeds: ``"recorded"`` (each record's recorded feed rows) or feeds by name.
        masker: carries the key the records were masked with (its paths are not used: each
            record lists what it masked).
    """
    inputs = Inputs(entitlements, feeds, masker=masker)
    tally = _Tally(exact=False)
    for record in records:
        tally.add(record, lambda _record: candidate, inputs)
    policy = {"id": candidate.policy_id, "version": candidate.version, "digest": candidate.digest}
    return tally.report("candidate", policy, inputs.describe_entitlements(), inputs.describe_feeds())


def reproduce(records: Iterable[Replayable], policies: PolicyStore, *, masker: Masker | None = None) -> ReplayReport:
    """Re-run each record with its own stored policy and recorded inputs; any difference in the
    response counts as changed, so an intact log and engine give ``changed == 0``.

    A record whose policy digest is not in ``policies`` (or whose stored document no longer has
    that digest, or no longer compiles) is an error naming the digest (``PolicyCache``).
    ``masker`` carries the key the records were masked with, as for ``replay``.
    """
    cache = PolicyCache(policies)
    inputs = Inputs(RECORDED, RECORDED, masker=masker)
    tally = _Tally(exact=True)
    for record in records:
        tally.add(record, lambda r: cache.get(r.policy_digest), inputs)
    return tally.report("recorded", None, RECORDED, RECORDED)


# -- comparing -----------------------------------------------------------------------------------


def compare(record: DecisionRecord, after: Decision, exact: bool) -> tuple[ReplayedDecision, dict[str, list[int]]] | None:
    """The recorded decision against a replayed one, and what to count per rule
    (``rule -> [added, removed, effect]``); None when nothing changed.

    ``exact``: any difference in the response the caller got is a change (reproduction);
    otherwise only the effect, claim values, TTL cap and ``remove_claims`` are.
    """
    before = record.decision
    # Most reproduced decisions are unchanged: settle those by comparing the fields a response is
    # made of, without rendering the two responses (a /1 record's response is the one recorded).
    if exact and record.recorded_response is None and before.renders_like(after):
        return None
    responses = _responses(record, after) if exact else None
    if responses is not None and responses[0] == responses[1]:
        return None
    added, removed = claim_changes(before.claims, after.claims) if before.claims != after.claims else ({}, {})
    semantic = (
        bool(added or removed)
        or before.effect != after.effect
        or before.max_ttl_seconds != after.max_ttl_seconds
        or before.remove_claims != after.remove_claims
    )
    if not (exact or semantic):
        return None
    then, now = responses or _responses(record, after)
    replayed = ReplayedDecision(
        decision_id=record.decision_id,
        evaluated_at=format_rfc3339(record.evaluated_at),
        subject_id=record.subject_id,
        client_id=record.client_id,
        effect_before=before.effect,
        effect_after=after.effect,
        added=added,
        removed=removed,
        ttl_before=before.max_ttl_seconds,
        ttl_after=after.max_ttl_seconds,
        remove_claims_before=before.remove_claims,
        remove_claims_after=after.remove_claims,
        rules_before=record.rules,
        rules_after=after.rules(),
        differences=tuple(sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))),
    )
    return replayed, _attribute(before, after, added, removed) if semantic else {}


def _responses(record: DecisionRecord, after: Decision) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the response the caller got, the replayed decision's response for the same id)."""
    then, now = record.response(), after.response(record.decision_id)
    if "user_message" not in then and "user_message" in now:
        # An additive response field: a deny recorded before it existed reproduces without it.
        del now["user_message"]
    return then, now


def _granted_by(decision: Decision) -> dict[str, dict[str | bytes, set[str]]]:
    """claim -> value key -> rules that granted it, from the decision's provenance."""
    return {claim: {value_key(v.value): {s.rule for s in v.sources} for v in values} for claim, values in decision.provenance.items()}


def _deny_rules(decision: Decision) -> set[str]:
    """The rules that made a decision a deny (deny rules, and built-in checks that denied)."""
    return {r.rule for r in decision.reasons if r.kind == "deny" or (r.kind == "error" and r.rule.startswith("kpb:"))}


def _attribute(before: Decision, after: Decision, added: dict[str, list[Any]], removed: dict[str, list[Any]]) -> dict[str, list[int]]:
    counts: dict[str, list[int]] = {}

    def bump(rules: Iterable[str], slot: int, n: int = 1) -> None:
        for rule in rules:
            counts.setdefault(rule, [0, 0, 0])[slot] += n

    now_denied = after.effect == DENY
    if before.effect != after.effect:
        bump(_deny_rules(after if now_denied else before), 2)
    granted_now, granted_then, deny_now = _granted_by(after), _granted_by(before), _deny_rules(after)
    for claim, values in added.items():
        for value in values:
            bump(granted_now.get(claim, {}).get(value_key(value)) or {_unattributed(claim)}, 0)
    for claim, values in removed.items():
        for value in values:
            # A deny grants nothing: the values it took away are the deny rules' doing, not a
            # change in the rules that granted them.
            rules = deny_now if now_denied and deny_now else granted_then.get(claim, {}).get(value_key(value))
            bump(rules or {_unattributed(claim)}, 1)
    return counts


def _unattributed(claim: str) -> str:
    # `act` is written by the engine from the verified actor chain, not granted by a rule.
    return "kpb:delegation" if claim == "act" else "(no rule)"


# -- running -------------------------------------------------------------------------------------


class _Tally:
    """Replays records one at a time and accumulates the report."""

    def __init__(self, exact: bool) -> None:
        self.exact = exact
        self.replayed = self.unchanged = 0
        self.changed: list[ReplayedDecision] = []
        self.failed: list[ReplayedDecision] = []
        self.by_claim: dict[str, dict[str, dict[str, int]]] = {}
        self.by_rule: dict[str, dict[str, int]] = {}

    def add(self, record: Replayable, policy_for: Callable[[DecisionRecord], Policy], inputs: Inputs) -> None:
        self.replayed += 1
        if not isinstance(record, DecisionRecord):
            self.failed.append(failed_decision(record, None))
            return
        try:
            decision = reevaluate(record, policy_for(record), inputs, record.evaluated_at)
            outcome = compare(record, decision, self.exact)
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the run; it is reported
            self.failed.append(failed_decision(record, exc))
            return
        if outcome is None:
            self.unchanged += 1
            return
        replayed, counts = outcome
        self.changed.append(replayed)
        for slot, changes in (("added", replayed.added), ("removed", replayed.removed)):
            for claim, values in changes.items():
                bucket = self.by_claim.setdefault(claim, {"added": {}, "removed": {}})[slot]
                for value in values:
                    bucket[value_label(value)] = bucket.get(value_label(value), 0) + 1
        for rule, (n_added, n_removed, n_effect) in counts.items():
            entry = self.by_rule.setdefault(rule, {"decisions": 0, "added": 0, "removed": 0, "effect": 0})
            entry["decisions"] += 1
            entry["added"] += n_added
            entry["removed"] += n_removed
            entry["effect"] += n_effect

    def report(self, mode: str, policy: dict[str, str] | None, entitlements: str, feeds: str) -> ReplayReport:
        def weight(item: tuple[str, dict[str, int]]) -> tuple[int, str]:
            return (-(item[1]["added"] + item[1]["removed"] + item[1]["effect"]), item[0])

        by_claim = {
            claim: {slot: dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) for slot, counts in entry.items()}
            for claim, entry in sorted(self.by_claim.items())
        }
        return ReplayReport(
            mode=mode,
            policy=policy,
            entitlements=entitlements,
            feeds=feeds,
            replayed=self.replayed,
            unchanged=self.unchanged,
            changed=len(self.changed),
            errors=len(self.failed),
            changed_decisions=tuple(self.changed),
            failed_decisions=tuple(self.failed),
            by_claim=by_claim,
            by_rule=dict(sorted(self.by_rule.items(), key=weight)),
        )


def failed_decision(record: object, exc: BaseException | None) -> ReplayedDecision:
    """A record that could not be replayed, with a message that says why: ``exc`` described, or
    an unreadable record's own reason."""
    if isinstance(record, UnreadableRecord):
        return ReplayedDecision(record.decision_id, record.evaluated_at, record.subject_id, record.client_id, error=record.reason)
    if isinstance(record, DecisionRecord):
        return ReplayedDecision(
            record.decision_id,
            format_rfc3339(record.evaluated_at),
            record.subject_id,
            record.client_id,
            error=describe_error(exc) if exc is not None else "not replayable",
        )
    return ReplayedDecision("?", None, None, None, error=f"not a decision record ({type(record).__name__})")
