"""The HTTP adapter over the Flask test client: contract shape and failure semantics."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from conftest import ACME, ACME_SERVICE_ENV, NOW, service_settings
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.bridge import bridge_from_settings
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.decision_log import SQLiteDecisionLog
from keycloak_policy_bridge.errors import ConfigError

ALICE = json.loads((ACME / "requests" / "alice-login.json").read_text())
CAROL = json.loads((ACME / "requests" / "carol-refresh.json").read_text())


def settings_for(tmp_path: Path, **changes: Any) -> Settings:
    return service_settings(tmp_path, **changes)  # type: ignore[no-any-return]


def client_for(settings: Settings) -> tuple[FlaskClient, Any]:
    bridge = bridge_from_settings(settings, lambda: NOW)
    return create_app(bridge, settings, clock=lambda: NOW).test_client(), bridge


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    return client_for(settings_for(tmp_path))[0]


def test_a_permit_in_the_contract_shape_is_recorded(client: FlaskClient, tmp_path: Path) -> None:
    response = client.post("/v1/claims", json=ALICE)
    assert response.status_code == 200
    body = response.get_json()
    assert body["effect"] == "permit" and body["claims"]["roles"] == ["crm:read", "crm:write", "finance:approve"]
    for key in ("decision_id", "claims", "remove_claims", "reasons", "policy", "entitlements"):
        assert key in body
    record = SQLiteDecisionLog(tmp_path / "var" / "decisions.db", readonly=True).get(body["decision_id"])
    assert record.response() == body


@pytest.mark.parametrize("person", [ALICE, CAROL], ids=["permit", "deny"])
def test_prefer_return_minimal_answers_the_fields_a_token_needs(client: FlaskClient, tmp_path: Path, person: dict[str, Any]) -> None:
    response = client.post("/v1/claims", json=person, headers={"Prefer": "return=minimal"})
    assert response.status_code == 200 and response.headers["Preference-Applied"] == "return=minimal"
    assert "Prefer" in response.headers["Vary"]
    body = response.get_json()
    full = SQLiteDecisionLog(tmp_path / "var" / "decisions.db", readonly=True).get(body["decision_id"]).response()
    needed = {"decision_id", "effect", "claims", "remove_claims", "max_ttl_seconds", "user_message", "reasons"}
    assert body == {key: value for key, value in full.items() if key in needed}  # the same decision, fewer fields
    assert {"policy", "entitlements", "principals", "provenance"} <= full.keys() - body.keys()
    plain = client.post("/v1/claims", json=person)
    assert "Preference-Applied" not in plain.headers and "provenance" in plain.get_json()


def test_a_deny_is_a_200(client: FlaskClient) -> None:
    response = client.post("/v1/claims", json=CAROL)
    assert response.status_code == 200 and response.get_json()["effect"] == "deny"


def test_a_deny_carries_the_user_message_and_the_reasons_stay_for_admins(client: FlaskClient, tmp_path: Path) -> None:
    body = client.post("/v1/claims", json=CAROL).get_json()
    assert body["user_message"] == "Your account is not active. Contact the service desk."
    assert [(r["rule"], r["message"]) for r in body["reasons"]] == [("deny-inactive-principal", "IGA status is not active")]
    record = SQLiteDecisionLog(tmp_path / "var" / "decisions.db", readonly=True).get(body["decision_id"])
    assert record.response() == body  # the log keeps both: the reasons for admins, the text the user saw
    assert "user_message" not in client.post("/v1/claims", json=ALICE).get_json()


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({"version": "1"}).encode(), 400, "invalid_request"),
        (b"[" * 70_000, 413, "body_too_large"),
    ],
)
def test_bad_requests_get_the_error_shape(client: FlaskClient, data: bytes, status: int, code: str) -> None:
    response = client.post("/v1/claims", data=data, content_type="application/json")
    assert response.status_code == status
    body = response.get_json()
    assert body["error"] == code and isinstance(body["message"], str)


def test_invalid_request_errors_do_not_echo_values(client: FlaskClient) -> None:
    secret = "never-echo-this-value"
    response = client.post("/v1/claims", json={**ALICE, "event": secret})
    assert response.status_code == 400 and secret not in response.get_data(as_text=True)


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["ready"] is True


def test_no_snapshot_means_not_ready_and_503(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    client, _ = client_for(settings_for(tmp_path, entitlements=empty))
    assert client.get("/readyz").status_code == 503
    response = client.post("/v1/claims", json=ALICE)
    assert response.status_code == 503 and response.get_json()["error"] == "not_ready"


def test_a_broken_policy_means_not_ready(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    client, _ = client_for(settings_for(tmp_path, policy=bad))
    assert client.get("/readyz").get_json()["problems"] == ["no valid policy is loaded"]


def test_an_unwritable_log_is_a_503_never_an_unrecorded_permit(tmp_path: Path) -> None:
    client, bridge = client_for(settings_for(tmp_path))
    bridge.log.close()  # the next append fails
    response = client.post("/v1/claims", json=ALICE)
    assert response.status_code == 503 and response.get_json()["error"] == "decision_log_unavailable"
    assert "permit" not in response.get_data(as_text=True)


def test_activating_a_bad_policy_keeps_the_active_one(tmp_path: Path) -> None:
    client, bridge = client_for(settings_for(tmp_path))
    active = bridge.policy
    from keycloak_policy_bridge.errors import PolicyError

    with pytest.raises(PolicyError):
        bridge.activate({"spec": "kpb-policy/1"}, by="admin", at=NOW)
    assert bridge.policy is active
    assert client.post("/v1/claims", json=ALICE).status_code == 200


def test_settings_from_the_environment(tmp_path: Path) -> None:
    secret = "ab" * 32
    settings = Settings.from_env(
        {**ACME_SERVICE_ENV, "KPB_HMAC_SECRETS": f"k1={secret}", "KPB_FEEDS": "risk=/x", "KPB_TOKEN_TTL_SECONDS": "300"}
    )
    assert settings.hmac_secrets == (("k1", bytes.fromhex(secret)),) and settings.feeds == (("risk", Path("/x")),)
    assert secret not in repr(settings)
    with pytest.raises(ConfigError) as err:
        Settings.from_env({})
    assert err.value.issues[0].path == "KPB_HMAC_SECRETS" and "KPB_INSECURE_DEV" in err.value.issues[0].message
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**ACME_SERVICE_ENV, "KPB_HMAC_SECRETS": "k1=abcd", "KPB_MAX_BODY_BYTES": "x", "KPB_MASK_PATHS": "context.ip"})
    assert {i.path for i in err.value.issues} == {"KPB_HMAC_SECRETS", "KPB_MAX_BODY_BYTES", "KPB_MASK_KEY"}
    assert "abcd" not in str(err.value)
    assert Settings.from_env({**ACME_SERVICE_ENV, "KPB_INSECURE_DEV": "1"}).insecure_dev


def test_the_decision_log_durability_is_full_unless_an_operator_says_normal(tmp_path: Path) -> None:
    dev = {**ACME_SERVICE_ENV, "KPB_INSECURE_DEV": "1"}
    assert Settings.from_env(dev).decision_log_sync == "full"
    assert Settings.from_env({**dev, "KPB_DECISION_LOG_SYNC": "NORMAL"}).decision_log_sync == "normal"
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**dev, "KPB_DECISION_LOG_SYNC": "off"})
    assert [i.path for i in err.value.issues] == ["KPB_DECISION_LOG_SYNC"]
    bridge = bridge_from_settings(
        Settings(
            policy=ACME / "policy.json",
            entitlements=ACME / "entitlements",
            decision_log=tmp_path / "d.db",
            insecure_dev=True,
            decision_log_sync="normal",
        ),
        lambda: NOW,
    )
    assert isinstance(bridge.log, SQLiteDecisionLog) and bridge.log.synchronous == "normal"


def test_copying_the_snapshot_dir_is_not_needed(tmp_path: Path) -> None:
    """The factory reads the configured directories in place (no copies, no writes)."""
    target = tmp_path / "ent"
    shutil.copytree(ACME / "entitlements", target)
    before = sorted(p.name for p in target.iterdir())
    client_for(settings_for(tmp_path, entitlements=target))
    assert sorted(p.name for p in target.iterdir()) == before


# -- caller authentication ------------------------------------------------------------------

SECRET = bytes(range(32))


def signed_client(tmp_path: Path) -> FlaskClient:
    return client_for(settings_for(tmp_path, insecure_dev=False, hmac_secrets=(("k1", SECRET),)))[0]


def post_signed(client: FlaskClient, body: bytes, *, secret: bytes = SECRET, at: datetime | None = None, tamper: bool = False) -> Any:
    from keycloak_policy_bridge.signature import signing_headers

    headers = signing_headers(secret, "k1", "POST", "/v1/claims", body, int((at or NOW).timestamp()))
    return client.post("/v1/claims", data=body + (b" " if tamper else b""), headers={**headers, "Content-Type": "application/json"})


def test_a_signed_request_is_answered(tmp_path: Path) -> None:
    response = post_signed(signed_client(tmp_path), json.dumps(ALICE).encode())
    assert response.status_code == 200 and response.get_json()["effect"] == "permit"


@pytest.mark.parametrize(
    "case",
    ["unsigned", "wrong_secret", "stale", "tampered", "replayed"],
)
def test_unauthenticated_callers_get_401_in_the_error_shape(tmp_path: Path, case: str) -> None:
    client = signed_client(tmp_path)
    body = json.dumps(ALICE).encode()
    if case == "unsigned":
        response = client.post("/v1/claims", data=body, content_type="application/json")
    elif case == "wrong_secret":
        response = post_signed(client, body, secret=bytes(32))
    elif case == "stale":
        response = post_signed(client, body, at=NOW - timedelta(minutes=10))
    elif case == "tampered":
        response = post_signed(client, body, tamper=True)
    else:
        assert post_signed(client, body).status_code == 200
        response = post_signed(client, body)
    assert response.status_code == 401
    document = response.get_json()
    assert document["error"] == "unauthorized" and SECRET.hex() not in response.get_data(as_text=True)


# -- one policy across worker processes ---------------------------------------------------------


def test_an_activation_reaches_every_bridge_sharing_the_log(tmp_path: Path) -> None:
    import os

    from keycloak_policy_bridge.bridge_watcher import BridgeWatcher

    policy_file = tmp_path / "policy.json"
    shutil.copy(ACME / "policy.json", policy_file)
    day_before = (NOW - timedelta(days=1)).timestamp()
    os.utime(policy_file, (day_before, day_before))  # the file predates every activation below
    settings = settings_for(tmp_path, policy=policy_file)
    first = bridge_from_settings(settings, lambda: NOW)
    second = bridge_from_settings(settings, lambda: NOW)  # another gunicorn worker
    assert first.policy is not None and second.policy is not None and first.policy.digest == second.policy.digest
    assert len(first.policies.activations()) == 1  # the second worker did not record the same policy again
    candidate = json.loads((ACME / "candidate-policy.json").read_text())
    first.activate(candidate, by="alice@acme.example", at=NOW)
    BridgeWatcher(second, 1.0, lambda: NOW).tick()
    assert second.policy.version == "2026-11-29.1"
    assert second.activations[-1].activated_by == "alice@acme.example"
    # a restarting worker follows the newer activation, not the older policy file
    third = bridge_from_settings(settings, lambda: NOW)
    assert third.policy is not None and third.policy.version == "2026-11-29.1"


def test_a_policy_file_edited_after_the_last_activation_wins_at_start(tmp_path: Path) -> None:
    import os
    import time

    policy_file = tmp_path / "policy.json"
    shutil.copy(ACME / "policy.json", policy_file)
    settings = settings_for(tmp_path, policy=policy_file)
    bridge_from_settings(settings, lambda: NOW - timedelta(days=1))  # activation recorded "yesterday"
    document = json.loads(policy_file.read_text())
    document["version"] = "edited"
    policy_file.write_text(json.dumps(document))
    os.utime(policy_file, (time.time(), time.time()))
    restarted = bridge_from_settings(settings, lambda: NOW)
    assert restarted.policy is not None and restarted.policy.version == "edited"


def test_readyz_shows_a_rejection_by_its_codes_only_never_file_content_or_paths(tmp_path: Path) -> None:
    """Security review, defect 8: /readyz is unauthenticated; a rejected export's messages can
    quote rows or files, so it shows when and which codes, and the admin view keeps the detail."""
    drop = tmp_path / "drop"
    shutil.copytree(ACME / "entitlements", drop)
    client, bridge = client_for(settings_for(tmp_path, entitlements=drop))
    manifest = json.loads((drop / "manifest.json").read_text())
    (drop / "manifest.json").write_text(json.dumps({**manifest, "complete": False, "snapshot_id": "leaky-row-value"}))
    assert not bridge.store.reload().accepted
    body = client.get("/readyz").get_data(as_text=True)
    status = json.loads(body)["entitlements"]["entitlements"]
    assert status["last_rejection"]["codes"] and set(status["last_rejection"]) == {"at", "codes"}
    assert "directory" not in status and str(drop) not in body and "leaky-row-value" not in body
    assert bridge.store.status()["entitlements"]["last_rejection"]["issues"]  # the detail, for the admin API and the log
