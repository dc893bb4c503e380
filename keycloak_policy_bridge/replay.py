"""Replay: re-run recorded decisions under a candidate policy, or reproduce them exactly.

Two questions, one mechanism:

* **Impact analysis** (``replay``): what would a candidate policy, optionally with other
  entitlements or feeds, have decided for the requests the log holds? Each recorded request is
  re-evaluated at its own ``evaluated_at`` and compared with the recorded result: the effect,
  the claim values added and removed, the token lifetime cap and ``remove_claims``. The
  aggregates by rule and by claim have the shape of an IAM policy simulator's report.
* **Reproduction** (``reproduce``): with each record's own stored policy and recorded inputs,
  does the engine return the same response, field for field? Any difference means that a
  record, a stored policy or the engine has changed.

A record that cannot be replayed (bad recorded data, an unknown policy digest, a subject joined
by a masked key without the masking key) counts as an error with a message; it never stops the
run. Nothing here reads the clock: every evaluation runs at the record's ``evaluated_at``.

Masking: a record whose subject was joined by a masked key (``subject.email``...) replays only
with the masking key. Against the recorded inputs, ``recorded_snapshot`` hashes the identities'
keys the same way; against another snapshot, the masked key is matched to the snapshot's clear
value through a keyed-hash index, so the join behaves as it would have with the clear value.
Masked values that CEL reads (``context.ip``) stay hashed: a policy whose conditions read a
masked path cannot be replayed exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.context_feed import ContextFeed
from keycloak_policy_bridge.decision import Decision
from keycloak_policy_bridge.decision_log import SQLiteDecisionLog
from keycloak_policy_bridge.decision_record import (
    Masker,
    recorded_feeds,
    recorded_snapshot,
)
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.errors import BridgeError, DecisionNotFoundError, PolicyError, UnresolvableRecordError
from keycloak_policy_bridge.policy import Policy, compile_policy
from keycloak_policy_bridge.request import ClaimsRequest, parse_request
from keycloak_policy_bridge.timeutil import parse_rfc3339

RECORDED: Literal["recorded"] = "recorded"
# The subject's join keys: snapshot field -> the request path that carries it.
JOIN_PATHS: dict[str, str] = {
    "keycloak_user_id": "subject.id",
    "keycloak_client_id": "subject.service_account_client_id",
    "username": "subject.username",
    "email": "subject.email",
}
_FIELD_OF_PATH = {path: name for name, path in JOIN_PATHS.items()}
_FOLDED = ("username", "email")  # compared (and masked) lower-cased
_CACHE_LIMIT = 4096


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
            "decision_id": self.decision_id, "evaluated_at": self.evaluated_at,
            "subject_id": self.subject_id, "client_id": self.client_id,
        }  # fmt: skip
        if self.error is not None:
            out["error"] = self.error
            return out
        out.update({
            "effect_before": self.effect_before, "effect_after": self.effect_after,
            "added": self.added, "removed": self.removed, "ttl_before": self.ttl_before, "ttl_after": self.ttl_after,
            "remove_claims_before": list(self.remove_claims_before), "remove_claims_after": list(self.remove_claims_after),
            "rules_before": list(self.rules_before), "rules_after": list(self.rules_after),
            "differences": list(self.differences),
        })  # fmt: skip
        return out


@dataclass(frozen=True)
class ReplayReport:
    """The outcome of a replay run.

    ``replayed`` = ``unchanged`` + ``changed`` + ``errors``. ``by_claim`` is
    ``{claim: {"added": {value: count}, "removed": {value: count}}}`` (non-string values are
    keyed by their canonical JSON). ``by_rule`` is ``{rule: {"decisions", "added", "removed",
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
            "mode": self.mode, "policy": self.policy, "entitlements": self.entitlements, "feeds": self.feeds,
            "replayed": self.replayed, "unchanged": self.unchanged, "changed": self.changed, "errors": self.errors,
            "by_rule": self.by_rule, "by_claim": self.by_claim,
            "changed_decisions": [d.to_dict() for d in self.changed_decisions],
            "failed_decisions": [d.to_dict() for d in self.failed_decisions],
        }  # fmt: skip


# -- entry points ------------------------------------------------------------------------------


def replay(
    records: Iterable[Mapping[str, Any]],
    candidate: Policy,
    *,
    entitlements: Literal["recorded"] | Snapshot = RECORDED,
    feeds: Literal["recorded"] | Mapping[str, ContextFeed] = RECORDED,
    masker: Masker | None = None,
) -> ReplayReport:
    """Re-evaluate each record's request under ``candidate`` at its ``evaluated_at``.

    Args:
        records: decision records (``SQLiteDecisionLog.iterate``), streamed once.
        candidate: the compiled policy under test.
        entitlements: ``"recorded"`` (each record's recorded identities) or a snapshot.
        feeds: ``"recorded"`` (each record's recorded feed rows) or feeds by name.
        masker: carries the key the records were masked with (its paths are not used: each
            record lists what it masked).
    """
    inputs = Rebuilder(entitlements, feeds, masker)
    tally = _Tally(exact=False)
    for record in records:
        tally.add(record, lambda _record: candidate, inputs)
    policy = {"id": candidate.policy_id, "version": candidate.version, "digest": candidate.digest}
    return tally.report("candidate", policy, inputs.describe_entitlements(), inputs.describe_feeds())


def reproduce(records: Iterable[Mapping[str, Any]], log: SQLiteDecisionLog, *, masker: Masker | None = None) -> ReplayReport:
    """Re-run each record with its own stored policy and recorded inputs; any difference in the
    response counts as changed, so an intact log and engine give ``changed == 0``.

    A record whose policy digest is not stored in ``log`` (or whose stored document no longer
    has that digest) is an error naming the digest. ``masker`` carries the key the records
    were masked with, as for ``replay``.
    """
    policies = _PolicyCache(log)
    inputs = Rebuilder(RECORDED, RECORDED, masker)
    tally = _Tally(exact=True)
    for record in records:
        tally.add(record, policies.get, inputs)
    return tally.report("recorded", None, RECORDED, RECORDED)


# -- rebuilding a record's inputs ------------------------------------------------------------


class Rebuilder:
    """Turns a record back into engine inputs: request, snapshot and feeds.

    With ``"recorded"`` the snapshot and feeds are rebuilt from the record (cached by content:
    many records share the same identities); otherwise the given ones are used. ``drift`` uses
    this with the current snapshot and feeds.
    """

    def __init__(
        self,
        entitlements: Literal["recorded"] | Snapshot,
        feeds: Literal["recorded"] | Mapping[str, ContextFeed],
        masker: Masker | None,
    ) -> None:
        self.entitlements = entitlements
        self.feeds = feeds
        self.masker = masker
        self._snapshots: dict[str, Snapshot] = {}
        self._feeds: dict[str, dict[str, ContextFeed]] = {}
        self._clear_keys: dict[str, dict[str, str]] | None = None

    def describe_entitlements(self) -> str:
        e = self.entitlements
        return RECORDED if isinstance(e, str) else f"{e.snapshot_id} ({e.digest})"

    def describe_feeds(self) -> str:
        f = self.feeds
        return RECORDED if isinstance(f, str) else ", ".join(f"{n} ({feed.digest})" for n, feed in sorted(f.items())) or "none"

    def inputs(self, record: Mapping[str, Any]) -> tuple[ClaimsRequest, Snapshot, Mapping[str, ContextFeed]]:
        """The request, snapshot and feeds to evaluate ``record`` with.

        Raises:
            UnresolvableRecordError: the subject was joined by a masked key that cannot be
                matched (no masking key, or a different one).
        """
        document = record["request"]
        masked = masked_join_paths(record)
        if masked:
            self._check_masked_join(record, masked)
            if not isinstance(self.entitlements, str) and self.masker is not None:
                document = self._clear_join_keys(document, masked, self.entitlements)
        request = parse_request(document, validate=False)
        return request, self._snapshot(record, masked), self._feed_inputs(record)

    def check_join(self, record: Mapping[str, Any], decision: Decision) -> None:
        """After evaluation against a given snapshot without the masking key: a subject that
        no longer joins by its clear keys might have joined by its masked one, so the outcome
        is unknown rather than a change.

        Raises:
            UnresolvableRecordError: as described.
        """
        masked = masked_join_paths(record)
        if not masked or self.masker is not None or isinstance(self.entitlements, str):
            return
        if not decision.principals or decision.principals[0].subject_id is None:
            raise UnresolvableRecordError(
                f"the subject does not join the snapshot by its clear keys, and its masked {', '.join(sorted(masked))} "
                "cannot be matched without the masking key"
            )

    def _check_masked_join(self, record: Mapping[str, Any], masked: set[str]) -> None:
        subject_id, joined_by = recorded_join(record)
        if joined_by not in masked:
            return
        if isinstance(self.entitlements, str):
            return  # recorded inputs hold the same keyed hash on both sides: no key needed
        if self.masker is None:
            raise UnresolvableRecordError(f"the subject was joined by the masked {joined_by}; replaying it needs the masking key")
        # The recorded identity carries the same keyed hash as the request; the snapshot we
        # replay against must yield that hash for the subject, or the key is not the one used.
        assert not isinstance(self.entitlements, str)
        identity = self.entitlements.identity(subject_id) if subject_id else None
        name = _FIELD_OF_PATH[joined_by]
        value = getattr(identity, name, None) if identity is not None else None
        if value:
            clear = value.lower() if name in _FOLDED else value
            if self.masker.hash(clear) != record["request"]["subject"].get(joined_by.split(".")[1]):
                raise UnresolvableRecordError(f"the masking key is not the one {joined_by} was masked with")

    def _clear_join_keys(self, document: Mapping[str, Any], masked: set[str], snapshot: Snapshot) -> dict[str, Any]:
        """``document`` with each masked join key replaced by the snapshot's clear value that
        hashes to it; a key no identity matches stays hashed and so matches nothing, exactly
        as its clear value would not have."""
        if self._clear_keys is None:
            assert self.masker is not None
            index: dict[str, dict[str, str]] = {name: {} for name in JOIN_PATHS}
            for identity in snapshot.identities.values():
                for name in JOIN_PATHS:
                    value = getattr(identity, name)
                    if value:
                        index[name][self.masker.hash(value.lower() if name in _FOLDED else value)] = value
            self._clear_keys = index
        subject = dict(document["subject"])
        for path in masked:
            key = path.split(".")[1]
            hashed = subject.get(key)
            clear = self._clear_keys[_FIELD_OF_PATH[path]].get(hashed) if isinstance(hashed, str) else None
            if clear is not None:
                subject[key] = clear
        return {**document, "subject": subject}

    def _snapshot(self, record: Mapping[str, Any], masked: set[str]) -> Snapshot:
        if not isinstance(self.entitlements, str):
            return self.entitlements
        # Records are canonical JSON, so equal inputs serialize alike without sorting keys.
        key = json.dumps([record["snapshot"], record["inputs"]["identities"], sorted(masked)])
        found = self._snapshots.get(key)
        if found is None:
            found = recorded_snapshot(record, self.masker)
            if len(self._snapshots) >= _CACHE_LIMIT:
                self._snapshots.clear()  # a bounded cache; identities repeat in runs, not forever
            self._snapshots[key] = found
        return found

    def _feed_inputs(self, record: Mapping[str, Any]) -> Mapping[str, ContextFeed]:
        if not isinstance(self.feeds, str):
            return self.feeds
        key = json.dumps(record["inputs"]["feeds"])
        found = self._feeds.get(key)
        if found is None:
            found = recorded_feeds(record)
            if len(self._feeds) >= _CACHE_LIMIT:
                self._feeds.clear()
            self._feeds[key] = found
        return found


def masked_join_paths(record: Mapping[str, Any]) -> set[str]:
    """The subject join keys the record stored as keyed hashes."""
    return set(record.get("masked") or ()).intersection(JOIN_PATHS.values())


def recorded_join(record: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(IGA subject id, request path of the join key) of the recorded subject."""
    for principal in record["result"].get("principals", ()):
        if principal.get("role") == "subject":
            return principal.get("subject_id"), JOIN_PATHS.get(principal.get("matched_by") or "")
    return None, None


class _PolicyCache:
    """Stored policies compiled once per digest; a failure is remembered as its message."""

    def __init__(self, log: SQLiteDecisionLog) -> None:
        self.log = log
        self.compiled: dict[str, Policy | str] = {}

    def get(self, record: Mapping[str, Any]) -> Policy:
        policy_digest = record["policy"]["digest"]
        found = self.compiled.get(policy_digest)
        if found is None:
            # The messages name the digest in full: it is the key an operator looks up.
            try:
                found = compile_policy(self.log.policy(policy_digest))
                if found.digest != policy_digest:
                    # The policies table is outside the hash chain; a rewritten document must not
                    # pass for the one the decisions were made with.
                    found = f"the stored policy {policy_digest} does not match its digest (the document was modified)"
            except DecisionNotFoundError:
                found = f"the recorded policy {policy_digest} is not stored in the log"
            except PolicyError as exc:
                found = f"the recorded policy {policy_digest} does not compile ({exc.message})"
            except BridgeError as exc:
                found = f"the recorded policy {policy_digest} cannot be read ({exc.message})"
            self.compiled[policy_digest] = found
        if isinstance(found, str):
            raise BridgeError(found)
        return found


# -- comparing -----------------------------------------------------------------------------------


def value_key(value: Any) -> str:
    """A value's identity for set comparison and counting: the string itself, else its
    canonical JSON."""
    return value if type(value) is str else canonical_json(value).decode("utf-8")


def _values(claim_value: Any) -> dict[str, Any]:
    items = claim_value if isinstance(claim_value, list) else [claim_value]
    return {value_key(v): v for v in items}


def _granted_by(response: Mapping[str, Any]) -> dict[str, dict[str, set[str]]]:
    """claim -> value key -> rules that granted it, from the response's provenance."""
    return {
        claim: {value_key(v["value"]): {s["rule"] for s in v["sources"]} for v in values}
        for claim, values in (response.get("provenance") or {}).items()
    }


def _deny_rules(response: Mapping[str, Any]) -> set[str]:
    """The rules that made a response a deny (deny rules, and built-in checks that denied)."""
    return {
        r["rule"] for r in response.get("reasons", ())
        if r["kind"] == "deny" or (r["kind"] == "error" and r["rule"].startswith("kpb:"))
    }  # fmt: skip


def rules_of(response: Mapping[str, Any]) -> tuple[str, ...]:
    """Every rule a response names, in its reasons or its provenance."""
    rules = {r["rule"] for r in response.get("reasons", ())}
    rules.update(s["rule"] for values in (response.get("provenance") or {}).values() for v in values for s in v["sources"])
    return tuple(sorted(rules))


def claim_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """(added, removed) claim values from ``before`` to ``after`` (claims dicts)."""
    added: dict[str, list[Any]] = {}
    removed: dict[str, list[Any]] = {}
    for claim in sorted(set(before) | set(after)):
        old = _values(before[claim]) if claim in before else {}
        new = _values(after[claim]) if claim in after else {}
        gained = [new[k] for k in sorted(new.keys() - old.keys())]
        lost = [old[k] for k in sorted(old.keys() - new.keys())]
        if gained:
            added[claim] = gained
        if lost:
            removed[claim] = lost
    return added, removed


def compare(
    record: Mapping[str, Any], after: Mapping[str, Any], exact: bool
) -> tuple[ReplayedDecision, dict[str, list[int]]] | None:
    """The recorded result against a replayed response, and what to count per rule
    (``rule -> [added, removed, effect]``); None when nothing changed.

    ``exact``: any difference in the response is a change (reproduction); otherwise only the
    effect, claim values, TTL cap and ``remove_claims`` are.
    """
    before = record["result"]
    if "user_message" not in before and "user_message" in after:
        # An additive response field: a deny recorded before it existed reproduces without it.
        after = {k: v for k, v in after.items() if k != "user_message"}
    # Most replayed decisions are unchanged: settle those with one comparison each.
    if exact and before == after:
        return None
    old_claims, new_claims = before.get("claims") or {}, after.get("claims") or {}
    added, removed = claim_changes(old_claims, new_claims) if old_claims != new_claims else ({}, {})
    remove_before, remove_after = tuple(before.get("remove_claims", ())), tuple(after.get("remove_claims", ()))
    ttl_before, ttl_after = before.get("max_ttl_seconds"), after.get("max_ttl_seconds")
    effect_before, effect_after = before.get("effect"), after.get("effect")
    semantic = bool(added or removed) or effect_before != effect_after or ttl_before != ttl_after or remove_before != remove_after
    if not (exact or semantic):
        return None
    differences = tuple(sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)))
    decision = ReplayedDecision(
        decision_id=record["decision_id"], evaluated_at=record.get("evaluated_at"), subject_id=record.get("subject_id"),
        client_id=record.get("client_id"),
        effect_before=effect_before, effect_after=effect_after, added=added, removed=removed,
        ttl_before=ttl_before, ttl_after=ttl_after, remove_claims_before=remove_before, remove_claims_after=remove_after,
        rules_before=rules_of(before), rules_after=rules_of(after), differences=differences,
    )  # fmt: skip
    return decision, _attribute(before, after, added, removed) if semantic else {}


def _attribute(
    before: Mapping[str, Any], after: Mapping[str, Any], added: dict[str, list[Any]], removed: dict[str, list[Any]]
) -> dict[str, list[int]]:
    counts: dict[str, list[int]] = {}

    def bump(rules: Iterable[str], slot: int, n: int = 1) -> None:
        for rule in rules:
            counts.setdefault(rule, [0, 0, 0])[slot] += n

    now_denied = after.get("effect") == "deny"
    if before.get("effect") != after.get("effect"):
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

    def add(self, record: Mapping[str, Any], policy_for: Callable[[Mapping[str, Any]], Policy], inputs: Rebuilder) -> None:
        self.replayed += 1
        try:
            policy = policy_for(record)
            request, snapshot, feeds = inputs.inputs(record)
            decision = evaluate(policy, snapshot, request, parse_rfc3339(record["evaluated_at"]), feeds)
            inputs.check_join(record, decision)
            outcome = compare(record, decision.response(record["decision_id"]), self.exact)
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
                    bucket[value_key(value)] = bucket.get(value_key(value), 0) + 1
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
            mode=mode, policy=policy, entitlements=entitlements, feeds=feeds, replayed=self.replayed,
            unchanged=self.unchanged, changed=len(self.changed), errors=len(self.failed),
            changed_decisions=tuple(self.changed), failed_decisions=tuple(self.failed),
            by_claim=by_claim, by_rule=dict(sorted(self.by_rule.items(), key=weight)),
        )  # fmt: skip


def failed_decision(record: Any, exc: BaseException) -> ReplayedDecision:
    """A record that could not be replayed, with a message that says why."""
    get = record.get if isinstance(record, Mapping) else (lambda _key: None)
    return ReplayedDecision(
        decision_id=str(get("decision_id") or "?"), evaluated_at=get("evaluated_at"),
        subject_id=get("subject_id"), client_id=get("client_id"), error=describe_error(exc),
    )  # fmt: skip


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, BridgeError):
        return exc.message
    if isinstance(exc, KeyError):
        return f"the record lacks {exc.args[0]!r} (bad recorded data)"
    if isinstance(exc, (TypeError, AttributeError, IndexError)):
        return f"the record is malformed ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"
