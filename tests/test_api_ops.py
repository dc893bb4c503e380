"""Operations (issue 5): /metrics, /openapi.json kept true against the routes, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import ACME, NOW, service_settings
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.bridge import Bridge, bridge_from_settings
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.logging_json import JsonFormatter, configure
from keycloak_policy_bridge.timeutil import parse_rfc3339

ALICE = json.loads((ACME / "requests" / "alice-login.json").read_text())  # permit
CAROL = json.loads((ACME / "requests" / "carol-refresh.json").read_text())  # deny: terminated
SECRET = bytes(range(32))
# The admin API of issue 5, as documented: the routes may land after this document does.
ADMIN_OPERATIONS = {
    ("/v1/decisions", "get"),
    ("/v1/decisions/{decision_id}", "get"),
    ("/v1/decisions/{decision_id}/explain", "get"),
    ("/v1/replay", "post"),
    ("/v1/policy", "get"),
    ("/v1/policy", "put"),
    ("/v1/entitlements/reload", "post"),
    ("/v1/replicas", "get"),
}
DOC_URI = "urn:kpb:openapi.v1"


def settings_for(tmp_path: Path, **changes: Any) -> Settings:
    return service_settings(tmp_path, **changes)  # type: ignore[no-any-return]


def app_for(settings: Settings, clock: Callable[[], datetime] = lambda: NOW) -> tuple[Flask, Bridge]:
    bridge = bridge_from_settings(settings, clock)
    return create_app(bridge, settings, clock=clock), bridge


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return app_for(settings_for(tmp_path))[0]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: FlaskClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def failures(samples: Samples) -> dict[str, float]:
    return {dict(labels)["code"]: v for (name, labels), v in samples.items() if name == "kpb_request_failures_total"}


# -- metrics ------------------------------------------------------------------------------------


def test_a_permit_a_deny_and_a_failure_are_counted(tmp_path: Path) -> None:
    app, bridge = app_for(settings_for(tmp_path))
    client = app.test_client()
    assert client.post("/v1/claims", json=ALICE).get_json()["effect"] == "permit"
    assert client.post("/v1/claims", json=CAROL).get_json()["effect"] == "deny"
    bridge.log.close()  # the next decision cannot be recorded
    assert client.post("/v1/claims", json=ALICE).status_code == 503

    samples = scrape(client)
    assert sample(samples, "kpb_decisions_total", effect="permit") == 1
    assert sample(samples, "kpb_decisions_total", effect="deny") == 1
    assert sample(samples, "kpb_decision_rules_total", rule="roles-from-app-roles") == 1  # provenance
    assert sample(samples, "kpb_decision_rules_total", rule="tenant-from-entitlements") == 1
    assert sample(samples, "kpb_decision_rules_total", rule="deny-inactive-principal") == 1  # reasons
    assert sample(samples, "kpb_decision_seconds_count") == 2  # the refused decision is a failure, not a latency
    assert sample(samples, "kpb_decision_seconds_bucket", le="+Inf") == 2
    assert failures(samples) == {"decision_log_unavailable": 1}
    assert sample(samples, "kpb_decision_log_write_failures_total") == 1


def test_a_rule_counts_once_per_decision(client: FlaskClient) -> None:
    """roles-from-app-roles grants alice three roles: still one decision."""
    for _ in range(3):
        client.post("/v1/claims", json=ALICE)
    assert sample(scrape(client), "kpb_decision_rules_total", rule="roles-from-app-roles") == 3


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),  # answered by the route before deciding
        (json.dumps({"version": "1"}).encode(), 400, "invalid_request"),  # raised while deciding
        (b"[" * 70_000, 413, "body_too_large"),  # raised by werkzeug, answered by the error handler
    ],
)
def test_each_failed_claims_request_counts_once(client: FlaskClient, data: bytes, status: int, code: str) -> None:
    assert client.post("/v1/claims", data=data, content_type="application/json").status_code == status
    samples = scrape(client)
    assert failures(samples) == {code: 1}
    assert sample(samples, "kpb_decision_log_write_failures_total") == 0


def test_unauthenticated_claims_requests_are_counted(tmp_path: Path) -> None:
    client = app_for(settings_for(tmp_path, insecure_dev=False, hmac_secrets=(("k1", SECRET),)))[0].test_client()
    assert client.post("/v1/claims", json=ALICE).status_code == 401
    assert failures(scrape(client)) == {"unauthorized": 1}


def test_errors_of_other_routes_are_not_claims_failures(client: FlaskClient) -> None:
    assert client.get("/no-such-route").status_code == 404
    assert client.get("/v1/claims").status_code == 405
    assert failures(scrape(client)) == {}


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    first = app_for(settings_for(tmp_path / "a"))[0].test_client()
    second = app_for(settings_for(tmp_path / "b"))[0].test_client()
    first.post("/v1/claims", json=ALICE)
    assert sample(scrape(first), "kpb_decisions_total", effect="permit") == 1
    assert sample(scrape(second), "kpb_decisions_total", effect="permit") == 0


def test_snapshot_figures_are_read_at_scrape_time(tmp_path: Path) -> None:
    entitlements = tmp_path / "entitlements"
    shutil.copytree(ACME / "entitlements", entitlements)
    now = [NOW]
    app, bridge = app_for(settings_for(tmp_path, entitlements=entitlements), clock=lambda: now[0])
    client = app.test_client()
    status = bridge.store.status()
    age = (NOW - parse_rfc3339(status["entitlements"]["generated_at"])).total_seconds()

    samples = scrape(client)
    assert sample(samples, "kpb_snapshot_age_seconds", snapshot="entitlements") == age
    assert sample(samples, "kpb_snapshot_records", snapshot="entitlements") == status["entitlements"]["records"] > 0
    assert sample(samples, "kpb_snapshot_reloads_total", snapshot="entitlements") == 1
    assert sample(samples, "kpb_snapshot_rejections_total", snapshot="entitlements") == 0
    assert sample(samples, "kpb_snapshot_records", snapshot="feed:risk") == status["feeds"]["risk"]["records"]

    now[0] = NOW + timedelta(hours=1)
    data = next(p for p in entitlements.iterdir() if p.name != "manifest.json")
    data.write_text(data.read_text() + "\n")  # no longer matches the manifest's hash
    assert not bridge.store.reload().accepted

    samples = scrape(client)
    assert sample(samples, "kpb_snapshot_age_seconds", snapshot="entitlements") == age + 3600
    assert sample(samples, "kpb_snapshot_records", snapshot="entitlements") == status["entitlements"]["records"]
    assert sample(samples, "kpb_snapshot_reloads_total", snapshot="entitlements") == 1
    assert sample(samples, "kpb_snapshot_rejections_total", snapshot="entitlements") == 1


def test_no_snapshot_means_no_age_and_no_records(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    samples = scrape(app_for(settings_for(tmp_path, entitlements=empty))[0].test_client())
    assert sample(samples, "kpb_snapshot_age_seconds", snapshot="entitlements") is None
    assert sample(samples, "kpb_snapshot_records", snapshot="entitlements") == 0
    assert sample(samples, "kpb_snapshot_rejections_total", snapshot="entitlements") == 1


# -- OpenAPI ------------------------------------------------------------------------------------


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    body: dict[str, Any] = response.get_json()
    return body


def app_operations(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every route: ``/a/<int:x>`` -> ``/a/{x}``; HEAD and OPTIONS are implied."""
    return {
        (re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {(path, method) for path, item in document["paths"].items() for method in item if method in methods}


def test_every_route_is_documented(app: Flask, document: dict[str, Any]) -> None:
    assert app_operations(app) - documented_operations(document) == set()


def test_every_documented_operation_exists_or_is_the_admin_api(app: Flask, document: dict[str, Any]) -> None:
    assert documented_operations(document) - app_operations(app) - ADMIN_OPERATIONS == set()
    admin = {(p, m) for p, item in document["paths"].items() for m, op in item.items() if {"adminBearer": []} in op.get("security", [])}
    assert admin == ADMIN_OPERATIONS


def test_the_document_is_openapi_3_1(document: dict[str, Any]) -> None:
    import openapi_spec_validator as validator  # a declared test dependency (setup.cfg [test])

    assert document["openapi"].startswith("3.1.")
    validator.validate(document)


def test_security_schemes(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    headers = {name: s["name"] for name, s in schemes.items() if s["type"] == "apiKey"}
    assert all(s["in"] == "header" for s in schemes.values() if s["type"] == "apiKey")
    assert set(headers.values()) == {"X-KPB-Timestamp", "X-KPB-Signature", "X-KPB-Key-Id"}
    assert schemes["adminBearer"] == {**schemes["adminBearer"], "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    claims_security = document["paths"]["/v1/claims"]["post"]["security"]
    assert {frozenset(alternative) for alternative in claims_security} == {frozenset(headers), frozenset(headers) - {"kpbKeyId"}}


def test_the_claims_request_schema_is_the_shipped_one(document: dict[str, Any]) -> None:
    """The document carries a copy (standalone tools need one); it must not drift."""
    text = resources.files("keycloak_policy_bridge").joinpath("schemas", "claims-request.v1.schema.json").read_text("utf-8")
    shipped = {k: v for k, v in json.loads(text).items() if k not in ("$schema", "$id")}
    expected = json.loads(json.dumps(shipped).replace('"#/$defs/', '"#/components/schemas/ClaimsRequestV1/$defs/'))
    assert document["components"]["schemas"]["ClaimsRequestV1"] == expected


def schema_at(document: dict[str, Any], *pointer: str) -> Draft202012Validator:
    """A validator for the schema at ``pointer`` inside ``document`` (its $refs resolve in it)."""
    escaped = "/".join(part.replace("~", "~0").replace("/", "~1") for part in pointer)
    registry: Registry[Any] = Registry().with_resource(DOC_URI, Resource.from_contents(document, default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{DOC_URI}#/{escaped}"}, registry=registry)


def check_response(document: dict[str, Any], path: str, method: str, response: Any) -> None:
    responses = document["paths"][path][method]["responses"]
    assert str(response.status_code) in responses, f"{method.upper()} {path}: {response.status_code} is not documented"
    validator = schema_at(document, "paths", path, method, "responses", str(response.status_code), "content", "application/json", "schema")
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(response.get_json())]
    assert errors == [], f"{method.upper()} {path} {response.status_code}"


def test_the_example_requests_match_the_documented_request_schema(document: dict[str, Any]) -> None:
    validator = schema_at(document, "components", "schemas", "ClaimsRequestV1")
    for path in sorted((ACME / "requests").glob("*.json")):
        assert list(validator.iter_errors(json.loads(path.read_text()))) == [], path.name
    assert not validator.is_valid({**ALICE, "client": {"client_id": "x", "attributes": {"a": 1}}})  # through the $defs ref


def test_claims_answers_match_the_document(tmp_path: Path, document: dict[str, Any]) -> None:
    app, bridge = app_for(settings_for(tmp_path))
    client = app.test_client()
    for body in (ALICE, CAROL, {"version": "1"}):
        check_response(document, "/v1/claims", "post", client.post("/v1/claims", json=body))
    for data in (b"{not json", b"[" * 70_000):
        check_response(document, "/v1/claims", "post", client.post("/v1/claims", data=data, content_type="application/json"))
    bridge.log.close()
    check_response(document, "/v1/claims", "post", client.post("/v1/claims", json=ALICE))
    signed = app_for(settings_for(tmp_path / "signed", insecure_dev=False, hmac_secrets=(("k1", SECRET),)))[0].test_client()
    check_response(document, "/v1/claims", "post", signed.post("/v1/claims", json=ALICE))


def test_health_and_readiness_answers_match_the_document(tmp_path: Path, client: FlaskClient, document: dict[str, Any]) -> None:
    check_response(document, "/healthz", "get", client.get("/healthz"))
    check_response(document, "/readyz", "get", client.get("/readyz"))
    empty = tmp_path / "empty"
    empty.mkdir()
    not_ready = app_for(settings_for(tmp_path / "b", entitlements=empty))[0].test_client().get("/readyz")
    assert not_ready.status_code == 503
    check_response(document, "/readyz", "get", not_ready)


def test_admin_refusals_match_the_document(app: Flask, client: FlaskClient, document: dict[str, Any]) -> None:
    """Without admin settings or a token, every admin route that exists refuses in the error shape."""
    present = app_operations(app) & ADMIN_OPERATIONS
    for path, method in sorted(present):
        response = client.open(path.replace("{decision_id}", "01M8GJP400H9ZXJX515F4JBP06"), method=method.upper(), json={})
        assert response.status_code in (401, 503)
        check_response(document, path, method, response)


@pytest.fixture(scope="module")
def admin_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_admin_answers_match_the_document(tmp_path: Path, admin_key: Any, document: dict[str, Any]) -> None:
    """Each admin operation's success and its main refusals, against the documented schemas."""
    import jwt
    from jwt.algorithms import RSAAlgorithm

    from keycloak_policy_bridge.api.admin import JWKS_EXTENSION, JwksCache

    issuer, audience = "https://sso.acme.example/realms/acme-admin", "kpb-admin-api"
    jwks = {"keys": [{**RSAAlgorithm.to_jwk(admin_key.public_key(), as_dict=True), "kid": "admin-1", "alg": "RS256", "use": "sig"}]}
    entitlements = tmp_path / "entitlements"
    shutil.copytree(ACME / "entitlements", entitlements)
    admin = {"admin_jwks_url": issuer + "/certs", "admin_issuer": issuer, "admin_audience": audience}
    settings = settings_for(tmp_path, entitlements=entitlements, **admin)
    app, _ = app_for(settings)
    app.extensions[JWKS_EXTENSION] = JwksCache(fetch=lambda url, timeout: jwks)
    client = app.test_client()
    permit = client.post("/v1/claims", json=ALICE).get_json()["decision_id"]
    client.post("/v1/claims", json=CAROL)

    def token(roles: list[str]) -> dict[str, str]:
        claims = {
            "iss": issuer,
            "aud": audience,
            "sub": "ada-id",
            "preferred_username": "ada",
            "iat": int(NOW.timestamp()) - 10,
            "exp": int(NOW.timestamp()) + 290,
            "realm_access": {"roles": roles},
        }
        return {"Authorization": "Bearer " + jwt.encode(claims, admin_key, algorithm="RS256", headers={"kid": "admin-1"})}

    policy = json.loads((ACME / "policy.json").read_text())
    candidate = json.loads((ACME / "candidate-policy.json").read_text())
    calls: list[tuple[str, str, str, Any, int]] = [
        ("/v1/decisions", "get", "/v1/decisions?limit=5", None, 200),
        ("/v1/decisions", "get", "/v1/decisions?effect=maybe", None, 400),
        ("/v1/decisions/{decision_id}", "get", f"/v1/decisions/{permit}", None, 200),
        ("/v1/decisions/{decision_id}", "get", "/v1/decisions/01M8GJP400H9ZXJX515F4JBP06", None, 404),
        ("/v1/decisions/{decision_id}/explain", "get", f"/v1/decisions/{permit}/explain", None, 200),
        ("/v1/replay", "post", "/v1/replay", {"policy": candidate}, 200),
        ("/v1/replay", "post", "/v1/replay", {"policy": {"spec": "kpb-policy/1"}}, 400),
        ("/v1/policy", "get", "/v1/policy", None, 200),
        ("/v1/policy", "put", "/v1/policy?gate=replay&last=10", candidate, 409),
        ("/v1/policy", "put", "/v1/policy", {"spec": "kpb-policy/1"}, 400),
        ("/v1/policy", "put", "/v1/policy?gate=replay&last=10", policy, 200),
        ("/v1/entitlements/reload", "post", "/v1/entitlements/reload", None, 200),
        ("/v1/replicas", "get", "/v1/replicas", None, 200),
    ]
    for path, method, url, body, status in calls:
        response = client.open(url, method=method.upper(), json=body, headers=token(["kpb-admin"]))
        assert response.status_code == status, f"{method.upper()} {url}: {response.get_json()}"
        check_response(document, path, method, response)
    assert {(path, method) for path, method, *_ in calls} == ADMIN_OPERATIONS
    for path, method in sorted(ADMIN_OPERATIONS):
        url = path.replace("{decision_id}", permit)
        check_response(document, path, method, client.open(url, method=method.upper(), json={}))  # 401
        check_response(document, path, method, client.open(url, method=method.upper(), json={}, headers=token([])))  # 403


# -- JSON logs ----------------------------------------------------------------------------------

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


def format_record(message: str, *args: Any, exc_info: Any = None, **extra: Any) -> dict[str, Any]:
    logger = logging.getLogger("kpb.test")
    record = logger.makeRecord("kpb.test", logging.INFO, __file__, 1, message, args, exc_info, extra=extra)
    record.created = NOW.timestamp() + 0.1234
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_a_record_is_one_json_object() -> None:
    assert format_record("decision %s effect=%s", "01ABC", "permit") == {
        "time": "2026-11-28T08:00:00.123Z",
        "level": "INFO",
        "logger": "kpb.test",
        "pid": format_record("x")["pid"],
        "message": "decision 01ABC effect=permit",
    }


def test_the_decision_id_comes_from_extra_and_nothing_else_does() -> None:
    line = format_record("decided", decision_id="01M8GJP400H9ZXJX515F4JBP06", body='{"sub": "x"}', token=JWT, authorization="Bearer a")
    assert line["decision_id"] == "01M8GJP400H9ZXJX515F4JBP06"
    assert set(line) == {"time", "level", "logger", "pid", "message", "decision_id"}


def test_tokens_in_messages_are_redacted() -> None:
    line = format_record("refused %s; header was Authorization: Bearer %s", JWT, "opaque-token.value")
    assert JWT not in line["message"] and "opaque-token" not in line["message"]
    assert line["message"] == "refused [redacted]; header was Authorization: Bearer [redacted]"


@pytest.mark.parametrize(
    ("message", "logged"),
    [
        ("the bearer token was refused", "the bearer token was refused"),
        ("no bearer token.", "no bearer token."),
        ("Bearer credentials are checked first", "Bearer credentials are checked first"),
        ("Authorization: Bearer 2YotnFZFEjr1zCsicMWpAA", "Authorization: Bearer [redacted]"),
        ("Authorization: Bearer mF_9.B5f-4.1JqM", "Authorization: Bearer [redacted]"),
        ("bearer abcdefghijklmnopqrstuvwxyz", "bearer [redacted]"),
    ],
)
def test_redaction_takes_credentials_and_leaves_ordinary_words(message: str, logged: str) -> None:
    assert format_record(message)["message"] == logged


def test_a_multiline_message_and_an_exception_stay_on_one_line() -> None:
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        line = format_record("first\nsecond", exc_info=sys.exc_info())
    assert line["message"] == "first\nsecond"
    assert "ValueError: bad token [redacted]" in line["exception"] and JWT not in line["exception"]


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_installs_one_json_handler(root_logger: logging.Logger) -> None:
    first, stream = io.StringIO(), io.StringIO()
    configure("warning", stream=first)
    handler = configure(logging.INFO, stream=stream)
    assert [h for h in root_logger.handlers if isinstance(h.formatter, JsonFormatter)] == [handler]
    assert root_logger.level == logging.INFO
    logging.getLogger("kpb.api").info("decision %s", "01ABC", extra={"decision_id": "01ABC"})
    logging.getLogger("kpb.api").debug("not at INFO")
    lines = stream.getvalue().splitlines()
    assert first.getvalue() == "" and len(lines) == 1
    assert json.loads(lines[0])["decision_id"] == "01ABC"


def test_configure_refuses_an_unknown_level(root_logger: logging.Logger) -> None:
    with pytest.raises(ValueError):
        configure("loud", stream=io.StringIO())


def test_an_evaluation_over_its_budget_is_a_recorded_deny_and_counted(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Security defect 3: an overrun fails closed for that request only, with a metric."""
    from keycloak_policy_bridge import bridge as bridge_module
    from keycloak_policy_bridge.engine import BUDGET_RULE, EvaluationBudget

    ticks = iter(range(1000))
    monkeypatch.setattr(bridge_module, "EVALUATION_BUDGET", EvaluationBudget(0.5, lambda: float(next(ticks))))
    body = client.post("/v1/claims", json=ALICE).get_json()
    assert body["effect"] == "deny" and BUDGET_RULE in [r["rule"] for r in body["reasons"]]
    monkeypatch.undo()
    assert client.post("/v1/claims", json=ALICE).get_json()["effect"] == "permit"  # the next request is unaffected
    samples = scrape(client)
    assert sample(samples, "kpb_evaluation_budget_exceeded_total") == 1
    assert sample(samples, "kpb_decisions_total", effect="deny") == 1
