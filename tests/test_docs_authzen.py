"""Keep docs/authzen.md true: each example request is sent to the acme example and the answer must
equal the documented one (decision ids and page tokens, which differ per run, compared by shape);
the routes table names the AuthZEN routes the app serves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import NOW, ROOT, service_settings
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.bridge import bridge_from_settings

DOC = (ROOT / "docs" / "authzen.md").read_text("utf-8")
EXAMPLE = re.compile(r"<!-- example: POST (\S+) -->\n```json\n(.*?)\n```\n\n```json\n(.*?)\n```", re.S)
VOLATILE = {"decision_id": re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$"), "next_token": re.compile(r"^[A-Za-z0-9_-]*$")}


def normalized(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<" + k + ">" if k in VOLATILE and VOLATILE[k].match(str(v)) and v else normalized(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def test_the_examples_are_found() -> None:
    assert len(EXAMPLE.findall(DOC)) == 2


@pytest.mark.parametrize(("path", "request_text", "response_text"), EXAMPLE.findall(DOC))
def test_each_example_answers_as_documented(tmp_path: Path, path: str, request_text: str, response_text: str) -> None:
    settings = service_settings(tmp_path)
    client = create_app(bridge_from_settings(settings, lambda: NOW), settings, clock=lambda: NOW).test_client()
    response = client.post(path, json=json.loads(request_text))
    assert response.status_code == 200
    assert normalized(response.get_json()) == normalized(json.loads(response_text))


def test_the_routes_table_is_the_served_authzen_routes(tmp_path: Path) -> None:
    settings = service_settings(tmp_path)
    app = create_app(bridge_from_settings(settings, lambda: NOW), settings, clock=lambda: NOW)
    served = {
        f"{m} {r.rule}"
        for r in app.url_map.iter_rules()
        if r.endpoint.startswith("authzen.")
        for m in r.methods or ()
        if m in ("GET", "POST")
    }
    documented = set(re.findall(r"^\| `((?:GET|POST) /[^`]+)` \|", DOC, re.M))
    assert documented == served
