"""A ``kpb-decision/1`` log (tests/fixtures/decision-log-v1, written by the code before record v2)
opened by today's storage: it verifies as it did, reads as records, and takes ``/2`` appends that
continue its chain. No migration step; the committed fixture is only ever opened read-only (every
writing test works on a copy)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from conftest import ACME, NOW, ROOT
from keycloak_policy_bridge.context_feed import load_feed
from keycloak_policy_bridge.decision_log import ActivationKeys, Checkpoint, Query, SQLiteDecisionLog, SQLitePolicyStore
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.policy import load_policy
from keycloak_policy_bridge.record import RECORD_SCHEMA, RECORD_SCHEMA_V1, DecisionRecord, build_record
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import load_snapshot

FIXTURE = ROOT / "tests" / "fixtures" / "decision-log-v1"
KEYS = ActivationKeys((("fixture", b"decision-log-v1 fixture activation key"),))  # produce.py's
CHECKPOINTS = [Checkpoint(**json.loads(line)) for line in (FIXTURE / "checkpoints.jsonl").read_text().splitlines() if line.strip()]
WITNESS = load_pem_public_key((FIXTURE / "witness-public.pem").read_bytes())
RECORDS_IN_FIXTURE = 24


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "decisions.db"
    shutil.copyfile(FIXTURE / "decisions.db", target)
    return target


def test_the_fixture_verifies_read_only_as_it_did() -> None:
    log = SQLiteDecisionLog(FIXTURE / "decisions.db", readonly=True)
    report = log.verify(CHECKPOINTS, WITNESS, activation_keys=KEYS)
    # expected/verify.txt: "OK: 24 records (seq 1..24), head 2c5c87ec..., 1 checkpoint(s) matched, 2 activation(s) sealed"
    assert (report.records, report.first_seq, report.last_seq) == (RECORDS_IN_FIXTURE, 1, RECORDS_IN_FIXTURE)
    assert report.head_hash.startswith("2c5c87ecbccf0ac6") and report.checkpoints_checked == 1 and report.activations == 2
    assert report.inputs == 0


def test_v1_records_read_as_records(copy: Path) -> None:
    log = SQLiteDecisionLog(copy, readonly=True)
    records = log.query(Query(limit=None))
    assert len(records) == RECORDS_IN_FIXTURE and {r.schema for r in records} == {RECORD_SCHEMA_V1}
    masked = [r for r in records if "subject.email" in r.masked]
    assert masked and all(r.request["subject"]["email"].startswith("hmac-sha256:") for r in masked)
    first = log.get(records[-1].decision_id)
    document = log.document(first.decision_id)
    assert document["schema"] == RECORD_SCHEMA_V1 and "inputs" in document and first.response() == document["result"]
    policies = SQLitePolicyStore(copy, readonly=True)
    assert [a.version for a in policies.activations()] == ["2026-11-29.1", "2026-11-28.1"]
    assert policies.policy(first.policy_digest)["policy_id"] == "acme-token-policy"


def test_a_v1_log_takes_v2_appends_that_verify(copy: Path) -> None:
    log = SQLiteDecisionLog(copy)  # opened for writing: gains the inputs table, nothing else changes
    policies = SQLitePolicyStore(copy, activation_keys=KEYS)
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT COUNT(*) FROM inputs").fetchone()[0] == 0
    policy = load_policy(ACME / "policy.json")
    snapshot, feeds = load_snapshot(ACME / "entitlements"), {"risk": load_feed(ACME / "feeds" / "risk")}
    appended = []
    for n, path in enumerate(sorted((ACME / "requests").glob("*.json"))):
        request = parse_request(json.loads(path.read_text()))
        now = NOW + timedelta(minutes=30 + n)
        record = build_record(f"01V2APPEND{n:016d}", evaluate(policy, snapshot, request, now, feeds), request, snapshot, feeds)
        log.append(record)
        appended.append(record)
    policies.record_activation(policy.digest, policy.version, "admin:test", NOW + timedelta(hours=1))
    report = log.verify(CHECKPOINTS, WITNESS, activation_keys=KEYS)  # the old checkpoint still matches its prefix
    assert (report.records, report.last_seq, report.activations) == (RECORDS_IN_FIXTURE + len(appended), RECORDS_IN_FIXTURE + 10, 3)
    assert report.inputs > 0
    mixed = list(log.iterate(Query(limit=None)))
    assert all(isinstance(r, DecisionRecord) for r in mixed)
    assert [r.schema for r in mixed if isinstance(r, DecisionRecord)] == [RECORD_SCHEMA_V1] * RECORDS_IN_FIXTURE + [RECORD_SCHEMA] * 10
    assert [log.get(r.decision_id) for r in appended] == appended
    witness = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))  # produce.py's witness key
    checkpoint = log.checkpoint(NOW + timedelta(hours=2), witness, "fixture-witness")
    assert checkpoint.activation_seq == 3
    assert log.verify([*CHECKPOINTS, checkpoint], WITNESS, activation_keys=KEYS).checkpoints_checked == 2
