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
which is what makes replay exact. CEL sees only small derived values (see ``condition``), and
the simple expressions do not need it at all: ``cel_scope.PassScope`` runs them natively
(``cel_native``) and builds a pass's CEL context only for the others, with the same values.
Entitlement selection runs natively over the indexed snapshot. The per-evaluation work is kept
lean on purpose (issue 13: p50 <= 50 us on a 1 M-row estate): what depends only on the policy is
worked out once per compiled rule or selector and kept in small identity-checked memos.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any

from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.cel_scope import PassScope
from keycloak_policy_bridge.condition import ConditionRuntimeError, prune
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
from keycloak_policy_bridge.policy import TEMPLATE_FIELDS, ClaimGrant, Policy, Rule, Selector
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


class _Principal:
    """A Keycloak principal joined to the snapshot, with its CEL view built once."""

    __slots__ = ("role", "resolution", "kind", "view", "effective", "_by_kind", "_entitlement_map", "_by_source")

    def __init__(
        self, role: str, resolution: Resolution, kind: str, view: dict[str, Any], effective: tuple[EntitlementRecord, ...]
    ) -> None:
        self.role = role
        self.resolution = resolution
        self.kind = kind
        self.view = view
        self.effective = effective
        self._by_kind: dict[str, list[EntitlementRecord]] | None = None
        self._entitlement_map: dict[str, list[str]] | None = None
        self._by_source: dict[str, dict[str, tuple[list[int], list[EntitlementRecord]]]] | None = None

    @property
    def identity(self) -> Identity | None:
        return self.resolution.identity

    def by_kind(self) -> dict[str, list[EntitlementRecord]]:
        """Effective records grouped by entitlement kind (selectors read one or two kinds)."""
        if self._by_kind is None:
            grouped: dict[str, list[EntitlementRecord]] = {}
            for record in self.effective:
                same_kind = grouped.get(record.kind)
                if same_kind is None:
                    grouped[record.kind] = [record]
                else:
                    same_kind.append(record)
            self._by_kind = grouped
        return self._by_kind

    def entitlement_map(self) -> dict[str, list[str]]:
        """Effective entitlement values by kind, for CEL (``entitlements.app_role``)."""
        if self._entitlement_map is None:
            self._entitlement_map = {k: sorted({r.value for r in v}) for k, v in self.by_kind().items()}
        return self._entitlement_map

    def entitlement_values(self, kinds: frozenset[str] | None) -> dict[str, list[str]]:
        """``entitlement_map`` restricted to ``kinds`` (None: all), computing only those."""
        if kinds is None or self._entitlement_map is not None:
            return prune(self.entitlement_map(), kinds)  # type: ignore[no-any-return]  # prune keeps the map's type
        by_kind = self.by_kind()
        return {k: sorted({r.value for r in by_kind[k]}) for k in kinds if k in by_kind}

    def sources_of(self, kind: str) -> dict[str, tuple[list[int], list[EntitlementRecord]]]:
        """``by_kind()[kind]`` by record source, as (positions in it, records): a selector reads
        only the sources it names instead of testing every record (a principal can hold hundreds)."""
        if self._by_source is None:
            self._by_source = {}
        found = self._by_source.get(kind)
        if found is None:
            found = {}
            for position, record in enumerate(self.by_kind().get(kind, ())):
                group = found.get(record.source)
                if group is None:
                    found[record.source] = ([position], [record])
                else:
                    group[0].append(position)
                    group[1].append(record)
            self._by_source[kind] = found
        return found

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

    def grant(
        self, claim: str, shape: str, values: list[tuple[Any, bool, tuple[EntitlementRecord, ...]]], rule: str, pass_name: str
    ) -> str | None:
        """Record that a rule granted ``claim`` (issued even with no values, maybe empty) and add
        its values in order; return a conflict message instead when the claim cannot take one."""
        known = self.shapes.get(claim)
        if known is None:
            self.shapes[claim] = known = shape
            self.values[claim] = {}
        if known != shape:
            return f"claim '{claim}' is granted both as a list and as a single value"
        bucket = self.values[claim]
        for value, privileged, records in values:
            key = value if type(value) is str else _value_key(value)
            entry = bucket.get(key)
            if entry is None:
                if shape == "scalar" and bucket:
                    return f"claim '{claim}' is granted two different single values"
                bucket[key] = [value, privileged, [_source(rule, pass_name, records)]]
            else:
                entry[1] = entry[1] or privileged
                entry[2].append(_source(rule, pass_name, records))
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
            principals=tuple([p.info() for p in principals]),
            inputs=tuple([self.touched[k] for k in sorted(self.touched)]),
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
        request, policy = self.request, self.policy
        scope = "actor" if name == "prior_actor" else name
        candidates = policy.candidates(request.event, request.grant_type, request.client_id, request.delegated)
        rules, denies, grant_rules = policy.pass_rules(candidates, scope, grants, principal.kind, subject.kind)
        cel = PassScope(self, principal, subject, actors, rules)
        claims = _Claims()
        condition, applies = self._condition, self._applies
        # A rule without a time-bound exception (nearly all) goes straight to its condition.
        for rule in denies:
            if (rule.condition is None or condition(rule, name, cel)) if rule.exception is None else applies(rule, name, cel):
                self._deny(rule.id, rule.reason or "denied", name, user_message=rule.user_message)
        if self.denied or not grants:
            return claims  # no token will be minted: computing grants would be wasted work
        for rule in grant_rules:
            if (rule.condition is None or condition(rule, name, cel)) if rule.exception is None else applies(rule, name, cel):
                self._grant(rule, name, principal, claims, cel)
        return claims

    def _applies(self, rule: Rule, pass_name: str, cel: PassScope) -> bool:
        """Condition, then the exception window. CEL errors deny in deny rules, skip grant rules.

        The window is checked after the condition so that "not in force" is reported only to
        requests the exception was written for, not to every request after it expires.
        """
        exception = rule.exception
        if exception is None:
            return rule.condition is None or self._condition(rule, pass_name, cel)
        if not exception.active(self.now):
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
        if result:
            self.reasons.append(Reason(rule.id, f"time-bound exception {exception.ticket} applied", "exception", evaluation_pass=pass_name))
        return result

    def _condition(self, rule: Rule, pass_name: str, cel: PassScope) -> bool:
        assert rule.condition is not None
        try:
            result = cel.run(rule.condition, rule.needs)
        except ConditionRuntimeError as exc:
            fail_closed = rule.effect == "deny"
            action = "denied (fail closed)" if fail_closed else "rule skipped"
            self.reasons.append(Reason(rule.id, f"{rule.path}.condition failed: {exc}; {action}", "error", evaluation_pass=pass_name))
            return fail_closed
        if result is not True and result is not False:
            fail_closed = rule.effect == "deny"
            self.reasons.append(
                Reason(rule.id, f"{rule.path}.condition returned {type(result).__name__}, not bool", "error", evaluation_pass=pass_name)
            )
            return fail_closed
        return result

    def _grant(self, rule: Rule, pass_name: str, principal: _Principal, claims: _Claims, cel: PassScope) -> None:
        for grant in rule.claims:
            selector = grant.selector
            values: list[tuple[Any, bool, tuple[EntitlementRecord, ...]]] | None
            if selector is not None:  # the common grant: straight to the selection
                values = self._select(rule, grant, pass_name, principal, selector)
                if grant.single:
                    values = self._single(rule, grant, pass_name, values)
                    if values is None:
                        continue
            else:
                values = self._grant_values(rule, grant, pass_name, cel)
                if values is None:
                    continue
            shape = "scalar" if grant.single else "list"
            if selector is None and not grant.single:
                raw = values[0][0] if values else None
                if grant.as_list and not isinstance(raw, list):
                    raw = [raw]
                shape = "list" if isinstance(raw, list) else "scalar"
                values = [(v, grant.privileged, ()) for v in raw] if isinstance(raw, list) else values
            conflict = claims.grant(grant.claim, shape, values, rule.id, pass_name)
            if conflict is not None:
                self._deny("kpb:claims", f"{conflict} (last by rule '{rule.id}')", pass_name, kind="error")
        for claim in rule.remove_claims:
            self.remove.append(claim)
        if rule.max_ttl_seconds is not None:
            self._cap_ttl(rule.max_ttl_seconds)

    def _grant_values(
        self, rule: Rule, grant: ClaimGrant, pass_name: str, cel: PassScope
    ) -> list[tuple[Any, bool, tuple[EntitlementRecord, ...]]] | None:
        """The (value, privileged, records) a literal or ``expr`` grant yields, or None when it yields
        nothing (``_grant`` selects for a ``from_entitlements`` grant)."""
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
        raise AssertionError("a grant is a literal, an expr or a selector")  # the compiler guarantees one of the three

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
        plan = _selector_plan(selector)
        by_kind = principal.by_kind()
        records: list[EntitlementRecord] = []  # read only: it may be one of the principal's lists
        for kind in selector.kinds:
            part = by_kind.get(kind)
            if not part:
                continue
            if not plan.any_source:
                matched = plan.matching(principal.sources_of(kind))
                if not matched:
                    continue
                if len(matched) > 1:
                    # Several sources: back into the order of the principal's records, as one scan gives.
                    part = [part[i] for i in sorted(i for positions, _ in matched for i in positions)]
                else:
                    part = matched[0][1]
            records = part if not records else [*records, *part]
        privileged_levels = self.policy.freshness.privileged_levels
        levels = selector.privilege_levels
        values_match = None if plan.any_value else selector.values.matches
        render = plan.render
        certification_days = selector.certification_max_age_days
        by_value: dict[str, list[Any]] = {}
        for record in records:
            level = record.privilege_level
            if levels is not None and level not in levels:
                continue
            value = record.value
            if values_match is not None and not values_match(value):
                continue
            if wanted is not None and value not in wanted:
                continue
            output = value if render is None else render(record)
            if certification_days is not None and level in selector.certification_levels:
                certified = record.last_certified_at
                if certified is None or self.now - certified > selector.certification_max_age:
                    state = "never certified" if certified is None else f"last certified {(self.now - certified).days} days ago"
                    self.reasons.append(
                        Reason(
                            rule.id,
                            f"{output!r} left out: {level}-privilege entitlement {state}; "
                            f"certification within {certification_days} days is required",
                            "omit",
                            grant.claim,
                            pass_name,
                        )
                    )
                    continue
            entry = by_value.get(output)
            if entry is None:
                by_value[output] = [level in privileged_levels, [record]]
            else:
                entry[0] = entry[0] or level in privileged_levels
                entry[1].append(record)
        return [(value, flag, tuple(records)) for value, (flag, records) in by_value.items()]

    # -- finishing ------------------------------------------------------------------------

    def _finish(
        self, subject_claims: _Claims, actor_claims: _Claims | None, actors: list[_Principal]
    ) -> tuple[dict[str, Any], dict[str, tuple[ClaimValue, ...]]]:
        claims: dict[str, Any] = {}
        provenance: dict[str, tuple[ClaimValue, ...]] = {}
        if actor_claims is None and not self.privileged_stale:
            # The common case, nothing to leave out: every value is kept.
            for claim in sorted(subject_claims.shapes):
                granted = [ClaimValue(value, tuple(sources)) for value, _, sources in subject_claims.values[claim].values()]
                _place(claims, provenance, claim, subject_claims.shapes[claim], granted)
            return claims, provenance
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
            _place(claims, provenance, claim, shape, kept)
        if actors:
            claims["act"] = _act_claim(actors)
        return claims, provenance


class _SelectorPlan:
    """What a selector needs at every evaluation, worked out once per compiled selector."""

    __slots__ = ("any_source", "any_value", "render", "_sources", "_exact", "_source_memo")

    def __init__(self, selector: Selector) -> None:
        self._sources = selector.sources
        self.any_source = selector.sources.unrestricted
        self.any_value = selector.values.unrestricted
        self.render = _renderer(selector.template)
        patterns = selector.sources.patterns
        wild = any(c in p for p in patterns for c in "*?[")
        self._exact = None if wild else tuple(sorted(set(patterns)))  # most rules name their sources
        self._source_memo: dict[str, bool] = {}

    def matching(self, groups: dict[str, tuple[list[int], list[EntitlementRecord]]]) -> list[tuple[list[int], list[EntitlementRecord]]]:
        """The groups (``_Principal.sources_of``) whose source the selector's sources match."""
        exact = self._exact
        if exact is not None:
            return [groups[s] for s in exact if s in groups]
        memo = self._source_memo
        out = []
        for source, group in groups.items():
            found = memo.get(source)
            if found is None:
                # Remembered: an estate has few sources, and a glob costs a regex match.
                found = self._sources.matches(source)
                if len(memo) < _MEMO_LIMIT:
                    memo[source] = found
            if found:
                out.append(group)
        return out


_MEMO_LIMIT = 4096
_SELECTOR_PLANS: dict[int, tuple[Selector, _SelectorPlan]] = {}


def _selector_plan(selector: Selector) -> _SelectorPlan:
    found = _SELECTOR_PLANS.get(id(selector))
    if found is None or found[0] is not selector:
        if len(_SELECTOR_PLANS) >= _MEMO_LIMIT:
            _SELECTOR_PLANS.clear()  # old policies' selectors; the live ones are recomputed once
        found = (selector, _SelectorPlan(selector))
        _SELECTOR_PLANS[id(selector)] = found
    return found[1]


def _renderer(template: str | None) -> Callable[[EntitlementRecord], str] | None:
    """``template.format_map`` of a record's fields, as a %-format when the template only has
    plain placeholders (the same text: ``format(x, "")`` is ``str(x)`` for the str fields)."""
    if template is None:
        return None
    parts = list(string.Formatter().parse(template))
    if any(field is not None and (spec or conversion or field not in TEMPLATE_FIELDS) for _, field, spec, conversion in parts):
        return lambda r: template.format_map({"value": r.value, "source": r.source, "account": r.account, "kind": r.kind})
    names = [field for _, field, _, _ in parts if field is not None]
    if not names:
        constant = "".join(literal for literal, _, _, _ in parts)
        return lambda r: constant
    text = "".join(literal.replace("%", "%%") + ("%s" if field is not None else "") for literal, field, _, _ in parts)
    getter = attrgetter(*names)
    if len(names) == 1:
        return lambda r: text % (getter(r),)
    return lambda r: text % getter(r)


_SOURCES: dict[tuple[str, str], ValueSource] = {}


def _source(rule: str, pass_name: str, records: tuple[EntitlementRecord, ...]) -> ValueSource:
    """``ValueSource(rule, pass_name, records)``; the record-less ones (literal and ``expr``
    values) are shared, being immutable values that recur at every evaluation."""
    if records:
        return ValueSource(rule, pass_name, records)
    key = (rule, pass_name)
    found = _SOURCES.get(key)
    if found is None:
        if len(_SOURCES) >= _MEMO_LIMIT:
            _SOURCES.clear()
        found = _SOURCES[key] = ValueSource(rule, pass_name, ())
    return found


def _place(claims: dict[str, Any], provenance: dict[str, tuple[ClaimValue, ...]], claim: str, shape: str, values: list[ClaimValue]) -> None:
    """Put a claim's granted ``values`` in the token: a list claim sorted (``value_order``), a
    single-valued claim its one value, no value no claim; and their provenance beside."""
    if shape == "list":
        values.sort(key=_claim_value_order)
        claims[claim] = [v.value for v in values]
    elif values:
        claims[claim] = values[0].value
    else:
        return
    provenance[claim] = tuple(values)


def _claim_value_order(value: ClaimValue) -> tuple[int, Any]:
    """A list claim's order: strings first, then other values by their canonical JSON."""
    return (0, value.value) if type(value.value) is str else (1, canonical_json(value.value))


def _value_key(value: Any) -> str | bytes:
    """``decision.value_key``, without the JSON encoder for the scalars policies grant most
    (``true``, counts): their canonical JSON is known."""
    if value is True:
        return b"true"
    if value is False:
        return b"false"
    if type(value) is int:
        return str(value).encode()  # the encoder writes int.__repr__, which is str()
    return value_key(value)


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
