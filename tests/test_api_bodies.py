"""Request bodies through the Flask test client: one bounded reader and one strict JSON parser for
/v1/claims and the admin API (security defects 5 and 7)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from conftest import ACME, NOW, service_settings
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.bridge import bridge_from_settings
from keycloak_policy_bridge.decision_log import SQLiteDecisionLog
from keycloak_policy_bridge.signature import signing_headers
from test_api_admin import Admin, key  # noqa: F401 - the module-scoped RSA key fixture

SECRET = bytes(range(32))
ALICE = json.loads((ACME / "requests" / "alice-login.json").read_text())
NOW_TS = int(NOW.timestamp())

# Hostile but signed bodies: each is refused 400 invalid_json naming where, never the value.
HOSTILE: dict[str, tuple[bytes, str]] = {
    "deep nesting": (
        json.dumps({**ALICE, "context": {"risk": None}}).replace("null", "[" * 10_000 + "]" * 10_000).encode(),
        "$.context.risk",
    ),
    "a 5,000-digit integer": (
        json.dumps({**ALICE, "context": {"risk": 1}}).replace(": 1}", ": " + "7" * 5000 + "}").encode(),
        "$.context.risk",
    ),
    "NaN": (json.dumps({**ALICE, "context": {"risk": float("nan")}}).encode(), "$.context.risk"),
    "Infinity": (json.dumps({**ALICE, "context": {"risk": float("inf")}}).encode(), "$.context.risk"),
    "1e999": (json.dumps({**ALICE, "context": {"risk": 1}}).replace(": 1}", ": 1e999}").encode(), "$.context.risk"),
    "a lone surrogate": (
        json.dumps({**ALICE, "client": {**ALICE["client"], "client_id": "acme-web\ud800"}}).encode(),
        "$.client.client_id",
    ),
    "a repeated key": (json.dumps(ALICE)[:-1].encode() + b', "event": "login"}', "$.event"),
}


def signed_client(tmp_path: Path, **changes: Any) -> tuple[FlaskClient, Any]:
    settings = service_settings(tmp_path, insecure_dev=False, hmac_secrets=(("k1", SECRET),), **changes)
    bridge = bridge_from_settings(settings, lambda: NOW)
    return create_app(bridge, settings, clock=lambda: NOW).test_client(), bridge


def signed(body: bytes, **extra: str) -> dict[str, str]:
    return {**signing_headers(SECRET, "k1", "POST", "/v1/claims", body, NOW_TS), "Content-Type": "application/json", **extra}


def metrics(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = client.get("/metrics").get_data(as_text=True)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_json_on_claims_is_400_naming_where_and_no_log_failure(tmp_path: Path, name: str) -> None:
    client, bridge = signed_client(tmp_path)
    body, path = HOSTILE[name]
    response = client.post("/v1/claims", data=body, headers=signed(body))
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()
    assert error["error"] == "invalid_json" and path in error["message"] and "line 1 column" in error["message"]
    assert "7777" not in error["message"] and "\ud800" not in error["message"] and "\\ud800" not in error["message"].split(")")[-1]
    samples = metrics(client)
    assert samples[("kpb_request_failures_total", (("code", "invalid_json"),))] == 1
    assert samples[("kpb_decision_log_write_failures_total", ())] == 0
    assert SQLiteDecisionLog(tmp_path / "var" / "decisions.db", readonly=True).count() == 0


def test_a_chunked_body_over_the_limit_is_413_not_cut_and_decided(tmp_path: Path) -> None:
    """The defect: 83,036 bytes whose first 65,536 are a complete signed request, chunked, got a
    permit (and a record); with Content-Length, 413."""
    client, _ = signed_client(tmp_path)
    request = json.dumps(ALICE).encode()
    head = request + b" " * (65_536 - len(request))  # a complete request, padded to the limit
    body = head + b" " * (83_036 - len(head))
    headers = {**signing_headers(SECRET, "k1", "POST", "/v1/claims", head, NOW_TS), "Content-Type": "application/json"}
    for framing in ({"Transfer-Encoding": "chunked"}, {}):
        stream = {"input_stream": io.BytesIO(body)} if framing else {"data": body}
        response = client.post("/v1/claims", headers={**headers, **framing}, **stream)
        assert response.status_code == 413 and response.get_json()["error"] == "body_too_large", framing
    whole = b"{" + b" " * 200_000 + json.dumps(ALICE).encode()[1:]  # fully signed 200 KB: 413, not 401
    response = client.post("/v1/claims", input_stream=io.BytesIO(whole), headers=signed(whole, **{"Transfer-Encoding": "chunked"}))
    assert response.status_code == 413 and response.get_json()["error"] == "body_too_large"
    assert SQLiteDecisionLog(tmp_path / "var" / "decisions.db", readonly=True).count() == 0
    assert metrics(client)[("kpb_request_failures_total", (("code", "body_too_large"),))] == 3


def test_a_chunked_body_within_the_limit_is_decided(tmp_path: Path) -> None:
    client, _ = signed_client(tmp_path)
    body = json.dumps(ALICE).encode()
    response = client.post("/v1/claims", input_stream=io.BytesIO(body), headers=signed(body, **{"Transfer-Encoding": "chunked"}))
    assert response.status_code == 200 and response.get_json()["effect"] == "permit"


def test_a_body_shorter_than_its_content_length_is_400(tmp_path: Path) -> None:
    client, _ = signed_client(tmp_path)
    body = json.dumps(ALICE).encode()
    short = {"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body) + 10)}  # as a server hands over a cut body
    response = client.post("/v1/claims", headers=signed(body), environ_overrides=short)
    assert response.status_code == 400 and response.get_json()["error"] == "bad_request"


# -- the admin API ---------------------------------------------------------------------------


@pytest.fixture
def adm(tmp_path: Path, key: rsa.RSAPrivateKey) -> Admin:  # noqa: F811 - `key` is the fixture imported above
    return Admin(tmp_path, key, decide=False)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"policy": ' + "[" * 10_000 + "]" * 10_000 + "}", "$.policy[0]"),
        ('{"policy": {}, "limit": ' + "9" * 5000 + "}", "$.limit"),
        ('{"policy": {}, "limit": NaN}', "$.limit"),
        ('{"policy": {}, "limit": 1e999}', "$.limit"),
        ('{"policy": {}, "subject": "\\ud800"}', "$.subject"),
        ('{"policy": {}, "policy": {}}', "$.policy"),
    ],
)
def test_hostile_json_on_the_admin_api_is_400(adm: Admin, text: str, where: str) -> None:
    for response in (
        adm.client.post("/v1/replay", data=text, content_type="application/json", headers=adm.headers()),
        adm.client.put("/v1/policy", data=text, content_type="application/json", headers=adm.headers()),
    ):
        assert response.status_code == 400, response.get_data(as_text=True)
        error = response.get_json()
        assert error["error"] in ("invalid_json", "policy_invalid")
        described = error["message"] + json.dumps(error.get("issues", []))
        assert where in described and "9999" not in described


def test_a_chunked_admin_body_over_its_limit_is_413(adm: Admin) -> None:
    limit = adm.settings.admin_max_body_bytes
    body = json.dumps({"policy": json.loads((ACME / "candidate-policy.json").read_text())}).encode()
    padded = body[:-1] + b" " * (limit + 10 - len(body)) + b"}"
    for method in ("POST", "PUT"):
        path = "/v1/replay" if method == "POST" else "/v1/policy"
        response = adm.client.open(
            path,
            method=method,
            input_stream=io.BytesIO(padded),
            headers={**adm.headers(), "Transfer-Encoding": "chunked", "Content-Type": "application/json"},
        )
        assert response.status_code == 413 and response.get_json()["error"] == "body_too_large", method
    response = adm.client.post(
        "/v1/replay",
        input_stream=io.BytesIO(body),
        headers={**adm.headers(), "Transfer-Encoding": "chunked", "Content-Type": "application/json"},
    )
    assert response.status_code == 200
