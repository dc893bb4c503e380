"""Replicas of the bridge on one PostgreSQL database (``KPB_DATABASE_URL``): decisions land in
the shared log, and a policy activated on one replica is followed by the other."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import ACME, NOW, service_settings
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.bridge import Bridge, bridge_from_settings
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.decision_log.postgres_reader import PostgresDecisionReader
from keycloak_policy_bridge.errors import ConfigError

ALICE = (ACME / "requests" / "alice-login.json").read_bytes()


def replica(tmp_path: Path, name: str, url: str) -> tuple[Bridge, object]:
    """One replica: its own directory (snapshots, and a SQLite path that must stay unused), the shared database."""
    settings = service_settings(tmp_path / name, database_url=url)
    bridge = bridge_from_settings(settings, lambda: NOW)
    return bridge, create_app(bridge, settings, clock=lambda: NOW).test_client()


def test_decisions_of_two_replicas_land_in_one_shared_log(tmp_path: Path, postgres_url: str) -> None:
    a, client_a = replica(tmp_path, "a", postgres_url)
    b, client_b = replica(tmp_path, "b", postgres_url)
    ids = []
    for client in (client_a, client_b, client_a):
        response = client.post("/v1/claims", data=ALICE)  # type: ignore[attr-defined]
        assert response.status_code == 200 and response.get_json()["effect"] == "permit"
        ids.append(response.get_json()["decision_id"])
    reader = PostgresDecisionReader(postgres_url)
    try:
        assert reader.count() == 3
        assert [reader.get(i).decision_id for i in ids] == ids
    finally:
        reader.close()
    assert not (tmp_path / "a" / "var" / "decisions.db").exists() and not (tmp_path / "b" / "var" / "decisions.db").exists()
    a.log.close()
    b.log.close()


def test_a_policy_activated_on_one_replica_is_followed_by_the_other(tmp_path: Path, postgres_url: str) -> None:
    a, _ = replica(tmp_path, "a", postgres_url)
    b, client_b = replica(tmp_path, "b", postgres_url)
    document = json.loads((ACME / "policy.json").read_text())
    document["version"] = "2026-12-03.ha"
    a.activate(document, by="admin@acme", at=NOW + timedelta(seconds=1))
    assert b.policy is not None and b.policy.version != "2026-12-03.ha"
    assert b.sync_policy(NOW + timedelta(seconds=2))  # what each replica's watcher does every interval
    assert b.policy.version == "2026-12-03.ha"
    response = client_b.post("/v1/claims", data=ALICE)  # type: ignore[attr-defined]
    assert response.get_json()["policy"]["version"] == "2026-12-03.ha"
    a.log.close()
    b.log.close()


@pytest.mark.parametrize("value", ["sqlite:///var/d.db", "user:secret-pass@db/kpb"])
def test_a_database_url_that_is_not_postgresql_is_refused_without_showing_it(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"KPB_POLICY": "p.json", "KPB_ENTITLEMENTS": "e", "KPB_INSECURE_DEV": "1", "KPB_DATABASE_URL": value})
    assert [i.path for i in err.value.issues] == ["KPB_DATABASE_URL"]
    assert value not in str(err.value) and "secret-pass" not in str(err.value)
