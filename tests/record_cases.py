"""Decision records of the acme example, and the record schema, for the record tests.

Every acme request evaluated at 2026-11-28T08:00:00Z with the acme policy, snapshot and risk
feed (as ``bench/decision_log.py``'s templates), recorded plain and with a ``Masker`` on
``subject.email``, ``subject.username`` and ``context.ip``: twenty records that between them
hold permits and denies, delegation, a service account and its owner, an unknown principal,
feed rows and masked join keys.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import ACME, NOW
from keycloak_policy_bridge.context_feed import ContextFeed, load_feed
from keycloak_policy_bridge.decision import Decision
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.json_schema import load_schema
from keycloak_policy_bridge.policy import Policy, load_policy
from keycloak_policy_bridge.record import DecisionRecord, Masker, build_record
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import load_snapshot
from keycloak_policy_bridge.ulid import make_ulid

SCHEMA_FILE = "decision-record.v2.schema.json"
REQUESTS = sorted((ACME / "requests").glob("*.json"))
NAMES = [p.stem for p in REQUESTS]
MASK_PATHS = ("subject.email", "subject.username", "context.ip")
MASK_KEY = b"record tests: masking key"
MASKER = Masker(MASK_PATHS, MASK_KEY)
TOKEN_TTL = 600  # the realm's access-token lifetime the recorder is given


@functools.cache
def acme() -> tuple[Policy, Snapshot, dict[str, ContextFeed]]:
    return load_policy(ACME / "policy.json"), load_snapshot(ACME / "entitlements"), {"risk": load_feed(ACME / "feeds" / "risk")}


def decide(name: str) -> Decision:
    """The engine's decision on the acme request ``name`` at NOW."""
    policy, snapshot, feeds = acme()
    return evaluate(policy, snapshot, parse_request(json.loads(_request(name))), NOW, feeds)


def acme_record(name: str, masker: Masker | None = None, *, token_ttl_seconds: int | None = TOKEN_TTL) -> DecisionRecord:
    """The record of the acme request ``name`` (a file stem of examples/acme/requests)."""
    _, snapshot, feeds = acme()
    decision_id = make_ulid(NOW, NAMES.index(name).to_bytes(10, "big"))
    return build_record(
        decision_id,
        decide(name),
        parse_request(json.loads(_request(name))),
        snapshot,
        feeds,
        masker=masker,
        token_ttl_seconds=token_ttl_seconds,
    )


def cases() -> list[tuple[str, Masker | None]]:
    """(request name, masker) of every record, for ``pytest.mark.parametrize``."""
    return [(name, masker) for masker in (None, MASKER) for name in NAMES]


def case_id(case: tuple[str, Masker | None]) -> str:
    return case[0] + ("/masked" if case[1] else "")


@functools.cache
def _request(name: str) -> str:
    return Path(ACME / "requests" / f"{name}.json").read_text(encoding="utf-8")


# -- the schema -----------------------------------------------------------------------------------


def schema() -> dict[str, Any]:
    """The shipped record schema (a copy: callers may change it)."""
    copy: dict[str, Any] = json.loads(json.dumps(load_schema(SCHEMA_FILE)))
    return copy


@functools.cache
def validator(definition: str | None = None) -> jsonschema.Draft202012Validator:
    """A validator for the record document, or for one of the schema's ``$defs`` (the input
    documents are ``identity`` and ``feed_row``), checking formats too."""
    root = schema()
    target = root if definition is None else {"$schema": root["$schema"], "$defs": root["$defs"], "$ref": f"#/$defs/{definition}"}
    jsonschema.Draft202012Validator.check_schema(target)
    return jsonschema.Draft202012Validator(target, format_checker=jsonschema.FormatChecker())


def schema_errors(document: Any, definition: str | None = None) -> list[str]:
    """Every way ``document`` fails the record schema (or one of its ``$defs``), as ``path: message``."""
    return [f"{error.json_path}: {error.message}" for error in validator(definition).iter_errors(document)]


# -- the OpenAPI document (the admin API returns stored documents) ----------------------------------

OPENAPI_URI = "urn:kpb:openapi.v1"


@functools.cache
def _openapi_text() -> str:
    return resources.files("keycloak_policy_bridge").joinpath("schemas", "openapi.v1.json").read_text("utf-8")


def openapi() -> dict[str, Any]:
    """The shipped OpenAPI document (a copy)."""
    document: dict[str, Any] = json.loads(_openapi_text())
    return document


def openapi_errors(document: Any, component: str) -> list[str]:
    """Every way ``document`` fails the OpenAPI document's ``components.schemas.<component>``."""
    registry: Registry[Any] = Registry().with_resource(OPENAPI_URI, Resource.from_contents(openapi(), default_specification=DRAFT202012))
    validator = jsonschema.Draft202012Validator({"$ref": f"{OPENAPI_URI}#/components/schemas/{component}"}, registry=registry)
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]
