"""The evaluation engine: a pure function from (policy, snapshot, request, now) to a Decision.

Evaluation order (docs/policy-language.md, "Evaluation order", is the reference):

1. Join the subject and every actor to the snapshot (``Snapshot.resolve`` holds the join rule).
   An ambiguous join denies; so does a pinned identity reached by username or e-mail under
   another Keycloak id (``kpb:identity-mismatch``).
2. Built-in checks: snapshot older than ``freshness.deny_max_age_seconds`` denies; a delegated
   request must satisfy ``delegation`` (every actor in an allowed pair with the subject, chain
   depth) or it is denied.
3. Passes. A plain request has one pass, over the subject. A delegated request has a second
   pass over the current actor, as if it asked for itself; the token gets the *intersection*.
   Older actors of the chain get deny-only passes (``prior_actor``): they grant nothing, but
   an unknown or inactive identity anywhere in the chain denies.
4. In each pass: deny rules first (any match denies; a CEL error in a deny rule denies, fail
   closed), then grant rules in document order, merging claims (lists union; scalars must agree,
   a conflict denies), remove_claims, and the smallest max_ttl_seconds.
5. Freshness: past ``privileged_max_age_seconds``, privileged values are left out with a reason.
6. Delegation bound: each claim is intersected with the actor pass unless ``subject_only``;
   ``act`` is written from the actor chain.

Nothing here reads the clock, files or the environment: ``now`` and the snapshot are arguments,
which is what makes replay exact. CEL sees only small derived values (see ``condition``);
entitlement selection runs natively over the indexed snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.condition import ConditionRuntimeError, make_context, prune
from keycloak_policy_bridge.context_feed import ContextFeed
from keycloak_policy_bridge.decision import (
    BUILTIN_USER_MESSAGES,
    DEFAULT_USER_MESSAGE,
    DENY,
    PERMIT,
    ClaimValue,
    Decision,
    PrincipalInfo,
    Reason,
    ValueSource,
    value_key,
)
from keycloak_policy_bridge.entitlements import EntitlementRecord, Identity, Resolution, Snapshot
from keycloak_policy_bridge.join_keys import request_keys
from keycloak_policy_bridge.policy import ClaimGrant, Policy, Rule, Selector
from keycloak_policy_bridge.request import Actor, ClaimsRequest

_JSON_SCALARS = (str, int, float, bool)
# A pinned IGA identity reached by username or e-mail under another Keycloak id (entitlements.
# Snapshot.resolve): a look-alike principal. Its own rule id, so that the service counts and logs
# it (api/ops.py, bridge.py) and the decision log can be searched for it.
JOIN_MISMATCH_RULE = "kpb:identity-mismatch"
BUDGET_RULE = "kpb:budget"  # the reason of a decision denied for running over its EvaluationBudget


@dataclass(frozen=True)
class EvaluationBudget:
    """A wall-clock limit on one evaluation, checked between passes (security defect 3).

    CEL cannot be interrupted mid-expression (the runtime holds the GIL), so the budget cannot
    cut an expression short: the static cost limit at policy load bounds each one. What the
    budget does is refuse the result of an evaluation that overran (a deny, never a permit) and
    skip the passes left. It costs one clock read before the first pass and one after each pass.
    Only the service sets it: replay, tests and the CLI evaluate without one, so they stay pure;
    the caller supplies the clock (``time.perf_counter``), the engine never reads one itself.
    """

    seconds: float
    clock: Callable[[], float]


@dataclass
class _Principal:
    """A Keycloak principal joined to the snapshot, with its CEL view built once."""

    role: str
    resolution: Resolution
    kind: str
    view: dict[str, Any]
    effective: tuple[EntitlementRecord, ...]
    _by_kind: dict[str, list[EntitlementRecord]] | None = None
    _entitlement_map: dict[str, list[str]] | None = None

    @property
    def identity(self) -> Identity | None:
        return self.resolution.identity

    def by_kind(self) -> dict[str, list[EntitlementRecord]]:
        """Effective records grouped by entitlement kind (selectors read one or two kinds)."""
        if self._by_kind is None:
            grouped: dict[str, list[EntitlementRecord]] = {}
            for record in self.effective:
                grouped.setdefault(record.kind, []).append(record)
            self._by_kind = grouped
        return self._by_kind

    def entitlement_map(self) -> dict[str, list[str]]:
        """Effective entitlement values by kind, for CEL (``entitlements.app_role``)."""
        if self._entitlement_map is None:
            self._entitlement_map = {k: sorted({r.value for r in v}) for k, v in self.by_kind().items()}
        return self._entitlement_map

    def info(self) -> PrincipalInfo:
        identity = self.identity
        return PrincipalInfo(
            role=self.role,
            subject_id=identity.subject_id if identity else None,
            kind=self.kind,
            status=identity.status if identity else "unknown",
            matched_by=self.resolution.matched_by,
        )


class _Claims:
    """Claim values accumulated in one pass, with provenance and privilege marks."""

    def __init__(self) -> None:
        # claim -> (shape, {canonical value -> [value, privileged, [sources]]})
        self.shapes: dict[str, str] = {}
        self.values: dict[str, dict[str | bytes, list[Any]]] = {}

    def add(self, claim: str, shape: str, value: Any, privileged: bool, source: ValueSource) -> str | None:
        """Add one value; return a conflict message instead when the claim cannot take it."""
        known = self.shapes.setdefault(claim, shape)
        bucket = self.values.setdefault(claim, {})
        if known != shape:
            return f"claim '{claim}' is granted both as a list and as a single value"
        key = value_key(value)
        if shape == "scalar" and bucket and key not in bucket:
            return f"claim '{claim}' is granted two different single values"
        entry = bucket.get(key)
        if entry is None:
            bucket[key] = [value, privileged, [source]]
        else:
            entry[1] = entry[1] or privileged
            entry[2].append(source)
        return None

    def declare(self, claim: str, shape: str) -> str | None:
        """Record that a rule granted ``claim`` (even with no values) so it is issued, maybe empty."""
        known = self.shapes.setdefault(claim, shape)
        self.values.setdefault(claim, {})
        if known != shape:
            return f"claim '{claim}' is granted both as a list and as a single value"
        return None


class _Evaluation:
    """The state of one evaluation. Built and discarded per request."""

    def __init__(self, policy: Policy, snapshot: Snapshot, request: ClaimsRequest, now: datetime, feeds: Mapping[str, ContextFeed]) -> None:
        self.policy = policy
        self.snapshot = snapshot
        self.feeds = feeds
        self.stale_feeds: set[str] = set()
        self.request = request
        self.now = now
        self.age = snapshot.age_seconds(now)
        freshness = policy.freshness
        self.privileged_stale = freshness.privileged_max_age_seconds is not None and self.age > freshness.privileged_max_age_seconds
        self.reasons: list[Reason] = []
        self.denied = False
        self.user_message: str | None = None  # set by the first denial
        # Every identity the evaluation read, and every feed row set it handed to CEL: the
        # inputs a decision record keeps so that replay needs nothing but the record.
        self.touched: dict[str, Identity] = {}
        self.feed_reads: set[tuple[str, str]] = set()
        self.remove: list[str] = list(policy.remove_claims)
        self.ttl: int | None = None
        self.budget: EvaluationBudget | None = None
        self.started = 0.0

    # -- entry ----------------------------------------------------------------------------

    def run(self) -> Decision:
        request = self.request
        if self.budget is not None:
            self.started = self.budget.clock()
        subject = self._subject()
        actors = [self._actor(i, a) for i, a in enumerate(request.actors)]
        principals = [subject, *actors]
        for p in principals:
            if p.resolution.ambiguous:
                self._deny("kpb:identity", f"{p.role} matches {len(p.resolution.ambiguous)} IGA identities by {p.resolution.matched_by}")
            if p.resolution.mismatched:
                # Names the IGA identity and the join key, never the username or e-mail sent.
                self._deny(
                    JOIN_MISMATCH_RULE,
                    f"{p.role} reaches IGA identity {', '.join(p.resolution.mismatched)} by {p.resolution.matched_by}, "
                    "but it is pinned to another Keycloak id: not matched",
                    user_message=BUILTIN_USER_MESSAGES.get("kpb:identity"),
                )
        self._check_freshness()
        self._check_feeds()
        if actors:
            self._check_delegation(subject, actors)

        subject_claims = self._pass("subject", subject, subject, actors)
        within = self._within_budget()
        actor_claims = None
        if actors and within:
            actor_claims = self._pass("actor", actors[0], subject, actors)
            within = self._within_budget()
        for prior in actors[1:] if within else ():
            # Older actors grant nothing (the token is bounded by the subject and the current
            # actor) but each must pass the deny rules: a terminated or unknown identity
            # anywhere in the chain must not end up named in `act`.
            self._pass("prior_actor", prior, subject, actors, grants=False)
            if not self._within_budget():
                break

        if self.denied:
            return self._decision(DENY, {}, {}, principals)
        claims, provenance = self._finish(subject_claims, actor_claims, actors)
        return self._decision(PERMIT, claims, provenance, principals)

    def _decision(
        self, effect: str, claims: dict[str, Any], provenance: dict[str, tuple[ClaimValue, ...]], principals: list[_Principal]
    ) -> Decision:
        permitted = effect == PERMIT
        remove = tuple(sorted(set(self.remove) - set(claims))) if permitted else ()
        policy, snapshot = self.policy, self.snapshot
        return Decision(
            effect=effect,
            claims=claims,
            remove_claims=remove,
            max_ttl_seconds=self.ttl if permitted else None,
            reasons=tuple(self.reasons),
            provenance=provenance,
            policy_id=policy.policy_id,
            policy_version=policy.version,
            policy_digest=policy.digest,
            snapshot_digest=snapshot.digest,
            snapshot_generated_at=snapshot.generated_at,
            snapshot_age_seconds=self.age,
            snapshot_stale=self.privileged_stale,
            evaluated_at=self.now,
            principals=tuple(p.info() for p in principals),
            inputs=tuple(self.touched[k] for k in sorted(self.touched)),
            feed_reads=tuple(sorted(self.feed_reads)),
            user_message=None if permitted else self.user_message,
            feeds={name: {**feed.reference(self.now), "stale": name in self.stale_feeds} for name, feed in sorted(self.feeds.items())}
            if self.feeds
            else {},
        )

    def _within_budget(self) -> bool:
        """False, after denying (fail closed), once the evaluation has run past its budget."""
        if self.budget is None:
            return True
        elapsed = self.budget.clock() - self.started
        if elapsed <= self.budget.seconds:
            return True
        self._deny(
            BUDGET_RULE,
            f"evaluation took {elapsed * 1000:.0f} ms, over the evaluation budget of {self.budget.seconds * 1000:.0f} ms; "
            "denied (fail closed), remaining passes skipped",
            kind="error",
        )
        return False

    def _deny(
        self, rule: str, message: str, evaluation_pass: str | None = None, kind: str = "deny", user_message: str | None = None
    ) -> None:
        self.denied = True
        self.reasons.append(Reason(rule, message, kind, evaluation_pass=evaluation_pass))
        if self.user_message is None:
            # The first denial in evaluation order speaks to the end user (the reasons list them
            # all, for admins): a deny rule's user_message, else a built-in check's neutral text,
            # else the default. Never ``message``: that names rules, conditions and records.
            self.user_message = user_message or BUILTIN_USER_MESSAGES.get(rule, DEFAULT_USER_MESSAGE)

    # -- principals -----------------------------------------------------------------------

    def _subject(self) -> _Principal:
        s = self.request.subject
        resolution = self.snapshot.resolve(
            **request_keys(s),
            email_verified=s.get("email_verified") is True,  # absent: not verified
            options=self.policy.identity_join.options(self.snapshot.source_system),
        )
        extra = {
            "username": s.get("username"),
            "email": s.get("email"),
            "client_id": s.get("service_account_client_id"),
            "attributes": s.get("attributes") or {},
            "groups": s.get("groups") or [],
            "directory_roles": s.get("directory_roles") or [],
            "auth": s.get("auth") or {},
        }
        return self._principal("subject", resolution, s.get("kind_hint"), s.get("id"), extra)

    def _actor(self, index: int, actor: Actor) -> _Principal:
        resolution = self.snapshot.resolve(keycloak_user_id=actor.sub, keycloak_client_id=actor.client_id)
        extra: dict[str, Any] = {
            "client_id": actor.client_id,
            "username": None,
            "email": None,
            "attributes": {},
            "groups": [],
            "directory_roles": [],
            "auth": {},
        }  # same shape as the subject
        return self._principal(f"actors[{index}]", resolution, actor.kind_hint, actor.sub, extra)

    def _principal(
        self, role: str, resolution: Resolution, kind_hint: str | None, keycloak_id: str | None, extra: dict[str, Any]
    ) -> _Principal:
        identity = resolution.identity
        if identity is not None:
            self.touched[identity.subject_id] = identity
        for candidate_id in resolution.ambiguous + resolution.mismatched:
            candidate = self.snapshot.identity(candidate_id)
            if candidate is not None:
                self.touched[candidate_id] = candidate
        # The IGA record is authoritative for the kind; Keycloak's hint only fills the gap for
        # principals the IGA does not know (which a sane policy denies anyway).
        kind = identity.kind if identity else (kind_hint or "human")
        owner_view = None
        if identity is not None and identity.owner_id:
            owner = self.snapshot.identity(identity.owner_id)
            if owner is not None:
                self.touched[owner.subject_id] = owner
            owner_view = {
                "id": identity.owner_id,
                "found": owner is not None,
                "kind": owner.kind if owner else None,
                "status": owner.status if owner else "unknown",
            }
        view = {
            "id": identity.subject_id if identity else None,
            "found": identity is not None,
            "kind": kind,
            "type": identity.subject_type if identity else None,
            "status": identity.status if identity else "unknown",
            "owner": owner_view,
            "keycloak_id": keycloak_id,
            "matched_by": resolution.matched_by,
            **extra,
        }
        effective = identity.effective_records(self.now) if identity else ()
        return _Principal(role, resolution, kind, view, effective)

    # -- built-in checks ------------------------------------------------------------------

    def _check_freshness(self) -> None:
        limit = self.policy.freshness.deny_max_age_seconds
        if limit is not None and self.age > limit:
            self._deny("kpb:freshness", f"entitlement snapshot is {self.age}s old; this policy denies past {limit}s")

    def _check_feeds(self) -> None:
        for name, rule in self.policy.freshness.feeds:
            feed = self.feeds.get(name)
            if feed is not None and feed.age_seconds(self.now) <= rule.max_age_seconds:
                continue
            self.stale_feeds.add(name)
            state = "is not loaded" if feed is None else f"is {feed.age_seconds(self.now)}s old (limit {rule.max_age_seconds}s)"
            if rule.on_stale == "deny":
                self._deny("kpb:freshness", f"context feed '{name}' {state}; this policy denies")
            else:
                self.reasons.append(Reason("kpb:freshness", f"context feed '{name}' {state}; its records are ignored", "omit"))

    def feed_view(self, principal: _Principal) -> dict[str, Any]:
        """``feeds`` for CEL: per feed, the principal's effective rows, age and staleness."""
        names = set(self.feeds) | {n for n, _ in self.policy.freshness.feeds}
        subject_id = principal.identity.subject_id if principal.identity else None
        if subject_id is not None:
            self.feed_reads.update((name, subject_id) for name in self.feeds)
        view = {}
        for name in sorted(names):
            feed = self.feeds.get(name)
            stale = name in self.stale_feeds
            records = feed.effective(subject_id, self.now) if feed is not None and not stale else []
            view[name] = {
                "present": feed is not None,
                "stale": stale,
                "age_seconds": feed.age_seconds(self.now) if feed is not None else None,
                "records": records,
                "record": records[0] if records else None,
            }
        return view

    def _check_delegation(self, subject: _Principal, actors: list[_Principal]) -> None:
        delegation = self.policy.delegation
        if delegation is None:
            self._deny("kpb:delegation", "this policy allows no delegation (no 'delegation' block)")
            return
        if len(actors) > delegation.max_chain_depth:
            self._deny(
                "kpb:delegation",
                f"delegation chain has {len(actors)} actors; this policy allows at most {delegation.max_chain_depth}",
            )
        for actor in actors:
            client_id = actor.view.get("client_id")
            if not any(
                actor.kind in a.actor_kinds and subject.kind in a.subject_kinds and a.actor_clients.matches(client_id)
                for a in delegation.allow
            ):
                self._deny(
                    "kpb:delegation", f"{actor.role} ({_article(actor.kind)}) may not act for {_article(subject.kind)} under this policy"
                )
        if delegation.max_ttl_seconds is not None:
            self._cap_ttl(delegation.max_ttl_seconds)

    def _cap_ttl(self, seconds: int) -> None:
        self.ttl = seconds if self.ttl is None else min(self.ttl, seconds)

    # -- passes ---------------------------------------------------------------------------

    def _pass(self, name: str, principal: _Principal, subject: _Principal, actors: list[_Principal], grants: bool = True) -> _Claims:
        """Run the deny rules, then (unless denied or ``grants`` is false) the grant rules."""
        request = self.request
        scope = "actor" if name == "prior_actor" else name
        candidates = self.policy.candidates(request.event, request.grant_type, request.client_id, request.delegated)
        rules, denies, grant_rules = self.policy.pass_rules(candidates, scope, grants, principal.kind, subject.kind)
        cel = _CelScope(self, principal, subject, actors, rules)
        claims = _Claims()
        for rule in denies:
            if self._applies(rule, name, cel):
                self._deny(rule.id, rule.reason or "denied", name, user_message=rule.user_message)
        if self.denied or not grants:
            return claims  # no token will be minted: computing grants would be wasted work
        for rule in grant_rules:
            if self._applies(rule, name, cel):
                self._grant(rule, name, principal, claims, cel)
        return claims

    def _applies(self, rule: Rule, pass_name: str, cel: _CelScope) -> bool:
        """Condition, then the exception window. CEL errors deny in deny rules, skip grant rules.

        The window is checked after the condition so that "not in force" is reported only to
        requests the exception was written for, not to every request after it expires.
        """
        exception = rule.exception
        if exception is not None and not exception.active(self.now):
            # Out of its window the rule does nothing; the condition only decides whether the
            # request is one the exception was written for, and so worth a reason.
            try:
                relevant = rule.condition is None or cel.run(rule.condition, rule.needs) is True
            except ConditionRuntimeError:
                relevant = False
            if relevant:
                self.reasons.append(
                    Reason(rule.id, f"time-bound exception {exception.ticket} is not in force", "exception", evaluation_pass=pass_name)
                )
            return False
        result = True if rule.condition is None else self._condition(rule, pass_name, cel)
        if result and exception is not None:
            self.reasons.append(Reason(rule.id, f"time-bound exception {exception.ticket} applied", "exception", evaluation_pass=pass_name))
        return result

    def _condition(self, rule: Rule, pass_name: str, cel: _CelScope) -> bool:
        assert rule.condition is not None
        try:
            result = cel.run(rule.condition, rule.needs)
        except ConditionRuntimeError as exc:
            fail_closed = rule.effect == "deny"
            action = "denied (fail closed)" if fail_closed else "rule skipped"
            self.reasons.append(Reason(rule.id, f"{rule.path}.condition failed: {exc}; {action}", "error", evaluation_pass=pass_name))
            return fail_closed
        if not isinstance(result, bool):
            fail_closed = rule.effect == "deny"
            self.reasons.append(
                Reason(rule.id, f"{rule.path}.condition returned {type(result).__name__}, not bool", "error", evaluation_pass=pass_name)
            )
            return fail_closed
        return result

    def _grant(self, rule: Rule, pass_name: str, principal: _Principal, claims: _Claims, cel: _CelScope) -> None:
        for grant in rule.claims:
            values = self._grant_values(rule, grant, pass_name, principal, cel)
            if values is None:
                continue
            shape = "scalar" if grant.single else "list"
            if (grant.is_literal or grant.expr is not None) and not grant.single:
                raw = values[0][0] if values else None
                if grant.as_list and not isinstance(raw, list):
                    raw = [raw]
                shape = "list" if isinstance(raw, list) else "scalar"
                values = [(v, grant.privileged, ()) for v in raw] if isinstance(raw, list) else values
            conflict = claims.declare(grant.claim, shape)
            for value, privileged, records in values:
                if conflict is None:
                    conflict = claims.add(grant.claim, shape, value, privileged, ValueSource(rule.id, pass_name, records))
            if conflict is not None:
                self._deny("kpb:claims", f"{conflict} (last by rule '{rule.id}')", pass_name, kind="error")
        for claim in rule.remove_claims:
            self.remove.append(claim)
        if rule.max_ttl_seconds is not None:
            self._cap_ttl(rule.max_ttl_seconds)

    def _grant_values(
        self, rule: Rule, grant: ClaimGrant, pass_name: str, principal: _Principal, cel: _CelScope
    ) -> list[tuple[Any, bool, tuple[EntitlementRecord, ...]]] | None:
        """The (value, privileged, records) a grant yields, or None when it yields nothing."""
        if grant.is_literal:
            return [(grant.value, grant.privileged, ())]
        if grant.expr is not None:
            try:
                value = cel.run(grant.expr, rule.needs)
            except ConditionRuntimeError as exc:
                self.reasons.append(
                    Reason(rule.id, f"{grant.path}.expr failed: {exc}; claim value skipped", "error", grant.claim, pass_name)
                )
                return None
            if value is None:
                return None
            if not _is_json(value):
                self.reasons.append(
                    Reason(rule.id, f"{grant.path}.expr returned {type(value).__name__}, not a JSON value", "error", grant.claim, pass_name)
                )
                return None
            if grant.single and isinstance(value, list):
                return self._single(rule, grant, pass_name, [(v, grant.privileged, ()) for v in value])
            return [(value, grant.privileged, ())]
        assert grant.selector is not None  # the compiler guarantees one of the three
        selected = self._select(rule, grant, pass_name, principal, grant.selector)
        if grant.single:
            return self._single(rule, grant, pass_name, selected)
        return selected

    def _single(
        self, rule: Rule, grant: ClaimGrant, pass_name: str, values: list[tuple[Any, bool, tuple[EntitlementRecord, ...]]]
    ) -> list[tuple[Any, bool, tuple[EntitlementRecord, ...]]] | None:
        distinct = {value_key(v[0]) for v in values}
        if not distinct:
            return None
        if len(distinct) > 1:
            self.reasons.append(
                Reason(
                    rule.id,
                    f"{len(distinct)} candidate values for single-valued claim '{grant.claim}'; left out",
                    "omit",
                    grant.claim,
                    pass_name,
                )
            )
            return None
        records = tuple(r for v in values for r in v[2])
        return [(values[0][0], any(v[1] for v in values), records)]

    def _select(
        self, rule: Rule, grant: ClaimGrant, pass_name: str, principal: _Principal, selector: Selector
    ) -> list[tuple[Any, bool, tuple[EntitlementRecord, ...]]]:
        wanted: frozenset[str] | None = None
        if selector.match is not None:
            found = _lookup(self.request.raw, selector.match)
            if isinstance(found, str):
                wanted = frozenset([found])
            elif isinstance(found, list):
                # A multi-valued attribute keeps the values it names; non-strings match nothing.
                wanted = frozenset(v for v in found if isinstance(v, str))
        privileged_levels = self.policy.freshness.privileged_levels
        by_value: dict[str, list[Any]] = {}
        by_kind = principal.by_kind()
        records = [r for kind in selector.kinds for r in by_kind.get(kind, ())]
        for record in records:
            if selector.privilege_levels is not None and record.privilege_level not in selector.privilege_levels:
                continue
            if not selector.sources.matches(record.source) or not selector.values.matches(record.value):
                continue
            if wanted is not None and record.value not in wanted:
                continue
            output = record.value
            if selector.template is not None:
                output = selector.template.format_map(
                    {"value": record.value, "source": record.source, "account": record.account, "kind": record.kind}
                )
            if selector.certification_max_age_days is not None and record.privilege_level in selector.certification_levels:
                certified = record.last_certified_at
                if certified is None or self.now - certified > selector.certification_max_age:
                    state = "never certified" if certified is None else f"last certified {(self.now - certified).days} days ago"
                    self.reasons.append(
                        Reason(
                            rule.id,
                            f"{output!r} left out: {record.privilege_level}-privilege entitlement {state}; "
                            f"certification within {selector.certification_max_age_days} days is required",
                            "omit",
                            grant.claim,
                            pass_name,
                        )
                    )
                    continue
            entry = by_value.setdefault(output, [False, []])
            entry[0] = entry[0] or record.privilege_level in privileged_levels
            entry[1].append(record)
        return [(value, flag, tuple(records)) for value, (flag, records) in by_value.items()]

    # -- finishing ------------------------------------------------------------------------

    def _finish(
        self, subject_claims: _Claims, actor_claims: _Claims | None, actors: list[_Principal]
    ) -> tuple[dict[str, Any], dict[str, tuple[ClaimValue, ...]]]:
        claims: dict[str, Any] = {}
        provenance: dict[str, tuple[ClaimValue, ...]] = {}
        subject_only = self.policy.delegation.subject_only_claims if self.policy.delegation else frozenset()
        for claim in sorted(subject_claims.shapes):
            shape = subject_claims.shapes[claim]
            kept: list[ClaimValue] = []
            for key, (value, privileged, sources) in subject_claims.values[claim].items():
                actor_entry = None
                if actor_claims is not None and claim not in subject_only:
                    actor_entry = actor_claims.values.get(claim, {}).get(key)
                    if actor_entry is not None and actor_claims.shapes.get(claim) != shape:
                        actor_entry = None
                    # privileged if either side holds it at a privileged level
                    privileged = privileged or bool(actor_entry and actor_entry[1])
                if privileged and self.privileged_stale:
                    self.reasons.append(
                        Reason(
                            "kpb:freshness",
                            f"{value!r} left out: privileged value, snapshot is {self.age}s old "
                            f"(limit {self.policy.freshness.privileged_max_age_seconds}s)",
                            "omit",
                            claim,
                        )
                    )
                    continue
                if actor_claims is not None and claim not in subject_only:
                    if actor_entry is None:
                        self.reasons.append(
                            Reason("kpb:delegation", f"{value!r} left out: the acting {actors[0].kind} does not hold it", "omit", claim)
                        )
                        continue
                    sources = sources + actor_entry[2]
                kept.append(ClaimValue(value, tuple(sources)))
            if shape == "list":
                kept.sort(key=lambda v: (0, v.value) if type(v.value) is str else (1, canonical_json(v.value)))
                claims[claim] = [v.value for v in kept]
            elif kept:
                claims[claim] = kept[0].value
            else:
                continue
            provenance[claim] = tuple(kept)
        if actors:
            claims["act"] = _act_claim(actors)
        return claims, provenance


class _CelScope:
    """Builds the CEL context of a pass lazily: only the variables its rules read, once."""

    def __init__(
        self, evaluation: _Evaluation, principal: _Principal, subject: _Principal, actors: list[_Principal], rules: tuple[Rule, ...]
    ) -> None:
        self.evaluation = evaluation
        self.principal = principal
        self.subject = subject
        self.actors = actors
        self.needed, self.fields = evaluation.policy.scope(rules)
        self.context: Any = None
        self.variable_errors: dict[str, str] = {}

    def run(self, expr: Any, needs: frozenset[str]) -> Any:
        if self.context is None:
            self._build()
        failed = needs.intersection(self.variable_errors)
        if failed:
            name = sorted(failed)[0]
            raise ConditionRuntimeError(f"variable '{name}' failed: {self.variable_errors[name]}")
        return expr.run(self.context)

    def _build(self) -> None:
        ev = self.evaluation
        request = ev.request
        providers = {
            "principal": lambda: self.principal.view,
            "subject": lambda: self.subject.view,
            "actors": lambda: [a.view for a in self.actors],
            "actor": lambda: self.actors[0].view if self.actors else None,
            "delegated": lambda: bool(self.actors),
            "client": lambda: request.raw.get("client", {}),
            "request": lambda: {
                "event": request.event,
                "grant_type": request.grant_type,
                "scopes": request.raw.get("requested_scopes", []),
                "audience": request.raw.get("audience", []),
                "realm": request.realm,
                "issuer": request.raw.get("issuer"),
                "request_id": request.request_id,
            },
            "context": lambda: request.context,
            "entitlements": self.principal.entitlement_map,
            "now": lambda: ev.now,
            "feeds": lambda: ev.feed_view(self.principal),
            "snapshot": lambda: {
                "id": ev.snapshot.snapshot_id,
                "age_seconds": ev.age,
                "generated_at": ev.snapshot.generated_at,
                "stale": ev.privileged_stale,
            },
        }
        fields = self.fields
        values = {name: prune(provide(), fields.get(name)) for name, provide in providers.items() if name in self.needed}  # type: ignore[no-untyped-call]  # the providers are lambdas
        self.context = make_context(values)
        # Policy variables are added a dependency level at a time with one update() each:
        # every change to a context makes the runtime rebuild its environment on the next run.
        pending = list(ev.policy.variable_closure(self.needed))
        while pending:
            ready = [(n, e) for n, e in pending if not e.variables.intersection(n2 for n2, _ in pending)]
            if not ready:
                break  # cycles are refused at load; unreachable
            level: dict[str, Any] = {}
            for name, expr in ready:
                failed = expr.variables.intersection(self.variable_errors)
                if failed:
                    self.variable_errors[name] = f"depends on failed variable '{sorted(failed)[0]}'"
                    continue
                try:
                    level[name] = expr.run(self.context)
                except ConditionRuntimeError as exc:
                    self.variable_errors[name] = str(exc)
            if level:
                self.context.update(level)
            done = {n for n, _ in ready}
            pending = [(n, e) for n, e in pending if n not in done]


def _article(kind: str) -> str:
    return ("an " if kind[:1] in "aeiou" else "a ") + kind


def _act_claim(actors: list[_Principal]) -> dict[str, Any]:
    """RFC 8693 nesting: the current actor outermost, the oldest innermost."""
    claim: dict[str, Any] | None = None
    for actor in reversed(actors):
        link: dict[str, Any] = {}
        if actor.view.get("keycloak_id"):
            link["sub"] = actor.view["keycloak_id"]
        if actor.view.get("client_id"):
            link["client_id"] = actor.view["client_id"]
        if claim is not None:
            link["act"] = claim
        claim = link
    assert claim is not None
    return claim


def _lookup(document: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = document
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, _JSON_SCALARS):
        return True
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def evaluate(
    policy: Policy,
    snapshot: Snapshot,
    request: ClaimsRequest,
    now: datetime,
    feeds: Mapping[str, ContextFeed] | None = None,
    budget: EvaluationBudget | None = None,
) -> Decision:
    """Decide the governed claims for ``request``.

    A pure function of its arguments: the same inputs give the same Decision, so a recorded
    decision can be replayed exactly. Runtime faults inside the policy (CEL errors, conflicting
    scalar grants) never raise: they become reasons, and deny where failing open would grant.

    Args:
        policy: a compiled policy (``policy.compile_policy``).
        snapshot: the entitlement snapshot to join principals against.
        request: a validated claims request (``request.parse_request``).
        now: the evaluation instant (aware); freshness, start/end windows, certification age
            and time-bound exceptions are all judged against it.
        feeds: context feeds by name (risk, device, exceptions...), seen by CEL as ``feeds``.
        budget: a wall-clock limit (the service's); an evaluation that overruns it is denied
            with reason ``kpb:budget``. The one input that is not data: replay passes none, so a
            recorded ``kpb:budget`` deny replays as what the policy decides without a limit.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    evaluation = _Evaluation(policy, snapshot, request, now, feeds or {})
    evaluation.budget = budget
    return evaluation.run()
