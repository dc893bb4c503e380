"""The subject join of contract v1 section 2 as revised (security review, December 2026).

An IGA identity with a ``keycloak_user_id`` or ``keycloak_client_id`` is *pinned*: only that id
joins it. Username and e-mail join only identities without a pin, and e-mail only when the
request says it is verified. A pinned identity reached by username or e-mail under another
Keycloak id is denied (``kpb:identity-mismatch``), counted and logged, never matched. The policy
may relax this per IGA source system (``identity_join``), and only explicitly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from conftest import ACME, NOW, make_policy, make_request, make_snapshot, policy_doc, record, service_settings
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.bridge import bridge_from_settings
from keycloak_policy_bridge.decision import BUILTIN_USER_MESSAGES, Decision
from keycloak_policy_bridge.engine import JOIN_MISMATCH_RULE, evaluate
from keycloak_policy_bridge.entitlements import JoinOptions
from keycloak_policy_bridge.errors import PolicyError, RequestError
from keycloak_policy_bridge.policy import compile_policy

ROLES = {"id": "roles", "effect": "grant", "claims": {"roles": {"from_entitlements": {"kind": "app_role"}}}}
# E1 is pinned to a Keycloak user, S1 to a client (a service account); E2 carries no pin.
PINNED = record("E1", keycloak_user_id="kc-alice", username="alice", email="alice@acme.example", entitlement_value="finance:approve")
PINNED_CLIENT = record(
    "S1",
    subject_type="service_account",
    keycloak_user_id="",
    keycloak_client_id="billing-bot",
    username="service-account-billing-bot",
    email="bot@acme.example",
    entitlement_value="billing:write",
)
UNPINNED = record("E2", keycloak_user_id="", username="bob", email="bob@acme.example", entitlement_value="crm:read")
RECORDS = [PINNED, PINNED_CLIENT, UNPINNED]
MALLORY = {"id": "kc-mallory", "username": "mallory", "email": "mallory@evil.example"}


def decide(subject: dict[str, Any], identity_join: dict[str, Any] | None = None, records: list[dict[str, Any]] | None = None) -> Decision:
    top = {"identity_join": identity_join} if identity_join is not None else {}
    policy = make_policy([ROLES], **top)
    return evaluate(policy, make_snapshot(records or RECORDS), make_request(subject={**MALLORY, **subject}), NOW)


def joined(decision: Decision) -> tuple[str | None, str | None]:
    return decision.principals[0].subject_id, decision.principals[0].matched_by


# -- pinned identities are reached by their id only --------------------------------------------


@pytest.mark.parametrize(
    ("subject", "key"),
    [
        ({"email": "ALICE@acme.example", "email_verified": True}, "email"),  # the report's repro
        ({"username": "alice"}, "username"),
        ({"username": "ALICE", "email": "alice@acme.example", "email_verified": True}, "username"),  # first key decides
        ({"username": "service-account-billing-bot"}, "username"),  # pinned by client id
        ({"email": "bot@acme.example", "email_verified": True}, "email"),
    ],
)
def test_a_pinned_identity_reached_by_username_or_email_under_another_id_is_denied(subject: dict[str, Any], key: str) -> None:
    decision = decide(subject)
    assert decision.effect == "deny" and decision.claims == {}
    assert joined(decision) == (None, key), "never a match: the victim's identity is not the principal"
    [reason] = [r for r in decision.reasons if r.kind == "deny"]
    assert reason.rule == JOIN_MISMATCH_RULE == "kpb:identity-mismatch"
    assert f"by {key}" in reason.message and "pinned to another Keycloak id" in reason.message
    for untrusted in ("alice@", "bot@", "mallory", "alice'", "service-account-billing-bot"):
        assert untrusted not in reason.message.lower()
    assert decision.user_message == BUILTIN_USER_MESSAGES["kpb:identity"]  # the refused user reads the neutral identity text
    # The pinned identity is an input of the decision, so that replay reproduces the denial.
    assert {i.subject_id for i in decision.inputs} & {"E1", "S1"}


def test_a_pinned_identity_still_joins_by_its_own_id() -> None:
    decision = decide({"id": "kc-alice", "username": "someone-else", "email": "x@y", "email_verified": False})
    assert decision.effect == "permit" and joined(decision) == ("E1", "keycloak_user_id")
    assert decision.claims == {"roles": ["finance:approve"]}


def test_an_unpinned_identity_joins_by_username() -> None:
    decision = decide({"username": "BOB"})
    assert joined(decision) == ("E2", "username") and decision.claims == {"roles": ["crm:read"]}


def test_an_unpinned_identity_joins_by_verified_email() -> None:
    decision = decide({"email": "Bob@acme.example", "email_verified": True})
    assert joined(decision) == ("E2", "email") and decision.claims == {"roles": ["crm:read"]}


@pytest.mark.parametrize("verified", [False, None])  # None: absent, which means not verified
def test_an_unverified_email_joins_nothing(verified: bool | None) -> None:
    subject: dict[str, Any] = {"email": "bob@acme.example"}
    if verified is not None:
        subject["email_verified"] = verified
    decision = decide(subject)
    assert joined(decision) == (None, None) and decision.claims == {"roles": []}
    assert not decision.reasons, "no match is not a mismatch: the policy decides about unknown principals"
    # Nor is an unverified e-mail that names a pinned identity a mismatch: it is never compared.
    assert not decide({**subject, "email": "alice@acme.example"}).reasons


def test_two_identities_sharing_a_username_one_of_them_pinned_deny() -> None:
    records = [PINNED, record("E3", keycloak_user_id="", username="alice", entitlement_value="x")]
    decision = decide({"username": "alice"}, records=records)
    assert decision.effect == "deny" and joined(decision)[0] is None
    assert decision.reasons[0].rule == JOIN_MISMATCH_RULE


def test_two_unpinned_identities_sharing_a_verified_email_stay_ambiguous() -> None:
    records = [record("E3", keycloak_user_id="", email="dup@x"), record("E4", keycloak_user_id="", email="DUP@x")]
    decision = decide({"email": "dup@x", "email_verified": True}, records=records)
    assert decision.effect == "deny" and decision.reasons[0].rule == "kpb:identity"


def test_resolve_defaults_are_strict() -> None:
    snapshot = make_snapshot(RECORDS)
    assert snapshot.resolve(keycloak_user_id="kc-x", email="bob@acme.example").identity is None  # email_verified defaults to False
    assert snapshot.resolve(keycloak_user_id="kc-x", email="bob@acme.example", email_verified=True).identity is not None
    mismatch = snapshot.resolve(keycloak_user_id="kc-x", username="alice")
    assert mismatch.identity is None and mismatch.mismatched == ("E1",) and mismatch.matched_by == "username"
    relaxed = snapshot.resolve(keycloak_user_id="kc-x", username="alice", options=JoinOptions(username_to_pinned=True))
    assert relaxed.identity is not None and relaxed.identity.subject_id == "E1" and not relaxed.mismatched


# -- the policy's explicit opt-outs (identity_join, per IGA source system) -------------------------


def test_allow_unverified_email_joins_unpinned_identities_of_that_source_system_only() -> None:
    subject = {"email": "bob@acme.example", "email_verified": False}
    assert joined(decide(subject, {"allow_unverified_email": ["inline"]})) == ("E2", "email")
    assert joined(decide(subject, {"allow_unverified_email": ["sailpoint_isc"]})) == (None, None)  # another IGA's snapshot
    pinned = decide({"email": "alice@acme.example"}, {"allow_unverified_email": ["inline"]})
    assert pinned.effect == "deny" and pinned.reasons[0].rule == JOIN_MISMATCH_RULE  # a pin still holds


def test_allow_username_to_pinned_joins_a_pinned_identity_by_username_but_never_by_email() -> None:
    by_username = decide({"username": "alice"}, {"allow_username_to_pinned": ["inline"]})
    assert by_username.effect == "permit" and joined(by_username) == ("E1", "username")
    by_email = decide({"email": "alice@acme.example", "email_verified": True}, {"allow_username_to_pinned": ["inline"]})
    assert by_email.effect == "deny" and by_email.reasons[0].rule == JOIN_MISMATCH_RULE
    assert decide({"username": "alice"}, {"allow_username_to_pinned": ["other"]}).effect == "deny"


def test_identity_join_is_off_by_default_and_compiles_per_source_system() -> None:
    assert make_policy([ROLES]).identity_join.options("inline") == JoinOptions()
    policy = make_policy([ROLES], identity_join={"allow_unverified_email": ["a", "b"], "allow_username_to_pinned": ["b"]})
    assert policy.identity_join.options("a") == JoinOptions(unverified_email=True)
    assert policy.identity_join.options("b") == JoinOptions(unverified_email=True, username_to_pinned=True)
    assert policy.identity_join.options("c") == JoinOptions()


@pytest.mark.parametrize(
    ("identity_join", "fragment"),
    [
        ({"allow_unverified_email": True}, "$.identity_join.allow_unverified_email"),
        ({"allow_unverified_email": [""]}, "$.identity_join.allow_unverified_email[0]"),
        ({"allow_unverified_email": ["*"]}, "$.identity_join.allow_unverified_email[0]"),  # no wildcards: name the IGA
        ({"allow_username_to_pinned": ["a", "a"]}, "$.identity_join.allow_username_to_pinned"),
        ({"allow_email_to_pinned": ["a"]}, "$.identity_join"),  # not a setting
    ],
)
def test_identity_join_is_validated(identity_join: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PolicyError) as caught:
        compile_policy(policy_doc([ROLES], identity_join=identity_join))
    assert any(i.path == fragment for i in caught.value.issues), caught.value.issues


# -- the request field ----------------------------------------------------------------------------


def test_email_verified_is_an_optional_boolean() -> None:
    assert make_request(subject={"email_verified": True}).subject["email_verified"] is True
    with pytest.raises(RequestError) as caught:
        make_request(subject={"email_verified": "true"})
    assert [(i.path, i.message) for i in caught.value.issues] == [("$.subject.email_verified", "must be of type boolean")]


# -- the service: counted and logged, the untrusted value never ----------------------------------


def test_a_mismatch_is_counted_and_logged_without_the_untrusted_value(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = service_settings(tmp_path)
    clock = lambda: NOW  # noqa: E731
    app = create_app(bridge_from_settings(settings, clock), settings, clock=clock)
    client = app.test_client()
    alice = json.loads((ACME / "requests" / "alice-login.json").read_text())
    lookalike = {
        **alice,
        "subject": {
            **alice["subject"],
            "id": "e0e0e0e0-0000-4000-8000-00000000bad1",
            "username": "mallory",
            "email": "ALICE@acme.example",
            "email_verified": True,
        },
    }
    with caplog.at_level(logging.INFO):
        answer = client.post("/v1/claims", json=lookalike).get_json()
        by_username = client.post("/v1/claims", json={**lookalike, "subject": {**lookalike["subject"], "username": "alice"}}).get_json()
        client.post("/v1/claims", json=alice)
    assert answer["effect"] == "deny" and answer["claims"] == {}
    assert answer["principals"][0]["subject_id"] is None and answer["principals"][0]["matched_by"] == "email"
    assert JOIN_MISMATCH_RULE in {r["rule"] for r in answer["reasons"]}
    assert by_username["effect"] == "deny" and by_username["principals"][0]["matched_by"] == "username"
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'kpb_identity_join_mismatch_total{key="email"} 1.0' in metrics
    assert 'kpb_identity_join_mismatch_total{key="username"} 1.0' in metrics
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "mismatch" in r.getMessage()]
    assert len(warnings) == 2
    assert answer["decision_id"] in warnings[0] and "E1001" in warnings[0] and "email" in warnings[0]
    assert "e0e0e0e0-0000-4000-8000-00000000bad1" in warnings[0]  # the Keycloak subject id
    for text in warnings:
        assert "alice@" not in text.lower() and "mallory" not in text
