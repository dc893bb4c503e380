"""The engine: merge semantics, deny-wins, fail-closed CEL, delegation, freshness, provenance."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import NOW, make_policy, make_request, make_snapshot, record
from keycloak_policy_bridge.decision import BUILTIN_USER_MESSAGES, DEFAULT_USER_MESSAGE, Decision
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.request import TOKEN_EXCHANGE

ROLES: dict[str, Any] = {"id": "roles", "effect": "grant", "claims": {"roles": {"from_entitlements": {"kind": "app_role"}}}}
AGENT_REQUEST: dict[str, Any] = {
    "grant_type": TOKEN_EXCHANGE,
    "client": {"client_id": "agent-1"},
    "actors": [{"sub": "kc-A1", "client_id": "agent-1", "kind_hint": "agent"}],
}
DELEGATION = {"max_chain_depth": 2, "allow": [{"actor_kinds": ["agent"], "subject_kinds": ["human"]}], "max_ttl_seconds": 300}


def run(
    rules: list[dict[str, Any]],
    records: list[dict[str, Any]] | None = None,
    now: datetime = NOW,
    generated_at: str = "2026-11-28T02:00:00Z",
    request: dict[str, Any] | None = None,
    **top: Any,
) -> Decision:
    policy = make_policy(rules, **top)
    snapshot = make_snapshot(records if records is not None else [record()], generated_at)
    return evaluate(policy, snapshot, make_request(**(request or {})), now)


def kinds(decision: Decision) -> list[tuple[str, str]]:
    return [(r.rule, r.kind) for r in decision.reasons]


# -- grants and provenance -----------------------------------------------------------------


def test_roles_come_from_effective_entitlements_with_provenance() -> None:
    decision = run([ROLES], [record(entitlement_value="crm:read"), record(entitlement_value="crm:write", source="crm2")])
    assert decision.effect == "permit"
    assert decision.claims == {"roles": ["crm:read", "crm:write"]}
    [read, write] = decision.provenance["roles"]
    assert read.value == "crm:read"
    assert read.sources[0].rule == "roles" and read.sources[0].evaluation_pass == "subject"
    evidence = read.sources[0].records[0].evidence()
    assert evidence["origin"] == {"file": "test", "line": 1}
    assert evidence["entitlement_kind"] == "app_role" and evidence["source"] == "crm"
    assert write.sources[0].records[0].evidence()["origin"]["line"] == 2


@pytest.mark.parametrize(
    ("fields", "granted"),
    [
        ({}, True),
        ({"assignment_state": "pending"}, False),
        ({"assignment_state": "revoked"}, False),
        ({"assignment_state": "expired"}, False),
        ({"start_at": "2026-11-29T00:00:00Z"}, False),
        ({"start_at": "2026-11-28T08:00:00Z"}, True),  # start is inclusive
        ({"end_at": "2026-11-28T08:00:00Z"}, False),  # end is exclusive
        ({"end_at": "2026-11-28T08:00:01Z"}, True),
        ({"subject_status": "suspended"}, False),
    ],
)
def test_effective_entitlements_are_judged_at_now(fields: dict[str, Any], granted: bool) -> None:
    decision = run([ROLES], [record(**fields)])
    assert decision.claims.get("roles", []) == (["crm:read"] if granted else [])


def test_a_matching_list_grant_is_issued_even_when_empty() -> None:
    decision = run([ROLES], [record(entitlement_kind="tenant", entitlement_value="t1")])
    assert decision.claims == {"roles": []}


def test_lists_union_across_rules_and_sources_accumulate() -> None:
    rules = [ROLES, {"id": "extra", "effect": "grant", "claims": {"roles": {"value": ["crm:read", "x"]}}}]
    decision = run(rules)
    assert decision.claims == {"roles": ["crm:read", "x"]}
    assert [s.rule for s in decision.provenance["roles"][0].sources] == ["roles", "extra"]


def test_equal_scalars_merge_and_different_scalars_deny() -> None:
    same = [
        {"id": "a", "effect": "grant", "claims": {"tier": {"value": "gold"}}},
        {"id": "b", "effect": "grant", "claims": {"tier": {"value": "gold"}}},
    ]
    assert run(same).claims == {"tier": "gold"}
    clash = [same[0], {"id": "b", "effect": "grant", "claims": {"tier": {"value": "silver"}}}]
    decision = run(clash)
    assert decision.effect == "deny" and decision.claims == {}
    assert ("kpb:claims", "error") in kinds(decision)
    assert "claim 'tier' is granted two different single values (last by rule 'b')" in decision.reasons[-1].message


def test_list_and_scalar_for_one_claim_deny() -> None:
    rules = [
        {"id": "a", "effect": "grant", "claims": {"x": {"value": ["1"]}}},
        {"id": "b", "effect": "grant", "claims": {"x": {"value": "1"}}},
    ]
    decision = run(rules)
    assert decision.effect == "deny"
    assert "granted both as a list and as a single value" in decision.reasons[-1].message


def test_template_and_filters_shape_selector_output() -> None:
    selector = {
        "kind": "app_role",
        "sources": ["crm*"],
        "values": ["*:read"],
        "privilege_levels": ["low", "none"],
        "template": "{source}/{value}",
    }
    records = [
        record(entitlement_value="crm:read", privilege_level="low"),
        record(entitlement_value="crm:write", privilege_level="low"),
        record(entitlement_value="erp:read", source="erp"),
        record(entitlement_value="crmx:read", source="crm-eu", privilege_level="high"),
    ]
    decision = run([{"id": "r", "effect": "grant", "claims": {"perms": {"from_entitlements": selector}}}], records)
    assert decision.claims == {"perms": ["crm/crm:read"]}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{source}:{value}", "crm:crm:read"),
        ("100%{value}%s{{{kind}}}", "100%crm:read%s{app_role}"),  # literal % and escaped braces (issue 13's %-format path)
        ("{value!r}/{account:>4}", "'crm:read'/  a1"),  # conversions and format specs
        ("fixed", "fixed"),
        ("{value}", "crm:read"),
    ],
)
def test_templates_render_as_str_format_map(template: str, expected: str) -> None:
    selector = {"kind": "app_role", "sources": ["crm"], "template": template}
    decision = run([{"id": "r", "effect": "grant", "claims": {"perms": {"from_entitlements": selector}}}], [record(account="a1")])
    assert decision.claims == {"perms": [expected]}
    assert expected == template.format_map({"value": "crm:read", "source": "crm", "account": "a1", "kind": "app_role"})


def test_expr_claims_lists_scalars_and_errors() -> None:
    rules = [
        {
            "id": "r",
            "effect": "grant",
            "claims": {
                "kinds": {"expr": "entitlements.app_role.map(v, 'x-' + v)"},
                "dept": {"expr": "subject.attributes.department[0]"},
                "broken": {"expr": "context.missing"},
                "when": {"expr": "now"},
            },
        }
    ]
    decision = run(rules, request={"subject": {"attributes": {"department": ["sales"]}}})
    assert decision.effect == "permit"
    assert decision.claims == {"kinds": ["x-crm:read"], "dept": "sales"}
    messages = [r.message for r in decision.reasons if r.kind == "error"]
    assert any("claims.broken.expr failed: no such key: missing" in m for m in messages)
    assert any("claims.when.expr returned datetime, not a JSON value" in m for m in messages)


# -- deny, fail closed ---------------------------------------------------------------------


def test_deny_wins_and_every_matching_deny_is_reported() -> None:
    rules = [
        ROLES,
        {"id": "d1", "effect": "deny", "reason": "first", "condition": "true"},
        {"id": "d2", "effect": "deny", "reason": "second"},
        {"id": "d3", "effect": "deny", "reason": "never", "condition": "false"},
    ]
    decision = run(rules)
    assert decision.effect == "deny"
    assert decision.claims == {} and decision.provenance == {} and decision.max_ttl_seconds is None
    assert kinds(decision) == [("d1", "deny"), ("d2", "deny")]


def test_cel_error_in_a_deny_rule_denies() -> None:
    rules = [ROLES, {"id": "risky", "effect": "deny", "reason": "high risk", "condition": "context.risk.score > 50"}]
    decision = run(rules)  # the request has no context.risk
    assert decision.effect == "deny"
    assert kinds(decision) == [("risky", "error"), ("risky", "deny")]
    assert "denied (fail closed)" in decision.reasons[0].message
    assert run(rules, request={"context": {"risk": {"score": 10}}}).effect == "permit"


def test_cel_error_in_a_grant_rule_skips_it() -> None:
    rules = [ROLES, {"id": "bonus", "effect": "grant", "condition": "context.risk.score < 50", "claims": {"roles": {"value": ["bonus"]}}}]
    decision = run(rules)
    assert decision.effect == "permit" and decision.claims == {"roles": ["crm:read"]}
    assert kinds(decision) == [("bonus", "error")]


def test_non_boolean_condition_fails_closed_for_deny() -> None:
    decision = run([ROLES, {"id": "d", "effect": "deny", "reason": "r", "condition": "'yes'"}])
    assert decision.effect == "deny"
    assert "returned str, not bool" in decision.reasons[0].message


def test_failed_variable_fails_the_rules_that_use_it() -> None:
    decision = run(
        [ROLES, {"id": "d", "effect": "deny", "reason": "r", "condition": "risky"}],
        variables={"risky": "context.risk.score > 50"},
    )
    assert decision.effect == "deny"
    assert "variable 'risky' failed: no such key: risk" in decision.reasons[0].message


def test_variable_reading_a_builtin_the_rule_does_not_name() -> None:
    decision = run([{**ROLES, "condition": "is_human"}], variables={"is_human": "principal.kind == 'human'"})
    assert decision.claims == {"roles": ["crm:read"]} and decision.reasons == ()


# -- scoping -------------------------------------------------------------------------------


def test_iga_kind_overrides_keycloak_hint() -> None:
    rules = [ROLES, {"id": "no-sa", "effect": "deny", "reason": "sa", "when": {"principal_kinds": ["service_account"]}}]
    records = [record(subject_type="service_account")]
    assert run(rules, records).effect == "deny"  # hint says human, IGA says service account


def test_max_ttl_smallest_wins_and_remove_claims_union() -> None:
    rules = [
        {**ROLES, "max_ttl_seconds": 900, "remove_claims": ["realm_access", "roles"]},
        {"id": "short", "effect": "grant", "max_ttl_seconds": 120, "remove_claims": ["groups"]},
    ]
    decision = run(rules, remove_claims=["resource_access"])
    assert decision.max_ttl_seconds == 120
    # a claim the policy grants is never also removed
    assert decision.remove_claims == ("groups", "realm_access", "resource_access")


# -- identity join ---------------------------------------------------------------------------


def test_join_prefers_user_id_then_client_id_then_username_then_email() -> None:
    records = [
        record("E1", keycloak_user_id="kc-1", username="alice", email="a@x"),
        record("E2", keycloak_user_id="", username="kc-user", email="B@X", entitlement_value="by-username"),
    ]
    policy = make_policy([ROLES])
    snapshot = make_snapshot(records)
    by_id = evaluate(policy, snapshot, make_request(subject={"id": "kc-1", "username": "kc-user"}), NOW)
    assert by_id.principals[0].subject_id == "E1" and by_id.principals[0].matched_by == "keycloak_user_id"
    # E2 has no pinned Keycloak id and the e-mail is verified: an e-mail join needs both (tests/test_identity_join.py).
    by_email = evaluate(
        policy, snapshot, make_request(subject={"id": "none", "username": "zz", "email": "b@x", "email_verified": True}), NOW
    )
    assert by_email.principals[0].subject_id == "E2" and by_email.principals[0].matched_by == "email"


def test_ambiguous_join_denies() -> None:
    records = [record("E1", keycloak_user_id="", username="dup"), record("E2", keycloak_user_id="", username="dup")]
    decision = run([ROLES], records, request={"subject": {"id": "kc-x", "username": "dup"}})
    assert decision.effect == "deny"
    assert decision.reasons[0].rule == "kpb:identity"
    assert "matches 2 IGA identities by username" in decision.reasons[0].message


# -- the end user's text of a deny (user_message) --------------------------------------------------


def test_a_deny_carries_the_rule_authored_user_message_and_keeps_the_reasons_for_admins() -> None:
    rules = [ROLES, {"id": "d1", "effect": "deny", "reason": "IGA status is not active", "user_message": "Your account is not active."}]
    decision = run(rules)
    assert decision.user_message == "Your account is not active."
    response = decision.response("D")
    assert response["user_message"] == "Your account is not active."
    assert response["reasons"] == [{"rule": "d1", "message": "IGA status is not active", "kind": "deny", "pass": "subject"}]


def test_a_deny_rule_without_a_user_message_gets_the_neutral_default() -> None:
    decision = run([ROLES, {"id": "d1", "effect": "deny", "reason": "IGA status is not active"}])
    assert decision.user_message == DEFAULT_USER_MESSAGE == "Access was denied by your organisation's access policy."
    assert decision.response("D")["user_message"] == DEFAULT_USER_MESSAGE


def test_the_first_denial_in_evaluation_order_names_the_user_message() -> None:
    rules = [
        {"id": "d2", "effect": "deny", "reason": "second", "user_message": "Second."},
        {"id": "d1", "effect": "deny", "reason": "first", "condition": "true", "user_message": "First."},
    ]
    assert run(rules).user_message == "Second."  # document order among deny rules
    stale = run(rules, now=NOW + timedelta(days=4), freshness={"deny_max_age_seconds": 3600})
    assert stale.user_message == BUILTIN_USER_MESSAGES["kpb:freshness"]  # built-in checks run before the passes


def test_a_permit_has_no_user_message() -> None:
    decision = run([ROLES])
    assert decision.user_message is None and "user_message" not in decision.response("D")


def _builtin_denials() -> list[tuple[str, Decision]]:
    ambiguous = [record("E1", keycloak_user_id="", username="dup"), record("E2", keycloak_user_id="", username="dup")]
    conflict = [
        {"id": "a", "effect": "grant", "claims": {"t": {"value": "x"}}},
        {"id": "b", "effect": "grant", "claims": {"t": {"value": "y"}}},
    ]
    return [
        ("kpb:identity", run([ROLES], ambiguous, request={"subject": {"id": "kc-x", "username": "dup"}})),
        ("kpb:freshness", run([ROLES], now=NOW + timedelta(days=4), freshness={"deny_max_age_seconds": 3600})),
        ("kpb:freshness", run([ROLES], freshness={"feeds": {"risk": {"max_age_seconds": 60, "on_stale": "deny"}}})),
        (
            "kpb:delegation",
            run(
                [ROLES],
                AGENT_RECORDS,
                request={**AGENT_REQUEST, "actors": [{"sub": "kc-A1", "client_id": "agent-1"}] * 3},
                delegation=DELEGATION,
            ),
        ),
        ("kpb:delegation", run([ROLES], AGENT_RECORDS, request=AGENT_REQUEST)),
        ("kpb:claims", run(conflict)),
    ]


@pytest.mark.parametrize("index", range(6))
def test_builtin_denials_get_neutral_user_messages_that_name_no_internals(index: int) -> None:
    rule, decision = _builtin_denials()[index]
    assert decision.effect == "deny" and decision.reasons[0].rule == rule
    assert decision.user_message == BUILTIN_USER_MESSAGES[rule]
    text = decision.user_message.lower()
    for internal in ("kpb", "iga", "snapshot", "rule", "chain", "feed", "claim", *(r.message.lower() for r in decision.reasons)):
        assert internal not in text, (internal, decision.user_message)


def test_every_builtin_user_message_is_valid_user_message_text() -> None:
    """The built-in texts obey the rule policy authors do, so the mapper shows them unchanged."""
    for rule, text in {**BUILTIN_USER_MESSAGES, "default": DEFAULT_USER_MESSAGE}.items():
        make_policy([{"id": "d", "effect": "deny", "reason": "r", "user_message": text}])  # raises if it were not
        assert text.endswith(".") and len(text) <= 200, rule


# -- freshness and certification -------------------------------------------------------------

FRESHNESS = {"privileged_max_age_seconds": 86400, "deny_max_age_seconds": 259200}
PRIVILEGED = [
    record(entitlement_value="crm:read"),
    record(entitlement_value="crm:admin", privilege_level="high", last_certified_at="2026-11-01T00:00:00Z"),
]


@pytest.mark.parametrize(
    ("hours", "effect", "roles", "stale"),
    [(23, "permit", ["crm:admin", "crm:read"], False), (25, "permit", ["crm:read"], True), (73, "deny", None, True)],
)
def test_freshness_leaves_out_privileged_values_then_denies(hours: int, effect: str, roles: list[str] | None, stale: bool) -> None:
    now = datetime(2026, 11, 28, 2, 0, tzinfo=UTC) + timedelta(hours=hours)
    decision = run([ROLES], PRIVILEGED, now=now, freshness=FRESHNESS)
    assert decision.effect == effect
    assert decision.claims.get("roles") == roles
    assert decision.snapshot_stale is stale
    assert decision.snapshot_age_seconds == hours * 3600
    if hours == 25:
        assert [(r.rule, r.kind, r.claim) for r in decision.reasons] == [("kpb:freshness", "omit", "roles")]


def test_privileged_literal_values_obey_freshness() -> None:
    rules = [{"id": "l", "effect": "grant", "claims": {"roles": {"value": ["ops"], "privileged": True}, "plain": {"value": ["p"]}}}]
    later = NOW + timedelta(hours=30)
    assert run(rules, now=later, freshness=FRESHNESS).claims == {"roles": [], "plain": ["p"]}


@pytest.mark.parametrize(("certified", "kept"), [("2026-09-01T00:00:00Z", True), ("2026-08-01T00:00:00Z", False), ("", False)])
def test_certification_age_for_high_privilege(certified: str, kept: bool) -> None:
    selector = {"kind": "app_role", "certification": {"levels": ["high"], "max_age_days": 90}}
    records = [record(entitlement_value="admin", privilege_level="high", last_certified_at=certified)]
    decision = run([{"id": "r", "effect": "grant", "claims": {"roles": {"from_entitlements": selector}}}], records)
    assert decision.claims == {"roles": ["admin"] if kept else []}
    if not kept:
        assert decision.reasons[0].kind == "omit" and "certification within 90 days is required" in decision.reasons[0].message


# -- single-valued claims ----------------------------------------------------------------------

TENANT = {
    "id": "t",
    "effect": "grant",
    "claims": {"tenant": {"from_entitlements": {"kind": "tenant", "match": "context.tenant"}, "as": "single"}},
}
TENANTS = [record(entitlement_kind="tenant", entitlement_value="eu"), record(entitlement_kind="tenant", entitlement_value="us")]


def test_single_valued_claim_from_one_of_many_needs_the_request_to_choose() -> None:
    assert run([TENANT], TENANTS, request={"context": {"tenant": "us"}}).claims == {"tenant": "us"}
    assert run([TENANT], TENANTS[:1]).claims == {"tenant": "eu"}
    ambiguous = run([TENANT], TENANTS)
    assert ambiguous.claims == {}
    assert ambiguous.reasons[0].kind == "omit" and "2 candidate values" in ambiguous.reasons[0].message
    assert run([TENANT], TENANTS, request={"context": {"tenant": "apac"}}).claims == {}


# -- time-bound exceptions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "applies"),
    [
        (datetime(2026, 12, 14, 23, 59, tzinfo=UTC), True),
        (datetime(2026, 12, 15, tzinfo=UTC), False),
        (datetime(2026, 11, 1, tzinfo=UTC), False),
    ],
)
def test_time_bound_exception_window(now: datetime, applies: bool) -> None:
    rule = {
        "id": "exc",
        "effect": "grant",
        "claims": {"roles": {"value": ["export"]}},
        "exception": {"ticket": "CHG-1", "starts_at": "2026-11-15T00:00:00Z", "expires_at": "2026-12-15T00:00:00Z"},
    }
    decision = run([rule], now=now, generated_at=now.isoformat())
    assert decision.claims == ({"roles": ["export"]} if applies else {})
    expected = "time-bound exception CHG-1 applied" if applies else "time-bound exception CHG-1 is not in force"
    assert [(r.kind, r.message) for r in decision.reasons] == [("exception", expected)]


# -- delegation ------------------------------------------------------------------------------

AGENT_RECORDS = [
    record("E1", entitlement_value="crm:read"),
    record("E1", entitlement_value="crm:write"),
    record("E1", entitlement_kind="tenant", entitlement_value="eu"),
    record(
        "A1",
        subject_type="ai_agent",
        keycloak_user_id="kc-A1",
        keycloak_client_id="agent-1",
        username="agent",
        entitlement_value="crm:read",
    ),
    record(
        "A1",
        subject_type="ai_agent",
        keycloak_user_id="kc-A1",
        keycloak_client_id="agent-1",
        username="agent",
        entitlement_value="docs:search",
    ),
]


def test_delegated_claims_are_the_intersection_and_act_names_the_actor() -> None:
    rules = [ROLES, {"id": "t", "effect": "grant", "claims": {"tenant": {"from_entitlements": {"kind": "tenant"}, "as": "single"}}}]
    delegation = {**DELEGATION, "subject_only_claims": ["tenant"]}
    decision = run(rules, AGENT_RECORDS, request=AGENT_REQUEST, delegation=delegation)
    assert decision.effect == "permit"
    assert decision.claims == {"roles": ["crm:read"], "tenant": "eu", "act": {"sub": "kc-A1", "client_id": "agent-1"}}
    assert decision.max_ttl_seconds == 300
    assert [s.evaluation_pass for s in decision.provenance["roles"][0].sources] == ["subject", "actor"]
    assert ("kpb:delegation", "omit") in kinds(decision)
    # without subject_only_claims the tenant is bounded by the agent too (which holds none)
    assert "tenant" not in run(rules, AGENT_RECORDS, request=AGENT_REQUEST, delegation=DELEGATION).claims


AGENT_2 = record("A2", subject_type="ai_agent", keycloak_user_id="kc-A2", keycloak_client_id="agent-2", username="agent2")
CHAIN = {**AGENT_REQUEST, "actors": [AGENT_REQUEST["actors"][0], {"sub": "kc-A2", "client_id": "agent-2"}]}
INACTIVE = {"id": "inactive", "effect": "deny", "reason": "inactive", "condition": "!principal.found || principal.status != 'active'"}


def test_nested_act_for_a_chain() -> None:
    decision = run([ROLES], [*AGENT_RECORDS, AGENT_2], request=CHAIN, delegation=DELEGATION)
    assert decision.claims["act"] == {"sub": "kc-A1", "client_id": "agent-1", "act": {"sub": "kc-A2", "client_id": "agent-2"}}
    assert decision.claims["roles"] == ["crm:read"]  # bounded by subject and current actor only


@pytest.mark.parametrize(
    ("prior", "reason"),
    [
        (None, ("inactive", "prior_actor")),  # unknown to the IGA
        ({**AGENT_2, "subject_status": "terminated"}, ("inactive", "prior_actor")),
        ({**AGENT_2, "subject_type": "human"}, ("kpb:delegation", None)),  # a human may not act for a human
    ],
)
def test_every_actor_in_the_chain_is_judged(prior: dict[str, Any] | None, reason: tuple[str, str | None]) -> None:
    records = [*AGENT_RECORDS, prior] if prior else AGENT_RECORDS
    decision = run([ROLES, INACTIVE], records, request=CHAIN, delegation=DELEGATION)
    assert decision.effect == "deny"
    assert reason in [(r.rule, r.evaluation_pass) for r in decision.reasons]


@pytest.mark.parametrize(
    ("delegation", "actors", "message"),
    [
        (None, None, "this policy allows no delegation"),
        (DELEGATION, [{"sub": "kc-A1", "client_id": "agent-1"}] * 3, "delegation chain has 3 actors; this policy allows at most 2"),
        (
            {**DELEGATION, "allow": [{"actor_kinds": ["service_account"], "subject_kinds": ["human"]}]},
            None,
            "actors[0] (an agent) may not act for a human",
        ),
        (
            {**DELEGATION, "allow": [{"actor_kinds": ["agent"], "subject_kinds": ["human"], "actor_clients": ["trusted-*"]}]},
            None,
            "may not act",
        ),
    ],
)
def test_delegation_denials(delegation: Any, actors: Any, message: str) -> None:
    request = dict(AGENT_REQUEST)
    if actors is not None:
        request["actors"] = actors
    top = {"delegation": delegation} if delegation is not None else {}
    decision = run([ROLES], AGENT_RECORDS, request=request, **top)
    assert decision.effect == "deny"
    assert any(r.rule == "kpb:delegation" and message in r.message for r in decision.reasons)


def test_deny_rules_also_judge_the_actor() -> None:
    records = [*AGENT_RECORDS[:3], record("A1", subject_type="ai_agent", subject_status="suspended", keycloak_user_id="kc-A1")]
    rules = [ROLES, {"id": "inactive", "effect": "deny", "reason": "inactive", "condition": "principal.status != 'active'"}]
    decision = run(rules, records, request=AGENT_REQUEST, delegation=DELEGATION)
    assert decision.effect == "deny"
    assert [(r.rule, r.evaluation_pass) for r in decision.reasons] == [("inactive", "actor")]


def test_pass_scoped_rules() -> None:
    rules = [ROLES, {"id": "subject-only", "effect": "grant", "when": {"pass": "subject"}, "claims": {"roles": {"value": ["docs:search"]}}}]
    decision = run(rules, AGENT_RECORDS, request=AGENT_REQUEST, delegation=DELEGATION)
    assert decision.claims["roles"] == ["crm:read", "docs:search"]  # subject got it by rule, the agent holds it


# -- determinism -------------------------------------------------------------------------------


def test_same_inputs_same_decision() -> None:
    policy = make_policy([ROLES])
    snapshot = make_snapshot([record()])
    request = make_request()
    first = evaluate(policy, snapshot, request, NOW).response("id")
    assert all(evaluate(policy, snapshot, request, NOW).response("id") == first for _ in range(5))


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(make_policy([ROLES]), make_snapshot([record()]), make_request(), datetime(2026, 1, 1))


@pytest.mark.parametrize("module", ["engine", "policy", "condition", "decision", "entitlements", "request", "matching"])
def test_core_modules_do_not_read_clock_or_environment(module: str) -> None:
    """Backstop for the determinism rule: no clock, randomness or environment in the core."""
    source = (Path(__file__).resolve().parent.parent / "keycloak_policy_bridge" / f"{module}.py").read_text()
    tree = ast.parse(source)
    banned = {"now", "utcnow", "today", "time", "time_ns", "monotonic", "perf_counter", "getenv", "urandom", "random"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in banned and isinstance(node.value, ast.Name):
            assert node.value.id not in {"datetime", "time", "os", "date", "random"}, f"{module}.py reads {node.value.id}.{node.attr}"
        if isinstance(node, ast.Attribute) and node.attr == "environ":
            raise AssertionError(f"{module}.py reads os.environ")


# -- regressions found while documenting the language ---------------------------------------


def test_selector_match_with_a_multi_valued_attribute_keeps_the_named_values() -> None:
    rule = {
        "id": "t",
        "effect": "grant",
        "claims": {"tenants": {"from_entitlements": {"kind": "tenant", "match": "subject.attributes.region"}}},
    }
    records = [*TENANTS, record(entitlement_kind="tenant", entitlement_value="apac")]
    decision = run([rule], records, request={"subject": {"attributes": {"region": ["us", "eu"]}}})
    assert decision.claims == {"tenants": ["eu", "us"]}


def test_expired_exception_on_a_failing_deny_rule_neither_denies_nor_claims_to() -> None:
    rule = {
        "id": "d",
        "effect": "deny",
        "reason": "r",
        "condition": "context.nope == 1",
        "exception": {"ticket": "T", "expires_at": "2026-01-01T00:00:00Z"},
    }
    decision = run([ROLES, rule])
    assert decision.effect == "permit" and decision.reasons == ()


def test_as_list_wraps_scalar_values() -> None:
    rules = [{"id": "l", "effect": "grant", "claims": {"a": {"value": "y", "as": "list"}, "b": {"expr": "'z'", "as": "list"}}}]
    assert run(rules).claims == {"a": ["y"], "b": ["z"]}


def test_freshness_counts_the_actors_privilege_level_too() -> None:
    records = [
        record("E1", entitlement_value="crm:read"),
        record(
            "A1",
            subject_type="ai_agent",
            keycloak_user_id="kc-A1",
            keycloak_client_id="agent-1",
            username="agent",
            entitlement_value="crm:read",
            privilege_level="high",
        ),
    ]
    decision = run([ROLES], records, now=NOW + timedelta(hours=30), request=AGENT_REQUEST, delegation=DELEGATION, freshness=FRESHNESS)
    assert decision.claims["roles"] == []
    assert any(r.rule == "kpb:freshness" and r.kind == "omit" for r in decision.reasons)


def test_actor_views_have_the_subject_shape() -> None:
    rules = [ROLES, {"id": "d", "effect": "deny", "reason": "r", "condition": "'x' in principal.attributes"}]
    assert run(rules, AGENT_RECORDS, request=AGENT_REQUEST, delegation=DELEGATION).effect == "permit"


# -- runtime evaluation budget (security defect 3) ---------------------------------------------------


class _Clock:
    """A monotonic clock that advances ``step`` seconds at every read."""

    def __init__(self, step: float) -> None:
        self.now, self.step, self.reads = 0.0, step, 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.step
        return self.now


def test_an_evaluation_over_its_budget_fails_closed_with_a_stable_reason() -> None:
    from keycloak_policy_bridge.engine import BUDGET_RULE, EvaluationBudget

    policy, snapshot, request = make_policy([ROLES]), make_snapshot([record()]), make_request()
    assert evaluate(policy, snapshot, request, NOW).effect == "permit"
    clock = _Clock(step=1.0)
    decision = evaluate(policy, snapshot, request, NOW, budget=EvaluationBudget(0.5, clock))
    assert decision.effect == "deny" and decision.claims == {}
    assert kinds(decision) == [(BUDGET_RULE, "error")] and BUDGET_RULE == "kpb:budget"
    assert "evaluation budget" in decision.reasons[0].message
    assert clock.reads == 2  # one read before, one after the single pass: the hot path's whole cost
    clock = _Clock(step=0.1)
    assert evaluate(policy, snapshot, request, NOW, budget=EvaluationBudget(0.5, clock)).effect == "permit"


def test_an_overrun_stops_the_remaining_passes() -> None:
    from keycloak_policy_bridge.engine import BUDGET_RULE, EvaluationBudget

    chain = {**AGENT_REQUEST, "actors": [{"sub": "kc-A1", "client_id": "agent-1", "kind_hint": "agent"}] * 3}
    policy = make_policy([ROLES], delegation={**DELEGATION, "max_chain_depth": 3})
    snapshot = make_snapshot([record(), *AGENT_RECORDS])
    clock = _Clock(step=1.0)
    decision = evaluate(policy, snapshot, make_request(**chain), NOW, budget=EvaluationBudget(0.5, clock))
    assert decision.effect == "deny" and (BUDGET_RULE, "error") in kinds(decision)
    assert clock.reads == 2  # the subject pass overran: the actor passes never ran


def test_a_really_slow_condition_is_denied_by_a_small_real_budget() -> None:
    import time

    from keycloak_policy_bridge.engine import BUDGET_RULE, EvaluationBudget

    slow = {"id": "slow", "effect": "deny", "reason": "r", "condition": "principal.groups.all(g, g.matches('^g[0-9]+$')) && false"}
    groups = [f"g{i:04d}" for i in range(1000)]
    request = make_request(subject={"id": "kc-E1", "groups": groups})
    policy, snapshot = make_policy([ROLES, slow]), make_snapshot([record()])
    assert evaluate(policy, snapshot, request, NOW).effect == "permit"  # ~30 ms of CEL (a regex per group), no budget
    decision = evaluate(policy, snapshot, request, NOW, budget=EvaluationBudget(0.001, time.perf_counter))
    assert decision.effect == "deny" and kinds(decision)[-1] == (BUDGET_RULE, "error")


# -- selection order with windowed records (what any per-identity index must keep) ----------


def _mixed_records() -> list[dict[str, Any]]:
    """E1's app roles on three sources, interleaved, two of them windowed (one in force at NOW)."""
    return [
        record(source="crm", entitlement_value="crm:read"),
        record(source="erp", entitlement_value="erp:read"),
        record(source="hr", entitlement_value="hr:read"),
        record(source="erp", entitlement_value="erp:write", start_at="2026-11-01T00:00:00Z", end_at="2026-12-01T00:00:00Z"),
        record(source="crm", entitlement_value="crm:write"),
        record(source="crm", entitlement_value="crm:admin", start_at="2026-12-01T00:00:00Z"),  # not yet in force
        record(source="erp", entitlement_value="erp:audit"),
        record(entitlement_kind="group", source="ad", entitlement_value="grp-a"),
    ]


@pytest.mark.parametrize("sources", [["crm"], ["erp"], ["erp", "crm"], ["crm", "erp", "hr"], ["*r*"], None])
def test_selected_records_keep_the_order_of_the_effective_records(sources: list[str] | None) -> None:
    """A selector's records come in ``effective_records`` order (timeless ones, then the windowed
    ones in force), whatever the sources it names: the order of a value's provenance."""
    selector: dict[str, Any] = {"kind": "app_role", "template": "any"}  # one value: its provenance lists every record
    if sources is not None:
        selector["sources"] = sources
    rules = [{"id": "r", "effect": "grant", "claims": {"roles": {"from_entitlements": selector}}}]
    decision = run(rules, _mixed_records())
    snapshot = make_snapshot(_mixed_records())
    identity = snapshot.identity("E1")
    assert identity is not None
    expected = [
        (r.source, r.value)
        for r in identity.effective_records(NOW)
        if r.kind == "app_role" and (sources is None or any(s == r.source or (s == "*r*" and "r" in r.source) for s in sources))
    ]
    [value] = decision.provenance["roles"]
    assert [(r.source, r.value) for r in value.sources[0].records] == expected
    assert ("crm", "crm:admin") not in expected
    assert (("erp", "erp:write") in expected) == (sources is None or "erp" in sources or "*r*" in sources)
