"""The AuthZEN 1.0 endpoints over HTTP (issue 16), on the acme example through Flask's test client:
discovery, evaluation, the three batch semantics, resource search with pagination, X-Request-ID,
every error status, HMAC and bearer callers, and recorded decisions that `kpb explain` reads.
Every answer is checked against the bridge's AuthZEN response schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient

from conftest import ACME, NOW, service_settings
from keycloak_policy_bridge import authzen as core
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.api.admin import JWKS_EXTENSION, JwksCache
from keycloak_policy_bridge.bridge import bridge_from_settings
from keycloak_policy_bridge.cli import main
from keycloak_policy_bridge.signature import signing_headers

ALICE = "a11ce000-0000-4000-8000-000000000001"
ISSUER, AUDIENCE = "http://127.0.0.1:8080/realms/acme", "kpb-admin-api"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWK = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key())), "kid": "t1", "alg": "RS256", "use": "sig"}
SECRET = b"k" * 32
SEARCH = {"subject": {"type": "user", "id": ALICE}, "action": {"name": "read"}, "resource": {"type": "roles"}}


def token(*roles: str, azp: str = "crm-api") -> str:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "svc",
        "azp": azp,
        "typ": "Bearer",
        "realm_access": {"roles": list(roles)},
    }
    claims |= {"iat": int(NOW.timestamp()), "exp": int(NOW.timestamp()) + 600}
    return jwt.encode(claims, KEY, algorithm="RS256", headers={"kid": "t1"})


def make_client(tmp_path: Path, **changes: Any) -> FlaskClient:
    admin = dict(admin_jwks_url=f"{ISSUER}/protocol/openid-connect/certs", admin_issuer=ISSUER, admin_audience=AUDIENCE)
    config = service_settings(tmp_path, **{**admin, **changes})
    app = create_app(bridge_from_settings(config, lambda: NOW), config, clock=lambda: NOW)
    app.extensions[JWKS_EXTENSION] = JwksCache(fetch=lambda url, timeout: {"keys": [JWK]})
    return app.test_client()


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    return make_client(tmp_path)


@pytest.fixture
def secured(tmp_path: Path) -> FlaskClient:
    return make_client(tmp_path, insecure_dev=False, hmac_secrets=(("k1", SECRET),))


def conforms(definition: str, body: Any) -> Any:
    assert core.check("authzen-responses.schema.json", body, where=(definition,)) == [], body
    return body


def ask(client: FlaskClient, path: str, body: Any, **headers: str) -> Any:
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    definition = {"/access/v1/evaluation": "evaluation", "/access/v1/search/resource": "search"}.get(path, "evaluations")
    if path.endswith("evaluations") and "evaluations" not in response.get_json():
        definition = "evaluation"
    return conforms(definition, response.get_json())


def evaluation(resource_id: str, subject: str = ALICE, action: str = "read") -> dict[str, Any]:
    return {"subject": {"type": "user", "id": subject}, "action": {"name": action}, "resource": {"type": "roles", "id": resource_id}}


# -- discovery and evaluation --------------------------------------------------------------------


def test_discovery_names_the_pdp_and_the_endpoints_implemented(client: FlaskClient, tmp_path: Path) -> None:
    body = conforms("configuration", client.get("/.well-known/authzen-configuration").get_json())
    assert body == {
        "policy_decision_point": "http://localhost",
        "access_evaluation_endpoint": "http://localhost/access/v1/evaluation",
        "access_evaluations_endpoint": "http://localhost/access/v1/evaluations",
        "search_resource_endpoint": "http://localhost/access/v1/search/resource",
    }
    configured = make_client(tmp_path / "b", authzen_pdp_url="https://pdp.acme.example")
    assert configured.get("/.well-known/authzen-configuration").get_json()["search_resource_endpoint"] == (
        "https://pdp.acme.example/access/v1/search/resource"
    )


def test_may_alice_use_finance_approve(client: FlaskClient) -> None:
    assert ask(client, "/access/v1/evaluation", evaluation("finance:approve"))["decision"] is True
    denied = ask(client, "/access/v1/evaluation", evaluation("crm:export"))
    assert denied["decision"] is False and denied["context"]["reason_user"] and "reason_admin" not in denied["context"]


def test_a_gate_answers_the_issuance(client: FlaskClient) -> None:
    body = evaluation("x", action="issue:access_token:client_credentials") | {"subject": {"type": "client", "id": "billing-bot"}}
    body["resource"] = {"type": "audience", "id": "billing-api"}
    context = ask(client, "/access/v1/evaluation", body)["context"]
    issuance = context["issuance"]
    assert set(issuance) == {"claims", "token_lifetime"}  # only token-issuance profile members
    assert issuance["token_lifetime"] == 300 and "billing:invoice.read" in issuance["claims"]["roles"]
    assert context["remove_claims"] == ["realm_access", "resource_access"]


@pytest.mark.parametrize(
    ("semantic", "expected"),
    [
        ("execute_all", [True, False, True]),
        ("deny_on_first_deny", [True, False]),
        ("permit_on_first_permit", [True]),
    ],
)
def test_batch_semantics_and_order(client: FlaskClient, semantic: str, expected: list[bool]) -> None:
    batch = {
        "subject": {"type": "user", "id": ALICE},
        "action": {"name": "read"},
        "options": {"evaluations_semantic": semantic},
        "evaluations": [{"resource": {"type": "roles", "id": v}} for v in ("crm:read", "crm:export", "finance:approve")],
    }
    answers = ask(client, "/access/v1/evaluations", batch)["evaluations"]
    assert [a["decision"] for a in answers] == expected
    assert len({a["context"]["decision_id"] for a in answers}) == len(expected)  # one recorded decision per item evaluated


def test_a_batch_without_items_is_one_evaluation(client: FlaskClient) -> None:
    assert ask(client, "/access/v1/evaluations", evaluation("crm:read"))["decision"] is True


# -- search ---------------------------------------------------------------------------------------


def test_search_pages_through_the_claim_values(client: FlaskClient) -> None:
    seen: list[str] = []
    body: dict[str, Any] = {**SEARCH, "page": {"limit": 2}}
    for _ in range(3):
        page = ask(client, "/access/v1/search/resource", body)
        seen += [r["id"] for r in page["results"]]
        assert page["page"]["total"] == 3
        if not page["page"]["next_token"]:
            break
        body = {**SEARCH, "page": {"limit": 2, "token": page["page"]["next_token"]}}
    assert seen == ["crm:read", "crm:write", "finance:approve"]
    assert ask(client, "/access/v1/search/resource", {**SEARCH, "resource": {"type": "document"}})["results"] == []


def test_a_forged_or_mismatched_page_token_is_a_400(client: FlaskClient) -> None:
    first = ask(client, "/access/v1/search/resource", {**SEARCH, "page": {"limit": 1}})["page"]["next_token"]
    for body in (
        {**SEARCH, "page": {"limit": 1, "token": first[:-3] + "AAA"}},
        {**SEARCH, "page": {"limit": 2, "token": first}},  # another limit: another request
        {**SEARCH, "subject": {"type": "user", "id": "someone-else"}, "page": {"limit": 1, "token": first}},
    ):
        response = client.post("/access/v1/search/resource", json=body)
        assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"


# -- request ids, errors, limits -----------------------------------------------------------------


def test_the_request_id_is_echoed_on_answers_and_errors(client: FlaskClient) -> None:
    ok = client.post("/access/v1/evaluation", json=evaluation("crm:read"), headers={"X-Request-ID": "rq-1"})
    bad = client.post("/access/v1/evaluation", data=b"{", headers={"X-Request-ID": "rq-2"})
    assert ok.headers["X-Request-ID"] == "rq-1" and bad.status_code == 400 and bad.headers["X-Request-ID"] == "rq-2"
    assert "X-Request-ID" not in client.post("/access/v1/evaluation", json=evaluation("crm:read")).headers


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/access/v1/evaluation", b"{", 400, "invalid_json"),
        ("/access/v1/evaluation", json.dumps({"subject": {"type": "user"}}).encode(), 400, "invalid_request"),
        ("/access/v1/evaluations", json.dumps({"evaluations": [evaluation("a")] * 101}).encode(), 400, "invalid_request"),
        ("/access/v1/search/resource", json.dumps({**SEARCH, "page": {"limit": 0}}).encode(), 400, "invalid_request"),
        ("/access/v1/evaluation", b" " * (256 * 1024 + 1), 413, "body_too_large"),
    ],
)
def test_errors(client: FlaskClient, path: str, body: bytes, status: int, code: str) -> None:
    response = client.post(path, data=body, content_type="application/json")
    assert (response.status_code, response.get_json()["error"]) == (status, code)
    assert set(response.get_json()) >= {"error", "message"}


def test_the_batch_limit_is_named(client: FlaskClient) -> None:
    response = client.post("/access/v1/evaluations", json={"evaluations": [evaluation("a")] * 101})
    assert "at most 100 evaluations" in response.get_json()["message"]


def test_not_ready_is_a_503(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    response = make_client(tmp_path, entitlements=empty).post("/access/v1/evaluation", json=evaluation("crm:read"))
    assert (response.status_code, response.get_json()["error"]) == (503, "not_ready")


def test_an_unwritable_log_is_a_503_and_nothing_is_answered(client: FlaskClient) -> None:
    bridge = client.application.extensions["kpb"]["bridge"]
    bridge.log.close()
    response = client.post("/access/v1/evaluation", json=evaluation("crm:read"))
    assert (response.status_code, response.get_json()["error"]) == (503, "decision_log_unavailable")


# -- caller authentication -----------------------------------------------------------------------


def test_hmac_callers(secured: FlaskClient) -> None:
    body = json.dumps(evaluation("crm:read")).encode()
    assert secured.post("/access/v1/evaluation", data=body).status_code == 401
    headers = signing_headers(SECRET, "k1", "POST", "/access/v1/evaluation", body, int(NOW.timestamp()))
    response = secured.post("/access/v1/evaluation", data=body, headers=headers)
    assert response.status_code == 200 and response.get_json()["decision"] is True
    assert secured.post("/access/v1/evaluation", data=body, headers=headers).status_code == 401  # replayed
    wrong = signing_headers(b"x" * 32, "k1", "POST", "/access/v1/evaluation", body, int(NOW.timestamp()))
    assert secured.post("/access/v1/evaluation", data=body, headers=wrong).status_code == 401


def test_bearer_callers(secured: FlaskClient) -> None:
    body = evaluation("crm:export")

    def call(bearer: str) -> Any:
        return secured.post("/access/v1/evaluation", json=body, headers={"Authorization": f"Bearer {bearer}"})

    assert call("not-a-jwt").status_code == 401
    forbidden = call(token("offline_access"))
    assert (forbidden.status_code, forbidden.get_json()["error"]) == (403, "forbidden")
    plain = call(token("kpb-authzen"))
    assert plain.status_code == 200 and "reason_admin" not in plain.get_json()["context"]
    admin = call(token("kpb-admin"))
    assert admin.status_code == 200 and "reason_admin" in admin.get_json()["context"]
    expired = jwt.encode(
        {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "s",
            "typ": "Bearer",
            "exp": int(NOW.timestamp()) - 3600,
            "realm_access": {"roles": ["kpb-authzen"]},
        },
        KEY,
        algorithm="RS256",
        headers={"kid": "t1"},
    )
    assert call(expired).status_code == 401


def test_bearer_is_refused_when_the_realm_is_not_configured(tmp_path: Path) -> None:
    client = make_client(
        tmp_path, insecure_dev=False, hmac_secrets=(("k1", SECRET),), admin_jwks_url=None, admin_issuer=None, admin_audience=None
    )
    response = client.post("/access/v1/evaluation", json=evaluation("a"), headers={"Authorization": f"Bearer {token('kpb-authzen')}"})
    assert (response.status_code, response.get_json()["error"]) == (401, "unauthorized")


# -- the decision log -----------------------------------------------------------------------------


def test_every_evaluation_is_recorded_and_explainable(client: FlaskClient, tmp_path: Path) -> None:
    decision_id = ask(client, "/access/v1/evaluation", evaluation("finance:approve"))["context"]["decision_id"]
    admin = {"Authorization": f"Bearer {token('kpb-admin')}"}
    recorded = client.get(f"/v1/decisions/{decision_id}", headers=admin).get_json()
    assert recorded["request"]["event"] == "authzen"
    assert recorded["request"]["context"]["authzen"]["resource"] == {"type": "roles", "id": "finance:approve", "properties": {}}
    db = str(tmp_path / "var" / "decisions.db")
    feed = str(ACME / "feeds" / "risk")
    args = ["explain", decision_id, "--log", db, "--policy", str(ACME / "policy.json"), "--entitlements", str(ACME / "entitlements")]
    result = CliRunner().invoke(main, [*args, "--feed", feed])
    assert result.exit_code == 0, result.output
    assert "finance:approve" in result.output and decision_id in result.output


def test_hmac_is_checked_before_parsing(secured: FlaskClient) -> None:
    assert secured.post("/access/v1/evaluation", data=b"{").status_code == 401  # no signature: nothing parsed
