"""The admin API (issue 5) over the Flask test client: bearer-JWT authorization against a JWKS
served by an injected fetcher (no network), and each route's answers and failures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from jwt.algorithms import RSAAlgorithm

from conftest import ACME, ACME_SERVICE_ENV, NOW
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.api.admin import JWKS_EXTENSION, JWKS_MAX_AGE_SECONDS, JWKS_REFRESH_SECONDS, JwksCache
from keycloak_policy_bridge.bridge import Bridge, bridge_from_settings
from keycloak_policy_bridge.canonical import digest
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.errors import ConfigError, TokenError
from keycloak_policy_bridge.token import fetch_jwks

ISSUER = "https://sso.acme.example/realms/acme-admin"
AUDIENCE = "kpb-admin-api"
JWKS_URL = ISSUER + "/protocol/openid-connect/certs"
ADMIN_SUB = "0d5e7c1a-0000-4000-8000-00000000ad01"
NOW_TS = int(NOW.timestamp())
POLICY = json.loads((ACME / "policy.json").read_text())
CANDIDATE = json.loads((ACME / "candidate-policy.json").read_text())
STARTUP = f"file:{ACME / 'policy.json'}"  # bridge_from_settings activates the policy file
REQUESTS = {p.stem: json.loads(p.read_text()) for p in sorted((ACME / "requests").glob("*.json"))}


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(private_key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": kid, "use": "sig", "alg": "RS256"}


class Keys:
    """A fake Keycloak certs endpoint: serves ``document`` and counts the fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.urls: list[str] = []
        self.fail = False

    def __call__(self, url: str, timeout: float) -> Any:
        self.urls.append(url)
        if self.fail:
            raise TokenError(f"cannot fetch the JWKS from {url} (ConnectionError)")
        return json.loads(json.dumps(self.document))


class Clock:
    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


class Admin:
    """An app with the admin API on, the acme decisions recorded, and a token minter."""

    def __init__(self, tmp_path: Path, key: rsa.RSAPrivateKey, decide: bool = True, **changes: Any) -> None:
        entitlements = tmp_path / "entitlements"
        if not entitlements.exists():
            shutil.copytree(ACME / "entitlements", entitlements)
        values: dict[str, Any] = dict(
            policy=ACME / "policy.json",
            entitlements=entitlements,
            feeds=(("risk", ACME / "feeds" / "risk"),),
            decision_log=tmp_path / "var" / "decisions.db",
            insecure_dev=True,
            admin_jwks_url=JWKS_URL,
            admin_issuer=ISSUER,
            admin_audience=AUDIENCE,
        )
        values.update(changes)
        self.settings = Settings(**values)
        self.entitlements = entitlements
        self.key = key
        self.bridge: Bridge = bridge_from_settings(self.settings, lambda: NOW)
        self.app: Flask = create_app(self.bridge, self.settings, clock=lambda: NOW)
        self.keys = Keys({"keys": [jwk(key, "admin-1")]})
        self.monotonic = Clock()
        self.app.extensions[JWKS_EXTENSION] = JwksCache(fetch=self.keys, monotonic=self.monotonic)
        self.client: FlaskClient = self.app.test_client()
        self.decision_ids = {name: self.decide(doc)["decision_id"] for name, doc in REQUESTS.items()} if decide else {}

    def decide(self, document: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post("/v1/claims", json=document)
        assert response.status_code == 200
        body: dict[str, Any] = response.get_json()
        return body

    def token(self, key: Any = None, alg: str = "RS256", kid: str | None = "admin-1", **changes: Any) -> str:
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": [AUDIENCE, "account"],
            "sub": ADMIN_SUB,
            "preferred_username": "ada",
            "azp": "kpb-admin-cli",
            "typ": "Bearer",
            "iat": NOW_TS - 10,
            "exp": NOW_TS + 290,
            "realm_access": {"roles": ["offline_access", "kpb-admin"]},
        }
        claims.update(changes)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, key or self.key, algorithm=alg, headers={"kid": kid} if kid else None)

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token()}"}

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, headers=self.headers(), **kwargs)

    def put_policy(self, document: Any, query: str = "", **kwargs: Any) -> Any:
        return self.client.put("/v1/policy" + query, json=document, headers=self.headers(), **kwargs)

    def active_digest(self) -> str:
        response = self.get("/v1/policy")
        assert response.status_code == 200
        return str(response.get_json()["digest"])


@pytest.fixture
def adm(tmp_path: Path, key: rsa.RSAPrivateKey) -> Admin:
    return Admin(tmp_path, key)


def unsigned(claims: dict[str, Any], header: dict[str, Any], signature: bytes = b"") -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = part(json.dumps(header).encode()) + "." + part(json.dumps(claims).encode())
    return signing_input + "." + part(signature)


def hs256_with_public_key(adm: Admin) -> str:
    """The algorithm-confusion forgery: HMAC keyed with the (public) RSA key's PEM."""
    pem = adm.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = jwt.decode(adm.token(), options={"verify_signature": False})
    header = {"alg": "HS256", "typ": "JWT", "kid": "admin-1"}
    body = unsigned(claims, header)
    signing_input = body.rsplit(".", 1)[0]
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return unsigned(claims, header, signature)


ROUTES: list[tuple[str, str]] = [
    ("GET", "/v1/decisions"),
    ("GET", "/v1/decisions/01M8GJP4005KZK87R5KBYX24Q8"),
    ("GET", "/v1/decisions/01M8GJP4005KZK87R5KBYX24Q8/explain"),
    ("POST", "/v1/replay"),
    ("GET", "/v1/policy"),
    ("PUT", "/v1/policy"),
    ("POST", "/v1/entitlements/reload"),
    ("GET", "/v1/replicas"),
]


# -- authorization ------------------------------------------------------------------------------


def test_a_token_with_the_admin_realm_role_is_accepted(adm: Admin) -> None:
    response = adm.get("/v1/policy")
    assert response.status_code == 200 and response.get_json()["id"] == POLICY["policy_id"]


def test_the_role_may_come_from_the_audience_clients_roles(adm: Admin) -> None:
    token = adm.token(realm_access={"roles": ["offline_access"]}, resource_access={AUDIENCE: {"roles": ["kpb-admin"]}})
    assert adm.client.get("/v1/policy", headers=adm.headers(token)).status_code == 200


def test_a_configured_role_name_is_used(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    adm = Admin(tmp_path, key, admin_role="policy-operator")
    assert adm.get("/v1/policy").status_code == 403
    token = adm.token(realm_access={"roles": ["policy-operator"]})
    assert adm.client.get("/v1/policy", headers=adm.headers(token)).status_code == 200


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong_issuer", "issuer (iss)"),
        ("wrong_audience", "audience (aud)"),
        ("audience_only_elsewhere", "audience (aud)"),
        ("expired", "expired"),
        ("not_yet_valid", "not valid yet"),
        ("alg_none", "alg: none"),
        ("hs256_public_key", "HS256"),
        ("other_key", "signature does not verify"),
        ("unknown_kid", "key id (kid) is not in the JWKS"),
        ("garbage", "not a JWT"),
        ("basic_scheme", "not a Bearer token"),
        ("no_subject", "names no subject"),
        ("id_token", "not an access token"),
    ],
)
def test_bad_tokens_get_401_naming_the_failure_never_the_token(
    adm: Admin, other_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture, case: str, expected: str
) -> None:
    header = None
    if case == "wrong_issuer":
        token = adm.token(iss="https://evil.example/realms/acme-admin")
    elif case == "wrong_audience":
        token = adm.token(aud="account")
    elif case == "audience_only_elsewhere":  # the role is right, but for another audience
        token = adm.token(aud="account", resource_access={AUDIENCE: {"roles": ["kpb-admin"]}})
    elif case == "expired":
        token = adm.token(iat=NOW_TS - 600, exp=NOW_TS - 120)
    elif case == "not_yet_valid":
        token = adm.token(nbf=NOW_TS + 600)
    elif case == "alg_none":
        token = unsigned(jwt.decode(adm.token(), options={"verify_signature": False}), {"alg": "none", "typ": "JWT", "kid": "admin-1"})
    elif case == "hs256_public_key":
        token = hs256_with_public_key(adm)
    elif case == "other_key":
        token = adm.token(key=other_key)
    elif case == "unknown_kid":
        token = adm.token(key=other_key, kid="rotated-2")
    elif case == "garbage":
        token = "not-a-jwt-secret-value"
    elif case == "no_subject":
        token = adm.token(sub=None, preferred_username=None)
    elif case == "id_token":  # signed by the realm for the right audience, but an ID token
        token = adm.token(typ="ID", aud=AUDIENCE)
    else:
        token = adm.token()
        header = {"Authorization": f"Basic {token}"}
    response = adm.client.get("/v1/decisions", headers=header or adm.headers(token))
    assert response.status_code == 401
    body = response.get_json()
    assert body["error"] == "unauthorized" and expected in body["message"]
    for text in (response.get_data(as_text=True), caplog.text):
        assert all(part not in text for part in token.split(".") if part)
    assert expected in caplog.text  # the operator's log says why, too
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer    "])
def test_no_token_is_a_401(adm: Admin, header: str | None) -> None:
    response = adm.client.get("/v1/decisions", headers={"Authorization": header} if header is not None else {})
    assert response.status_code == 401 and response.get_json()["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_valid_token_without_the_role_is_a_403(adm: Admin) -> None:
    token = adm.token(realm_access={"roles": ["offline_access"]}, resource_access={"other-client": {"roles": ["kpb-admin"]}})
    response = adm.client.put("/v1/policy", json=CANDIDATE, headers=adm.headers(token))
    assert response.status_code == 403
    assert response.get_json() == {
        "error": "forbidden",
        "message": f"the token does not carry the kpb-admin role (realm_access.roles or resource_access.{AUDIENCE}.roles)",
    }
    assert adm.bridge.policy is not None and adm.bridge.policy.policy_id == POLICY["policy_id"]
    assert len(adm.bridge.activations) == 1  # nothing activated


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_admin_route_requires_a_token(adm: Admin, method: str, path: str) -> None:
    response = adm.client.open(path, method=method, json={})
    assert response.status_code == 401 and response.get_json()["error"] == "unauthorized"


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_without_admin_settings_the_admin_routes_answer_503(tmp_path: Path, key: rsa.RSAPrivateKey, method: str, path: str) -> None:
    adm = Admin(tmp_path, key, admin_jwks_url=None, admin_issuer=None, admin_audience=None)
    response = adm.client.open(path, method=method, json={}, headers=adm.headers())
    assert response.status_code == 503
    body = response.get_json()
    assert body["error"] == "admin_disabled" and "KPB_ADMIN_JWKS_URL" in body["message"]
    assert adm.keys.urls == []  # nothing was fetched
    assert adm.client.post("/v1/claims", json=REQUESTS["alice-login"]).status_code == 200  # the claims API is unaffected


def test_a_partial_admin_configuration_is_disabled_rather_than_unchecked(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    adm = Admin(tmp_path, key, admin_issuer=None)  # no issuer check would be a hole
    assert adm.get("/v1/policy").get_json()["error"] == "admin_disabled"


def test_the_app_gets_a_jwks_cache_over_http_whose_fetcher_can_be_replaced(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    adm = Admin(tmp_path, key, decide=False)
    installed = create_app(adm.bridge, adm.settings, clock=lambda: NOW).extensions[JWKS_EXTENSION]
    assert isinstance(installed, JwksCache) and installed.fetch is fetch_jwks
    installed.fetch = adm.keys
    assert installed.keys_for(JWKS_URL, "admin-1") == adm.keys.document and adm.keys.urls == [JWKS_URL]


def test_the_jwks_is_fetched_once_and_cached(adm: Admin) -> None:
    for _ in range(3):
        assert adm.get("/v1/decisions").status_code == 200
    assert adm.keys.urls == [JWKS_URL]


def test_an_unknown_kid_refreshes_the_jwks_at_most_once_per_minute(adm: Admin, other_key: rsa.RSAPrivateKey) -> None:
    assert adm.get("/v1/policy").status_code == 200
    rotated = adm.token(key=other_key, kid="rotated-2")
    assert adm.client.get("/v1/policy", headers=adm.headers(rotated)).status_code == 401
    assert len(adm.keys.urls) == 1  # fetched at first use: a minute must pass before any refetch
    adm.monotonic.seconds += JWKS_REFRESH_SECONDS
    assert adm.client.get("/v1/policy", headers=adm.headers(rotated)).status_code == 401
    assert len(adm.keys.urls) == 2  # the unknown kid refetched once (Keycloak has not rotated yet)
    adm.keys.document = {"keys": [jwk(adm.key, "admin-1"), jwk(other_key, "rotated-2")]}  # Keycloak rotates its key
    adm.monotonic.seconds += JWKS_REFRESH_SECONDS - 1
    for _ in range(5):
        assert adm.client.get("/v1/policy", headers=adm.headers(rotated)).status_code == 401
    assert len(adm.keys.urls) == 2  # no refetch within the minute, however many unknown kids arrive
    adm.monotonic.seconds += 1
    assert adm.client.get("/v1/policy", headers=adm.headers(rotated)).status_code == 200
    assert len(adm.keys.urls) == 3
    assert adm.get("/v1/policy").status_code == 200 and len(adm.keys.urls) == 3  # a known kid never refetches


def test_refused_algorithms_never_trigger_a_refresh(adm: Admin) -> None:
    assert adm.get("/v1/policy").status_code == 200
    claims = jwt.decode(adm.token(), options={"verify_signature": False})
    forged = unsigned(claims, {"alg": "none", "kid": "forged-kid"})
    adm.monotonic.seconds += 3600
    assert adm.client.get("/v1/policy", headers=adm.headers(forged)).status_code == 401
    assert len(adm.keys.urls) == 1


def test_held_keys_are_refetched_after_their_max_age_so_a_removed_key_stops_working(adm: Admin, other_key: rsa.RSAPrivateKey) -> None:
    assert adm.get("/v1/policy").status_code == 200
    adm.keys.document = {"keys": [jwk(other_key, "admin-2")]}  # the realm rotated admin-1 out
    adm.monotonic.seconds += JWKS_MAX_AGE_SECONDS - 1
    assert adm.get("/v1/policy").status_code == 200 and len(adm.keys.urls) == 1  # still within the max age
    adm.monotonic.seconds += 2
    assert adm.get("/v1/policy").status_code == 401  # refetched: admin-1 is gone
    assert len(adm.keys.urls) == 2
    assert adm.client.get("/v1/policy", headers=adm.headers(adm.token(key=other_key, kid="admin-2"))).status_code == 200


def test_unreachable_keys_are_a_503_not_a_401(adm: Admin) -> None:
    adm.keys.fail = True
    response = adm.get("/v1/policy")
    assert response.status_code == 503 and response.get_json()["error"] == "admin_keys_unavailable"
    adm.keys.fail = False
    assert adm.get("/v1/policy").status_code == 503  # retries are rate-limited too
    adm.monotonic.seconds += 5
    assert adm.get("/v1/policy").status_code == 200


def test_a_failed_refresh_keeps_the_cached_keys(adm: Admin, other_key: rsa.RSAPrivateKey) -> None:
    assert adm.get("/v1/policy").status_code == 200
    adm.keys.fail = True
    adm.monotonic.seconds += JWKS_REFRESH_SECONDS
    assert adm.client.get("/v1/policy", headers=adm.headers(adm.token(key=other_key, kid="rotated-2"))).status_code == 401
    assert adm.get("/v1/policy").status_code == 200


# -- decisions and explain ---------------------------------------------------------------------


def test_decisions_are_listed_newest_first(adm: Admin) -> None:
    response = adm.get("/v1/decisions")
    assert response.status_code == 200
    ids = [r["decision_id"] for r in response.get_json()["decisions"]]
    assert ids == list(reversed(adm.decision_ids.values()))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("effect=deny", {"agent-chain-too-deep", "billing-bot-password", "carol-refresh", "erin-login", "legacy-sync-client-credentials"}),
        ("effect=permit&client=acme-web", None),
        ("limit=2", {"erin-login", "legacy-sync-client-credentials"}),  # the newest two
        ("subject=E1001", {"agent-chain-too-deep", "agent-exchange-for-alice", "alice-login"}),
        ("subject=a11ce000-0000-4000-8000-000000000001", {"agent-chain-too-deep", "agent-exchange-for-alice", "alice-login"}),
        ("rule=roles-from-app-roles&client=research-agent", {"agent-exchange-for-alice"}),
        ("since=2026-11-28T07:00:00Z&until=2026-11-28T09:00:00Z&limit=1000", set(REQUESTS)),
        ("until=2026-11-28T08:00:00Z", set()),
        ("rule=no-such-rule", set()),
    ],
)
def test_decision_filters(adm: Admin, query: str, expected: set[str] | None) -> None:
    response = adm.get("/v1/decisions?" + query)
    assert response.status_code == 200
    records = response.get_json()["decisions"]
    names = {name for name, i in adm.decision_ids.items() if i in {r["decision_id"] for r in records}}
    if expected is None:
        assert names and all(r["request"]["client"]["client_id"] == "acme-web" and r["effect"] == "permit" for r in records)
    else:
        assert names == expected


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("limit=0", "limit must be a whole number from 1 to 1000"),
        ("limit=1001", "limit must be a whole number from 1 to 1000"),
        ("limit=ten", "limit must be a whole number from 1 to 1000"),
        ("since=yesterday", "since must be an RFC 3339 timestamp"),
        ("until=2026-11-28T08:00:00", "until must be an RFC 3339 timestamp"),
        ("effect=maybe", "effect must be permit or deny"),
    ],
)
def test_bad_decision_queries_are_400(adm: Admin, query: str, words: str) -> None:
    response = adm.get("/v1/decisions?" + query)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "invalid_parameter" and body["message"].startswith(words)
    assert "yesterday" not in body["message"] and "ten" not in body["message"].split()


def test_one_decision_and_an_unknown_one(adm: Admin) -> None:
    decision_id = adm.decision_ids["alice-login"]
    response = adm.get(f"/v1/decisions/{decision_id}")
    assert response.status_code == 200 and response.get_json()["decision_id"] == decision_id
    for unknown in ("01M8GJP4000000000000000000", "no-such-thing"):
        missing = adm.get(f"/v1/decisions/{unknown}")
        assert missing.status_code == 404 and missing.get_json()["error"] == "decision_not_found"
        assert adm.get(f"/v1/decisions/{unknown}/explain").status_code == 404


def test_explain_judges_against_the_active_policy_and_snapshot(adm: Admin) -> None:
    response = adm.get(f"/v1/decisions/{adm.decision_ids['alice-login']}/explain")
    assert response.status_code == 200
    explanation = response.get_json()["explanation"]
    assert explanation["decision_id"] == adm.decision_ids["alice-login"] and explanation["effect"] == "permit"
    assert explanation["values"] and all(v["still_granted"] is True for v in explanation["values"])
    assert explanation["current"]["policy"]["digest"] == adm.active_digest()
    assert explanation["current"]["evaluated_at"] == "2026-11-28T08:00:00Z"  # the app clock's now

    assert adm.put_policy(CANDIDATE, "?gate=replay&last=100&force=true").status_code == 200
    after = adm.get(f"/v1/decisions/{adm.decision_ids['alice-login']}/explain").get_json()["explanation"]
    assert after["policy"]["digest"] == explanation["policy"]["digest"]  # the recorded policy, still explained
    assert after["current"]["policy"]["digest"] == digest(CANDIDATE)


# -- replay -------------------------------------------------------------------------------------


def test_replay_a_candidate(adm: Admin) -> None:
    response = adm.client.post("/v1/replay", json={"policy": CANDIDATE}, headers=adm.headers())
    assert response.status_code == 200
    report = response.get_json()
    assert report["mode"] == "candidate" and report["policy"]["digest"] == digest(CANDIDATE)
    assert (report["replayed"], report["changed"], report["errors"]) == (len(REQUESTS), 1, 0)
    assert report["entitlements"] == "recorded" and len(report["changed_decisions"]) == 1
    same = adm.client.post("/v1/replay", json={"policy": POLICY}, headers=adm.headers()).get_json()
    assert (same["replayed"], same["changed"]) == (len(REQUESTS), 0)


def test_replay_filters_and_limit(adm: Admin) -> None:
    def replayed(**body: Any) -> int:
        response = adm.client.post("/v1/replay", json={"policy": CANDIDATE, **body}, headers=adm.headers())
        assert response.status_code == 200, response.get_json()
        return int(response.get_json()["replayed"])

    assert replayed(limit=3) == 3
    assert replayed(client="acme-web") == sum(1 for r in REQUESTS.values() if r["client"]["client_id"] == "acme-web")
    assert replayed(since="2026-11-28T08:00:01Z") == 0
    assert replayed(until="2026-11-28T08:00:01Z", subject=REQUESTS["alice-login"]["subject"]["id"]) >= 1


def test_replay_with_an_invalid_candidate_lists_every_problem(adm: Admin) -> None:
    broken = {**CANDIDATE, "rules": [{**CANDIDATE["rules"][0], "effect": "maybe"}, *CANDIDATE["rules"][1:]]}
    del broken["owner"]
    response = adm.client.post("/v1/replay", json={"policy": broken}, headers=adm.headers())
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "policy_invalid"
    assert {i["path"] for i in body["issues"]} == {"$", "$.rules[0].effect"}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[]", "invalid_request"),
        (b"{}", "invalid_request"),
        (json.dumps({"policy": "policy.json"}).encode(), "invalid_request"),
        (json.dumps({"policy": {}, "polcy": {}}).encode(), "invalid_request"),
        (json.dumps({"policy": CANDIDATE, "since": "last week"}).encode(), "invalid_request"),
        (json.dumps({"policy": CANDIDATE, "limit": True}).encode(), "invalid_request"),
        (json.dumps({"policy": CANDIDATE, "limit": 0}).encode(), "invalid_request"),
        (json.dumps({"policy": CANDIDATE, "subject": 7}).encode(), "invalid_request"),
    ],
)
def test_bad_replay_bodies_are_400(adm: Admin, data: bytes, code: str) -> None:
    response = adm.client.post("/v1/replay", data=data, content_type="application/json", headers=adm.headers())
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == code and isinstance(body["message"], str)
    assert "last week" not in body["message"]


def test_a_replay_larger_than_a_request_should_run_points_to_the_cli(adm: Admin) -> None:
    """The service replays on a request thread of a worker that also answers Keycloak."""
    for response in (
        adm.client.post("/v1/replay", json={"policy": CANDIDATE, "limit": 20_001}, headers=adm.headers()),
        adm.put_policy(CANDIDATE, "?gate=replay&last=20001"),
    ):
        assert response.status_code == 400
        assert "from 1 to 20000 (replay larger sets with `kpb replay --log`)" in response.get_json()["message"]
    assert adm.client.post("/v1/replay", json={"policy": CANDIDATE, "limit": 20_000}, headers=adm.headers()).status_code == 200


# -- the active policy -------------------------------------------------------------------------


def test_get_policy(adm: Admin) -> None:
    body = adm.get("/v1/policy").get_json()
    assert body["policy"] == POLICY and body["digest"] == digest(POLICY)
    assert (body["id"], body["version"]) == (POLICY["policy_id"], POLICY["version"])
    assert body["activations"] == [
        {"digest": digest(POLICY), "version": POLICY["version"], "activated_by": STARTUP, "activated_at": "2026-11-28T08:00:00Z"}
    ]


def test_get_policy_without_one_is_503(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    adm = Admin(tmp_path, key, decide=False, policy=bad)
    response = adm.get("/v1/policy")
    assert response.status_code == 503 and response.get_json()["error"] == "not_ready"


def test_put_policy_activates_it_and_records_the_actor(adm: Admin) -> None:
    response = adm.put_policy(CANDIDATE)
    assert response.status_code == 200
    body = response.get_json()
    assert body["digest"] == digest(CANDIDATE) and body["previous_digest"] == digest(POLICY)
    assert body["activated_by"] == f"ada ({ADMIN_SUB})" and body["replay"] is None
    assert adm.active_digest() == digest(CANDIDATE)
    activations = adm.get("/v1/policy").get_json()["activations"]
    assert [(a["digest"], a["activated_by"]) for a in activations] == [(digest(CANDIDATE), f"ada ({ADMIN_SUB})"), (digest(POLICY), STARTUP)]
    assert adm.decide(REQUESTS["alice-login"])["policy"]["digest"] == digest(CANDIDATE)  # new decisions use it
    assert adm.bridge.policies.policy(digest(CANDIDATE)) == CANDIDATE  # stored for replay


def test_a_service_account_is_recorded_by_its_sub(adm: Admin) -> None:
    token = adm.token(preferred_username=None, sub="service-account-kpb-deployer")
    response = adm.client.put("/v1/policy", json=CANDIDATE, headers=adm.headers(token))
    assert response.status_code == 200 and adm.bridge.activations[-1].activated_by == "service-account-kpb-deployer"


def test_put_of_a_broken_policy_lists_every_issue_and_changes_nothing(adm: Admin) -> None:
    before = adm.active_digest()
    broken = json.loads(json.dumps(CANDIDATE))
    del broken["owner"]
    broken["rules"][0]["effect"] = "maybe"
    broken["rules"][1]["condition"] = "subject.status =="
    response = adm.put_policy(broken)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "policy_invalid" and body["message"] == "policy is invalid: 3 problem(s)"
    expected = [
        ("$", "'owner' is a required property"),
        ("$.rules[0].effect", "'maybe' is not one of ['grant', 'deny']"),
        ("$.rules[1].condition", "CEL does not compile"),
    ]
    assert len(body["issues"]) == len(expected)
    for issue, (path, message) in zip(body["issues"], expected, strict=True):
        assert issue["path"] == path and issue["message"].startswith(message)
    assert adm.active_digest() == before and len(adm.bridge.activations) == 1
    assert adm.decide(REQUESTS["alice-login"])["policy"]["digest"] == before


def test_a_policy_with_more_than_twenty_problems_lists_them_all(adm: Admin) -> None:
    broken = json.loads(json.dumps(CANDIDATE))
    broken["rules"] = [{**rule, "id": f"{rule['id']}-{n}", "effect": "maybe"} for n in range(3) for rule in broken["rules"]]
    response = adm.put_policy(broken)
    assert response.status_code == 400
    issues = response.get_json()["issues"]
    assert len(broken["rules"]) > 20 and sorted(i["path"] for i in issues) == sorted(
        f"$.rules[{n}].effect" for n in range(len(broken["rules"]))
    )


@pytest.mark.parametrize(
    ("data", "path"),
    [(b'{"spec": ', "line 1 column 10"), (b"[1, 2]", None), (b"\xff\xfe{}", None)],
)
def test_put_of_a_non_policy_body_is_policy_invalid(adm: Admin, data: bytes, path: str | None) -> None:
    response = adm.client.put("/v1/policy", data=data, content_type="application/json", headers=adm.headers())
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "policy_invalid" and [i["path"] for i in body["issues"]] == ([path] if path else [])
    assert adm.active_digest() == digest(POLICY)


def test_a_put_is_recorded_in_the_shared_log_other_workers_follow(adm: Admin) -> None:
    """Propagation itself is ``Bridge.sync_policy``'s; this checks that the admin PUT feeds it."""
    other = bridge_from_settings(adm.settings, lambda: NOW)  # a second worker on the same log
    assert adm.put_policy(CANDIDATE).status_code == 200
    assert other.sync_policy(NOW) and other.policy is not None and other.policy.digest == digest(CANDIDATE)
    assert other.activations[-1].activated_by == f"ada ({ADMIN_SUB})"


def test_the_replay_gate_blocks_a_changing_candidate(adm: Admin) -> None:
    response = adm.put_policy(CANDIDATE, "?gate=replay&last=100")
    assert response.status_code == 409
    body = response.get_json()
    assert body["error"] == "replay_gate" and "1 would change" in body["message"]
    assert body["report"]["changed"] == 1 and body["report"]["replayed"] == len(REQUESTS)
    assert adm.active_digest() == digest(POLICY) and len(adm.bridge.activations) == 1


def test_the_replay_gate_replays_only_the_last_n(adm: Admin) -> None:
    report = adm.client.post("/v1/replay", json={"policy": CANDIDATE}, headers=adm.headers()).get_json()
    changed_id = report["changed_decisions"][0]["decision_id"]
    changing = next(name for name, i in adm.decision_ids.items() if i == changed_id)
    unchanged = next(name for name in REQUESTS if name != changing)
    adm.decide(REQUESTS[changing])
    assert adm.put_policy(CANDIDATE, "?gate=replay&last=1").status_code == 409
    adm.decide(REQUESTS[unchanged])  # the newest decision is now one the candidate does not change
    response = adm.put_policy(CANDIDATE, "?gate=replay&last=1")
    assert response.status_code == 200 and response.get_json()["replay"]["replayed"] == 1


def test_force_passes_the_replay_gate(adm: Admin) -> None:
    response = adm.put_policy(CANDIDATE, "?gate=replay&last=100&force=true")
    assert response.status_code == 200
    body = response.get_json()
    assert body["digest"] == digest(CANDIDATE) and body["replay"]["changed"] == 1
    assert adm.active_digest() == digest(CANDIDATE)


def test_an_unchanging_candidate_passes_the_gate(adm: Admin) -> None:
    same = {**POLICY, "version": "2026-11-28.2"}
    response = adm.put_policy(same, "?gate=replay&last=100")
    assert response.status_code == 200 and response.get_json()["replay"]["changed"] == 0
    assert adm.active_digest() == digest(same)


@pytest.mark.parametrize("query", ["?gate=shadow&last=5", "?gate=replay", "?last=5", "?gate=replay&last=0", "?gate=replay&last=x"])
def test_bad_gate_parameters_are_400(adm: Admin, query: str) -> None:
    response = adm.put_policy(CANDIDATE, query)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_parameter"
    assert adm.active_digest() == digest(POLICY)


def test_policy_bodies_may_exceed_the_claims_limit_up_to_the_admin_limit(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    size = len(json.dumps(CANDIDATE))
    adm = Admin(tmp_path, key, max_body_bytes=size // 2, admin_max_body_bytes=size * 2)
    assert adm.put_policy(CANDIDATE).status_code == 200
    small = Admin(tmp_path / "small", key, admin_max_body_bytes=size // 2)
    response = small.put_policy(CANDIDATE)
    assert response.status_code == 413
    assert response.get_json() == {"error": "body_too_large", "message": f"the request body exceeds {size // 2} bytes"}


# -- entitlement reloads ------------------------------------------------------------------------


def test_reload_accepts_a_good_snapshot(adm: Admin) -> None:
    response = adm.client.post("/v1/entitlements/reload", headers=adm.headers())
    assert response.status_code == 200
    body = response.get_json()
    assert body["reloaded"] == {"entitlements": {"accepted": True, "rejection": None}, "risk": {"accepted": True, "rejection": None}}
    assert body["status"]["entitlements"]["loaded"] and body["status"]["entitlements"]["reloads_total"] == 2


def test_reload_of_a_truncated_snapshot_is_422_and_the_old_one_keeps_answering(adm: Admin) -> None:
    before = adm.decide(REQUESTS["alice-login"])
    csv = adm.entitlements / "entitlements.csv"
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join(lines[: len(lines) // 2]))
    response = adm.client.post("/v1/entitlements/reload", headers=adm.headers())
    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "snapshot_rejected" and "the previous one stays active" in body["message"]
    rejection = body["reloaded"]["entitlements"]["rejection"]
    assert body["reloaded"]["entitlements"]["accepted"] is False and rejection["issues"]
    assert body["reloaded"]["risk"]["accepted"] is True
    assert body["status"]["entitlements"]["rejections_total"] == 1
    assert body["status"]["entitlements"]["digest"] == before["entitlements"]["snapshot"]
    after = adm.decide(REQUESTS["alice-login"])
    assert after["effect"] == "permit" and after["claims"] == before["claims"]
    assert after["entitlements"] == before["entitlements"]


# -- settings -----------------------------------------------------------------------------------

BASE_ENV = {**ACME_SERVICE_ENV, "KPB_INSECURE_DEV": "1"}


def test_admin_settings_from_the_environment() -> None:
    settings = Settings.from_env({**BASE_ENV, "KPB_ADMIN_JWKS_URL": JWKS_URL, "KPB_ADMIN_ISSUER": ISSUER, "KPB_ADMIN_AUDIENCE": AUDIENCE})
    assert (settings.admin_jwks_url, settings.admin_issuer, settings.admin_audience) == (JWKS_URL, ISSUER, AUDIENCE)
    assert settings.admin_role == "kpb-admin" and settings.admin_enabled
    assert Settings.from_env({**BASE_ENV, "KPB_ADMIN_ROLE": "ops"}).admin_role == "ops"
    off = Settings.from_env(BASE_ENV)
    assert not off.admin_enabled and off.admin_jwks_url is None


@pytest.mark.parametrize(
    ("env", "paths"),
    [
        ({"KPB_ADMIN_JWKS_URL": JWKS_URL}, {"KPB_ADMIN_ISSUER", "KPB_ADMIN_AUDIENCE"}),
        ({"KPB_ADMIN_ISSUER": ISSUER, "KPB_ADMIN_AUDIENCE": AUDIENCE}, {"KPB_ADMIN_JWKS_URL"}),
        ({"KPB_ADMIN_JWKS_URL": "/etc/jwks.json", "KPB_ADMIN_ISSUER": ISSUER, "KPB_ADMIN_AUDIENCE": AUDIENCE}, {"KPB_ADMIN_JWKS_URL"}),
        ({"KPB_ADMIN_MAX_BODY_BYTES": "12"}, {"KPB_ADMIN_MAX_BODY_BYTES"}),
    ],
)
def test_partial_or_bad_admin_settings_are_refused(env: dict[str, str], paths: set[str]) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**BASE_ENV, **env})
    assert {i.path for i in err.value.issues} == paths


def test_existing_settings_behaviour_is_unchanged() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**ACME_SERVICE_ENV, "KPB_ADMIN_JWKS_URL": JWKS_URL})
    assert {i.path for i in err.value.issues} == {"KPB_HMAC_SECRETS", "KPB_ADMIN_ISSUER", "KPB_ADMIN_AUDIENCE"}


def test_put_of_a_policy_whose_condition_could_run_for_minutes_is_refused(adm: Admin) -> None:
    """Security defect 3: the stored policy hung every worker; now it never gets stored."""
    before = adm.active_digest()
    hostile = json.loads(json.dumps(CANDIDATE))
    hostile["variables"] = {**hostile.get("variables", {}), "l": "[" + ", ".join(str(i) for i in range(100)) + "]"}
    hostile["rules"].insert(
        0,
        {
            "id": "slow-deny",
            "effect": "deny",
            "reason": "r",
            "condition": "!(l.all(x0, l.all(x1, l.all(x2, l.all(x3, x0+x1+x2+x3 >= 0)))))",
        },
    )
    response = adm.put_policy(hostile)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "policy_invalid"
    assert [(i["path"], i["code"]) for i in body["issues"]] == [("$.rules[0].condition", "cel_cost")]
    assert "rule 'slow-deny'" in body["issues"][0]["message"]
    assert adm.active_digest() == before and len(adm.bridge.activations) == 1
    assert adm.decide(REQUESTS["alice-login"])["policy"]["digest"] == before
