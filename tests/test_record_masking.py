"""``record.masking``: the keyed hashes, and the one way masked join keys are undone.

The rules are those of the module's docstring: a masked path is stored as
``hmac-sha256:<hex>`` under the operator's key, lower-cased first for the join keys compared
case-insensitively, and a masked join key is hashed alike in the recorded identities. Against the
record's own inputs nothing needs undoing; against another snapshot ``JoinKeyClearer`` restores a
masked key with the masking key, refuses without it (or with another key) when the subject was
joined by a masked key, and lets a hash that matches nothing stay and match nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from typing import Any

import pytest

from conftest import NOW, make_policy, make_request, make_snapshot, record
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.errors import UnresolvableRecordError
from keycloak_policy_bridge.join_keys import BY_FIELD, BY_PATH
from keycloak_policy_bridge.record import MASK_PREFIX, DecisionRecord, JoinKeyClearer, Masker, build_record, recorded_snapshot
from keycloak_policy_bridge.request import parse_request
from record_cases import MASK_KEY, MASKER, acme, acme_record

KEY = b"masking tests key, 32 bytes long"
OTHER_KEY = b"another operator's masking key.."
ROLES = {"id": "roles", "effect": "grant", "claims": {"roles": {"from_entitlements": {"kind": "app_role"}}}}
POLICY = make_policy([ROLES])
# Alice has no Keycloak pin, so her login joins by e-mail; the export spells it in mixed case.
ALICE = record("E1", keycloak_user_id="", username="", email="Alice@Acme.Example", entitlement_value="crm:read")
BOB = record("E2", keycloak_user_id="", username="", email="bob@acme.example", entitlement_value="crm:write")
LOGIN = {"id": "kc-alice", "username": None, "email": "alice@acme.example", "email_verified": True}


def hmac_hex(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def email_login(masker: Masker | None, records: list[dict[str, Any]] | None = None) -> DecisionRecord:
    """Alice's login, joined by her (masked) e-mail, recorded with ``masker``."""
    snapshot = make_snapshot(records or [ALICE, BOB])
    request = make_request(subject=LOGIN)
    decision = evaluate(POLICY, snapshot, request, NOW)
    return build_record("01M8GJP4000000000000000001", decision, request, snapshot, masker=masker)


def joined_by(request: Any, snapshot: Snapshot) -> tuple[str | None, str | None]:
    """(IGA subject id, join key) the request's subject joins in ``snapshot`` now."""
    principal = evaluate(POLICY, snapshot, parse_request(dict(request), validate=False), NOW + timedelta(minutes=5)).principals[0]
    return principal.subject_id, principal.matched_by


# -- the keyed hash -------------------------------------------------------------------------------


def test_a_hash_is_hmac_sha256_under_the_key() -> None:
    masker = Masker((), KEY)
    assert masker.hash("127.0.0.1") == MASK_PREFIX + hmac_hex(KEY, "127.0.0.1") == "hmac-sha256:" + hmac_hex(KEY, "127.0.0.1")
    assert masker.hash(5) == masker.hash("5") and masker.hash(True) == masker.hash("True")  # a non-string: its repr
    assert Masker((), OTHER_KEY).hash("127.0.0.1") != masker.hash("127.0.0.1")
    assert KEY.decode() not in repr(masker) and "key" not in repr(masker)


def test_the_present_paths_are_masked_and_listed_in_the_configured_order() -> None:
    document: dict[str, Any] = {
        "subject": {"id": "kc-1", "email": None, "groups": ["/Sales", "/EU"]},
        "context": {"ip": "10.0.0.1", "device_id": 7},
    }
    masker = Masker(("context.device_id", "subject.email", "context.ip", "subject.groups", "context.missing", "absent.path"), KEY)
    masked, paths = masker.apply(document)
    assert paths == ("context.device_id", "context.ip", "subject.groups")  # null and missing values are not listed
    assert masked["context"] == {"ip": masker.hash("10.0.0.1"), "device_id": masker.hash(7)}
    assert masked["subject"] == {"id": "kc-1", "email": None, "groups": [masker.hash("/Sales"), masker.hash("/EU")]}  # element-wise
    assert document["context"]["ip"] == "10.0.0.1" and document["subject"]["groups"] == ["/Sales", "/EU"]  # a copy was masked


@pytest.mark.parametrize(
    ("path", "value", "hashed"),
    [
        ("subject.email", "Alice@Acme.Example", "alice@acme.example"),  # folded join key: lower-cased first
        ("subject.username", "ALICE", "alice"),
        ("subject.id", "KC-Alice", "KC-Alice"),  # an id join key compares exactly
        ("subject.service_account_client_id", "Billing-Bot", "Billing-Bot"),
        ("context.ip", "FE80::1", "FE80::1"),  # not a join key
    ],
)
def test_folded_join_keys_are_hashed_lower_cased(path: str, value: str, hashed: str) -> None:
    section, field = path.split(".")
    masker = Masker((path,), KEY)
    masked, _ = masker.apply({section: {field: value}})
    assert masked[section][field] == masker.hash(hashed)


def test_recorded_identities_carry_the_requests_hash() -> None:
    """A masked join key is hashed in every recorded identity too, as the request's is, so the
    recorded inputs still join and the clear value is nowhere in the record."""
    masker = Masker(("subject.email", "context.ip"), KEY)
    recorded = email_login(masker)
    (identity,) = recorded.identities
    assert recorded.request["subject"]["email"] == identity.email == masker.hash("alice@acme.example")
    assert identity.username is None and identity.keycloak_user_id is None  # absent keys stay absent
    assert recorded.masked == ("subject.email",)  # the login carries no context.ip


def test_masking_an_identity_changes_only_the_masked_join_keys() -> None:
    identity = acme()[1].identity("E1001")
    assert identity is not None
    masker = Masker((), KEY)
    assert masker.mask_identity(identity, ("context.ip",)) is identity
    masked = masker.mask_identity(identity, ("subject.username", "context.ip"))
    assert masked.username == masker.hash("alice") and masked.email == identity.email
    assert masked.records == identity.records and masked.subject_id == identity.subject_id


# -- undoing: the record's own inputs -------------------------------------------------------------


@pytest.mark.parametrize("masker", [Masker(("subject.email",), KEY), None])
def test_the_records_own_inputs_need_no_key(masker: Masker | None) -> None:
    recorded = email_login(masker)
    assert joined_by(recorded.request, recorded_snapshot(recorded)) == ("E1", "email")


# -- undoing: another snapshot, with the key ------------------------------------------------------


def test_with_the_key_a_masked_key_is_restored_to_the_snapshots_clear_value() -> None:
    masker = Masker(("subject.email", "context.ip"), KEY)
    recorded = email_login(masker)
    assert recorded.joined_subject() == ("E1", BY_FIELD["email"])
    current = make_snapshot([BOB, ALICE])
    cleared = JoinKeyClearer(current, masker).request(recorded)
    assert cleared["subject"]["email"] == "Alice@Acme.Example"  # the snapshot's spelling; the join folds case
    assert joined_by(cleared, current) == ("E1", "email")
    assert recorded.request["subject"]["email"].startswith(MASK_PREFIX)  # the record is not changed


def test_with_the_key_paths_other_than_join_keys_stay_hashed() -> None:
    masker = Masker(("subject.id", "context.ip"), MASK_KEY)
    recorded = acme_record("alice-login", masker)
    cleared = JoinKeyClearer(acme()[1], masker).request(recorded)
    assert cleared["subject"]["id"] == "a11ce000-0000-4000-8000-000000000001"
    assert cleared["context"]["ip"] == masker.hash("127.0.0.1")


def test_a_hash_no_value_matches_stays_and_matches_nothing() -> None:
    """Alice left the export: her hash stays, as her clear e-mail would have joined nobody."""
    masker = Masker(("subject.email",), KEY)
    recorded = email_login(masker)
    without_alice = make_snapshot([BOB])
    cleared = JoinKeyClearer(without_alice, masker).request(recorded)
    assert cleared["subject"]["email"] == recorded.request["subject"]["email"]
    assert joined_by(cleared, without_alice) == (None, None)


def test_with_the_key_an_unjoined_record_is_checked_by_nobody() -> None:
    masker = Masker(("subject.email",), KEY)
    recorded = email_login(masker, [BOB])  # joined nothing when recorded
    clearer = JoinKeyClearer(make_snapshot([ALICE, BOB]), masker)
    assert clearer.request(recorded)["subject"]["email"] == "Alice@Acme.Example"  # she joins now: a real change
    clearer.check_joined(recorded, None)


# -- undoing: another snapshot, without the key or with another ----------------------------------


def test_without_the_key_a_subject_joined_by_a_masked_key_is_unresolvable() -> None:
    recorded = email_login(Masker(("subject.email",), KEY))
    with pytest.raises(UnresolvableRecordError) as caught:
        JoinKeyClearer(make_snapshot([ALICE]), None).request(recorded)
    message = str(caught.value)
    assert "subject.email" in message and "masking key" in message
    assert MASK_PREFIX not in message and "alice" not in message.lower()
    assert caught.value.code == "record_unresolvable"


def test_another_key_is_detected() -> None:
    recorded = email_login(Masker(("subject.email",), KEY))
    with pytest.raises(UnresolvableRecordError, match="not the one subject.email was masked with"):
        JoinKeyClearer(make_snapshot([ALICE]), Masker((), OTHER_KEY)).request(recorded)


def test_without_the_key_the_clear_keys_decide_and_an_unjoined_subject_is_unresolvable() -> None:
    """Alice's acme login joined by her (clear) Keycloak id; her e-mail and username are masked."""
    recorded = acme_record("alice-login", MASKER)
    assert recorded.joined_subject()[1] == BY_PATH["subject.id"] and recorded.masked_join_keys()
    clearer = JoinKeyClearer(acme()[1], None)
    assert clearer.request(recorded) is recorded.request  # nothing to undo without the key
    clearer.check_joined(recorded, "E1001")  # still joins by its clear id: resolved
    with pytest.raises(UnresolvableRecordError, match="subject.email, subject.username cannot be matched without the masking key"):
        clearer.check_joined(recorded, None)  # might have joined by a masked key


def test_a_record_without_masked_join_keys_is_returned_as_is() -> None:
    for recorded in (acme_record("alice-login"), acme_record("alice-login", Masker(("context.ip",), MASK_KEY))):
        for masker in (None, Masker((), OTHER_KEY)):
            clearer = JoinKeyClearer(acme()[1], masker)
            assert clearer.request(recorded) is recorded.request
            clearer.check_joined(recorded, None)


# -- found while writing these tests --------------------------------------------------------------


def test_a_path_configured_twice_is_masked_once() -> None:
    masker = Masker(("subject.email", "subject.email"), KEY)
    recorded = email_login(masker)
    assert recorded.masked == ("subject.email",)
    assert recorded.request["subject"]["email"] == recorded.identities[0].email  # else the recorded inputs no longer join


def test_a_configured_join_key_is_masked_in_every_recorded_identity_even_when_the_request_lacks_it() -> None:
    """billing-bot's client-credentials grant carries no e-mail, but the evaluation reads its owner
    E1001 (alice): her e-mail must not sit in the log in clear because this request had none."""
    recorded = acme_record("billing-bot-client-credentials", MASKER)
    assert "subject.email" not in recorded.masked  # nothing of the request was an e-mail
    owner = next(i for i in recorded.identities if i.subject_id == "E1001")
    clear = acme()[1].identity("E1001")
    assert clear is not None and clear.email and clear.username
    assert owner.email == MASKER.hash(clear.email.lower()) and owner.username == MASKER.hash(clear.username.lower())
