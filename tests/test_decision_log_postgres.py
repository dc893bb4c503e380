"""What the PostgreSQL backend adds to the storage contracts (``test_decision_log_contract`` runs
those on it): one hash chain with many writers, schema versions, and a database that goes away.

Every test runs against a real PostgreSQL server (``conftest.postgres_server``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from keycloak_policy_bridge.decision_log import Nonce, Query, SQLiteDecisionLog
from keycloak_policy_bridge.decision_log.chain import GENESIS, RecordColumns, chain_link
from keycloak_policy_bridge.decision_log.postgres import PostgresDecisionLog
from keycloak_policy_bridge.decision_log.postgres_policies import PostgresPolicyStore
from keycloak_policy_bridge.decision_log.postgres_schema import SCHEMA_VERSION
from keycloak_policy_bridge.errors import AuthenticationError, DecisionLogError
from postgres_server import PostgresServer
from test_decision_log_contract import KEYS, RECORDS

REPLICAS, THREADS, PER_THREAD = 2, 4, 50


def stored_chain(url: str) -> list[tuple[int, RecordColumns, bytes, str, str]]:
    """Every row as stored, in seq order: (seq, columns, body, prev_hash, hash)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT seq, {', '.join(RecordColumns.NAMES)}, body, prev_hash, hash FROM decisions ORDER BY seq").fetchall()
    return [(row[0], RecordColumns(*row[1:10]), bytes(row[10]), row[11], row[12]) for row in rows]


def test_replicas_appending_at_once_make_one_unbroken_chain(postgres_url: str) -> None:
    replicas = [PostgresDecisionLog(postgres_url) for _ in range(REPLICAS)]
    returned: dict[str, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(REPLICAS * THREADS)

    def writer(log: PostgresDecisionLog, name: str) -> None:
        start.wait()
        for n in range(PER_THREAD):
            record = replace(RECORDS[n % len(RECORDS)], decision_id=f"01{name}N{n:04d}")
            try:
                returned[record.decision_id] = log.append(record)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(log, f"R{r}T{t}")) for r, log in enumerate(replicas) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    total = REPLICAS * THREADS * PER_THREAD
    assert all(log.count() == total for log in replicas) and len(returned) == total

    chain = stored_chain(postgres_url)
    assert [seq for seq, *_ in chain] == list(range(1, total + 1))  # no gap, no duplicate seq
    prev = GENESIS
    for _, columns, body, prev_hash, h in chain:
        assert prev_hash == prev and chain_link(prev, columns.values(), body) == h  # one chain, recomputed
        assert returned[columns.decision_id] == h  # each append returned its own row's hash
        prev = h
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT seq, hash FROM chain_head").fetchone() == (total, prev)
    for log in replicas:
        assert log.get(chain[-1][1].decision_id).decision_id == chain[-1][1].decision_id
        log.close()


def test_a_nonce_is_accepted_once_across_replicas(postgres_url: str) -> None:
    replicas = [PostgresDecisionLog(postgres_url) for _ in range(REPLICAS)]
    nonce = Nonce(b"\x09" * 32, expires_at=2_000_000_300, now=2_000_000_000)
    outcomes: list[str] = []
    start = threading.Barrier(REPLICAS * THREADS)

    def attempt(log: PostgresDecisionLog, n: int) -> None:
        start.wait()
        try:
            log.append(replace(RECORDS[0], decision_id=f"01REPLAY{n:04d}"), nonce)
            outcomes.append("recorded")
        except AuthenticationError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=attempt, args=(log, r * THREADS + t)) for r, log in enumerate(replicas) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(outcomes) == {"recorded": 1, "replayed_signature": REPLICAS * THREADS - 1}
    assert [log.count() for log in replicas] == [1] * REPLICAS
    for log in replicas:
        log.close()


def test_a_database_newer_than_the_code_is_refused(postgres_url: str) -> None:
    PostgresDecisionLog(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE kpb_schema SET version = %s", (SCHEMA_VERSION + 1,))
    message = f"schema is version {SCHEMA_VERSION + 1}, newer than this bridge's version {SCHEMA_VERSION}"
    with pytest.raises(DecisionLogError, match=message):
        PostgresDecisionLog(postgres_url)
    with pytest.raises(DecisionLogError, match=message):
        PostgresPolicyStore(postgres_url, KEYS)


def test_the_schema_is_created_once_by_replicas_starting_together(postgres_url: str) -> None:
    opened: list[PostgresDecisionLog] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened.append(PostgresDecisionLog(postgres_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(opened) == 4
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM kpb_schema").fetchall() == [(SCHEMA_VERSION,)]
        assert conn.execute("SELECT count(*) FROM meta WHERE key = 'log_id'").fetchone() == (1,)
    for log in opened:
        log.close()


def test_an_unreachable_database_fails_appends_and_they_recover(own_postgres: PostgresServer) -> None:
    server = own_postgres
    log = PostgresDecisionLog(server.url)
    log.append(RECORDS[0])
    assert log.writable()
    server.stop()
    for record in RECORDS[1:3]:  # a broken pooled connection, then no connection at all
        with pytest.raises(DecisionLogError, match="the decision was not recorded"):
            log.append(record)
    assert not log.writable()
    server.start()
    assert log.append(RECORDS[3])  # no restart of the bridge needed
    assert log.writable()
    assert [r.decision_id for r in log.iterate(Query(limit=None))] == [RECORDS[0].decision_id, RECORDS[3].decision_id]
    log.close()


def test_the_first_append_after_a_database_restart_reconnects_instead_of_failing(own_postgres: PostgresServer) -> None:
    """The writer's idle connection is ended by the restart; the next commit notices (the server's
    termination notice is waiting on the socket) and reconnects: no decision is refused for it."""
    log = PostgresDecisionLog(own_postgres.url)
    log.append(RECORDS[0])
    own_postgres.stop()
    own_postgres.start()
    assert log.append(RECORDS[1])
    assert [r.decision_id for r in log.iterate(Query(limit=None))] == [RECORDS[0].decision_id, RECORDS[1].decision_id]
    log.close()


def test_no_server_at_all_is_a_decision_log_error(tmp_path: Path) -> None:
    closed_port = PostgresServer(tmp_path / "never-started").port  # a free port nobody listens on
    with pytest.raises(DecisionLogError, match=f"postgresql://127.0.0.1:{closed_port}/postgres: cannot open the decision log") as err:
        PostgresDecisionLog(f"postgresql://postgres:secret@127.0.0.1:{closed_port}/postgres", timeout=1.0)
    assert "secret" not in str(err.value)


def test_rows_are_stored_as_in_sqlite(postgres_url: str, tmp_path: Path) -> None:
    """Same bodies, columns and chain hashes: a SQLite log can be copied row for row, and
    checked by the same chain code."""
    log, sqlite_log = PostgresDecisionLog(postgres_url), SQLiteDecisionLog(tmp_path / "d.db")
    assert [log.append(r) for r in RECORDS] == [sqlite_log.append(r) for r in RECORDS]
    with sqlite3.connect(tmp_path / "d.db") as conn:
        sqlite_rows = conn.execute(
            f"SELECT seq, {', '.join(RecordColumns.NAMES)}, body, prev_hash, hash FROM decisions ORDER BY seq"
        ).fetchall()
    assert [(seq, columns.values(), body, prev, h) for seq, columns, body, prev, h in stored_chain(postgres_url)] == [
        (row[0], tuple(row[1:10]), row[10], row[11], row[12]) for row in sqlite_rows
    ]
    with sqlite3.connect(tmp_path / "d.db") as conn, psycopg.connect(postgres_url) as pg:
        assert sorted(conn.execute("SELECT ref, document FROM inputs")) == sorted(
            (r, bytes(d)) for r, d in pg.execute("SELECT ref, document FROM inputs")
        )
    log.close()
    sqlite_log.close()
