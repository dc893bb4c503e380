"""authzen.py (issue 16): AuthZEN requests mapped to claims requests and decisions mapped back,
without HTTP: subject resolution, claims as resources (lists included), search, the token gate,
batch semantics, page tokens, and reasons that never leak rule ids to a non-admin caller."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import NOW, make_policy, make_snapshot, record
from keycloak_policy_bridge import authzen as core
from keycloak_policy_bridge.decision import Decision
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.errors import RequestError
from keycloak_policy_bridge.request import parse_request

SECRET = "s3cr3t-value-never-echoed"
KC_ID = "kc-0001"
POLICY = make_policy(
    [
        {
            "id": "deny-unknown",
            "effect": "deny",
            "condition": "!principal.found",
            "reason": "unknown principal",
            "user_message": "Ask the desk.",
        },
        {"id": "roles", "effect": "grant", "claims": {"roles": {"from_entitlements": "roles"}}},
        {"id": "tier", "effect": "grant", "claims": {"tier": {"value": "gold"}}},
        {
            "id": "authzen-only",
            "effect": "grant",
            "when": {"events": ["authzen"]},
            "condition": "context.authzen.action.name == 'read' && has(context.authzen.context.channel)"
            " && context.authzen.context.channel == 'api'",
            "claims": {"channel": {"value": "api"}},
        },
        {"id": "gate-ttl", "effect": "grant", "when": {"grant_types": ["client_credentials"]}, "max_ttl_seconds": 120},
    ],
    selectors={"roles": {"kind": "app_role"}},
)
SNAPSHOT = make_snapshot(
    [
        record("E1", keycloak_user_id=KC_ID, username="alice"),
        record("E1", keycloak_user_id=KC_ID, username="alice", entitlement_value="finance:approve"),
        record("E2", keycloak_user_id=None, username="bob", email="bob@acme.example"),
        record(
            "S1", subject_type="service_account", keycloak_user_id=None, keycloak_client_id="billing-bot", entitlement_value="billing:read"
        ),
    ]
)


def evaluation(
    subject: dict[str, Any] | None = None, action: str = "read", resource: dict[str, Any] | None = None, **context: Any
) -> dict[str, Any]:
    return {
        "subject": subject or {"type": "user", "id": KC_ID},
        "action": {"name": action},
        "resource": resource or {"type": "roles", "id": "crm:read"},
        "context": context,
    }


def decide(document: dict[str, Any]) -> tuple[core.Evaluation, Decision, dict[str, Any]]:
    parsed = core.parse_evaluation(document)
    claims = core.claims_request(parsed, request_id="r1")
    return parsed, evaluate(POLICY, SNAPSHOT, parse_request(claims), NOW), claims


def answer(document: dict[str, Any], admin: bool = False) -> dict[str, Any]:
    parsed, decision, _ = decide(document)
    return core.evaluation_response(parsed, decision, "01M8GJP400BSYCFM6M3ZHN1HTX", admin=admin)


# -- subject resolution -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "matched_by", "kind"),
    [
        ({"type": "user", "id": KC_ID}, "keycloak_user_id", "human"),
        ({"type": "user", "id": "BOB"}, "username", "human"),  # case-insensitive, unpinned identity
        ({"type": "user", "id": "bob@acme.example", "properties": {"email_verified": True}}, "email", "human"),
        ({"type": "user", "id": "billing-bot"}, "keycloak_client_id", "service_account"),  # user: any principal
        ({"type": "client", "id": "billing-bot"}, "keycloak_client_id", "service_account"),
        ({"type": "service_account", "id": "billing-bot"}, "keycloak_client_id", "service_account"),
    ],
)
def test_subject_ids_join_in_the_contract_order(subject: dict[str, Any], matched_by: str, kind: str) -> None:
    _, decision, _ = decide(evaluation(subject))
    assert decision.principals[0].matched_by == matched_by and decision.principals[0].kind == kind
    assert decision.permitted


def test_an_unverified_email_joins_nothing_and_a_client_type_never_joins_by_username() -> None:
    assert decide(evaluation({"type": "user", "id": "bob@acme.example"}))[1].principals[0].matched_by is None
    assert decide(evaluation({"type": "client", "id": "bob"}))[1].principals[0].matched_by is None


def test_a_pinned_identity_reached_by_username_is_a_mismatch_deny() -> None:
    _, decision, _ = decide(evaluation({"type": "user", "id": "alice"}))
    assert not decision.permitted and "kpb:identity-mismatch" in {r.rule for r in decision.reasons}


def test_client_types_are_client_principals_and_properties_become_attributes() -> None:
    subject = {"type": "agent", "id": "billing-bot", "properties": {"dept": "ops", "tags": ["a", "b"], "n": 3, "nested": {"x": 1}}}
    _, _, claims = decide(evaluation(subject))
    assert claims["subject"]["kind_hint"] == "agent" and claims["subject"]["service_account_client_id"] == "billing-bot"
    assert "username" not in claims["subject"] and "email" not in claims["subject"]
    assert claims["subject"]["attributes"] == {"dept": "ops", "tags": ["a", "b"]}  # the attribute-shaped ones
    assert claims["context"]["authzen"]["subject"]["properties"]["nested"] == {"x": 1}  # all visible to CEL


def test_a_described_subject_and_context_fill_the_claims_request_fields() -> None:
    subject = {
        "type": "user",
        "id": "ignored-as-a-join-key",
        "properties": {"keycloak_user_id": KC_ID, "username": "bob", "kind_hint": "human", "attributes": {"dept": ["ops"]}, "x": "y"},
    }
    context = {"realm": "acme", "client_attributes": {"kpb.tier": "web"}, "requested_scopes": ["openid"], "audience": [], "tenant": "t1"}
    claims = core.claims_request(core.parse_evaluation({**evaluation(subject), "context": context}), request_id="r")
    assert claims["subject"] == {"id": KC_ID, "username": "bob", "kind_hint": "human", "attributes": {"dept": ["ops"]}}
    assert claims["client"] == {"client_id": "authzen", "attributes": {"kpb.tier": "web"}}
    assert (claims["realm"], claims["requested_scopes"], "audience" in claims) == ("acme", ["openid"], False)
    assert {k: v for k, v in claims["context"].items() if k != "authzen"} == {"tenant": "t1"}
    gate = {**evaluation(subject, action="issue:access_token:none", resource={"type": "audience", "id": "crm-api"}), "context": {}}
    assert core.claims_request(core.parse_evaluation({**gate, "context": {"event": "userinfo"}}), request_id="r")["event"] == "userinfo"
    assert core.claims_request(core.parse_evaluation(gate), request_id="r")["audience"] == ["crm-api"]


def test_a_described_value_a_claims_field_cannot_hold_is_a_400_at_its_authzen_path() -> None:
    subject = {"type": "user", "id": KC_ID, "properties": {"username": 7, "attributes": {"a": SECRET * 1000}}}
    with pytest.raises(RequestError) as caught:
        core.claims_request(core.parse_evaluation({**evaluation(subject), "context": {"audience": "crm-api"}}), request_id="r")
    paths = [issue.path for issue in caught.value.issues]
    assert paths == ["$.context.audience", "$.subject.properties.attributes.a", "$.subject.properties.username"]
    assert SECRET not in str(caught.value) + repr(caught.value.issues)


def test_the_claims_request_has_event_authzen_and_context_authzen() -> None:
    _, _, claims = decide(evaluation(channel="api", client_id="crm-api", realm="acme"))
    assert (claims["event"], claims["grant_type"], claims["client"], claims["realm"]) == (
        "authzen",
        "authzen",
        {"client_id": "crm-api"},
        "acme",
    )
    assert claims["context"]["authzen"] == {
        "subject": {"type": "user", "id": KC_ID, "properties": {}},
        "action": {"name": "read", "properties": {}},
        "resource": {"type": "roles", "id": "crm:read", "properties": {}},
        "context": {"channel": "api", "client_id": "crm-api", "realm": "acme"},
    }
    assert core.claims_request(core.parse_evaluation(evaluation()), request_id="r", caller_client_id="rs")["client"]["client_id"] == "rs"


def test_when_events_authzen_and_cel_context_authzen_select_rules() -> None:
    assert answer(evaluation(resource={"type": "channel", "id": "api"}, channel="api"))["decision"] is True
    assert answer(evaluation(resource={"type": "channel", "id": "api"}, channel="web"))["decision"] is False
    gate = decide(evaluation(action="issue:access_token:authorization_code", channel="api"))[1]
    assert "channel" not in gate.claims  # the gate is event token: the authzen-only rule is not a candidate


# -- claims are resources -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"type": "roles", "id": "finance:approve"}, True),  # contained in a list claim
        ({"type": "roles", "id": "billing:read"}, False),
        ({"type": "tier", "id": "gold"}, True),  # a scalar claim equals it
        ({"type": "tier", "id": "silver"}, False),
        ({"type": "document", "id": "1"}, False),  # no claim of that name
    ],
)
def test_claims_are_resources(resource: dict[str, Any], expected: bool) -> None:
    assert answer(evaluation(resource=resource))["decision"] is expected


def test_a_deny_holds_nothing_and_a_non_string_value_compares_as_json() -> None:
    assert answer(evaluation({"type": "user", "id": "nobody"}, resource={"type": "tier", "id": "gold"}))["decision"] is False
    decision = decide(evaluation())[1]
    numeric = Decision(**{**decision.__dict__, "claims": {"level": [3, True]}})
    assert core.holds(numeric, "level", "3") and core.holds(numeric, "level", "true") and not core.holds(numeric, "level", "True")


def test_search_returns_the_claim_values_and_pages_them() -> None:
    search = core.parse_search(
        {
            "subject": {"type": "user", "id": KC_ID},
            "action": {"name": "read"},
            "resource": {"type": "roles", "id": "x"},
            "page": {"limit": 1},
        }
    )
    decision = evaluate(POLICY, SNAPSHOT, parse_request(core.claims_request(search.query, request_id="r")), NOW)
    tokens = core.PageTokens(core.page_key([b"k" * 32]))
    first = core.search_response(search, decision, "01M8GJP400BSYCFM6M3ZHN1HTX", 0, tokens)
    assert first["results"] == [{"type": "roles", "id": "crm:read"}] and first["page"]["total"] == 2
    offset = tokens.offset(first["page"]["next_token"], search.binding)
    second = core.search_response(search, decision, "01M8GJP400BSYCFM6M3ZHN1HTX", offset, tokens)
    assert second["results"] == [{"type": "roles", "id": "finance:approve"}] and second["page"]["next_token"] == ""
    assert core.claim_ids(decision, "document") == []


def test_page_tokens_are_bound_to_the_request_and_the_key() -> None:
    tokens = core.PageTokens(core.page_key([b"k" * 32]))
    token = tokens.issue(b"request-a", 5)
    assert tokens.offset(token, b"request-a") == 5
    for forged, binding in [
        (token, b"request-b"),
        (tokens.issue(b"request-a", 5)[:-2] + "AA", b"request-a"),
        ("not base64!", b"request-a"),
    ]:
        with pytest.raises(RequestError, match="page.token is not a token this bridge issued"):
            tokens.offset(forged, binding)
    with pytest.raises(RequestError):
        core.PageTokens(core.page_key([b"other" * 8])).offset(token, b"request-a")


# -- the token-issuance gate --------------------------------------------------------------------


def test_the_gate_is_a_claims_request_with_that_grant_type_and_answers_the_issuance() -> None:
    document = evaluation(
        {"type": "client", "id": "billing-bot"}, "issue:access_token:client_credentials", {"type": "audience", "id": "billing-api"}
    )
    parsed, decision, claims = decide(document)
    assert (claims["event"], claims["grant_type"], claims["audience"]) == ("token", "client_credentials", ["billing-api"])
    result = core.evaluation_response(parsed, decision, "01M8GJP400BSYCFM6M3ZHN1HTX")
    assert result["decision"] is True
    assert result["context"]["issuance"] == {"claims": {"roles": ["billing:read"], "tier": "gold"}, "token_lifetime": 120}
    assert "remove_claims" not in result["context"]  # the policy removes none


def test_the_gate_grant_type_may_be_a_urn_and_a_malformed_gate_is_an_ordinary_action() -> None:
    urn = "urn:ietf:params:oauth:grant-type:token-exchange"
    assert core.Action(f"issue:access_token:{urn}", {}).gate == ("access_token", urn)
    assert core.Action("issue:access_token", {}).gate is None and core.Action("read", {}).gate is None


def test_a_denied_gate_is_false_without_issuance() -> None:
    result = answer(evaluation({"type": "user", "id": "nobody"}, "issue:access_token:password", {"type": "audience", "id": "a"}))
    assert result["decision"] is False and "issuance" not in result["context"]


# -- reasons --------------------------------------------------------------------------------------


def test_reason_user_never_carries_rule_ids_and_reason_admin_is_for_admins_only() -> None:
    denied = evaluation({"type": "user", "id": "nobody"})
    user = answer(denied)
    assert user["context"]["reason_user"] == "Ask the desk."
    assert "reason_admin" not in user["context"] and "deny-unknown" not in str(user)
    admin = answer(denied, admin=True)
    assert admin["context"]["reason_admin"] == "deny-unknown: unknown principal"
    assert answer(evaluation(resource={"type": "roles", "id": "x"}), admin=True)["context"]["reason_admin"].startswith("the granted claims")


# -- batches and validation ---------------------------------------------------------------------


def test_defaults_merge_into_items_and_the_semantics_short_circuit() -> None:
    document = {
        "subject": {"type": "user", "id": KC_ID},
        "action": {"name": "read"},
        "evaluations": [{"resource": {"type": "roles", "id": v}} for v in ("crm:read", "nope", "finance:approve")],
    }
    order: list[int] = []

    def run(semantic: str) -> list[bool]:
        batch = core.parse_evaluations({**document, "options": {"evaluations_semantic": semantic}}, max_items=3)
        order.clear()

        def one(index: int, item: core.Evaluation) -> dict[str, Any]:
            order.append(index)
            return answer({"subject": item.subject.__dict__, "action": item.action.__dict__, "resource": item.resource.__dict__})

        return [a["decision"] for a in core.run_batch(batch, one)]

    assert run("execute_all") == [True, False, True] and order == [0, 1, 2]
    assert run("deny_on_first_deny") == [True, False] and order == [0, 1]
    assert run("permit_on_first_permit") == [True] and order == [0]
    assert core.parse_evaluations(document, max_items=3).semantic == "execute_all"
    with pytest.raises(RequestError, match="at most 2 evaluations per request"):
        core.parse_evaluations(document, max_items=2)
    single = core.parse_evaluations({k: v for k, v in evaluation().items()}, max_items=1)
    assert single.items == () and single.single is not None


@pytest.mark.parametrize(
    ("document", "path", "message"),
    [
        ({"action": {"name": "read"}, "resource": {"type": "t", "id": "1"}}, "$", "required field 'subject' is missing"),
        ({**evaluation(), "subject": {"type": "user", "id": SECRET * 20}}, "$.subject.id", "violates maxLength 255"),
        ({**evaluation(), "action": {"name": 7}}, "$.action.name", "must be of type string"),
        ({**evaluation(), "context": [SECRET]}, "$.context", "must be of type object"),
    ],
)
def test_invalid_requests_name_the_path_never_the_value(document: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        core.parse_evaluation(document)
    assert (path, message) in {(i.path, i.message) for i in caught.value.issues}
    assert SECRET not in str(caught.value)


def test_a_batch_item_missing_a_field_without_a_default_is_located() -> None:
    with pytest.raises(RequestError) as caught:
        core.parse_evaluations(
            {"subject": {"type": "user", "id": "u"}, "evaluations": [{"resource": {"type": "t", "id": "1"}}]}, max_items=5
        )
    assert [(i.path, i.message) for i in caught.value.issues] == [("$.evaluations[0]", "required field 'action' is missing")]
    with pytest.raises(RequestError, match="evaluations_semantic: must be one of"):
        core.parse_evaluations({**evaluation(), "options": {"evaluations_semantic": "first"}}, max_items=5)
