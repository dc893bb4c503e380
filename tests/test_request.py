"""Claims request validation (contract v1, section 1)."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import ACME, request_doc
from keycloak_policy_bridge.errors import RequestError
from keycloak_policy_bridge.request import TOKEN_EXCHANGE, parse_request


@pytest.mark.parametrize("path", sorted((ACME / "requests").glob("*.json")), ids=lambda p: p.name)
def test_acme_requests_are_valid(path: Any) -> None:
    import json

    request = parse_request(json.loads(path.read_text()))
    assert request.realm == "acme"


def test_short_grant_type_alias_and_actors() -> None:
    request = parse_request(request_doc(grant_type="token-exchange", actors=[{"client_id": "agent"}]))
    assert request.grant_type == TOKEN_EXCHANGE
    assert request.delegated and request.actors[0].client_id == "agent" and request.actors[0].sub is None


def test_unknown_additional_fields_are_accepted() -> None:
    assert parse_request(request_doc(new_field={"x": 1})).request_id == "req-1"


def test_a_failover_attempt_number_is_accepted_and_bounded_like_the_mapper_sends_it() -> None:
    """The mapper adds ``attempt`` (2..16, one per bridge URL) from its second try on."""
    assert parse_request(request_doc(attempt=2)).request_id == "req-1"
    assert parse_request(request_doc(attempt=16)).request_id == "req-1"
    for wrong in (1, 17, "2"):
        with pytest.raises(RequestError) as err:
            parse_request(request_doc(attempt=wrong))
        assert [i.path for i in err.value.issues] == ["$.attempt"]


SECRET = "s3cr3t-value-never-echoed"


@pytest.mark.parametrize(
    ("changes", "path", "message"),
    [
        ({"version": SECRET}, "$.version", "must be one of 1"),
        ({"event": SECRET}, "$.event", "must be one of token, userinfo, introspection, authzen"),
        ({"client": {"client_id": 7}}, "$.client.client_id", "must be of type string"),
        ({"subject": {"id": SECRET * 20}}, "$.subject.id", "violates maxLength 255"),
        ({"actors": [{"kind_hint": "agent"}]}, "$.actors[0]", "needs at least one of 'sub' or 'client_id'"),
        ({"subject": {"attributes": {"a": {"nested": SECRET}}}}, "$.subject.attributes.a", "fails oneOf"),
    ],
)
def test_invalid_requests_name_the_path_and_never_echo_values(changes: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_request(request_doc(**changes))
    assert (path, message) in [(i.path, i.message) for i in err.value.issues]
    assert SECRET not in str(err.value)
    assert err.value.code == "invalid_request" and err.value.http_status == 400


def test_missing_required_fields_are_all_listed() -> None:
    with pytest.raises(RequestError) as err:
        parse_request({"version": "1"})
    messages = {i.message for i in err.value.issues}
    for field in ("request_id", "realm", "event", "grant_type", "client", "subject"):
        assert f"required field '{field}' is missing" in messages


@pytest.mark.parametrize("path", sorted((ACME / "requests").glob("*.json")), ids=lambda p: p.name)
def test_the_fast_and_the_explaining_validator_agree(path: Any) -> None:
    import json

    from keycloak_policy_bridge.json_schema import validator
    from keycloak_policy_bridge.request import REQUEST_SCHEMA, _fast_validator

    good = json.loads(path.read_text())
    bad_variants = [
        {**good, "event": "x"},
        {**good, "actors": [{"kind_hint": "agent"}]},
        {k: v for k, v in good.items() if k != "client"},
        {**good, "subject": {**good["subject"], "attributes": {"a": {"x": 1}}}},
        {**good, "requested_scopes": "openid"},
    ]
    for document, valid in [(good, True)] + [(b, False) for b in bad_variants]:
        explained = not list(validator(REQUEST_SCHEMA).iter_errors(document))
        try:
            _fast_validator()(document)
            fast = True
        except Exception:  # noqa: BLE001 - fastjsonschema.JsonSchemaException
            fast = False
        assert fast == explained == valid
