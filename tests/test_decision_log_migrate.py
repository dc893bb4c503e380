"""``kpb decisions migrate`` (issue 15): a SQLite log copied into an empty PostgreSQL database is the
same log (records, heads, checkpoints, prune boundary, policies, activations, unexpired nonces);
a database that holds a log is refused, and so is a source that does not verify, with nothing
written. Against a real PostgreSQL server (``conftest.postgres_server``).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from conftest import ACME, NOW
from keycloak_policy_bridge.decision_log import Nonce, SQLiteDecisionLog, SQLitePolicyStore
from keycloak_policy_bridge.decision_log.chain import RecordColumns
from keycloak_policy_bridge.decision_log.migrate import Verification, migrate_log
from keycloak_policy_bridge.decision_log.postgres import PostgresDecisionLog
from keycloak_policy_bridge.decision_log.postgres_schema import describe
from keycloak_policy_bridge.errors import AuthenticationError, ChainError, DecisionLogError
from test_decision_log_contract import KEYS, RECORDS
from test_decision_log_postgres import stored_chain

POLICY_DOCUMENT = json.loads((ACME / "policy.json").read_text())
KEY = ed25519.Ed25519PrivateKey.generate()
CLOCK = 2_000_000_000  # unix seconds the migration runs at: nonces expiring before are left out


def source_log(path: Path) -> list[Any]:
    """A SQLite log with everything migrate copies; returns the witness (two checkpoints and the prune statement)."""
    log, store = SQLiteDecisionLog(path), SQLitePolicyStore(path, activation_keys=KEYS)
    digest = store.store_policy(POLICY_DOCUMENT)
    store.record_activation(digest, "v1", "ada (ad-1)", NOW)
    for n, record in enumerate(RECORDS):
        log.append(record, Nonce(bytes([n]) * 32, expires_at=CLOCK + (100 if n % 2 else -100), now=CLOCK - 200))
    witness = [log.checkpoint(NOW, KEY, "w1")]
    assert log.prune(RECORDS[3].evaluated_at, NOW, KEY, "w1") == 3
    boundary = log.prune_boundary()
    assert boundary is not None
    store.record_activation(digest, "v1", "bob (ad-2)", NOW)
    witness += [boundary, log.checkpoint(NOW, KEY, "w1")]
    log.close()
    store.close()
    return witness


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return [tuple(bytes(v) if isinstance(v, bytes) else v for v in row) for row in conn.execute(sql)]


def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in conn.execute(sql)]


def test_a_migrated_log_is_the_same_log(tmp_path: Path, postgres_url: str) -> None:
    path = tmp_path / "decisions.db"
    witness = source_log(path)
    checks = Verification(tuple(witness), KEY.public_key(), KEYS)
    report = migrate_log(path, postgres_url, checks, CLOCK)

    assert report.target == describe(postgres_url) and report.source == str(path)
    assert report.source_verified.head_hash == report.target_verified.head_hash
    assert (report.records, report.policies, report.activations, report.checkpoints) == (
        len(RECORDS) - 3,
        1,
        2,
        1,
    )  # both checkpoints at the head: one row
    assert report.nonces == len([n for n in range(len(RECORDS)) if n % 2])  # the unexpired ones
    assert report.target_verified.prune_signed and report.target_verified.checkpoints_checked == 1
    assert report.target_verified.activations == 2 and report.target_verified.activation_macs_checked
    source = SQLiteDecisionLog(path, readonly=True)
    copied = sqlite_rows(
        path, f"SELECT seq, {', '.join(RecordColumns.NAMES)}, CAST(body AS BLOB), prev_hash, hash FROM decisions ORDER BY seq"
    )
    assert stored_chain(postgres_url) == [(r[0], RecordColumns(*r[1:10]), r[10], r[11], r[12]) for r in copied]
    for sql in (
        "SELECT seq, count, head_hash, created_at, key_id, signature FROM checkpoints ORDER BY seq",
        "SELECT seq, digest, version, activated_by, activated_at, prev_hash, hash, key_id, mac FROM activations ORDER BY seq",
        "SELECT ref, document FROM inputs ORDER BY ref",
        "SELECT digest, document FROM policies ORDER BY digest",
        "SELECT key, value FROM meta WHERE key <> 'inputs_generation' ORDER BY key",
    ):
        assert pg_rows(postgres_url, sql) == sqlite_rows(path, sql), sql
    assert report.log_id == source.log_id()

    # The copy carries on: its chain continues from the copied head, replayed nonces stay refused.
    log = PostgresDecisionLog(postgres_url)
    try:
        log.append(replace(RECORDS[0], decision_id="01MIGRATEDNEXT000000000000"))
        with pytest.raises(AuthenticationError):
            log.append(replace(RECORDS[0], decision_id="01MIGRATEDREPLAY0000000000"), Nonce(bytes([1]) * 32, CLOCK + 100, CLOCK))
        after = log.verify(witness, KEY.public_key(), KEYS)
        assert after.records == report.records + 1 and after.last_seq == len(RECORDS) + 1
        assert all(log.get(r.decision_id).decision_id == r.decision_id for r in RECORDS[3:])
    finally:
        log.close()
        source.close()


def password_url(url: str) -> str:
    """``url`` with a password (the test server trusts loopback: it is not checked, but it is in the URL)."""
    return url.replace("postgresql://postgres@", "postgresql://postgres:Sup3r-s3cret-pw@")


def test_a_database_that_holds_a_log_is_refused(tmp_path: Path, postgres_url: str) -> None:
    path = tmp_path / "decisions.db"
    source_log(path)
    url = password_url(postgres_url)
    assert "Sup3r-s3cret-pw" in url
    migrate_log(path, url, Verification(), CLOCK)
    before = pg_rows(postgres_url, "SELECT seq, hash FROM decisions ORDER BY seq")
    with pytest.raises(DecisionLogError) as refused:
        migrate_log(path, url, Verification(), CLOCK)
    message = str(refused.value)
    assert message.startswith(f"{describe(url)}: not an empty database (it holds decisions, inputs, nonces, checkpoints, policies")
    assert "Sup3r-s3cret-pw" not in message and "nothing was written" in message
    assert pg_rows(postgres_url, "SELECT seq, hash FROM decisions ORDER BY seq") == before


def test_a_database_a_bridge_only_opened_is_empty_enough(tmp_path: Path, postgres_url: str) -> None:
    """A bridge that started on the database and recorded nothing left the schema and a log id: not a log."""
    PostgresDecisionLog(postgres_url).close()
    path = tmp_path / "decisions.db"
    source_log(path)
    report = migrate_log(path, postgres_url, Verification(), CLOCK)
    assert report.log_id == SQLiteDecisionLog(path, readonly=True).log_id()


def test_a_tampered_source_is_refused_and_nothing_is_written(tmp_path: Path, postgres_url: str) -> None:
    path = tmp_path / "decisions.db"
    source_log(path)
    with sqlite3.connect(path) as conn:
        seq = conn.execute("SELECT MAX(seq) FROM decisions").fetchone()[0]
        conn.execute("UPDATE decisions SET effect = 'permit' WHERE seq = ?", (seq - 1,))
    with pytest.raises(ChainError) as refused:
        migrate_log(path, postgres_url, Verification(), CLOCK)
    assert str(refused.value).startswith(f"{path}: does not verify: record seq {seq - 1} (decision ")
    assert refused.value.issues[0].code == "chain_hash"
    with psycopg.connect(postgres_url) as conn:  # not even the schema
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)
