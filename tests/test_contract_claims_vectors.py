"""The shared claims vectors (contract/vectors/claims/), bridge side.

The Java mapper's tests check that its request builder produces each vector's ``request`` from the
described Keycloak situation, and that its claim writer turns each ``responses[]`` body into the
expected token effect. Here the same files meet the real bridge: every request is posted, signed,
to the Flask app on the acme example and must be accepted and decided as the vector says; every
response body is judged by the mapper's acceptance rule (written out again below, from
claim-rules.json) and, when the mapper would accept it, must also match the documented response
schema (openapi.v1.json, ClaimsResponseV1).
"""

from __future__ import annotations

import json
import re
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import NOW, ROOT, service_settings
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.bridge import bridge_from_settings
from keycloak_policy_bridge.policy import RESERVED_CLAIMS
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.signature import signing_headers

VECTOR_DIR = ROOT / "contract" / "vectors" / "claims"
VECTORS = sorted(VECTOR_DIR.glob("[0-9][0-9]-*.json"))
RULES: dict[str, Any] = json.loads((VECTOR_DIR / "claim-rules.json").read_text("utf-8"))
SECRET = bytes.fromhex("5c" * 32)
KEY_ID = "kpb-vectors"
DOC_URI = "urn:kpb:openapi.v1"
CASES = [
    pytest.param(path, index, id=f"{path.stem}:{case['name']}")
    for path in VECTORS
    for index, case in enumerate(json.loads(path.read_text("utf-8"))["responses"])
]


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    """The real app on the acme example, authenticating callers as in production (HMAC v1)."""
    settings = service_settings(tmp_path, insecure_dev=False, hmac_secrets=((KEY_ID, SECRET),))
    return create_app(bridge_from_settings(settings, lambda: NOW), settings, clock=lambda: NOW).test_client()


@pytest.fixture(scope="module")
def response_schema() -> Draft202012Validator:
    text = resources.files("keycloak_policy_bridge").joinpath("schemas", "openapi.v1.json").read_text("utf-8")
    registry: Registry[Any] = Registry().with_resource(DOC_URI, Resource.from_contents(json.loads(text), default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{DOC_URI}#/components/schemas/ClaimsResponseV1"}, registry=registry)


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return document


def response_bytes(case: dict[str, Any]) -> bytes:
    if "body_text" in case:
        return str(case["body_text"]).encode("utf-8")
    return json.dumps(case["body"]).encode("utf-8")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def mapper_verdict(body: bytes) -> str:
    """The mapper's acceptance rule for a 200 body (Java: DecisionParser), written out from
    claim-rules.json: ``permit`` or ``deny`` for a decision it applies, ``invalid`` otherwise."""
    claim_name = re.compile(RULES["claim_name_pattern"])
    decision_id = re.compile(RULES["decision_id_pattern"])
    reserved = set(RULES["reserved_claims"])
    typed = set(RULES["typed_claims"])
    try:
        doc = json.loads(body, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except ValueError:
        return "invalid"
    if not isinstance(doc, dict):
        return "invalid"
    if not isinstance(doc.get("decision_id"), str) or not decision_id.match(doc["decision_id"]):
        return "invalid"
    if doc.get("effect") not in ("permit", "deny") or not isinstance(doc.get("claims"), dict):
        return "invalid"
    for name in doc["claims"]:
        if not claim_name.match(name) or name in reserved or name in typed:
            return "invalid"
    removed = doc.get("remove_claims")
    if removed is not None:
        if not isinstance(removed, list):
            return "invalid"
        for name in removed:
            if not isinstance(name, str) or not claim_name.match(name) or name in reserved:
                return "invalid"
    ttl = doc.get("max_ttl_seconds")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0):
        return "invalid"
    reasons = doc.get("reasons")
    if reasons is not None:
        if not isinstance(reasons, list):
            return "invalid"
        for reason in reasons:
            if not isinstance(reason, dict):
                return "invalid"
            if any(reason.get(key) is not None and not isinstance(reason[key], str) for key in ("rule", "message", "kind")):
                return "invalid"
    if doc.get("user_message") is not None and not isinstance(doc["user_message"], str):
        return "invalid"
    return str(doc["effect"])


# The mapper's deny description (Java: DecisionEnforcer.denyDescription), written out: the
# bridge's user_message (else the mapper's neutral default; never the reasons) made RFC 6749
# error_description text, capped, then the decision id as a reference.
DEFAULT_DENY_TEXT = "Access was denied by your organisation's access policy."
MAX_USER_TEXT = 200


def _error_description_text(text: str) -> str:
    """Only %x20-21 / %x23-5B / %x5D-7E (RFC 6749 section 5.2): accents folded (NFKD), '"' -> "'",
    '\\' -> '/', white space and controls -> ' ', anything else dropped; spaces collapsed."""
    out = []
    for char in unicodedata.normalize("NFKD", text):
        if unicodedata.combining(char):
            continue
        if char == '"':
            out.append("'")
        elif char == "\\":
            out.append("/")
        elif char.isspace() or unicodedata.category(char) == "Cc":
            out.append(" ")
        elif 0x20 <= ord(char) <= 0x7E:
            out.append(char)
    return " ".join("".join(out).split())


def mapper_description(body: dict[str, Any]) -> str:
    message = body.get("user_message")
    text = _error_description_text(message) if isinstance(message, str) else ""
    if not text:
        text = DEFAULT_DENY_TEXT
    if len(text) > MAX_USER_TEXT:
        text = text[: MAX_USER_TEXT - 3].rstrip() + "..."
    return f"{text} (reference {_error_description_text(body['decision_id'])})"


def test_the_vectors_cover_every_event_grant_and_outcome() -> None:
    requests = [load(path)["request"] for path in VECTORS]
    assert {r["event"] for r in requests} == {"token", "userinfo", "introspection"}
    assert {(r["grant_type"], len(r.get("actors", []))) for r in requests} >= {
        ("authorization_code", 0),
        ("refresh_token", 0),
        ("client_credentials", 0),
        ("urn:ietf:params:oauth:grant-type:token-exchange", 1),
        ("urn:ietf:params:oauth:grant-type:token-exchange", 2),
    }
    outcomes = {case["expect"]["outcome"] for path in VECTORS for case in load(path)["responses"]}
    assert outcomes == {"permit", "deny", "invalid"}


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_the_request_passes_the_schema_and_is_decided_as_the_vector_says(
    client: FlaskClient, response_schema: Draft202012Validator, path: Path
) -> None:
    vector = load(path)
    parse_request(vector["request"])  # the shipped request schema, without the HTTP layer
    # Compact JSON, as the Java mapper sends it; signed over the exact bytes.
    body = json.dumps(vector["request"], separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    headers = signing_headers(SECRET, KEY_ID, "POST", "/v1/claims", body, int(NOW.timestamp()))
    response = client.post("/v1/claims", data=body, headers={**headers, "Content-Type": "application/json"})

    assert response.status_code == 200, response.get_data(as_text=True)
    decision = response.get_json()
    assert [e.message for e in response_schema.iter_errors(decision)] == []
    assert decision["effect"] == vector["acme_effect"]
    # The bridge's own answer is one the mapper applies.
    assert mapper_verdict(response.get_data()) == decision["effect"]
    if decision["effect"] == "deny":
        # The end user's text comes from the bridge and names no rule; the reasons stay for admins.
        assert isinstance(decision["user_message"], str) and decision["user_message"]
        assert decision["reasons"] and not any(r["rule"] in decision["user_message"] for r in decision["reasons"])
        assert mapper_description(decision) == f"{decision['user_message']} (reference {decision['decision_id']})"


@pytest.mark.parametrize(("path", "index"), CASES)
def test_each_response_is_judged_as_the_mapper_judges_it(response_schema: Draft202012Validator, path: Path, index: int) -> None:
    case = load(path)["responses"][index]
    outcome = case["expect"]["outcome"]
    assert mapper_verdict(response_bytes(case)) == outcome
    if outcome in ("permit", "deny"):
        assert [e.message for e in response_schema.iter_errors(case["body"])] == []
        assert case["body"]["effect"] == outcome
    if outcome == "deny":
        assert case["expect"]["http_status"] == 403 and case["expect"]["error"] == "access_denied"
        description = case["expect"]["error_description"]
        assert description == mapper_description(case["body"])
        assert re.fullmatch(r"[\x20\x21\x23-\x5b\x5d-\x7e]+", description), "RFC 6749 section 5.2 error_description characters"
        assert not any(r.get("rule") and r["rule"] in description for r in case["body"].get("reasons", [])), "never the reasons"
    if outcome == "invalid":
        assert case["expect"]["fail_closed"] == {"error": "temporarily_unavailable", "http_status": 503}
        assert case["expect"]["degraded"]["token_after"]["authz_degraded"] is True


def test_every_claim_the_policy_may_not_set_the_mapper_refuses_too() -> None:
    """The mapper's reserved list covers the bridge's, except the two claims the bridge writes
    itself from the verified actor chain (act; may_act is never written)."""
    assert RESERVED_CLAIMS - {"act", "may_act"} <= set(RULES["reserved_claims"])
    assert "act" not in RULES["reserved_claims"]
