"""Policy loading and validation: every problem is reported with its JSON path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import ACME, ROOT, make_policy, policy_doc
from keycloak_policy_bridge.errors import PolicyError
from keycloak_policy_bridge.policy import (
    KEYCLOAK_TYPED_CLAIMS,
    RESERVED_CLAIMS,
    compile_policy,
    load_policy,
    validate_policy,
)
from keycloak_policy_bridge.policy_suite import run_suite
from keycloak_policy_bridge.request import TOKEN_EXCHANGE

GRANT = {"id": "g", "effect": "grant", "claims": {"roles": {"value": ["a"]}}}


def issues_of(doc: Any) -> list[tuple[str, str]]:
    return [(i.path, i.message) for i in validate_policy(doc)]


def test_acme_policy_compiles() -> None:
    policy = load_policy(ACME / "policy.json")
    assert policy.policy_id == "acme-token-policy"
    assert [r.id for r in policy.rules][:2] == ["deny-unknown-principal", "deny-inactive-principal"]
    assert policy.digest.startswith("sha256:") and len(policy.digest) == 71
    assert policy.warnings == ()


def test_digest_ignores_formatting_but_not_content(tmp_path: Path) -> None:
    doc = json.loads((ACME / "policy.json").read_text())
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps(doc, separators=(",", ":")))
    assert load_policy(compact).digest == load_policy(ACME / "policy.json").digest
    doc["version"] = "2"
    assert compile_policy(doc).digest != load_policy(ACME / "policy.json").digest


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda d: d.pop("owner"), "$", "'owner' is a required property"),
        (lambda d: d.update(spec="kpb-policy/2"), "$.spec", "kpb-policy/1"),
        (lambda d: d.update(extra=1), "$", "unknown field(s)"),
        (lambda d: d["rules"].append({"id": "d", "effect": "deny"}), "$.rules[1]", "a deny rule needs a 'reason'"),
        (lambda d: d["rules"].append({"id": "d", "effect": "deny", "reason": "r", "max_ttl_seconds": 5}), "$.rules[1]", "cannot set"),
        (lambda d: d["rules"].append({"id": "g2", "effect": "grant"}), "$.rules[1]", "a grant rule needs at least one"),
        (lambda d: d["rules"][0]["claims"]["roles"].update(expr="1"), "$.rules[0].claims.roles", "needs exactly one of"),
        (lambda d: d["rules"][0]["claims"].update(x={}), "$.rules[0].claims.x", "needs exactly one of"),
        (lambda d: d["rules"][0].update(id="Bad Id"), "$.rules[0].id", "does not have the required form"),
        (lambda d: d["rules"][0].update(when={"principal_kinds": ["robot"]}), "$.rules[0].when.principal_kinds[0]", "is not one of"),
        (lambda d: d["rules"][0].update(max_ttl_seconds=0), "$.rules[0].max_ttl_seconds", "less than the minimum"),
        (
            lambda d: d["rules"][0].update(exception={"ticket": "T", "expires_at": "tomorrow"}),
            "$.rules[0].exception.expires_at",
            "required form",
        ),
        (lambda d: d.update(freshness={"privileged_max_age_seconds": 10, "deny_max_age_seconds": 5}), "$.freshness", "must not exceed"),
        (lambda d: d["rules"].append(dict(GRANT)), "$.rules[1].id", "duplicate rule id 'g' (first at $.rules[0])"),
        (lambda d: d["rules"][0].update(condition="principal.kind =="), "$.rules[0].condition", "CEL does not compile"),
        (lambda d: d["rules"][0].update(condition="principle.kind == 'human'"), "$.rules[0].condition", "unknown variable 'principle'"),
        (
            lambda d: d["rules"][0].update(condition="lowerAscii(principal.kind) == 'x'"),
            "$.rules[0].condition",
            "unknown function 'lowerAscii'",
        ),
        (lambda d: d["rules"][0].update(condition="x" * 5000), "$.rules[0].condition", "is longer than 4096 characters"),
        (
            lambda d: d["rules"][0]["claims"].update(t={"from_entitlements": "nope"}),
            "$.rules[0].claims.t.from_entitlements",
            "unknown selector 'nope'",
        ),
        (lambda d: d["rules"][0]["claims"].update(t={"value": "x", "as": "single"}), "$.rules[0].claims.t.as", "expr only"),
        (lambda d: d.update(variables={"a": "b", "b": "a"}, rules=[{**GRANT, "condition": "a"}]), "$.variables.a", "cycle: a -> b -> a"),
        (lambda d: d.update(variables={"now": "1"}), "$.variables.now", "built-in variable"),
        (
            lambda d: d["rules"][0]["claims"].update(p={"from_entitlements": {"kind": "k", "template": "{source}:{valeu}"}}),
            "$.rules[0].claims.p.from_entitlements.template",
            "unknown placeholder {valeu}",
        ),
        (lambda d: d["rules"][0]["claims"].update(n={"value": None}), "$.rules[0].claims.n.value", "a literal null would issue nothing"),
        (
            lambda d: d["rules"][0].update(
                exception={"ticket": "T", "starts_at": "2026-02-01T00:00:00Z", "expires_at": "2026-01-01T00:00:00Z"}
            ),
            "$.rules[0].exception",
            "starts_at must be before",
        ),
    ],
)
def test_invalid_policy_names_the_path(mutate: Any, path: str, fragment: str) -> None:
    doc = policy_doc([json.loads(json.dumps(GRANT))])
    mutate(doc)
    found = issues_of(doc)
    assert any(p == path and fragment in m for p, m in found), found


# -- user_message: the end user's text of a deny (OAuth error_description) ------------------------

DENY_FOR_USER = {
    "id": "d",
    "effect": "deny",
    "reason": "IGA status is not active",
    "user_message": "Your account is not active. Contact the service desk.",
}


def test_a_deny_rule_may_carry_a_user_message_and_it_compiles_verbatim() -> None:
    policy = make_policy([DENY_FOR_USER, GRANT])
    assert policy.rules[0].user_message == "Your account is not active. Contact the service desk."
    assert policy.rules[1].user_message is None


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ("", "should be non-empty"),
        ("x" * 201, "is longer than 200 characters"),
        ("Hello {subject.username}, you are denied", "plain text"),  # never a template: refused, not expanded
        ("Denied\nby rule x", "plain text"),
        ("Denied.\n", "plain text"),  # the schema's "$" would let a final newline through
        ('Say "no"', "plain text"),
        ("back\\slash", "plain text"),
        ("<b>denied</b>", "plain text"),
        ("Zugriff verweigert für Sie", "plain text"),  # error_description is ASCII only (RFC 6749 section 5.2)
    ],
)
def test_a_user_message_is_bounded_plain_ascii_text(message: str, fragment: str) -> None:
    doc = policy_doc([{**DENY_FOR_USER, "user_message": message}])
    found = issues_of(doc)
    assert any(p == "$.rules[0].user_message" and fragment in m for p, m in found), found
    assert all(message not in m for _, m in found if message), "the message is not echoed back"


def test_a_user_message_on_a_grant_rule_is_refused() -> None:
    found = issues_of(policy_doc([{**GRANT, "user_message": "Welcome."}]))
    assert ("$.rules[0].user_message", "only a deny rule has a user_message: a grant rule shows the user nothing") in found, found


def test_a_policy_test_can_pin_what_the_refused_user_reads(tmp_path: Path) -> None:
    carol = str(ACME / "requests" / "carol-refresh.json")
    suite = {
        "spec": "kpb-policy-tests/1",
        "name": "s",
        "now": "2026-11-28T08:00:00Z",
        "entitlements": str(ACME / "entitlements"),
        "tests": [
            {"name": "right", "request": carol, "expect": {"user_message": "Your account is not active. Contact the service desk."}},
            {"name": "wrong", "request": carol, "expect": {"user_message": "Welcome."}},
            {"name": "permit", "request": str(ACME / "requests" / "alice-login.json"), "expect": {"user_message": None}},
        ],
    }
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    results = {r.name: r.failures for r in run_suite(load_policy(ACME / "policy.json"), tmp_path / "suite.json")}
    assert results == {
        "right": (),
        "wrong": ('user_message: expected "Welcome.", got "Your account is not active. Contact the service desk."',),
        "permit": (),
    }


def test_the_acme_deny_rules_all_carry_a_user_message() -> None:
    policy = load_policy(ACME / "policy.json")
    denies = [r for r in policy.rules if r.effect == "deny"]
    assert denies and all(r.user_message for r in denies)
    inactive = next(r for r in denies if r.id == "deny-inactive-principal")
    assert inactive.user_message == "Your account is not active. Contact the service desk."


@pytest.mark.parametrize("claim", sorted(RESERVED_CLAIMS))
def test_reserved_claims_cannot_be_set(claim: str) -> None:
    doc = policy_doc([{"id": "g", "effect": "grant", "claims": {claim: {"value": "x"}}}])
    assert (f"$.rules[0].claims.{claim}", f"'{claim}' is a reserved claim and cannot be set by policy") in issues_of(doc)


@pytest.mark.parametrize(
    ("claim", "code", "fragment"),
    [
        ("SUB", "reserved_claim", "'SUB' differs from the reserved claim 'sub' only by case"),
        ("Authz_Decision_Id", "reserved_claim", "differs from the reserved claim 'authz_decision_id' only by case"),
        ("act.sub", "reserved_claim", "'act.sub' addresses the inside of the reserved claim 'act'"),
        ("Act/sub", "reserved_claim", "addresses the inside of the reserved claim 'act'"),
        ("realm_access.roles", "typed_claim", "'realm_access.roles' addresses the inside of Keycloak's typed claim 'realm_access'"),
        ("Email", "typed_claim", "'Email' differs from Keycloak's typed claim 'email' only by case"),
    ],
)
def test_names_that_alias_a_reserved_or_typed_claim_cannot_be_set(claim: str, code: str, fragment: str) -> None:
    """Security review: a case variant or a nested path of a reserved claim is that claim to many readers."""
    doc = policy_doc([{"id": "g", "effect": "grant", "claims": {claim: {"value": "x"}}}])
    with pytest.raises(PolicyError) as err:
        compile_policy(doc)
    assert [i.code for i in err.value.issues if fragment in i.message] == [code], err.value.issues
    removing = policy_doc([GRANT], remove_claims=[claim])
    refused = any(fragment in m for _, m in issues_of(removing))
    assert refused is (claim != "Email")  # removing a case variant of a typed claim harms nothing; the rest are refused


def test_ordinary_dotted_claim_names_stay_valid() -> None:
    compile_policy(
        policy_doc([{"id": "g", "effect": "grant", "claims": {"https://acme.example/roles": {"value": "x"}, "crm.tier": {"value": "y"}}}])
    )


@pytest.mark.parametrize("where", ["top", "rule", "subject_only"])
def test_reserved_claims_cannot_be_removed_or_configured(where: str) -> None:
    if where == "top":
        doc, path = policy_doc([GRANT], remove_claims=["exp"]), "$.remove_claims[0]"
    elif where == "rule":
        doc, path = policy_doc([{"id": "g", "effect": "grant", "remove_claims": ["iss"]}]), "$.rules[0].remove_claims[0]"
    else:
        doc = policy_doc(
            [GRANT], delegation={"allow": [{"actor_kinds": ["agent"], "subject_kinds": ["human"]}], "subject_only_claims": ["aud"]}
        )
        path = "$.delegation.subject_only_claims[0]"
    assert any(p == path and "reserved claim" in m for p, m in issues_of(doc))


def test_every_problem_is_listed_in_one_run() -> None:
    doc = policy_doc(
        [
            {"id": "r1", "effect": "grant", "claims": {"sub": {"value": "x"}, "roles": {"value": ["a"], "expr": "1"}}},
            {"id": "r1", "effect": "deny"},
            {"id": "r3", "effect": "grant", "condition": "foo == 1", "claims": {"x": {"from_entitlements": "missing"}}},
        ],
        variables={"c": "nope(1)"},
    )
    doc.pop("owner")
    paths = {p for p, _ in issues_of(doc)}
    assert paths == {
        "$",  # owner
        "$.rules[0].claims.roles",
        "$.rules[0].claims.sub",
        "$.rules[1]",
        "$.rules[1].id",
        "$.rules[2].condition",
        "$.rules[2].claims.x.from_entitlements",
        "$.variables.c",
    }


def test_load_policy_reports_json_syntax_position(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{\n  "spec": "kpb-policy/1",\n  "rules": [,]\n}')
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert err.value.code == "policy_invalid"
    assert err.value.issues[0].path == "line 3 column 13"


def test_load_policy_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "absent.json")


def test_not_an_object_is_rejected() -> None:
    with pytest.raises(PolicyError) as err:
        compile_policy(["not", "a", "policy"])
    assert err.value.issues[0].path == "$"


def test_unused_selectors_and_variables_are_warnings_not_errors() -> None:
    policy = make_policy([GRANT], selectors={"s": {"kind": "app_role"}}, variables={"v": "true"})
    assert {(w.path, w.message) for w in policy.warnings} == {
        ("$.selectors.s", "selector is never used"),
        ("$.variables.v", "variable is never used"),
    }


def test_variables_are_ordered_by_dependency_and_needs_are_transitive() -> None:
    policy = make_policy(
        [{**GRANT, "condition": "top"}],
        variables={"top": "middle && true", "middle": "base", "base": "principal.found"},
    )
    assert [name for name, _ in policy.variables] == ["base", "middle", "top"]
    assert policy.rules[0].needs == {"top", "middle", "base", "principal"}


def test_candidates_filter_by_request_scope_and_keep_order() -> None:
    policy = make_policy(
        [
            {"id": "web", "effect": "grant", "when": {"clients": ["acme-*"]}, "max_ttl_seconds": 60},
            {"id": "cc", "effect": "grant", "when": {"grant_types": ["client_credentials"]}, "max_ttl_seconds": 60},
            {"id": "tx", "effect": "grant", "when": {"grant_types": ["token-exchange"], "delegated": True}, "max_ttl_seconds": 60},
            {"id": "ui", "effect": "grant", "when": {"events": ["userinfo"]}, "max_ttl_seconds": 60},
            {"id": "all", "effect": "grant", "max_ttl_seconds": 60},
        ]
    )

    def ids(event: str, grant_type: str, client_id: str, delegated: bool) -> list[str]:
        return [r.id for r in policy.candidates(event, grant_type, client_id, delegated)]

    assert ids("token", "authorization_code", "acme-web", False) == ["web", "all"]
    assert ids("token", "client_credentials", "billing-bot", False) == ["cc", "all"]
    assert ids("token", TOKEN_EXCHANGE, "agent", True) == ["tx", "all"]
    assert ids("token", TOKEN_EXCHANGE, "agent", False) == ["all"]
    assert ids("userinfo", "authorization_code", "other", False) == ["ui", "all"]


def test_the_claim_lists_match_the_mappers_contract_file() -> None:
    """contract/vectors/claims/claim-rules.json is what the Java mapper enforces: a policy that
    validates must never produce a decision the mapper refuses."""
    rules = json.loads((ROOT / "contract" / "vectors" / "claims" / "claim-rules.json").read_text())
    assert RESERVED_CLAIMS == set(rules["reserved_claims"]) | {"act", "may_act"}
    assert KEYCLOAK_TYPED_CLAIMS == set(rules["typed_claims"])


@pytest.mark.parametrize("claim", ["email", "realm_access", "preferred_username"])
def test_a_typed_keycloak_claim_may_be_removed_but_not_set(claim: str) -> None:
    with pytest.raises(PolicyError) as caught:
        make_policy([{"id": "r", "effect": "grant", "claims": {claim: {"value": "x"}}}])
    assert "held in a typed field of Keycloak's tokens" in str(caught.value)
    make_policy([{"id": "r", "effect": "grant", "remove_claims": [claim]}])


# -- CEL cost limit (security defect 3) ------------------------------------------------------------

HOSTILE_CONDITION = "!(l.all(x0, l.all(x1, l.all(x2, l.all(x3, x0+x1+x2+x3 >= 0)))))"
HUNDRED = "[" + ", ".join(str(i) for i in range(100)) + "]"


@pytest.mark.parametrize(
    ("variables", "condition"),
    [
        ({"l": HUNDRED}, HOSTILE_CONDITION),  # l a policy variable
        ({}, HOSTILE_CONDITION.replace("l.", "context.risk.l.")),  # l a request-derived list
    ],
)
def test_a_condition_over_the_cost_budget_is_refused_naming_rule_and_path(variables: dict[str, str], condition: str) -> None:
    deny = {"id": "slow-deny", "effect": "deny", "reason": "r", "condition": condition}
    top = {"variables": variables} if variables else {}
    with pytest.raises(PolicyError) as err:
        compile_policy(policy_doc([GRANT, deny], **top))
    [issue] = err.value.issues
    assert (issue.path, issue.code) == ("$.rules[1].condition", "cel_cost")
    assert "rule 'slow-deny'" in issue.message and "budget" in issue.message


def test_a_variable_and_a_claim_expr_over_the_budget_are_refused_at_their_paths() -> None:
    rule = {"id": "g", "effect": "grant", "claims": {"roles": {"expr": "context.risk.l.map(x, x)"}}}
    doc = policy_doc(
        [rule, {"id": "d", "effect": "deny", "reason": "r", "condition": "size(big) > 0"}],
        variables={"big": "context.risk.l.filter(x, x in context.risk.l)"},
    )
    issues = {(i.path, i.code) for i in validate_policy(doc)}
    assert issues == {("$.rules[0].claims.roles.expr", "cel_cost"), ("$.variables.big", "cel_cost")}


def test_variables_that_double_a_list_compound_into_the_estimate() -> None:
    names = [f"v{i}" for i in range(12)]
    variables = {names[0]: "principal.groups"} | {names[i]: f"{names[i - 1]} + {names[i - 1]}" for i in range(1, 12)}
    deny = {"id": "d", "effect": "deny", "reason": "r", "condition": f"{names[-1]}.exists(g, g in {names[-1]})"}
    issues = validate_policy(policy_doc([GRANT, deny], variables=variables))
    assert [(i.path, i.code) for i in issues] == [("$.rules[1].condition", "cel_cost")]


def test_many_expressions_each_within_budget_can_exceed_the_policy_budget() -> None:
    from keycloak_policy_bridge.cel_cost import MAX_EXPRESSION_COST, estimate_cost
    from keycloak_policy_bridge.policy import MAX_POLICY_COST

    condition = "principal.groups.exists(g, g in entitlements.app_role)"
    each = estimate_cost(condition, {}).cost
    assert each <= MAX_EXPRESSION_COST
    count = MAX_POLICY_COST // each + 1
    denies = [{"id": f"d{n}", "effect": "deny", "reason": "r", "condition": condition} for n in range(count)]
    issues = validate_policy(policy_doc([GRANT, *denies]))
    assert [(i.path, i.code) for i in issues] == [("$.rules", "cel_cost")]
    assert validate_policy(policy_doc([GRANT, *denies[: count - 1]])) == []


@pytest.mark.parametrize("name", ["policy.json", "candidate-policy.json"])
def test_the_acme_policies_are_within_the_cost_budget(name: str) -> None:
    assert compile_policy(json.loads((ACME / name).read_text())).rules
