"""api/responses.py: the one JSON and error body of the HTTP API."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.exceptions import MethodNotAllowed, NotFound

from conftest import NOW, ROOT, service_settings
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.api.responses import MAX_ISSUES_IN_MESSAGE, error_response, json_response, return_minimal
from keycloak_policy_bridge.bridge import bridge_from_settings
from keycloak_policy_bridge.errors import BridgeError, Issue, NotReadyError, PolicyError, ReplayGateError

API = ROOT / "keycloak_policy_bridge" / "api"


@pytest.fixture
def app() -> Flask:
    return Flask(__name__)


def test_json_response_keeps_non_ascii_and_sets_the_type(app: Flask) -> None:
    with app.app_context():
        response = json_response({"tenant": "acme-ü"}, 202)
    assert response.status_code == 202 and response.mimetype == "application/json"
    assert response.get_data() == '{"tenant":"acme-ü"}'.encode()


def test_json_response_encodes_what_orjson_refuses_with_the_standard_library(app: Flask) -> None:
    with app.app_context():
        response = json_response({"big": 2**70, "keys": {1: "one"}})
    assert response.get_json() == {"big": 2**70, "keys": {"1": "one"}}


@pytest.mark.parametrize(
    ("prefer", "minimal"),
    [
        ("return=minimal", True),
        ("Return=Minimal", True),
        ('return="minimal"', True),
        ("respond-async, return=minimal; foo=bar", True),
        ("wait=10 ,  return = minimal", True),
        ("return=representation", False),
        ("minimal", False),
        ("returns=minimal", False),
        ("", False),
        (None, False),
    ],
)
def test_return_minimal_reads_the_prefer_header(prefer: str | None, minimal: bool) -> None:
    assert return_minimal(prefer) is minimal


def test_an_error_answers_its_class_code_and_status(app: Flask) -> None:
    with app.app_context():
        response = error_response(NotReadyError("no valid policy is loaded"))
    assert response.status_code == 503
    assert response.get_json() == {"error": "not_ready", "message": "no valid policy is loaded"}


def test_extra_fields_follow_the_message(app: Flask) -> None:
    with app.app_context():
        response = error_response(ReplayGateError("2 would change"), report={"changed": 2})
    assert response.status_code == 409
    assert list(response.get_json()) == ["error", "message", "report"]
    assert response.get_json()["report"] == {"changed": 2}


def test_issues_are_summarized_in_the_message_or_listed_in_full(app: Flask) -> None:
    issues = [Issue(f"$.rules[{i}]", "is wrong", "schema") for i in range(MAX_ISSUES_IN_MESSAGE + 5)]
    error = PolicyError("policy is invalid: 25 problem(s)", issues)
    with app.app_context():
        summarized = error_response(error).get_json()
        listed = error_response(error, list_issues=True).get_json()
    assert summarized["message"].startswith("policy is invalid: 25 problem(s): $.rules[0]: is wrong; $.rules[1]: is wrong")
    assert summarized["message"].count("is wrong") == MAX_ISSUES_IN_MESSAGE and "issues" not in summarized
    assert listed["message"] == "policy is invalid: 25 problem(s)"
    assert len(listed["issues"]) == 25 and listed["issues"][0] == {"path": "$.rules[0]", "message": "is wrong", "code": "schema"}


@pytest.mark.parametrize(("error", "status", "code"), [(NotFound(), 404, "not_found"), (MethodNotAllowed(), 405, "method_not_allowed")])
def test_routing_errors_answer_in_the_same_shape(app: Flask, error: NotFound, status: int, code: str) -> None:
    with app.app_context():
        response = error_response(error)
    assert response.status_code == status
    body = response.get_json()
    assert body["error"] == code and isinstance(body["message"], str) and set(body) == {"error", "message"}


def test_the_root_error_class_answers_bridge_error(app: Flask) -> None:
    with app.app_context():
        response = error_response(BridgeError("something on purpose"))
    assert (response.status_code, response.get_json()["error"]) == (500, "bridge_error")


def test_an_unexpected_exception_is_internal_error_without_its_text(tmp_path: Path) -> None:
    settings = service_settings(tmp_path)
    service = create_app(bridge_from_settings(settings, lambda: NOW), settings, clock=lambda: NOW)

    @service.get("/boom")
    def boom() -> str:  # a bug in some route
        raise RuntimeError("secret internals")

    response = service.test_client().get("/boom")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal_error", "message": "the bridge failed unexpectedly; see its log"}


def test_no_api_module_but_responses_builds_a_response_by_hand() -> None:
    """json_response and error_response are the API's only JSON answers (/openapi.json serves
    the shipped document's bytes, /metrics Prometheus text)."""
    for path in sorted(API.glob("*.py")):
        if path.name == "responses.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert "json.dumps" not in text and "JSONEncoder" not in text, f"{path.name}: use api.responses.json_response"
        assert not re.search(r"Response\([^)]*mimetype=\"application/json\"", text), f"{path.name}: use api.responses.json_response"
        assert not re.search(r"[\"']error[\"']\s*:", text.split('"""', 2)[-1]), f"{path.name}: use api.responses.error_response"


def test_the_openapi_document_is_served_as_shipped(tmp_path: Path) -> None:
    settings = service_settings(tmp_path)
    client = create_app(bridge_from_settings(settings, lambda: NOW), settings, clock=lambda: NOW).test_client()
    response = client.get("/openapi.json")
    assert response.mimetype == "application/json" and json.loads(response.get_data())["openapi"].startswith("3.1")
