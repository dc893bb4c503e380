"""The policy: load, validate and compile a ``kpb-policy/1`` JSON document.

``compile_policy`` is all-or-nothing: it either returns an immutable ``Policy`` whose CEL
programs, globs and rule index are built, or raises ``PolicyError`` listing *every* problem with
its JSON path (schema, CEL syntax, unknown references, reserved claims, cycles). Callers that hold
an active policy keep it when a candidate fails, so a malformed policy never half-applies.

Nothing here reads the clock: time-bound exceptions are compared with the engine's ``now``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema

from keycloak_policy_bridge.canonical import digest
from keycloak_policy_bridge.cel_cost import MAX_EXPRESSION_COST, CostEstimateError, estimate_cost
from keycloak_policy_bridge.condition import (
    BUILTIN_VARIABLES,
    ConditionSyntaxError,
    Expression,
    Fields,
    compile_expression,
    merge_fields,
    unknown_references,
)
from keycloak_policy_bridge.entitlements import STRICT_JOIN, JoinOptions
from keycloak_policy_bridge.errors import Issue, PolicyError
from keycloak_policy_bridge.json_schema import json_path, load_schema, validator
from keycloak_policy_bridge.matching import GlobSet
from keycloak_policy_bridge.request import GRANT_TYPE_ALIASES
from keycloak_policy_bridge.timeutil import parse_rfc3339

SPEC = "kpb-policy/1"
POLICY_SCHEMA = "policy.v1.schema.json"  # in keycloak_policy_bridge/schemas (json_schema)

# Claims a policy may never set or remove. The first group is the JWT/OIDC envelope Keycloak
# owns; `act`/`may_act` are written by the engine from the verified actor chain, and
# `authz_decision_id`/`authz_degraded` by the mapper.
RESERVED_CLAIMS: frozenset[str] = frozenset(
    {
        # the JWT/OIDC envelope Keycloak owns
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "azp",
        "typ",
        "nonce",
        "auth_time",
        "session_state",
        "sid",
        "scope",
        "acr",
        "cnf",
        "at_hash",
        "c_hash",
        "s_hash",
        # written by the engine from the verified actor chain
        "act",
        "may_act",
        # written by the mapper
        "authz_decision_id",
        "authz_degraded",
    }
)
# Claims Keycloak keeps in typed fields of its token classes (standard OIDC profile claims, its
# role maps, CORS origins): the mapper cannot set them as plain claims and refuses a decision
# that does, failing the token. A policy may withdraw them (remove_claims) but not set them.
# contract/vectors/claims/claim-rules.json is the list both sides test against.
KEYCLOAK_TYPED_CLAIMS: frozenset[str] = frozenset(
    {
        "name",
        "given_name",
        "family_name",
        "middle_name",
        "nickname",
        "preferred_username",
        "profile",
        "picture",
        "website",
        "email",
        "email_verified",
        "gender",
        "birthdate",
        "zoneinfo",
        "locale",
        "phone_number",
        "phone_number_verified",
        "address",
        "updated_at",
        "claims_locales",
        "realm_access",
        "resource_access",
        "allowed-origins",
        "trusted-certs",
        "authorization",
        "authorization_details",
    }
)

_RESERVED_FOLDED = {name.lower(): name for name in RESERVED_CLAIMS}
_TYPED_FOLDED = {name.lower(): name for name in KEYCLOAK_TYPED_CLAIMS}
_NESTING = re.compile(r"[./]")  # what JSON-path style consumers (and Keycloak's own claim paths) read as nesting


def claim_name_conflict(name: str, *, setting: bool) -> tuple[str, str] | None:
    """Why a policy may not set (``setting``) or remove the claim ``name``, as (code, message), or None.

    The one rule for claim identity at validation: a reserved claim, a name that differs from one
    only by case (``SUB``: clients that fold case would read it as ``sub``), or one that addresses a
    reserved claim's inside (``act.sub``, ``realm_access.roles``: JSON-path readers and Keycloak's
    claim paths nest on ``.``) is refused; Keycloak's typed claims may be removed, never set.
    """
    folded, head = name.lower(), _NESTING.split(name, maxsplit=1)[0].lower()
    if name in RESERVED_CLAIMS:
        return "reserved_claim", f"'{name}' is a reserved claim and cannot be {'set' if setting else 'removed'} by policy"
    if folded in _RESERVED_FOLDED:
        return "reserved_claim", f"'{name}' differs from the reserved claim '{_RESERVED_FOLDED[folded]}' only by case"
    if head != folded and head in _RESERVED_FOLDED:
        return "reserved_claim", f"'{name}' addresses the inside of the reserved claim '{_RESERVED_FOLDED[head]}'"
    if head != folded and head in _TYPED_FOLDED:
        return "typed_claim", f"'{name}' addresses the inside of Keycloak's typed claim '{_TYPED_FOLDED[head]}'"
    if setting and name in KEYCLOAK_TYPED_CLAIMS:
        return "typed_claim", f"'{name}' is held in a typed field of Keycloak's tokens: a policy may remove it but not set it"
    if setting and folded in _TYPED_FOLDED:
        return "typed_claim", f"'{name}' differs from Keycloak's typed claim '{_TYPED_FOLDED[folded]}' only by case"
    return None


PRIVILEGE_LEVELS = ("none", "low", "medium", "high")
TEMPLATE_FIELDS = ("value", "source", "account", "kind")
# Estimated CEL work of all of a policy's expressions together (cel_cost.estimate_cost units):
# a pass evaluates each at most once, so this bounds the CEL time of one pass (~1 s worst case).
MAX_POLICY_COST = 4 * MAX_EXPRESSION_COST
# A deny rule's user_message is shown as written to the person refused, as OAuth
# error_description text: RFC 6749 section 5.2 allows %x20-21 / %x23-5B / %x5D-7E only. Braces are
# refused too, so the text is never mistaken for a template (nothing is expanded into it: request
# values must not reach another user's screen), and angle brackets, for clients that render it
# as HTML. policy.v1.schema.json $defs/rule/properties/user_message has the same rule.
USER_MESSAGE_MAX = 200
_USER_MESSAGE_TEXT = re.compile(r"[\x20\x21\x23-\x3b\x3d\x3f-\x5b\x5d-\x7a\x7c\x7e]+")  # fullmatch: the schema's "$" admits a final newline
USER_MESSAGE_RULE = (
    f'must be plain text of at most {USER_MESSAGE_MAX} characters: printable ASCII without " \\ < > {{ }} '
    "(it is shown to the user as written, as OAuth error_description text; nothing is expanded into it)"
)


@dataclass(frozen=True)
class Selector:
    """A native (non-CEL) filter over a principal's effective entitlement records."""

    path: str
    kinds: tuple[str, ...]  # sorted, so selection order is deterministic
    sources: GlobSet
    values: GlobSet
    privilege_levels: frozenset[str] | None
    match: tuple[str, ...] | None  # request path such as ("context", "tenant")
    template: str | None
    certification_levels: frozenset[str]
    certification_max_age_days: int | None
    certification_max_age: timedelta = timedelta(0)


@dataclass(frozen=True)
class ClaimGrant:
    """One claim a grant rule sets: a literal, a selector, or a CEL expression."""

    claim: str
    path: str
    value: Any = None
    selector: Selector | None = None
    expr: Expression | None = None
    single: bool = False
    privileged: bool = False
    is_literal: bool = False
    as_list: bool = False  # "as": "list" given explicitly: a scalar value or expr result becomes [value]


@dataclass(frozen=True)
class When:
    """Cheap scoping, checked before any CEL runs. Empty fields match everything."""

    principal_kinds: frozenset[str] | None = None
    subject_kinds: frozenset[str] | None = None
    clients: GlobSet = GlobSet()
    grant_types: frozenset[str] | None = None
    events: frozenset[str] | None = None
    delegated: bool | None = None
    evaluation_pass: str | None = None  # "subject" | "actor"

    def matches_request(self, event: str, grant_type: str, client_id: str, delegated: bool) -> bool:
        """The request-level part of the scope (everything but the kinds)."""
        if self.events is not None and event not in self.events:
            return False
        if self.grant_types is not None and grant_type not in self.grant_types:
            return False
        if self.delegated is not None and self.delegated != delegated:
            return False
        return self.clients.matches(client_id)


@dataclass(frozen=True)
class TimeBound:
    """A time-bound exception: the rule applies only in [starts_at, expires_at)."""

    ticket: str
    expires_at: datetime
    starts_at: datetime | None = None
    approved_by: str | None = None

    def active(self, now: datetime) -> bool:
        if self.starts_at is not None and now < self.starts_at:
            return False
        return now < self.expires_at


@dataclass(frozen=True)
class Rule:
    """A compiled rule. ``needs`` is every CEL variable its expressions read (transitively)."""

    id: str
    index: int
    path: str
    effect: str  # "grant" | "deny"
    when: When
    condition: Expression | None
    reason: str | None
    claims: tuple[ClaimGrant, ...]
    remove_claims: tuple[str, ...]
    max_ttl_seconds: int | None
    exception: TimeBound | None
    description: str
    needs: frozenset[str]
    user_message: str | None = None  # deny rules: the end user's text (None: the default)
    fields: Fields = field(default_factory=dict)  # built-in variable -> fields read (None: all)


@dataclass(frozen=True)
class FeedFreshness:
    """Age limit of one context feed and what staleness does."""

    max_age_seconds: int
    on_stale: str = "ignore"  # "deny" | "ignore"


@dataclass(frozen=True)
class Freshness:
    """Snapshot age limits (seconds). ``None`` disables a limit."""

    privileged_max_age_seconds: int | None = None
    deny_max_age_seconds: int | None = None
    privileged_levels: frozenset[str] = frozenset({"high"})
    feeds: tuple[tuple[str, FeedFreshness], ...] = ()


@dataclass(frozen=True)
class DelegationAllow:
    actor_kinds: frozenset[str]
    subject_kinds: frozenset[str]
    actor_clients: GlobSet


@dataclass(frozen=True)
class Delegation:
    """Who may act for whom; ``None`` on the policy means delegation is denied outright."""

    max_chain_depth: int
    allow: tuple[DelegationAllow, ...]
    subject_only_claims: frozenset[str]
    max_ttl_seconds: int | None


@dataclass(frozen=True)
class IdentityJoin:
    """The policy's explicit opt-outs from the strict subject join (``identity_join``), by the IGA
    source system of the snapshot (its manifest's ``source_system``). Empty: strict everywhere."""

    by_source: dict[str, JoinOptions] = field(default_factory=dict)

    def options(self, source_system: str) -> JoinOptions:
        """The join options for a snapshot from ``source_system`` (strict unless named)."""
        return self.by_source.get(source_system, STRICT_JOIN)


@dataclass(frozen=True)
class Policy:
    """A compiled, immutable policy. Safe to share between threads."""

    policy_id: str
    version: str
    owner: str
    description: str
    digest: str
    document: dict[str, Any]
    variables: tuple[tuple[str, Expression], ...]  # in dependency order
    rules: tuple[Rule, ...]
    freshness: Freshness
    delegation: Delegation | None
    remove_claims: tuple[str, ...]
    warnings: tuple[Issue, ...] = ()
    identity_join: IdentityJoin = field(default_factory=IdentityJoin)
    _candidates: dict[tuple[str, str, str, bool], tuple[Rule, ...]] = field(default_factory=dict, compare=False, repr=False)
    _scopes: dict[tuple[int, ...], tuple[frozenset[str], Fields]] = field(default_factory=dict, compare=False, repr=False)
    _pass_rules: dict[tuple[Any, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    def candidates(self, event: str, grant_type: str, client_id: str, delegated: bool) -> tuple[Rule, ...]:
        """Rules whose request-level scope matches, in document order (memoized).

        The cache key space is bounded by the realm's clients x grant types x events, so it
        stays small; a race between threads only computes the same tuple twice.
        """
        key = (event, grant_type, client_id, delegated)
        found = self._candidates.get(key)
        if found is None:
            found = tuple(r for r in self.rules if r.when.matches_request(event, grant_type, client_id, delegated))
            if len(self._candidates) < 65536:
                self._candidates[key] = found
        return found

    def pass_rules(
        self, candidates: tuple[Rule, ...], scope: str, grants: bool, principal_kind: str, subject_kind: str
    ) -> tuple[tuple[Rule, ...], tuple[Rule, ...], tuple[Rule, ...]]:
        """The candidates that apply in one evaluation pass: (all, deny rules, grant rules).

        Memoized: the key space is candidate lists x passes x kinds, all small.
        """
        key = (id(candidates), scope, grants, principal_kind, subject_kind)
        found = self._pass_rules.get(key)
        if found is None or found[0] is not candidates:
            rules = tuple(
                r
                for r in candidates
                if (r.when.evaluation_pass is None or r.when.evaluation_pass == scope)
                and (grants or r.effect == "deny")
                and (r.when.principal_kinds is None or principal_kind in r.when.principal_kinds)
                and (r.when.subject_kinds is None or subject_kind in r.when.subject_kinds)
            )
            denies = tuple(r for r in rules if r.effect == "deny")
            grant_rules = tuple(r for r in rules if r.effect == "grant")
            found = (candidates, (rules, denies, grant_rules))
            if len(self._pass_rules) < 65536:
                self._pass_rules[key] = found
        return found[1]

    def scope(self, rules: tuple[Rule, ...]) -> tuple[frozenset[str], Fields]:
        """Variables and fields a set of rules reads (memoized by the rules' positions)."""
        key = tuple(r.index for r in rules)
        found = self._scopes.get(key)
        if found is None:
            needed = frozenset().union(*(r.needs for r in rules)) if rules else frozenset()
            found = (needed, merge_fields(*(r.fields for r in rules)))
            if len(self._scopes) < 65536:
                self._scopes[key] = found
        return found

    def variable_closure(self, names: frozenset[str]) -> tuple[tuple[str, Expression], ...]:
        """The policy variables ``names`` depend on (transitively), in evaluation order."""
        return tuple((n, e) for n, e in self.variables if n in names)

    def summary(self) -> str:
        denies = sum(1 for r in self.rules if r.effect == "deny")
        return (
            f"{self.policy_id} {self.version} ({self.digest[:19]}): {len(self.rules)} rules "
            f"({denies} deny, {len(self.rules) - denies} grant), {len(self.variables)} variable(s), owner {self.owner}"
        )


# --------------------------------------------------------------------------------------------
# Loading


def load_policy(path: str | Path) -> Policy:
    """Read, validate and compile the policy file at ``path``.

    Raises:
        PolicyError: the file cannot be read, is not JSON, or is not a valid policy.
    """
    location = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PolicyError(f"{location}: cannot read policy file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{location}: policy file is not UTF-8") from None
    return compile_policy(parse_policy_text(text, location))


def parse_policy_text(text: str, location: str = "<policy>") -> Any:
    """Parse JSON text strictly (``strict_json``: depth, number and surrogate limits, no
    repeated keys), locating errors by line and column (and JSON path when a value is named).

    Raises:
        PolicyError: the text is not acceptable JSON.
    """
    from keycloak_policy_bridge import strict_json

    try:
        return strict_json.loads(text)
    except strict_json.StrictJsonError as exc:
        where = f"line {exc.line} column {exc.column}" if exc.path == "$" else f"{exc.path} (line {exc.line} column {exc.column})"
        raise PolicyError(f"{location}: not valid JSON", [Issue(where, exc.reason, "json_syntax")]) from None


def compile_policy(document: Any) -> Policy:
    """Validate ``document`` completely and compile it.

    Raises:
        PolicyError: with one ``Issue`` per problem found, sorted by path.
    """
    issues = _schema_issues(document)
    if issues and not (isinstance(document, dict) and isinstance(document.get("rules", []), list)):
        raise PolicyError(f"policy is invalid: {len(issues)} problem(s)", issues)
    # Semantic checks run even when the schema failed, skipping only the parts the schema
    # rejected, so that one run lists every problem in the file.
    return _Compiler(document, issues).compile()


def validate_policy(document: Any) -> list[Issue]:
    """Return every problem in ``document`` (empty when it compiles)."""
    try:
        compile_policy(document)
    except PolicyError as exc:
        return list(exc.issues)
    return []


_ONE_OF_CLAIM = "needs exactly one of 'value', 'from_entitlements' or 'expr'"


def _schema_issues(document: Any) -> list[Issue]:
    issues: dict[tuple[str, str], Issue] = {}
    for error in validator(POLICY_SCHEMA, check_formats=True).iter_errors(document):
        path = json_path(error.absolute_path)
        message = _friendly(error)
        issues.setdefault((path, message), Issue(path, message, "schema"))
    return sorted(issues.values(), key=lambda i: (i.path, i.message))


def _friendly(error: jsonschema.ValidationError) -> str:
    """Turn combinator errors (oneOf, if/then) into sentences an admin can act on."""
    instance = error.instance if isinstance(error.instance, dict) else {}
    if error.validator == "oneOf" and error.schema == _claim_grant_schema():
        return _ONE_OF_CLAIM
    if "allOf" in error.schema_path and error.validator in ("not", "anyOf", "required"):
        if instance.get("effect") == "deny":
            if error.validator == "required":
                return "a deny rule needs a 'reason'"
            return "a deny rule cannot set 'claims', 'remove_claims' or 'max_ttl_seconds'"
        return "a grant rule needs at least one of 'claims', 'remove_claims' or 'max_ttl_seconds'"
    if error.validator == "maxLength":
        return f"is longer than {error.validator_value} characters"
    if error.validator == "additionalProperties":
        return str(error.message).replace("Additional properties are not allowed", "unknown field(s)")
    if error.validator == "pattern" and error.absolute_path and error.absolute_path[-1] == "user_message":
        return USER_MESSAGE_RULE  # never echoed: the text is the author's, and the regex helps no one
    if error.validator == "pattern" and isinstance(error.instance, str):
        return f"{error.instance!r} does not have the required form ({error.validator_value})"
    return str(error.message)


def _claim_grant_schema() -> Any:
    return load_schema(POLICY_SCHEMA)["$defs"]["claimGrant"]


class _Compiler:
    """Semantic checks and compilation; collects every issue before failing."""

    def __init__(self, document: dict[str, Any], schema_issues: list[Issue]) -> None:
        self.doc = document
        self.issues: list[Issue] = list(schema_issues)
        self.broken_paths = {i.path for i in schema_issues}
        self.warnings: list[Issue] = []
        self.variable_exprs: dict[str, Expression] = {}
        self.variable_deps: dict[str, frozenset[str]] = {}
        self.selectors: dict[str, Selector] = {}
        self.used_selectors: set[str] = set()
        self.used_variables: set[str] = set()

    def fail(self, path: str, message: str, code: str = "invalid") -> None:
        self.issues.append(Issue(path, message, code))

    def broken(self, path: str) -> bool:
        """True when the schema already rejected ``path`` or something inside it."""
        return any(p == path or p.startswith((path + ".", path + "[")) for p in self.broken_paths)

    def sound(self, parts: list[Any]) -> bool:
        return not self.broken(json_path(parts))

    def compile(self) -> Policy:
        doc = self.doc
        variables = doc.get("variables", {}) if self.sound(["variables"]) else {}
        self._compile_variables({k: v for k, v in variables.items() if self.sound(["variables", k])})
        for name, spec in doc.get("selectors", {}).items():
            if self.sound(["selectors", name]):
                self.selectors[name] = self._selector(spec, json_path(["selectors", name]))
            else:
                self.used_selectors.add(name)  # defined but broken: do not also call it unknown
                self.selectors[name] = self._selector({"kind": "-"}, json_path(["selectors", name]))
        freshness = self._freshness(doc.get("freshness") if self.sound(["freshness"]) else None)
        delegation = self._delegation(doc.get("delegation")) if self.sound(["delegation"]) else None
        remove = tuple(doc.get("remove_claims", [])) if self.sound(["remove_claims"]) else ()
        identity_join = self._identity_join(doc.get("identity_join", {})) if self.sound(["identity_join"]) else IdentityJoin()
        self._check_claim_names(remove, ["remove_claims"], "removed")
        rules = self._rules([r for r in doc.get("rules", [])])
        ordered = self._variable_order()
        self._check_costs(ordered, rules)
        for name in sorted(set(self.selectors) - self.used_selectors):
            self.warnings.append(Issue(json_path(["selectors", name]), "selector is never used", "unused"))
        for name in sorted(set(self.variable_exprs) - self.used_variables):
            self.warnings.append(Issue(json_path(["variables", name]), "variable is never used", "unused"))
        if self.issues:
            issues = sorted(self.issues, key=lambda i: (i.path, i.message))
            raise PolicyError(f"policy is invalid: {len(issues)} problem(s)", issues)
        return Policy(
            policy_id=doc["policy_id"],
            version=doc["version"],
            owner=doc["owner"],
            description=doc.get("description", ""),
            digest=digest(doc),
            document=doc,
            variables=ordered,
            rules=rules,
            freshness=freshness,
            delegation=delegation,
            remove_claims=remove,
            warnings=tuple(self.warnings),
            identity_join=identity_join,
        )

    # -- CEL ------------------------------------------------------------------------------

    def _expression(self, source: str, path: str) -> Expression | None:
        try:
            expr = compile_expression(source)
        except ConditionSyntaxError as exc:
            self.fail(path, f"CEL does not compile: {exc}", "cel_syntax")
            return None
        defined = frozenset(self.variable_exprs) | frozenset(self.doc.get("variables", {}))
        for problem in unknown_references(expr, defined):
            self.fail(path, problem, "unknown_reference")
        self.used_variables.update(expr.variables & defined)
        return expr

    def _compile_variables(self, variables: dict[str, str]) -> None:
        for name, source in variables.items():
            path = json_path(["variables", name])
            if name in BUILTIN_VARIABLES:
                self.fail(path, f"'{name}' is a built-in variable and cannot be redefined", "reserved_name")
                continue
            try:
                expr = compile_expression(source)
            except ConditionSyntaxError as exc:
                self.fail(path, f"CEL does not compile: {exc}", "cel_syntax")
                continue
            self.variable_exprs[name] = expr
        defined = frozenset(variables)
        for name, expr in self.variable_exprs.items():
            for problem in unknown_references(expr, defined):
                self.fail(json_path(["variables", name]), problem, "unknown_reference")
            self.variable_deps[name] = expr.variables & defined

    def _variable_order(self) -> tuple[tuple[str, Expression], ...]:
        """Topological order of the variables; every cycle is reported with its members."""
        order: list[str] = []
        state: dict[str, int] = {}  # 1 = visiting, 2 = done

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = trail[trail.index(name) :] + [name]
                self.fail(json_path(["variables", name]), "variables form a cycle: " + " -> ".join(cycle), "cycle")
                return
            state[name] = 1
            for dep in sorted(self.variable_deps.get(name, ())):
                if dep in self.variable_exprs:
                    visit(dep, trail + [name])
            state[name] = 2
            order.append(name)

        for name in sorted(self.variable_exprs):
            visit(name, [])
        return tuple((n, self.variable_exprs[n]) for n in order)

    def _needs(self, exprs: list[Expression]) -> tuple[frozenset[str], Fields]:
        """Every variable the expressions read, with policy variables expanded transitively, and
        the fields of each built-in variable they read (see ``condition.field_uses``)."""
        needed: set[str] = set()
        used = list(exprs)
        stack = [v for e in exprs for v in e.variables]
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            needed.add(name)
            if name in self.variable_exprs:
                used.append(self.variable_exprs[name])
                stack.extend(self.variable_exprs[name].variables)
        return frozenset(needed), merge_fields(*(e.fields for e in used))

    def _check_costs(self, ordered: tuple[tuple[str, Expression], ...], rules: tuple[Rule, ...]) -> None:
        """Refuse expressions whose estimated CEL work exceeds the budgets (security defect 3).

        The runtime cannot interrupt an evaluation, so the bound is enforced here: each
        expression within ``MAX_EXPRESSION_COST``, all of them together within
        ``MAX_POLICY_COST``. Variables come first, in dependency order, so that each carries
        the size bound of its value into the expressions that read it.
        """
        sizes: dict[str, int] = {}
        total, over = 0, False
        checks: list[tuple[str, str, Expression, str | None]] = [
            (json_path(["variables", name]), f"variable '{name}'", expr, name) for name, expr in ordered
        ]
        for rule in rules:
            if rule.condition is not None:
                checks.append((f"{rule.path}.condition", f"rule '{rule.id}'", rule.condition, None))
            checks.extend((f"{g.path}.expr", f"rule '{rule.id}'", g.expr, None) for g in rule.claims if g.expr is not None)
        for path, owner, expr, variable in checks:
            try:
                estimate = estimate_cost(expr.source, sizes)
            except CostEstimateError as exc:  # the runtime parsed it; refuse rather than run it unbounded
                self.fail(path, f"{owner}: the cost of this expression cannot be estimated ({exc})", "cel_cost")
                over = True
                continue
            if variable is not None:
                sizes[variable] = estimate.size
            total += estimate.cost
            if estimate.cost > MAX_EXPRESSION_COST:
                over = True
                self.fail(
                    path,
                    f"{owner}: estimated CEL cost {estimate.cost:,} exceeds the budget of {MAX_EXPRESSION_COST:,} per expression "
                    "(nested comprehensions, map/filter over long lists and per-element regexes multiply; "
                    "docs/policy-language.md section 5.7)",
                    "cel_cost",
                )
        if total > MAX_POLICY_COST and not over:
            self.fail(
                "$.rules",
                f"the policy's CEL expressions are estimated at {total:,} together, over the budget of "
                f"{MAX_POLICY_COST:,} per evaluation pass (docs/policy-language.md section 5.7)",
                "cel_cost",
            )

    # -- parts ----------------------------------------------------------------------------

    def _check_claim_names(self, names: Any, parts: list[Any], verb: str) -> None:
        for i, name in enumerate(names):
            conflict = claim_name_conflict(name, setting=verb != "removed") if isinstance(name, str) else None
            if conflict is not None:
                self.fail(json_path([*parts, i]), conflict[1], conflict[0])

    def _selector(self, spec: dict[str, Any], path: str) -> Selector:
        kinds = spec["kind"] if isinstance(spec["kind"], list) else [spec["kind"]]
        if "template" in spec:
            self._check_template(spec["template"], f"{path}.template")
        cert = spec.get("certification")
        return Selector(
            path=path,
            kinds=tuple(sorted(set(kinds))),
            sources=GlobSet.of(spec.get("sources")),
            values=GlobSet.of(spec.get("values")),
            privilege_levels=frozenset(spec["privilege_levels"]) if "privilege_levels" in spec else None,
            match=tuple(spec["match"].split(".")) if "match" in spec else None,
            template=spec.get("template"),
            certification_levels=frozenset(cert.get("levels", ["high"])) if cert else frozenset(),
            certification_max_age_days=cert["max_age_days"] if cert else None,
            certification_max_age=timedelta(days=cert["max_age_days"]) if cert else timedelta(0),
        )

    def _check_template(self, template: str, path: str) -> None:
        try:
            fields = [name for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
        except ValueError as exc:
            self.fail(path, f"template is malformed: {exc}")
            return
        for name in fields:
            if name not in TEMPLATE_FIELDS:
                self.fail(
                    path,
                    f"unknown placeholder {{{name}}} (known: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)})",
                    "unknown_reference",
                )

    def _freshness(self, spec: dict[str, Any] | None) -> Freshness:
        if not spec:
            return Freshness()
        privileged = spec.get("privileged_max_age_seconds")
        deny = spec.get("deny_max_age_seconds")
        if privileged is not None and deny is not None and privileged > deny:
            self.fail("$.freshness", "privileged_max_age_seconds must not exceed deny_max_age_seconds")
        feeds = tuple(
            (name, FeedFreshness(f["max_age_seconds"], f.get("on_stale", "ignore"))) for name, f in sorted(spec.get("feeds", {}).items())
        )
        return Freshness(privileged, deny, frozenset(spec.get("privileged_levels", ["high"])), feeds)

    @staticmethod
    def _identity_join(spec: dict[str, Any]) -> IdentityJoin:
        # The schema has checked the shape: two lists of source system names, no wildcard.
        unverified = set(spec.get("allow_unverified_email", ()))
        to_pinned = set(spec.get("allow_username_to_pinned", ()))
        return IdentityJoin({s: JoinOptions(s in unverified, s in to_pinned) for s in sorted(unverified | to_pinned)})

    def _delegation(self, spec: dict[str, Any] | None) -> Delegation | None:
        if spec is None:
            return None
        subject_only = spec.get("subject_only_claims", [])
        self._check_claim_names(subject_only, ["delegation", "subject_only_claims"], "configured")
        return Delegation(
            max_chain_depth=spec.get("max_chain_depth", 1),
            allow=tuple(
                DelegationAllow(frozenset(a["actor_kinds"]), frozenset(a["subject_kinds"]), GlobSet.of(a.get("actor_clients")))
                for a in spec["allow"]
            ),
            subject_only_claims=frozenset(subject_only),
            max_ttl_seconds=spec.get("max_ttl_seconds"),
        )

    def _rules(self, specs: list[dict[str, Any]]) -> tuple[Rule, ...]:
        seen: dict[str, int] = {}
        rules = []
        for index, spec in enumerate(specs):
            path = json_path(["rules", index])
            if not isinstance(spec, dict) or not isinstance(spec.get("id"), str) or spec.get("effect") not in ("grant", "deny"):
                continue  # the schema reported it; nothing further can be checked
            if spec["id"] in seen:
                self.fail(f"{path}.id", f"duplicate rule id '{spec['id']}' (first at $.rules[{seen[spec['id']]}])", "duplicate")
            seen.setdefault(spec["id"], index)
            rules.append(self._rule(spec, index, path))
        return tuple(rules)

    def _rule(self, spec: dict[str, Any], index: int, path: str) -> Rule:
        exprs: list[Expression] = []
        condition = None
        if "user_message" in spec and spec["effect"] != "deny":
            self.fail(f"{path}.user_message", "only a deny rule has a user_message: a grant rule shows the user nothing")
        elif isinstance(spec.get("user_message"), str) and not self.broken(f"{path}.user_message"):
            if not _USER_MESSAGE_TEXT.fullmatch(spec["user_message"]):
                self.fail(f"{path}.user_message", USER_MESSAGE_RULE)
        if "condition" in spec and not self.broken(f"{path}.condition"):
            condition = self._expression(spec["condition"], f"{path}.condition")
            if condition is not None:
                exprs.append(condition)
        grants = []
        claims = spec.get("claims", {}) if isinstance(spec.get("claims", {}), dict) else {}
        for claim, grant in claims.items():
            gpath = f"{path}.claims" + json_path([claim])[1:]
            conflict = claim_name_conflict(claim, setting=True)
            if conflict is not None:
                self.fail(gpath, conflict[1], conflict[0])
                continue
            if self.broken(gpath):
                continue
            compiled = self._grant(claim, grant, gpath)
            if compiled is not None:
                grants.append(compiled)
                if compiled.expr is not None:
                    exprs.append(compiled.expr)
        remove = tuple(spec.get("remove_claims", [])) if not self.broken(f"{path}.remove_claims") else ()
        self._check_claim_names(remove, ["rules", index, "remove_claims"], "removed")
        needs, fields = self._needs(exprs)
        exception = None
        if "exception" in spec and not self.broken(f"{path}.exception"):
            exception = self._exception(spec["exception"], f"{path}.exception")
        return Rule(
            id=spec["id"],
            index=index,
            path=path,
            effect=spec["effect"],
            when=self._when(spec.get("when", {}) if not self.broken(f"{path}.when") else {}),
            condition=condition,
            reason=spec.get("reason"),
            user_message=spec.get("user_message") if spec["effect"] == "deny" and not self.broken(f"{path}.user_message") else None,
            claims=tuple(grants),
            remove_claims=remove,
            max_ttl_seconds=spec.get("max_ttl_seconds"),
            exception=exception,
            description=spec.get("description", ""),
            needs=needs,
            fields=fields,
        )

    def _grant(self, claim: str, spec: dict[str, Any], path: str) -> ClaimGrant | None:
        single = spec.get("as") == "single"
        as_list = spec.get("as") == "list"
        privileged = bool(spec.get("privileged", False))
        if "value" in spec:
            if single:
                self.fail(f"{path}.as", "'as: single' applies to from_entitlements and expr only")
            if spec["value"] is None:
                self.fail(f"{path}.value", "a literal null would issue nothing; drop the claim or use remove_claims")
            return ClaimGrant(claim, path, value=spec["value"], privileged=privileged, is_literal=True, as_list=as_list)
        if "expr" in spec:
            expr = self._expression(spec["expr"], f"{path}.expr")
            if expr is None:
                return None
            return ClaimGrant(claim, path, expr=expr, single=single, privileged=privileged, as_list=as_list)
        ref = spec["from_entitlements"]
        if "privileged" in spec:
            self.fail(f"{path}.privileged", "entitlement values take privilege from privilege_level; remove 'privileged'")
        if isinstance(ref, str):
            selector = self.selectors.get(ref)
            if selector is None:
                known = ", ".join(sorted(self.selectors)) or "none defined"
                self.fail(f"{path}.from_entitlements", f"unknown selector '{ref}' (known: {known})", "unknown_reference")
                return None
            self.used_selectors.add(ref)
        else:
            selector = self._selector(ref, f"{path}.from_entitlements")
        return ClaimGrant(claim, path, selector=selector, single=single)

    def _when(self, spec: dict[str, Any]) -> When:
        def kinds(key: str) -> frozenset[str] | None:
            return frozenset(spec[key]) if key in spec else None

        grants = None
        if "grant_types" in spec:
            grants = frozenset(GRANT_TYPE_ALIASES.get(g, g) for g in spec["grant_types"])
        return When(
            principal_kinds=kinds("principal_kinds"),
            subject_kinds=kinds("subject_kinds"),
            clients=GlobSet.of(spec.get("clients")),
            grant_types=grants,
            events=kinds("events"),
            delegated=spec.get("delegated"),
            evaluation_pass=spec.get("pass"),
        )

    def _exception(self, spec: dict[str, Any], path: str) -> TimeBound | None:
        try:
            expires = parse_rfc3339(spec["expires_at"])
            starts = parse_rfc3339(spec["starts_at"]) if "starts_at" in spec else None
        except ValueError as exc:
            self.fail(path, str(exc))
            return None
        if starts is not None and starts >= expires:
            self.fail(path, "starts_at must be before expires_at")
        return TimeBound(spec["ticket"], expires, starts, spec.get("approved_by"))
