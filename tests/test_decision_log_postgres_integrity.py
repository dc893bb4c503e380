"""``verify``, ``checkpoint`` and ``prune`` on the PostgreSQL log (issue 15): the same checks as on
the SQLite file, the first bad record named with the same code and message, and a chain that stays
verifiable while replicas append during a checkpoint and a prune.

Every test runs against a real PostgreSQL server (``conftest.postgres_server``). Each tampering
is done twice, by direct SQL, on a SQLite log and a PostgreSQL log holding the same records,
policies and activations (the same chain hashes): the two ``ChainError``s must be equal.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from conftest import ACME, NOW
from keycloak_policy_bridge.decision_log import SQLiteDecisionLog, SQLitePolicyStore
from keycloak_policy_bridge.decision_log.postgres import PostgresDecisionLog
from keycloak_policy_bridge.decision_log.postgres_policies import PostgresPolicyStore
from keycloak_policy_bridge.decision_log.postgres_reader import PostgresDecisionReader
from keycloak_policy_bridge.errors import ChainError
from test_decision_log_contract import KEYS, RECORDS

POLICY_DOCUMENT = json.loads((ACME / "policy.json").read_text())
Log = SQLiteDecisionLog | PostgresDecisionLog


def fill(log: Log, store: SQLitePolicyStore | PostgresPolicyStore) -> None:
    """The same content in either backend: the contract records, the acme policy, two activations."""
    digest = store.store_policy(POLICY_DOCUMENT)
    store.record_activation(digest, "v1", "ada (ad-1)", NOW)
    for record in RECORDS:
        log.append(record)
    store.record_activation(digest, "v1", "ada (ad-1)", NOW + timedelta(minutes=1))


@pytest.fixture
def both(tmp_path: Path, postgres_url: str) -> Iterator[tuple[SQLiteDecisionLog, PostgresDecisionLog]]:
    path = tmp_path / "decisions.db"
    sqlite_log, sqlite_store = SQLiteDecisionLog(path), SQLitePolicyStore(path, activation_keys=KEYS)
    pg_log, pg_store = PostgresDecisionLog(postgres_url), PostgresPolicyStore(postgres_url, activation_keys=KEYS)
    fill(sqlite_log, sqlite_store)
    fill(pg_log, pg_store)
    sqlite_store.close()
    pg_store.close()
    yield sqlite_log, pg_log
    sqlite_log.close()
    pg_log.close()


def tamper(log: Log, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Run ``statements`` (SQLite's ``?`` placeholders) on the log's database, as someone with it would."""
    if isinstance(log, SQLiteDecisionLog):
        with sqlite3.connect(log.path, isolation_level=None) as conn:
            for sql, args in statements:
                conn.execute(sql, args)
        return
    with psycopg.connect(log.url, autocommit=True) as pg:
        for sql, args in statements:
            pg.execute(sql.replace("?", "%s"), args)


def failure(verify: Callable[[], object]) -> tuple[str, list[tuple[str, str, str]]]:
    with pytest.raises(ChainError) as caught:
        verify()
    return caught.value.message, [(i.path, i.message, i.code) for i in caught.value.issues] if caught.value.issues else []


def issue_codes(error: tuple[str, list[tuple[str, str, str]]]) -> list[str]:
    return [code for *_, code in error[1]]


def test_both_logs_hold_the_same_chain(both: tuple[SQLiteDecisionLog, PostgresDecisionLog]) -> None:
    """Guard: the comparisons below compare like with like."""
    sqlite_log, pg_log = both
    a, b = sqlite_log.verify(activation_keys=KEYS), pg_log.verify(activation_keys=KEYS)
    assert a.head_hash == b.head_hash and a.records == b.records == len(RECORDS) and a.inputs == b.inputs > 0
    assert a.activations == b.activations == 2 and b.activation_macs_checked
    assert (a.first_seq, a.last_seq) == (b.first_seq, b.last_seq) == (1, len(RECORDS))


TAMPERINGS: dict[str, tuple[tuple[str, tuple[Any, ...]], ...]] = {
    "body updated": (("UPDATE decisions SET body = ? WHERE seq = 3", (b"\x02tampered",)),),
    "column updated": (("UPDATE decisions SET client_id = 'evil-client' WHERE seq = 4", ()),),
    "row deleted": (("DELETE FROM decisions WHERE seq = 3", ()),),
    "rows reordered": (
        ("UPDATE decisions SET seq = 1000 WHERE seq = 2", ()),
        ("UPDATE decisions SET seq = 2 WHERE seq = 3", ()),
        ("UPDATE decisions SET seq = 3 WHERE seq = 1000", ()),
    ),
    "last rows deleted, a checkpoint beyond": (("DELETE FROM decisions WHERE seq > 5", ()),),
    "input deleted": (("DELETE FROM inputs", ()),),
    "input modified": (("UPDATE inputs SET document = ?", (b"\x02x",)),),
    "policy modified": (("UPDATE policies SET document = ?", (b'{"id": "forged"}',)),),
    "activation rewritten": (("UPDATE activations SET activated_by = 'mallory (m-1)' WHERE seq = 2", ()),),
    "activation deleted": (("DELETE FROM activations WHERE seq = 1", ()),),
    "wipe disguised as a prune": (
        ("INSERT INTO meta VALUES ('pruned_through_seq', '4')", ()),
        ("INSERT INTO meta (key, value) SELECT 'pruned_head_hash', hash FROM decisions WHERE seq = 4", ()),
        ("DELETE FROM decisions WHERE seq <= 4", ()),
    ),
}
EXPECTED_CODES = {
    "body updated": ["chain_hash"],
    "column updated": ["chain_hash"],
    "row deleted": ["chain_gap"],
    "rows reordered": ["chain_link"],
    "last rows deleted, a checkpoint beyond": ["checkpoint_mismatch"],
    "input deleted": ["input_missing"],
    "input modified": ["input_modified"],
    "policy modified": ["policy_modified"],
    "activation rewritten": ["activation_modified"],
    "activation deleted": ["policy_missing", "activation_link", "activation_gap"],  # one of; pinned equal across backends below
    "wipe disguised as a prune": ["prune_unsigned"],
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_verify_names_the_first_tampering_as_sqlite_does(both: tuple[SQLiteDecisionLog, PostgresDecisionLog], name: str) -> None:
    sqlite_log, pg_log = both
    key = ed25519.Ed25519PrivateKey.generate()
    witness = {type(log): [log.checkpoint(NOW, key, "w1")] for log in both}
    assert witness[SQLiteDecisionLog][0].head_hash == witness[PostgresDecisionLog][0].head_hash
    for log in both:
        tamper(log, *TAMPERINGS[name])
    errors = [failure(lambda log=log: log.verify(witness[type(log)], key.public_key(), KEYS)) for log in both]  # type: ignore[misc]
    # A fresh reader (another process's: no cache) names it alike.
    reader = PostgresDecisionReader(pg_log.url)
    try:
        errors.append(failure(lambda: reader.verify(witness[PostgresDecisionLog], key.public_key(), KEYS)))
    finally:
        reader.close()
    assert errors[0] == errors[1] == errors[2], errors
    codes = issue_codes(errors[0])
    assert len(codes) == 1 and codes[0] in EXPECTED_CODES[name], errors[0]


def test_the_first_of_two_tamperings_is_named(both: tuple[SQLiteDecisionLog, PostgresDecisionLog]) -> None:
    for log in both:
        tamper(log, ("UPDATE decisions SET effect = 'permit' WHERE seq = 6", ()), ("DELETE FROM decisions WHERE seq = 2", ()))
    errors = [failure(log.verify) for log in both]
    assert errors[0] == errors[1]
    assert errors[0][0].startswith("record seq 3 (decision ") and issue_codes(errors[0]) == ["chain_gap"]


def test_checkpoint_and_prune_signatures_hold_on_postgresql(both: tuple[SQLiteDecisionLog, PostgresDecisionLog]) -> None:
    _, log = both
    key = ed25519.Ed25519PrivateKey.generate()
    checkpoint = log.checkpoint(NOW, key, "w1")
    assert (checkpoint.seq, checkpoint.count, checkpoint.activation_seq, checkpoint.key_id) == (len(RECORDS), len(RECORDS), 2, "w1")
    with psycopg.connect(log.url) as conn:
        stored = conn.execute("SELECT count, head_hash, key_id, signature FROM checkpoints WHERE seq = %s", (checkpoint.seq,)).fetchone()
    assert stored == (checkpoint.count, checkpoint.head_hash, "w1", checkpoint.signature)
    cut = RECORDS[4].evaluated_at  # records 1..4 were evaluated before it
    assert log.prune(cut, NOW, key, "w1") == 4
    boundary = log.prune_boundary()
    assert boundary is not None and (boundary.kind, boundary.seq, boundary.count) == ("prune", 4, 4)
    report = log.verify([checkpoint], key.public_key(), KEYS)
    assert report.prune_signed and report.first_seq == 5 and report.records == len(RECORDS) - 4 and report.checkpoints_checked == 1
    assert log.prune(cut, NOW, key, "w1") == 0  # nothing left before the cut
    # A boundary moved by hand no longer matches its signed statement.
    tamper(log, ("UPDATE meta SET value = '3' WHERE key = 'pruned_through_seq'", ()))
    message, issues = failure(lambda: log.verify([checkpoint], key.public_key()))
    assert message.startswith("prune boundary at seq 3") and issues[0][2] == "prune_unsigned"


def test_an_empty_log_has_nothing_to_checkpoint(postgres_url: str) -> None:
    from keycloak_policy_bridge.errors import DecisionLogError

    log = PostgresDecisionLog(postgres_url)
    try:
        with pytest.raises(DecisionLogError, match="the log is empty; nothing to checkpoint"):
            log.checkpoint(NOW)
        assert log.verify().records == 0 and log.prune_boundary() is None
    finally:
        log.close()


def test_checkpoint_and_prune_while_two_replicas_append(postgres_url: str) -> None:
    """Two replicas, one writer thread each, append without pause while a third instance takes
    checkpoints and prunes twice: every checkpoint names a committed (seq, hash), nothing is lost
    but the pruned prefixes, no input a remaining record needs is collected, and the chain
    verifies with the public key from the signed prune statement."""
    replicas = [PostgresDecisionLog(postgres_url) for _ in range(2)]
    admin = PostgresDecisionLog(postgres_url)
    key = ed25519.Ed25519PrivateKey.generate()
    stop = threading.Event()
    appended: list[str] = []
    errors: list[BaseException] = []
    counter = iter(range(1_000_000))
    lock = threading.Lock()

    def writer(log: PostgresDecisionLog, name: str) -> None:
        while not stop.is_set():
            with lock:
                n = next(counter)
            base = RECORDS[n % len(RECORDS)]
            # One second apart, in append order (roughly): a prune cut falls between them.
            record = replace(
                base, decision_id=f"01{name}N{n:06d}", decision=replace(base.decision, evaluated_at=NOW + timedelta(seconds=n))
            )
            try:
                log.append(record)
                appended.append(record.decision_id)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=writer, args=(log, f"R{r}")) for r, log in enumerate(replicas)]
    for thread in threads:
        thread.start()
    checkpoints, removed = [], 0
    try:
        for round_ in range(2):
            while len(appended) < 150 * (round_ + 1):
                stop.wait(0.01)
            checkpoints.append(admin.checkpoint(NOW, key, "w1"))
            removed += admin.prune(NOW + timedelta(seconds=60 * (round_ + 1)), NOW, key, "w1")
            checkpoints.append(admin.checkpoint(NOW, key, "w1"))
        while len(appended) < 400:
            stop.wait(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    with psycopg.connect(postgres_url) as conn:
        rows: dict[int, str] = dict(conn.execute("SELECT seq, hash FROM decisions").fetchall())
        head = conn.execute("SELECT seq, hash FROM chain_head").fetchone()
    for checkpoint in checkpoints[1::2]:  # taken after a prune: their rows are still there
        assert rows[checkpoint.seq] == checkpoint.head_hash  # a committed chain position
    assert head is not None and max(rows) == head[0] and rows[head[0]] == head[1]
    boundary = admin.prune_boundary()
    assert boundary is not None and boundary.seq == min(rows) - 1
    assert removed == boundary.seq and removed >= 100  # both cuts removed a prefix
    report = PostgresDecisionReader(postgres_url).verify(checkpoints, key.public_key())
    assert report.prune_signed and report.records == len(appended) - removed == len(rows)
    assert report.checkpoints_checked >= 2 and report.head_hash == head[1]
    for log in (*replicas, admin):
        log.close()
