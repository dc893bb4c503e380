"""Schemathesis against the service's own OpenAPI document: no 5xx, every error in the error shape.

Runs in-process over WSGI in insecure mode for /v1/claims (so request bodies reach validation
rather than stopping at the signature check, which tests/test_api.py covers), and with a valid
admin token for the admin routes (keys served by an injected JWKS fetcher, no network), so that
fuzzed admin bodies reach their handlers too.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import jwt
import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, settings
from schemathesis.core.result import Err, Ok

from conftest import NOW, service_settings
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.api.admin import JWKS_EXTENSION, JwksCache
from keycloak_policy_bridge.bridge import bridge_from_settings

ISSUER, AUDIENCE = "http://127.0.0.1:8080/realms/acme", "kpb-admin-api"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWK = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key())), "kid": "fuzz", "alg": "RS256", "use": "sig"}
TOKEN = jwt.encode(
    {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "fuzzer",
        "typ": "Bearer",
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 3600,
        "realm_access": {"roles": ["kpb-admin"]},
    },
    KEY,
    algorithm="RS256",
    headers={"kid": "fuzz"},
)


def _app(tmp: Path) -> Any:
    config = service_settings(
        tmp, admin_jwks_url="http://127.0.0.1:8080/realms/acme/protocol/openid-connect/certs", admin_issuer=ISSUER, admin_audience=AUDIENCE
    )
    app = create_app(bridge_from_settings(config, lambda: NOW), config, clock=lambda: NOW)
    app.extensions[JWKS_EXTENSION] = JwksCache(fetch=lambda url, timeout: {"keys": [JWK]})
    return app


APP = _app(Path(tempfile.mkdtemp(prefix="kpb-fuzz-")))
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_errors_in_the_error_shape(case: Any) -> None:
    admin = case.path not in ("/v1/claims", "/healthz", "/readyz", "/metrics", "/openapi.json")
    response = case.call(headers={"Authorization": f"Bearer {TOKEN}"} if admin else None)
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:200]}"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) >= {"error", "message"}, body
        assert isinstance(body["error"], str) and isinstance(body["message"], str)


def test_the_fuzzer_reaches_every_documented_operation() -> None:
    results = list(schema.get_all_operations())
    assert not [r.err() for r in results if isinstance(r, Err)]
    operations = {(r.ok().method.upper(), r.ok().path) for r in results if isinstance(r, Ok)}
    assert ("POST", "/v1/claims") in operations and len(operations) >= 10


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: Any) -> None:
    caplog.set_level("CRITICAL")


def test_the_fuzzing_token_is_accepted_so_admin_bodies_are_reached() -> None:
    response = APP.test_client().get("/v1/policy", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.get_json()["id"] == "acme-token-policy"
