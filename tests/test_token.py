"""Tokens as evidence (issue 4): verification with pyjwt against an algorithm allowlist, key
selection by kid from a JWKS (given, or served over HTTP), expiry judged at an explicit `now`,
findings for claims the recorded decision does not account for, and `kpb explain --token`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from conftest import NOW
from keycloak_policy_bridge.cli import main
from keycloak_policy_bridge.errors import TokenError
from keycloak_policy_bridge.record import DecisionRecord
from keycloak_policy_bridge.token import STANDARD_CLAIMS, decode_unverified, explain_token, verify_token
from test_explain import AcmeLog, build_log

ISSUER = "http://localhost:8080/realms/acme"
AUDIENCE = "acme-web"
NOW_TS = int(NOW.timestamp())
NOW_TEXT = "2026-11-28T08:00:00Z"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    rsa_jwk = {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "rsa-1", "use": "sig", "alg": "RS256"}
    ec_jwk = {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec-1", "use": "sig"}
    enc_jwk = {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "enc-1", "use": "enc"}
    return {"keys": [enc_jwk, rsa_jwk, ec_jwk]}


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> AcmeLog:
    return build_log(tmp_path_factory.mktemp("log") / "decisions.db")


def claims_for(record: DecisionRecord, **changes: Any) -> dict[str, Any]:
    """The claims Keycloak would mint for ``record``: the envelope plus the recorded claims."""
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": [AUDIENCE, "crm-api"],
        "sub": "a11ce000-0000-4000-8000-000000000001",
        "azp": AUDIENCE,
        "typ": "Bearer",
        "iat": NOW_TS - 10,
        "exp": NOW_TS + 290,
        "jti": "j-1",
        "sid": "sess-alice",
        "scope": "openid crm",
        "preferred_username": "alice",
        "email": "alice@acme.example",
        "email_verified": True,
        "authz_decision_id": record.decision_id,
        **record.decision.claims,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def sign(claims: dict[str, Any], key: Any, alg: str = "RS256", kid: str | None = "rsa-1") -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None = None) -> str:
    """A compact JWS built by hand (pyjwt refuses to make the forgeries under test)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()) if secret else ""
    return f"{signing_input}.{signature}"


def pem(key: Any) -> bytes:
    return bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def verify(token: str, jwks: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "now": NOW, **kwargs}
    return verify_token(token, jwks=jwks, **options)


@pytest.fixture
def jwks_server(jwks: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    """A JWKS served over real HTTP on the loopback interface; yields (url, request paths)."""
    seen: list[str] = []
    body = json.dumps(jwks).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            status = 200 if self.path == "/realms/acme/protocol/openid-connect/certs" else 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body) if status == 200 else 0))
            self.end_headers()
            if status == 200:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
            return None

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- verification ---------------------------------------------------------------------------------


def test_verifies_rsa_and_ec_tokens_with_a_jwks(acme: AcmeLog, rsa_key: Any, ec_key: Any, jwks: dict[str, Any]) -> None:
    claims = claims_for(acme.record("alice-login"))
    assert verify(sign(claims, rsa_key), jwks) == claims
    assert verify(sign(claims, ec_key, "ES256", "ec-1"), jwks) == claims


def test_verifies_with_a_jwks_served_over_http(acme: AcmeLog, rsa_key: Any, jwks_server: tuple[str, list[str]]) -> None:
    base, seen = jwks_server
    token = sign(claims_for(acme.record("alice-login")), rsa_key)
    claims = verify_token(token, jwks_url=f"{base}/realms/acme/protocol/openid-connect/certs", issuer=ISSUER, audience=AUDIENCE, now=NOW)
    assert claims["authz_decision_id"] == acme.ids["alice-login"]
    assert seen == ["/realms/acme/protocol/openid-connect/certs"]
    with pytest.raises(TokenError, match=r"cannot fetch the JWKS from .*/nowhere \(HTTP 404\)"):
        verify_token(token, jwks_url=f"{base}/nowhere", issuer=None, audience=None, now=NOW)


def test_the_jwks_fetch_is_injectable_and_uses_a_timeout(acme: AcmeLog, rsa_key: Any, jwks: dict[str, Any]) -> None:
    calls: list[tuple[str, float]] = []

    def fetch(url: str, timeout: float) -> Any:
        calls.append((url, timeout))
        return jwks

    token = sign(claims_for(acme.record("alice-login")), rsa_key)
    verify_token(token, jwks_url="https://kc.example/certs", issuer=None, audience=None, now=NOW, fetch=fetch)
    assert calls == [("https://kc.example/certs", 5.0)]


def test_verifies_with_a_pem_public_key(acme: AcmeLog, rsa_key: Any, ec_key: Any) -> None:
    claims = claims_for(acme.record("alice-login"))
    assert verify_token(sign(claims, rsa_key, kid=None), public_key_pem=pem(rsa_key), issuer=ISSUER, audience=AUDIENCE, now=NOW) == claims
    token = sign(claims, ec_key, "ES256", kid=None)
    assert verify_token(token, public_key_pem=pem(ec_key), issuer=None, audience=None, now=NOW) == claims
    with pytest.raises(TokenError, match="the key is not a public key for ES256"):
        verify_token(token, public_key_pem=pem(rsa_key), issuer=None, audience=None, now=NOW)


def test_eddsa_and_ps256(acme: AcmeLog, rsa_key: Any) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    keys = {
        "keys": [
            {**OKPAlgorithm.to_jwk(ed.public_key(), as_dict=True), "kid": "ed-1"},
            {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "ps-1"},
        ]
    }
    claims = claims_for(acme.record("alice-login"))
    assert verify(sign(claims, ed, "EdDSA", "ed-1"), keys) == claims
    assert verify(sign(claims, rsa_key, "PS256", "ps-1"), keys) == claims


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("bad_signature", "the token's RS256 signature does not verify with the given key"),
        ("alg_none", r"the token is unsigned \(alg: none\); unsigned tokens are never accepted"),
        ("hs256_with_public_key", "the token uses HS256, a shared-secret HMAC algorithm; only asymmetric algorithms are accepted"),
        ("expired", "the token expired 10s before the time it is checked at"),
        ("not_yet_valid", r"the token is not valid yet \(nbf is after the time it is checked at\)"),
        ("no_exp", "the token has no exp claim"),
        ("wrong_issuer", rf"the token's issuer \(iss\) is not {ISSUER}"),
        ("wrong_audience", rf"the token's audience \(aud\) does not include {AUDIENCE}"),
        ("unknown_kid", r"the token's key id \(kid\) is not in the JWKS \(3 key\(s\)\)"),
        ("enc_key_kid", r"the token's key id \(kid\) is not in the JWKS"),
        ("unsupported_algorithm", r"the token uses ES512, which is not allowed \(allowed: RS256, RS384, RS512, PS256, ES256, ES384, EdDSA"),
        ("jwk_for_other_alg", "the JWKS key for the token's kid is for another algorithm than RS384"),
        ("garbage", r"the token is not a JWT \(its header cannot be decoded\)"),
    ],
)
def test_refusals(acme: AcmeLog, rsa_key: Any, other_rsa_key: Any, jwks: dict[str, Any], make: str, message: str) -> None:
    claims = claims_for(acme.record("alice-login"))
    public_pem = pem(rsa_key)
    tokens: dict[str, Callable[[], str]] = {
        "bad_signature": lambda: sign(claims, other_rsa_key),
        "alg_none": lambda: handmade({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims),
        # The forgery: the verifier's *public* key used as the HMAC secret.
        "hs256_with_public_key": lambda: handmade({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims, public_pem),
        "expired": lambda: sign({**claims, "exp": NOW_TS - 10}, rsa_key),
        "not_yet_valid": lambda: sign({**claims, "nbf": NOW_TS + 60}, rsa_key),
        "no_exp": lambda: sign({k: v for k, v in claims.items() if k != "exp"}, rsa_key),
        "wrong_issuer": lambda: sign({**claims, "iss": "https://evil.example/realms/acme"}, rsa_key),
        "wrong_audience": lambda: sign({**claims, "aud": "another-client"}, rsa_key),
        "unknown_kid": lambda: sign(claims, rsa_key, kid="rsa-2"),
        "enc_key_kid": lambda: sign(claims, rsa_key, kid="enc-1"),
        "unsupported_algorithm": lambda: sign(claims, ec.generate_private_key(ec.SECP521R1()), "ES512", "ec-1"),
        "jwk_for_other_alg": lambda: sign(claims, rsa_key, "RS384"),
        "garbage": lambda: "not-a-token",
    }
    token = tokens[make]()
    with pytest.raises(TokenError, match=message) as caught:
        verify(token, jwks)
    text = str(caught.value)
    # never echo the token or its contents
    assert token not in text and "finance:approve" not in text and "evil.example" not in text and "another-client" not in text


def test_the_hmac_forgery_is_refused_with_a_pem_key_too(acme: AcmeLog, rsa_key: Any) -> None:
    public_pem = pem(rsa_key)
    token = handmade({"alg": "HS256", "typ": "JWT"}, claims_for(acme.record("alice-login")), public_pem)
    with pytest.raises(TokenError, match="HS256, a shared-secret HMAC algorithm"):
        verify_token(token, public_key_pem=public_pem, issuer=None, audience=None, now=NOW)


def test_expiry_is_judged_at_the_given_now_with_leeway(acme: AcmeLog, rsa_key: Any, jwks: dict[str, Any]) -> None:
    token = sign(claims_for(acme.record("alice-login")), rsa_key)  # exp = NOW + 290
    verify(token, jwks, now=NOW + timedelta(seconds=289))
    with pytest.raises(TokenError, match="expired 0s before"):
        verify(token, jwks, now=NOW + timedelta(seconds=290))
    verify(token, jwks, now=NOW + timedelta(seconds=300), leeway=30)


def test_an_algorithm_name_that_is_not_plain_is_not_echoed(acme: AcmeLog, jwks: dict[str, Any]) -> None:
    token = handmade({"alg": "<script>alert(1)</script>", "kid": "rsa-1"}, claims_for(acme.record("alice-login")))
    with pytest.raises(TokenError, match="the token uses an unrecognised algorithm, which is not allowed"):
        verify(token, jwks)


def test_decode_unverified_reads_without_checking(acme: AcmeLog) -> None:
    claims = claims_for(acme.record("alice-login"), exp=NOW_TS - 3600)
    assert decode_unverified(handmade({"alg": "none"}, claims)) == claims
    with pytest.raises(TokenError, match="not a JWT"):
        decode_unverified("a.b")


# -- findings -------------------------------------------------------------------------------------


def test_a_token_matching_its_decision_is_clean(acme: AcmeLog) -> None:
    record = acme.record("alice-login")
    findings = explain_token(claims_for(record), record)
    assert findings.clean and findings.findings == ()
    assert findings.decision_id == acme.ids["alice-login"] and findings.governed == ("roles", "tenant")
    delegated = acme.record("agent-exchange-for-alice")
    assert explain_token(claims_for(delegated), delegated).clean  # act is governed and matches


def test_extra_values_and_ungoverned_claims_are_reported(acme: AcmeLog) -> None:
    record = acme.record("alice-login")
    claims = claims_for(record, roles=["crm:read", "crm:write", "finance:approve", "crm:admin"], department="sales")
    findings = explain_token(claims, record)
    assert not findings.clean
    assert [(f.claim, f.kind, f.extra, f.missing) for f in findings.findings] == [
        ("roles", "extra_values", ("crm:admin",), ()),
        ("department", "unaccounted", (), ()),
    ]


def test_missing_differing_and_removed_claims_are_reported(acme: AcmeLog) -> None:
    record = acme.record("alice-login")
    claims = claims_for(record, roles=["crm:read"], tenant="acme-us", realm_access={"roles": ["admin"]})
    kinds = [(f.claim, f.kind, f.extra, f.missing) for f in explain_token(claims, record).findings]
    assert kinds == [
        ("roles", "missing_values", (), ("crm:write", "finance:approve")),
        ("tenant", "value_differs", ("acme-us",), ("acme-eu",)),
        ("realm_access", "removed_claim_present", (), ()),
    ]
    absent = explain_token(claims_for(record, tenant=None), record).findings
    assert [(f.claim, f.kind, f.missing) for f in absent] == [("tenant", "missing_claim", ("acme-eu",))]


def test_a_token_for_a_denied_decision_is_a_finding(acme: AcmeLog) -> None:
    record = acme.record("carol-refresh")
    claims = claims_for(record, roles=["crm:read"])
    assert [(f.claim, f.kind) for f in explain_token(claims, record).findings] == [
        ("authz_decision_id", "denied_decision"),
        ("roles", "unaccounted"),
    ]


def test_standard_claims_are_never_unaccounted(acme: AcmeLog) -> None:
    record = acme.record("bob-login")
    removed = ("authz_decision_id", "realm_access", "resource_access")
    claims = claims_for(record, **{name: "x" for name in STANDARD_CLAIMS if name not in removed})
    claims["authz_decision_id"] = record.decision_id
    assert [f.kind for f in explain_token(claims, record).findings] == []


def test_a_token_without_a_decision_id(acme: AcmeLog) -> None:
    record = acme.record("alice-login")
    with pytest.raises(TokenError, match="carries no usable authz_decision_id"):
        explain_token(claims_for(record, authz_decision_id=None), record)
    with pytest.raises(TokenError, match="not the decision of this record"):
        explain_token(claims_for(record), acme.record("bob-login"))


# -- kpb explain --token ----------------------------------------------------------------------------


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["explain", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def jwks_file(tmp_path: Path, jwks: dict[str, Any]) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    return str(path)


def test_cli_clean_token_exits_0(acme: AcmeLog, rsa_key: Any, jwks_file: str) -> None:
    token = sign(claims_for(acme.record("alice-login")), rsa_key)
    code, out, err = run(
        "--token", token, "--log", str(acme.path), "--jwks", jwks_file, "--issuer", ISSUER, "--audience", AUDIENCE, "--now", NOW_TEXT
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"token: verified (RS256 signature, exp/nbf, iss = {ISSUER}, aud includes {AUDIENCE}; key rsa-1)"
    assert lines[1] == f"decision {acme.ids['alice-login']}: PERMIT at {NOW_TEXT}"
    assert "record entitlements.csv:4" in out
    assert lines[-1] == "findings: none; every claim in the token is accounted for by the decision"
    assert token not in out + err


def test_cli_token_with_findings_exits_1(acme: AcmeLog, ec_key: Any, jwks_server: tuple[str, list[str]]) -> None:
    record = acme.record("alice-login")
    token = sign(claims_for(record, roles=[*record.decision.claims["roles"], "crm:admin"], department="sales"), ec_key, "ES256", "ec-1")
    url = f"{jwks_server[0]}/realms/acme/protocol/openid-connect/certs"
    code, out, _ = run("--token", "-", "--log", str(acme.path), "--jwks-url", url, "--now", NOW_TEXT, stdin=token + "\n")
    assert code == 1
    assert "findings: 2 claim(s) not accounted for by the decision" in out
    assert '  roles [extra_values]: the token carries 1 value(s) the decision did not grant (extra: "crm:admin")' in out
    assert "  department [unaccounted]: neither governed by the decision nor a standard JWT/OIDC/Keycloak claim" in out
    assert token not in out


def test_cli_token_json(acme: AcmeLog, rsa_key: Any, tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem(rsa_key))
    token = sign(claims_for(acme.record("alice-login"), extra_claim=1), rsa_key)
    code, out, _ = run("--token", token, "--log", str(acme.path), "--public-key", str(key_file), "--now", NOW_TEXT, "--json")
    assert code == 1
    document = json.loads(out)
    assert document["token"]["verified"] is True and document["token"]["alg"] == "RS256"
    assert document["decision_id"] == acme.ids["alice-login"]
    assert document["explanation"]["effect"] == "permit"
    assert [f["claim"] for f in document["findings"]["findings"]] == ["extra_claim"]


def test_cli_no_verify_is_labelled(acme: AcmeLog) -> None:
    token = handmade({"alg": "none"}, claims_for(acme.record("alice-login"), exp=NOW_TS - 3600))
    code, out, _ = run("--token", token, "--log", str(acme.path), "--no-verify", "--now", NOW_TEXT)
    assert code == 0
    assert out.splitlines()[0] == "token: UNVERIFIED (--no-verify): signature, expiry, issuer and audience were NOT checked"


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        ("alg_none", [], "error [token_invalid]: the token is unsigned (alg: none)"),
        ("bad_signature", [], "error [token_invalid]: the token's RS256 signature does not verify"),
        ("expired", [], "error [token_invalid]: the token expired"),
        ("unknown_algorithm", [], "error [token_invalid]: the token uses RS1, which is not allowed"),
        ("unknown_decision", [], "error [decision_not_found]: no decision '01KB000000000000000000NONE'"),
        ("good", ["--issuer", "https://other.example"], "error [token_invalid]: the token's issuer (iss) is not https://other.example"),
        ("good", ["--no-verify"], "--no-verify cannot be combined with a key"),
    ],
)
def test_cli_token_errors_exit_2(
    acme: AcmeLog, rsa_key: Any, other_rsa_key: Any, jwks_file: str, make: str, extra: list[str], message: str
) -> None:
    claims = claims_for(acme.record("alice-login"))
    tokens: dict[str, Callable[[], str]] = {
        "alg_none": lambda: handmade({"alg": "none", "kid": "rsa-1"}, claims),
        "bad_signature": lambda: sign(claims, other_rsa_key),
        "expired": lambda: sign({**claims, "exp": NOW_TS - 1}, rsa_key),
        "unknown_algorithm": lambda: handmade({"alg": "RS1", "kid": "rsa-1"}, claims),
        "unknown_decision": lambda: sign({**claims, "authz_decision_id": "01KB000000000000000000NONE"}, rsa_key),
        "good": lambda: sign(claims, rsa_key),
    }
    token = tokens[make]()
    code, out, err = run("--token", token, "--log", str(acme.path), "--jwks", jwks_file, "--now", NOW_TEXT, *extra)
    assert code == 2
    assert message in err
    assert token not in out + err


def test_cli_token_needs_a_key_or_no_verify(acme: AcmeLog, rsa_key: Any) -> None:
    code, _, err = run("--token", sign(claims_for(acme.record("alice-login")), rsa_key), "--log", str(acme.path))
    assert code == 2 and "give exactly one of --jwks-url, --jwks or --public-key" in err


def test_short_keys_and_malformed_key_sets_are_refused(acme: AcmeLog) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key under test
    with pytest.warns(jwt.InsecureKeyLengthWarning):  # pyjwt signs with it, warning
        token = sign(claims_for(acme.record("alice-login")), weak, kid=None)
    with pytest.raises(TokenError, match=r"the key cannot verify RS256 signatures \(wrong type, or too short\)"):
        verify_token(token, public_key_pem=pem(weak), issuer=None, audience=None, now=NOW)
    with pytest.raises(TokenError, match="the JWKS is malformed"):
        verify_token(token, jwks_url="https://kc.example/certs", issuer=None, audience=None, now=NOW, fetch=lambda url, timeout: ["x"])
    with pytest.raises(TokenError, match="the public key is not a PEM-encoded public key"):
        verify_token(token, public_key_pem=b"-----BEGIN PUBLIC KEY-----\nnope\n", issuer=None, audience=None, now=NOW)
    with pytest.raises(ValueError, match="exactly one of"):
        verify_token(token, issuer=None, audience=None, now=NOW)
