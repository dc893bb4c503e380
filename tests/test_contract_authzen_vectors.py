"""The shared AuthZEN vectors (contract/vectors/authzen/), bridge side.

The Java mapper's tests (``AuthzenRequestsTest``) pin, for one set of Keycloak facts, both the
AuthZEN request its ``kpb.pdp.protocol=authzen`` mode sends (``authzen_request``) and the
``/v1/claims`` request its default mode sends (``claims_request``). Here both meet the real bridge
(the acme example, callers HMAC-signed as in production): the two modes must decide alike.

* A gate (``issue:...`` action): the evaluation is ``true`` iff the claims request is permitted;
  on a permit ``context.issuance`` holds the same claims and ``token_lifetime`` is the same
  ``max_ttl_seconds``, ``context.remove_claims`` the same ``remove_claims``; on a deny
  ``reason_user`` is present and no ``issuance``.
* A search (``resource.type`` T, no id): every page, followed through the bridge's own
  ``page.next_token`` sent back as ``page.token`` (the mapper's shape), lists claim T's values,
  in order; a page token this bridge did not issue (the vector's own placeholder) is a 400.

Every answer carries a ``context.decision_id`` recorded in the decision log, with the AuthZEN
request in the recorded claims request's ``context.authzen``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from conftest import NOW, ROOT, service_settings
from keycloak_policy_bridge import authzen as core
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.bridge import Bridge, bridge_from_settings
from keycloak_policy_bridge.signature import signing_headers

VECTOR_DIR = ROOT / "contract" / "vectors" / "authzen"
VECTORS = sorted(VECTOR_DIR.glob("[0-9][0-9]-*.json"))
SECRET = bytes.fromhex("5c" * 32)
KEY_ID = "kpb-vectors"


@pytest.fixture
def client(tmp_path: Path) -> FlaskClient:
    """The real app on the acme example, authenticating callers as in production (HMAC v1)."""
    settings = service_settings(tmp_path, insecure_dev=False, hmac_secrets=((KEY_ID, SECRET),))
    return create_app(bridge_from_settings(settings, lambda: NOW), settings, clock=lambda: NOW).test_client()


def post(client: FlaskClient, path: str, document: Any) -> tuple[int, Any]:
    """POST ``document`` as the Java mapper does: compact JSON, signed over the exact bytes."""
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    headers = signing_headers(SECRET, KEY_ID, "POST", path, body, int(NOW.timestamp()))
    response = client.post(path, data=body, headers={**headers, "Content-Type": "application/json"})
    return response.status_code, response.get_json()


def load(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return vector


def recorded_request(client: FlaskClient, decision_id: str) -> dict[str, Any]:
    """The claims request the decision log recorded for ``decision_id``."""
    bridge: Bridge = client.application.extensions["kpb"]["bridge"]
    return dict(bridge.log.get(decision_id).request)


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return [without_nulls(v) for v in value] if isinstance(value, list) else value


def test_the_vectors_are_there_and_some_are_permitted(client: FlaskClient) -> None:
    names = [path.name for path in VECTORS]
    assert names == [
        "01-gate-authorization_code.json",
        "02-gate-client_credentials.json",
        "03-gate-token-exchange.json",
        "04-search-roles-page2.json",
    ]
    effects = [post(client, "/v1/claims", load(path)["claims_request"])[1]["effect"] for path in VECTORS]
    assert "permit" in effects  # the equivalence below is not only between two denies


@pytest.mark.parametrize("path", [p for p in VECTORS if "gate" in p.name], ids=lambda p: p.stem)
def test_a_gate_decides_as_the_claims_request(client: FlaskClient, path: Path) -> None:
    vector = load(path)
    status, claims = post(client, "/v1/claims", vector["claims_request"])
    assert status == 200, claims
    status, answer = post(client, "/access/v1/evaluation", vector["authzen_request"])
    assert status == 200, answer
    assert core.check("authzen-responses.schema.json", answer, where=("evaluation",)) == []

    assert answer["decision"] is (claims["effect"] == "permit")
    context = answer["context"]
    if claims["effect"] == "permit":
        issuance = {"claims": claims["claims"]}
        if claims.get("max_ttl_seconds") is not None:
            issuance["token_lifetime"] = claims["max_ttl_seconds"]
        assert context["issuance"] == issuance
        assert context.get("remove_claims", []) == claims["remove_claims"]
        assert "reason_user" not in context
    else:
        assert "issuance" not in context and context["reason_user"]

    recorded = recorded_request(client, context["decision_id"])
    assert recorded["context"]["authzen"]["action"]["name"] == vector["authzen_request"]["action"]["name"]


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_the_authzen_request_maps_to_the_mappers_claims_request(path: Path) -> None:
    """Field by field, but for the AuthZEN view (``context.authzen``): the AuthZEN request omits
    what the mapper's claims request sends as null (absent and null mean the same there)."""
    vector = load(path)
    request = vector["authzen_request"]
    if "id" not in request["resource"]:  # a search: its query
        evaluation = core.parse_search(request).query
    else:
        evaluation = core.parse_evaluation(request)
    mapped = core.claims_request(evaluation, request_id=vector["claims_request"]["request_id"])
    assert mapped["context"].pop("authzen") == evaluation.view()
    assert mapped == without_nulls(vector["claims_request"])


@pytest.mark.parametrize("path", [p for p in VECTORS if "search" in p.name], ids=lambda p: p.stem)
def test_a_search_lists_the_claims_values_page_by_page(client: FlaskClient, path: Path) -> None:
    vector = load(path)
    status, claims = post(client, "/v1/claims", vector["claims_request"])
    assert status == 200 and claims["effect"] == "permit", claims
    claim = vector["authzen_request"]["resource"]["type"]
    expected = claims["claims"][claim]
    assert isinstance(expected, list) and len(expected) >= 2  # so that one-result pages paginate

    # The vector's page.token is a placeholder no bridge issued: refused before anything is decided.
    status, refused = post(client, "/access/v1/search/resource", vector["authzen_request"])
    assert status == 400, refused

    first = {k: v for k, v in vector["authzen_request"].items() if k != "page"}
    first["page"] = {"limit": 1}  # a PEP may ask for small pages; the mapper's are the bridge's default
    ids: list[str] = []
    page: dict[str, Any] = {"limit": 1}
    for _ in range(len(expected) + 1):
        status, answer = post(client, "/access/v1/search/resource", {**first, "page": page})
        assert status == 200, answer
        assert core.check("authzen-responses.schema.json", answer, where=("search",)) == []
        assert {r["type"] for r in answer["results"]} <= {claim}
        ids += [r["id"] for r in answer["results"]]
        recorded = recorded_request(client, answer["context"]["decision_id"])
        assert recorded["subject"]["id"] == vector["claims_request"]["subject"]["id"]
        if not answer["page"]["next_token"]:
            break
        page = {"limit": 1, "token": answer["page"]["next_token"]}  # what the mapper sends back
    assert ids == expected

    # The whole list in one page, as the mapper asks for it (no page object).
    status, answer = post(client, "/access/v1/search/resource", {k: v for k, v in vector["authzen_request"].items() if k != "page"})
    assert status == 200 and [r["id"] for r in answer["results"]] == expected and answer["page"]["next_token"] == ""
