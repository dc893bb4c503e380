"""``record.model``: the rules a record derives (token expiry, rule set, the recorded join,
masked join keys, the response), on hand-made records, and ``record.build`` and
``record.rebuild`` on the acme records."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from conftest import NOW
from keycloak_policy_bridge.decision import ClaimValue, Decision, PrincipalInfo, Reason, ValueSource
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.entitlements import EntitlementRecord
from keycloak_policy_bridge.join_keys import BY_FIELD, BY_PATH
from keycloak_policy_bridge.record import DecisionRecord, Masker, SnapshotRef, build_record, recorded_feeds, recorded_snapshot
from keycloak_policy_bridge.request import parse_request
from record_cases import MASK_KEY, MASKER, acme, acme_record, case_id, cases, decide

CASES = cases()
DIGEST = "sha256:" + "d" * 64


def make_decision(**changes: Any) -> Decision:
    """A permit with nothing in it; ``changes`` replace fields."""
    fields: dict[str, Any] = {
        "effect": "permit",
        "claims": {},
        "remove_claims": (),
        "max_ttl_seconds": None,
        "reasons": (),
        "provenance": {},
        "policy_id": "p",
        "policy_version": "1",
        "policy_digest": DIGEST,
        "snapshot_digest": DIGEST,
        "snapshot_generated_at": NOW - timedelta(hours=1),
        "snapshot_age_seconds": 3600,
        "snapshot_stale": False,
        "evaluated_at": NOW,
    }
    fields.update(changes)
    return Decision(**fields)


def make_record(decision: Decision | None = None, **changes: Any) -> DecisionRecord:
    fields: dict[str, Any] = {
        "decision_id": "01M8GJP4000000000000000001",
        "request": {"subject": {"id": "kc-1"}, "client": {"client_id": "web"}},
        "masked": (),
        "decision": decision or make_decision(),
        "snapshot": SnapshotRef("s", DIGEST, NOW - timedelta(hours=1), "test"),
        "feeds": {},
        "token_ttl_seconds": None,
    }
    fields.update(changes)
    return DecisionRecord(**fields)


def subject(matched_by: str | None, subject_id: str | None = "E1") -> PrincipalInfo:
    return PrincipalInfo("subject", subject_id, "human", "active" if subject_id else "unknown", matched_by)


# -- token expiry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [(300, NOW + timedelta(seconds=300)), (0, NOW), (None, NOW + timedelta(hours=2))],
)
def test_the_token_expires_after_the_recorded_lifetime_or_the_default(ttl: int | None, expected: Any) -> None:
    assert make_record(token_ttl_seconds=ttl).token_expires_at(timedelta(hours=2)) == expected


@pytest.mark.parametrize(
    ("name", "realm_ttl", "expected"),
    [
        ("billing-bot-client-credentials", 600, 300),  # the policy's five-minute cap is shorter
        ("billing-bot-client-credentials", 120, 120),  # the realm's lifetime is shorter
        ("billing-bot-client-credentials", None, 300),
        ("alice-login", 600, 600),  # no cap
        ("alice-login", None, None),
    ],
)
def test_the_recorded_lifetime_is_the_shorter_one_known(name: str, realm_ttl: int | None, expected: int | None) -> None:
    record = acme_record(name, token_ttl_seconds=realm_ttl)
    assert record.token_ttl_seconds == expected
    if expected is not None:
        assert record.token_expires_at(timedelta(hours=1)) == NOW + timedelta(seconds=expected)


# -- rules ----------------------------------------------------------------------------------------


def test_rules_are_every_rule_of_the_reasons_and_the_provenance_sorted_once() -> None:
    grant = EntitlementRecord("E1", "crm", "app_role", "crm:read")
    decision = make_decision(
        reasons=(Reason("z-deny", "no", "deny"), Reason("kpb:freshness", "old", "omit"), Reason("z-deny", "again", "deny")),
        provenance={
            "roles": (ClaimValue("crm:read", (ValueSource("roles", "subject", (grant,)), ValueSource("a-extra", "actor"))),),
            "tenant": (ClaimValue("eu", (ValueSource("roles", "subject"),)),),
        },
    )
    assert make_record(decision).rules == ("a-extra", "kpb:freshness", "roles", "z-deny")
    assert make_record().rules == ()


def test_the_acme_rules() -> None:
    assert acme_record("alice-login").rules == ("roles-from-app-roles", "tenant-from-entitlements")
    assert acme_record("agent-chain-too-deep").rules == ("kpb:delegation",)


# -- the recorded join ----------------------------------------------------------------------------


@pytest.mark.parametrize("field", sorted(BY_FIELD))
def test_the_joined_subject_names_its_join_key(field: str) -> None:
    record = make_record(make_decision(principals=(subject(field),)))
    assert record.joined_subject() == ("E1", BY_FIELD[field])
    assert record.subject_id == "E1"


@pytest.mark.parametrize(
    "principals",
    [
        (),  # nothing was joined (a request that failed before the join)
        (subject(None, None),),  # an unknown principal
        (PrincipalInfo("actors[0]", "A1", "agent", "active", "keycloak_client_id"),),  # not the subject
    ],
)
def test_no_subject_joined(principals: tuple[PrincipalInfo, ...]) -> None:
    record = make_record(make_decision(principals=principals))
    assert record.subject_id is None
    assert record.joined_subject() == (None, None)


def test_an_ambiguous_join_names_the_key_but_no_subject() -> None:
    record = make_record(make_decision(principals=(subject("email", None),)))
    assert record.joined_subject() == (None, BY_FIELD["email"])


def test_the_identity_columns_come_from_the_request_and_the_principals() -> None:
    record = acme_record("billing-bot-client-credentials")
    assert (record.subject_id, record.client_id) == ("S2001", "billing-bot")
    assert record.keycloak_user_id == record.request["subject"]["id"]
    bare = make_record(request={})
    assert (bare.keycloak_user_id, bare.client_id) == (None, None)
    odd = make_record(request={"subject": {"id": 7}, "client": "web"})
    assert (odd.keycloak_user_id, odd.client_id) == (None, None)


def test_the_keycloak_user_id_is_the_hash_when_masked() -> None:
    record = acme_record("alice-login", Masker(("subject.id",), MASK_KEY))
    assert record.keycloak_user_id == Masker((), MASK_KEY).hash("a11ce000-0000-4000-8000-000000000001")


# -- masked join keys -----------------------------------------------------------------------------


def test_masked_join_keys_are_the_masked_subject_keys_in_masked_order() -> None:
    masked = ("context.ip", "subject.email", "subject.auth.acr", "subject.id", "subject.service_account_client_id")
    record = make_record(masked=masked)
    assert record.masked_join_keys() == (BY_PATH["subject.email"], BY_PATH["subject.id"], BY_PATH["subject.service_account_client_id"])
    assert make_record(masked=("context.ip",)).masked_join_keys() == ()
    assert acme_record("alice-login", MASKER).masked_join_keys() == (BY_PATH["subject.email"], BY_PATH["subject.username"])


# -- the response ---------------------------------------------------------------------------------


def test_the_response_is_the_decisions_unless_one_was_recorded() -> None:
    record = make_record()
    assert record.response() == record.decision.response(record.decision_id)
    recorded = {"decision_id": record.decision_id, "effect": "permit", "claims": {"legacy": True}}
    old = dataclasses.replace(record, schema="kpb-decision/1", recorded_response=recorded)
    assert old.response() == recorded
    assert old == dataclasses.replace(record, schema="kpb-decision/1")  # the recorded response is not the record's identity


def test_a_record_is_frozen() -> None:
    record = make_record()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.decision_id = "other"  # type: ignore[misc]


def test_the_derived_fields_are_the_decisions() -> None:
    record = acme_record("bob-login")
    assert (record.evaluated_at, record.effect, record.permitted) == (NOW, "permit", True)
    assert record.policy_digest == acme()[0].digest
    assert record.identities == record.decision.inputs
    assert record.schema == "kpb-decision/2"


# -- build and rebuild ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "masker"), CASES, ids=[case_id(c) for c in CASES])
def test_the_recorded_inputs_reproduce_the_decision(name: str, masker: Masker | None) -> None:
    """Re-evaluating the recorded request on the recorded snapshot and feeds gives the response the
    caller got: masked join keys are hashes on both sides, so they still join."""
    record = acme_record(name, masker)
    policy = acme()[0]
    request = parse_request(dict(record.request), validate=False)
    again = evaluate(policy, recorded_snapshot(record), request, record.evaluated_at, recorded_feeds(record))
    assert again.response(record.decision_id) == record.response()


def test_a_subject_joined_by_a_masked_id_is_reproduced_without_the_key() -> None:
    record = acme_record("alice-login", Masker(("subject.id", "subject.email"), MASK_KEY))
    assert record.joined_subject()[1] in record.masked_join_keys()
    request = parse_request(dict(record.request), validate=False)
    again = evaluate(acme()[0], recorded_snapshot(record), request, NOW, recorded_feeds(record))
    assert again.response(record.decision_id) == record.response() == decide("alice-login").response(record.decision_id)


def test_the_record_holds_what_the_evaluation_read() -> None:
    record = acme_record("agent-exchange-for-alice")
    assert {i.subject_id for i in record.identities} == {"E1001", "A3001"}
    risk = record.feeds["risk"]
    assert set(risk.rows) == {"E1001", "A3001"} and all(len(rows) == 1 for rows in risk.rows.values())
    assert (risk.digest, risk.generated_at) == (acme()[2]["risk"].digest, acme()[2]["risk"].generated_at)
    snapshot = acme()[1]
    assert record.snapshot == SnapshotRef(snapshot.snapshot_id, snapshot.digest, snapshot.generated_at, snapshot.source_system)


def test_every_loaded_feed_is_recorded_even_unread() -> None:
    """A feed's presence and age change decisions, so it is recorded when nobody's rows were read."""
    record = acme_record("erin-login")  # unknown principal: nothing read
    assert record.identities == () and set(record.feeds) == {"risk"} and dict(record.feeds["risk"].rows) == {}


def test_recording_does_not_change_the_request() -> None:
    policy, snapshot, feeds = acme()
    document = {**acme_record("alice-login").request}
    before = repr(document)
    request = parse_request(document)
    build_record("01M8GJP4000000000000000001", evaluate(policy, snapshot, request, NOW, feeds), request, snapshot, feeds, masker=MASKER)
    assert repr(document) == before
