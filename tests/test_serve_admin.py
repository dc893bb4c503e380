"""The admin API through a real gunicorn master with two workers: bearer JWTs verified against a
JWKS served over loopback, every admin route, a policy activation that must reach both workers,
and a graceful reload (SIGHUP) that must keep the activated policy and keep answering."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from conftest import ACME
from served import Served, fresh_copy, request

ISSUER = "http://127.0.0.1/realms/acme"
AUDIENCE = "kpb-bridge"
REQUESTS = {p.stem: p.read_bytes() for p in sorted((ACME / "requests").glob("*.json"))}


class JwksServer:
    """A loopback stand-in for Keycloak's certs endpoint."""

    def __init__(self, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, rsa.RSAPrivateKey, int]]:
    """(base URL, admin signing key, master pid) of `kpb serve --workers 2` with the admin API on."""
    tmp = tmp_path_factory.mktemp("serve-admin")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = JwksServer({"keys": [{**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "alg": "RS256", "use": "sig"}]})
    entitlements = fresh_copy(ACME / "entitlements", tmp / "entitlements")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPB_")}
    env.update(
        KPB_DECISION_LOG=str(tmp / "d.db"),
        KPB_ADMIN_JWKS_URL=jwks.url,
        KPB_ADMIN_ISSUER=ISSUER,
        KPB_ADMIN_AUDIENCE=AUDIENCE,
        KPB_WATCH_INTERVAL_SECONDS="1",
    )
    served = Served(
        ["--insecure-dev", "--workers", "2", "--threads", "2", "--policy", str(ACME / "policy.json"), "--entitlements", str(entitlements)],
        env,
        tmp / "serve.log",
    )
    try:
        yield served.base, key, served.pid
    finally:
        served.stop()
        jwks.server.shutdown()
        jwks.server.server_close()


def call(base: str, method: str, path: str, body: bytes | None = None, token: str | None = None) -> tuple[int, Any]:
    """One request on a new connection (so gunicorn may route it to either worker)."""
    return request(base, method, path, body, {"Authorization": f"Bearer {token}"} if token else None)


def admin_token(key: rsa.RSAPrivateKey, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "ad-1",
        "preferred_username": "ada",
        "iat": now,
        "exp": now + 300,
        "realm_access": {"roles": ["kpb-admin"]},
    }
    claims.update(changes)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


def versions_served(base: str, attempts: int = 12) -> set[str]:
    """The policy versions that `attempts` claims decisions on fresh connections were made under."""
    seen = set()
    for _ in range(attempts):
        status, decision = call(base, "POST", "/v1/claims", REQUESTS["alice-login"])
        assert status == 200, decision
        seen.add(decision["policy"]["version"])
    return seen


def wait_for_version(base: str, version: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while (seen := versions_served(base)) != {version}:
        assert time.monotonic() < deadline, f"workers still serve {seen}, expected only {version}"
        time.sleep(0.5)


def test_admin_routes_answer_through_gunicorn(served: tuple[str, rsa.RSAPrivateKey, int]) -> None:
    base, key, _ = served
    token = admin_token(key)
    status, decision = call(base, "POST", "/v1/claims", REQUESTS["bob-login"])
    assert status == 200
    status, listed = call(base, "GET", "/v1/decisions?limit=5", token=token)
    assert status == 200 and decision["decision_id"] in {d["decision_id"] for d in listed["decisions"]}
    status, one = call(base, "GET", f"/v1/decisions/{decision['decision_id']}", token=token)
    assert status == 200 and one["decision_id"] == decision["decision_id"]
    status, explained = call(base, "GET", f"/v1/decisions/{decision['decision_id']}/explain", token=token)
    assert status == 200 and explained["explanation"]["decision_id"] == decision["decision_id"]
    assert all(v["still_granted"] is True for v in explained["explanation"]["values"])
    candidate = json.loads((ACME / "candidate-policy.json").read_text())
    status, report = call(base, "POST", "/v1/replay", json.dumps({"policy": candidate, "limit": 50}).encode(), token=token)
    assert status == 200 and report["replayed"] >= 1
    status, reloaded = call(base, "POST", "/v1/entitlements/reload", b"", token=token)
    assert status == 200, reloaded


def test_bad_admin_tokens_are_refused_by_the_real_server(served: tuple[str, rsa.RSAPrivateKey, int]) -> None:
    base, key, _ = served
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token, reason in [
        (admin_token(key, iss="http://evil.example/realms/acme"), "issuer"),
        (admin_token(key, aud="someone-else"), "audience"),
        (admin_token(key, exp=int(time.time()) - 120), "expired"),
        (
            jwt.encode(
                {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60}, other, algorithm="RS256", headers={"kid": "k1"}
            ),
            "signature",
        ),
    ]:
        status, body = call(base, "GET", "/v1/decisions", token=token)
        assert status == 401 and body["error"] == "unauthorized", (reason, body)
        assert token not in json.dumps(body)
    status, body = call(base, "GET", "/v1/decisions", token=admin_token(key, realm_access={"roles": ["user"]}))
    assert status == 403, body


def test_a_policy_put_reaches_every_worker_and_survives_a_graceful_reload(served: tuple[str, rsa.RSAPrivateKey, int]) -> None:
    base, key, master = served
    original = json.loads((ACME / "policy.json").read_text())
    assert versions_served(base) == {original["version"]}
    changed = {**original, "version": original["version"] + "-admin-put"}
    status, activated = call(base, "PUT", "/v1/policy", json.dumps(changed).encode(), token=admin_token(key))
    assert status == 200 and activated["activated_by"] == "ada (ad-1)", activated
    # The other worker follows within its watch interval (1 s here). Sync workers take turns by
    # whoever accepts first, so a run of answers can all come from the worker that took the PUT:
    # wait three intervals before checking rather than trusting a lucky sample.
    time.sleep(3)
    wait_for_version(base, changed["version"])

    # SIGHUP: gunicorn starts new workers and retires the old ones gracefully. The new workers
    # must come up with the admin's activation (newer than the policy file), not revert to the file.
    os.kill(master, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert versions_served(base, attempts=4) == {changed["version"]}  # answering all through the reload
        time.sleep(0.2)
    status, policy = call(base, "GET", "/v1/policy", token=admin_token(key))
    assert status == 200 and policy["version"] == changed["version"]
    assert [a["activated_by"] for a in policy["activations"]][:1] == ["ada (ad-1)"]
