"""Shared builders: small policies, snapshots and requests, so each test states only what matters."""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keycloak_policy_bridge.entitlements import Snapshot, snapshot_from_document
from keycloak_policy_bridge.policy import Policy, compile_policy
from keycloak_policy_bridge.request import ClaimsRequest, parse_request

ROOT = Path(__file__).resolve().parent.parent
ACME = ROOT / "examples" / "acme"
sys.path.append(str(ROOT / "scripts"))  # postgres_server: the one PostgreSQL launcher, shared with scripts/stack.py --ha
NOW = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
# The settings Settings.from_env requires (they have no default), for tests about the other ones.
ACME_SERVICE_ENV = {"KPB_POLICY": str(ACME / "policy.json"), "KPB_ENTITLEMENTS": str(ACME / "entitlements")}
GENERATED_AT = "2026-11-28T02:00:00Z"


def policy_doc(rules: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    """A minimal valid policy document with ``rules`` and any top-level fields."""
    return {"spec": "kpb-policy/1", "policy_id": "test-policy", "version": "1", "owner": "iam@test.example", "rules": rules, **top}


def make_policy(rules: list[dict[str, Any]], **top: Any) -> Policy:
    return compile_policy(policy_doc(rules, **top))


def record(subject_id: str = "E1", **fields: Any) -> dict[str, Any]:
    """A normalized export row; defaults describe an active human with one app_role."""
    row = {
        "subject_id": subject_id,
        "subject_type": "human",
        "subject_status": "active",
        "keycloak_user_id": f"kc-{subject_id}",
        "username": subject_id.lower(),
        "source": "crm",
        "entitlement_kind": "app_role",
        "entitlement_value": "crm:read",
    }
    row.update(fields)
    return row


def make_snapshot(records: list[dict[str, Any]], generated_at: str = GENERATED_AT) -> Snapshot:
    return snapshot_from_document({"generated_at": generated_at, "records": records}, "test")


BASE_REQUEST: dict[str, Any] = {
    "version": "1",
    "request_id": "req-1",
    "realm": "acme",
    "issuer": "http://localhost:8080/realms/acme",
    "event": "token",
    "grant_type": "authorization_code",
    "requested_scopes": ["openid"],
    "client": {"client_id": "acme-web", "attributes": {}},
    "subject": {"id": "kc-E1", "username": "e1", "kind_hint": "human", "attributes": {}},
    "context": {},
}


def request_doc(**changes: Any) -> dict[str, Any]:
    """BASE_REQUEST with top-level keys replaced (``subject``/``context`` dicts are merged)."""
    doc = copy.deepcopy(BASE_REQUEST)
    for key, value in changes.items():
        if key in ("subject", "context", "client") and isinstance(value, dict):
            doc[key] = {**doc.get(key, {}), **value}
        else:
            doc[key] = value
    return doc


def make_request(**changes: Any) -> ClaimsRequest:
    return parse_request(request_doc(**changes))


@pytest.fixture
def acme_dir() -> Path:
    return ACME


def service_settings(tmp_path: Path, **changes: Any) -> Any:
    """``config.Settings`` for a test service on the acme example (insecure mode unless changed)."""
    from keycloak_policy_bridge.config import Settings

    values: dict[str, Any] = dict(
        policy=ACME / "policy.json",
        entitlements=ACME / "entitlements",
        feeds=(("risk", ACME / "feeds" / "risk"),),
        decision_log=tmp_path / "var" / "decisions.db",
        insecure_dev=True,
    )
    values.update(changes)
    return Settings(**values)


def start_postgres(prefix: str) -> Any:
    """A real PostgreSQL server of the caller's own (``postgres_server.PostgresServer``; the caller
    ``remove()``s it). Under ``CI=true`` a server that cannot start fails the test; elsewhere the
    test is skipped, saying why. Its cluster is under /tmp, not pytest's base directory: as root the
    server runs as an unprivileged user, and a pytest session starting meanwhile resets that
    directory to 0700, locking the user out of its own cluster."""
    from postgres_server import PostgresServer, ServerUnavailableError

    server = PostgresServer(Path(tempfile.mkdtemp(prefix=prefix)))
    try:
        return server.start()
    except ServerUnavailableError as exc:
        server.remove()
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no PostgreSQL server for the tests: {exc}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One real PostgreSQL server for the session (``start_postgres``), removed at its end."""
    server = start_postgres("kpb-pg-")
    yield server
    server.remove()


@pytest.fixture
def own_postgres() -> Iterator[Any]:
    """A real PostgreSQL server for one test that stops and starts it (``start_postgres``)."""
    server = start_postgres("kpb-pg-own-")
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres_server: Any) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's server, dropped after the test."""
    import psycopg

    from postgres_server import next_database_name

    name = next_database_name()
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.database_url(name)
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
