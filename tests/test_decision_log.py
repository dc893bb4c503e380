"""The decision log: durable appends, queries, and tamper evidence."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from conftest import ACME, NOW
from keycloak_policy_bridge.context_feed import load_feed
from keycloak_policy_bridge.decision_log import Query, SQLiteDecisionLog, SQLitePolicyStore, UnreadableRecord
from keycloak_policy_bridge.decision_log.chain import chain_link
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.errors import ChainError, DecisionLogError, DecisionNotFoundError
from keycloak_policy_bridge.policy import load_policy
from keycloak_policy_bridge.record import DecisionRecord, Masker, build_record, decode, encode, recorded_feeds, recorded_snapshot
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import load_snapshot

POLICY = load_policy(ACME / "policy.json")
SNAPSHOT = load_snapshot(ACME / "entitlements")
FEEDS = {"risk": load_feed(ACME / "feeds" / "risk")}
REQUESTS = sorted((ACME / "requests").glob("*.json"))


def record_for(path: Path, n: int, now: datetime = NOW, masker: Masker | None = None) -> DecisionRecord:
    request = parse_request(json.loads(path.read_text()))
    decision = evaluate(POLICY, SNAPSHOT, request, now, FEEDS)
    return build_record(f"01TEST{n:020d}", decision, request, SNAPSHOT, FEEDS, masker=masker)


def readable(records: Iterable[DecisionRecord | UnreadableRecord]) -> list[DecisionRecord]:
    out = []
    for record in records:
        assert isinstance(record, DecisionRecord), record
        out.append(record)
    return out


def at(record: DecisionRecord, decision_id: str, evaluated_at: datetime | None = None) -> DecisionRecord:
    """``record`` under another decision id (and instant)."""
    decision = record.decision if evaluated_at is None else replace(record.decision, evaluated_at=evaluated_at)
    return replace(record, decision_id=decision_id, decision=decision)


@pytest.fixture
def log(tmp_path: Path) -> SQLiteDecisionLog:
    log = SQLiteDecisionLog(tmp_path / "decisions.db")
    SQLitePolicyStore(log.path).store_policy(POLICY.document)
    for n, path in enumerate(REQUESTS):
        log.append(record_for(path, n, NOW + timedelta(minutes=n)))
    return log


def raw(log: SQLiteDecisionLog) -> sqlite3.Connection:
    conn = sqlite3.connect(log.path, isolation_level=None)
    return conn


# -- records and queries ------------------------------------------------------------------------


def test_records_hold_what_replay_needs(log: SQLiteDecisionLog) -> None:
    record = log.get("01TEST00000000000000000001")  # agent-exchange-for-alice
    assert record.schema == "kpb-decision/2"
    assert record == record_for(REQUESTS[1], 1, NOW + timedelta(minutes=1))  # read back as appended
    assert record.decision.claims["act"]["client_id"] == "research-agent"
    assert {i.subject_id for i in record.identities} == {"E1001", "A3001"}
    assert set(record.feeds["risk"].rows) == {"E1001", "A3001"}
    assert record.policy_digest == POLICY.digest and SQLitePolicyStore(log.path, readonly=True).policy(POLICY.digest) == POLICY.document
    rebuilt = evaluate(
        POLICY,
        recorded_snapshot(record),
        parse_request(record.request, validate=False),
        NOW + timedelta(minutes=1),
        recorded_feeds(record),
    )
    assert rebuilt.response(record.decision_id) == record.response()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (Query(effect="deny"), 5),
        (Query(subject="E1001"), 3),
        (Query(subject="a11ce000-0000-4000-8000-000000000001"), 3),  # by Keycloak user id too
        (Query(client="billing-bot"), 2),
        (Query(rule="deny-inactive-principal"), 1),
        (Query(since=NOW + timedelta(minutes=5)), 5),
        (Query(until=NOW + timedelta(minutes=5)), 5),
        (Query(limit=3), 3),
    ],
)
def test_query_filters(log: SQLiteDecisionLog, query: Query, expected: int) -> None:
    assert len(log.query(query)) == expected


def test_live_tokens_are_permits_within_their_lifetime(log: SQLiteDecisionLog) -> None:
    live = readable(log.live(NOW + timedelta(minutes=30)))
    assert {r.client_id for r in live} == {"acme-web"}  # billing-bot and the agent: 300 s TTL, over
    assert all(r.effect == "permit" for r in live)
    assert list(log.live(NOW + timedelta(hours=2))) == []


def test_unknown_decision_and_policy(log: SQLiteDecisionLog) -> None:
    with pytest.raises(DecisionNotFoundError, match="no decision '01NOPE'"):
        log.get("01NOPE")
    with pytest.raises(DecisionNotFoundError):
        SQLitePolicyStore(log.path, readonly=True).policy("sha256:" + "0" * 64)


def test_masked_paths_are_keyed_hashes(tmp_path: Path) -> None:
    masker = Masker(("context.ip", "subject.email", "context.missing"), b"secret")
    record = record_for(REQUESTS[2], 1, masker=masker)  # alice-login
    assert record.masked == ("context.ip", "subject.email")  # what was actually hidden
    assert record.request["context"]["ip"] == masker.hash("127.0.0.1") != "127.0.0.1"
    assert record.request["subject"]["email"] == masker.hash("alice@acme.example")
    log = SQLiteDecisionLog(tmp_path / "d.db")
    log.append(record)
    with sqlite3.connect(log.path) as conn:
        stored = b"".join(bytes(blob) for (blob,) in conn.execute("SELECT body FROM decisions UNION ALL SELECT document FROM inputs"))
    assert b"alice@acme.example" not in stored and b"127.0.0.1" not in stored
    assert "alice@acme.example" not in json.dumps(log.document(record.decision_id))  # the recorded identity is masked too


def test_group_commit_under_concurrency(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")
    base = record_for(REQUESTS[2], 0)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        for i in range(100):
            try:
                log.append(at(base, f"01W{w}{i:022d}"))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and log.count() == 400
    assert log.verify().records == 400


def test_group_commit_shares_transactions_and_wakes_every_waiter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")
    base = record_for(REQUESTS[2], 0)
    batches: list[int] = []
    commit = log._commit

    def counting(batch: list[Any]) -> None:
        batches.append(len(batch))
        time.sleep(0.002)  # a slow disk: appends pile up behind the commit in flight
        commit(batch)

    monkeypatch.setattr(log, "_commit", counting)
    hashes: list[str] = []

    def writer(w: int) -> None:
        for i in range(25):
            hashes.append(log.append(at(base, f"01G{w:02d}{i:021d}")))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert len(hashes) == len(set(hashes)) == 400 == sum(batches) == log.count()
    assert len(batches) < 200 and max(batches) > 1  # records shared commits
    assert log.verify().records == 400


def test_the_wal_is_checkpointed_after_commits_not_inside_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from keycloak_policy_bridge.decision_log import sqlite as sqlite_log

    monkeypatch.setattr(sqlite_log, "CHECKPOINT_EVERY_RECORDS", 50)
    log = SQLiteDecisionLog(tmp_path / "d.db")
    assert log._conn is not None and log._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    base = record_for(REQUESTS[2], 0)
    runs: list[int] = []
    checkpoint = log._checkpoint_wal

    def counting() -> None:
        runs.append(log.count())
        checkpoint()

    monkeypatch.setattr(log, "_checkpoint_wal", counting)
    for i in range(600):
        log.append(at(base, f"01C{i:023d}"))
    assert len(runs) == 12  # one per 50 records, after the commit that crossed the mark
    # Checkpointed as it went: the WAL is reused from its start and holds about 50 records' pages
    # (each single-record commit writes ~11 KiB pages), not the 6 MB of all 600.
    assert (tmp_path / "d.db-wal").stat().st_size < 2_000_000
    assert log.verify().records == 600


def test_a_writer_takes_the_hosts_writer_lock_for_its_commit(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")
    record = record_for(REQUESTS[2], 0)
    lock = os.open(tmp_path / "d.db-writer", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another worker's leader is committing
    done = threading.Event()

    def append() -> None:
        log.append(record)
        done.set()

    appender = threading.Thread(target=append)
    appender.start()
    assert not done.wait(0.3)  # waits its turn
    fcntl.flock(lock, fcntl.LOCK_UN)
    assert done.wait(10)
    appender.join()
    os.close(lock)
    assert log.count() == 1


def _append_from_process(path: str, worker: int, n: int) -> None:
    log = SQLiteDecisionLog(Path(path))
    base = record_for(REQUESTS[2], 0)
    for i in range(n):
        log.append(at(base, f"01P{worker:02d}{i:021d}"))
    log.close()


def test_workers_in_several_processes_append_to_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    SQLiteDecisionLog(path).close()
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_append_from_process, args=(str(path), w, 60)) for w in range(3)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    log = SQLiteDecisionLog(path, readonly=True)
    assert log.count() == 180 and log.verify().records == 180


def test_a_failed_write_raises_and_records_nothing(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")
    record = record_for(REQUESTS[2], 0)
    log.append(record)
    with pytest.raises(DecisionLogError, match="the decision was not recorded"):
        log.append(record)  # same decision id: the insert fails
    log.close()
    with pytest.raises(DecisionLogError, match="the decision was not recorded"):
        log.append(at(record, "01OTHER"))
    assert SQLiteDecisionLog(tmp_path / "d.db").count() == 1


def test_a_corrupt_database_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DecisionLogError, match="cannot open the decision log"):
        SQLiteDecisionLog(path)


# -- tamper evidence -----------------------------------------------------------------------------


def test_an_untouched_log_verifies(log: SQLiteDecisionLog) -> None:
    report = log.verify()
    assert (report.records, report.first_seq, report.last_seq) == (len(REQUESTS), 1, len(REQUESTS))


def tamper_body(conn: sqlite3.Connection) -> None:
    body = decode(conn.execute("SELECT body FROM decisions WHERE seq = 4").fetchone()[0])
    body["result"]["claims"]["roles"].append("crm:admin")
    conn.execute("UPDATE decisions SET body = ? WHERE seq = 4", (encode(body),))


def tamper_column(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE decisions SET effect = 'permit' WHERE seq = 5")


def delete_middle(conn: sqlite3.Connection) -> None:
    conn.execute("DELETE FROM decisions WHERE seq = 4")


def insert_forged(conn: sqlite3.Connection) -> None:
    row = conn.execute("SELECT * FROM decisions WHERE seq = 4").fetchone()
    conn.execute("UPDATE decisions SET seq = seq + 100 WHERE seq >= 5")
    conn.execute("INSERT INTO decisions VALUES (5,?,?,?,?,?,?,?,?,?,?,?,?)", ("01FORGED", *row[2:]))


def reorder(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE decisions SET seq = 1000 WHERE seq = 3")
    conn.execute("UPDATE decisions SET seq = 3 WHERE seq = 4")
    conn.execute("UPDATE decisions SET seq = 4 WHERE seq = 1000")


@pytest.mark.parametrize(
    ("tamper", "first_bad", "code"),
    [
        (tamper_body, "record seq 4", "chain_hash"),
        (tamper_column, "record seq 5", "chain_hash"),
        (delete_middle, "record seq 5", "chain_gap"),
        (insert_forged, "record seq 5", "chain_link"),
        (reorder, "record seq 3", "chain_link"),
    ],
)
def test_verify_names_the_first_bad_record(log: SQLiteDecisionLog, tamper: Any, first_bad: str, code: str) -> None:
    with raw(log) as conn:
        tamper(conn)
    with pytest.raises(ChainError) as err:
        log.verify()
    assert err.value.message.startswith(first_bad) and err.value.issues[0].code == code


def test_a_consistently_rewritten_tail_is_caught_by_a_checkpoint(log: SQLiteDecisionLog) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    checkpoint = log.checkpoint(NOW, key, "witness-1")
    assert log.verify([checkpoint], key.public_key()).checkpoints_checked == 1
    # rewrite the last record and recompute its hash: the chain alone still holds
    with raw(log) as conn:
        seq, blob, prev = conn.execute("SELECT seq, body, prev_hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()
        body = decode(blob)
        body["result"]["reasons"] = []
        new = encode(body)
        columns = tuple(
            conn.execute(
                "SELECT decision_id, evaluated_at, subject_id, keycloak_user_id, client_id, effect, rules, "
                "policy_digest, token_expires_at FROM decisions WHERE seq = ?",
                (seq,),
            ).fetchone()
        )
        conn.execute("UPDATE decisions SET body = ?, hash = ? WHERE seq = ?", (new, chain_link(prev, columns, new), seq))
    assert log.verify().records == len(REQUESTS)
    with pytest.raises(ChainError, match="checkpoint at seq 10: head hash differs"):
        log.verify([checkpoint], key.public_key())


def test_deleting_the_tail_is_caught_by_a_checkpoint(log: SQLiteDecisionLog) -> None:
    checkpoint = log.checkpoint(NOW, None)
    with raw(log) as conn:
        conn.execute("DELETE FROM decisions WHERE seq >= 9")
    log.verify()  # the shortened chain is internally consistent
    with pytest.raises(ChainError, match="records were deleted from the end"):
        log.verify([checkpoint])


def test_a_forged_checkpoint_signature_fails(log: SQLiteDecisionLog) -> None:
    from dataclasses import replace

    key = ed25519.Ed25519PrivateKey.generate()
    checkpoint = log.checkpoint(NOW, key, "witness-1")
    forged = replace(checkpoint, signature=log.checkpoint(NOW, ed25519.Ed25519PrivateKey.generate()).signature)
    with pytest.raises(ChainError, match="signature does not verify"):
        log.verify([forged], key.public_key())


def test_prune_keeps_the_rest_verifiable(log: SQLiteDecisionLog) -> None:
    removed = log.prune(NOW + timedelta(minutes=4), NOW + timedelta(days=1))
    assert removed == 4 and log.count() == len(REQUESTS) - 4
    report = log.verify()
    assert report.first_seq == 5 and report.records == len(REQUESTS) - 4
    log.append(record_for(REQUESTS[0], 99))  # the chain continues from the cut
    assert log.verify().records == len(REQUESTS) - 3
    with raw(log) as conn:
        conn.execute("DELETE FROM decisions WHERE seq = 5")
    with pytest.raises(ChainError, match="record seq 6"):
        log.verify()


def test_timestamps_sort_as_time_in_queries(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")
    base = record_for(REQUESTS[2], 0)
    log.append(at(base, "01A", datetime(2026, 11, 28, 8, 0, 0, 500000, tzinfo=UTC)))
    log.append(at(base, "01B", datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC)))
    since = datetime(2026, 11, 28, 8, 0, 0, 250000, tzinfo=UTC)
    assert [r.decision_id for r in log.query(Query(since=since))] == ["01A"]


def test_readonly_open_never_creates_or_alters_a_file(tmp_path: Path, log: SQLiteDecisionLog) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(DecisionLogError):
        SQLiteDecisionLog(empty, readonly=True)
    assert empty.stat().st_size == 0
    with pytest.raises(DecisionLogError, match="no decision log there"):
        SQLiteDecisionLog(tmp_path / "nodir" / "x.db", readonly=True)
    assert not (tmp_path / "nodir").exists()
    reader = SQLiteDecisionLog(log.path, readonly=True)
    assert reader.count() == len(REQUESTS) and reader.verify().records == len(REQUESTS)


def test_a_rewritten_stored_policy_is_caught(log: SQLiteDecisionLog) -> None:
    with raw(log) as conn:
        conn.execute("UPDATE policies SET document = ?", (json.dumps({**POLICY.document, "version": "forged"}).encode(),))
    with pytest.raises(ChainError) as err:
        log.verify()
    assert err.value.issues[0].code == "policy_modified"


def test_a_text_edit_of_a_body_is_tampering_not_a_crash(log: SQLiteDecisionLog) -> None:
    """A text function turns the stored BLOB into TEXT, here not even valid UTF-8."""
    with raw(log) as conn:
        conn.execute("UPDATE decisions SET body = CAST(body AS TEXT) || 'x' WHERE seq = 3")
        assert conn.execute("SELECT typeof(body) FROM decisions WHERE seq = 3").fetchone()[0] == "text"
    with pytest.raises(ChainError, match="record seq 3") as err:
        log.verify()
    assert err.value.issues[0].code == "chain_hash"
    with pytest.raises(DecisionLogError, match=r"decision 01TEST00000000000000000002 cannot be read \(the stored record cannot be read"):
        log.get("01TEST00000000000000000002")


def test_an_unsigned_checkpoint_fails_when_a_key_is_given(log: SQLiteDecisionLog) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(ChainError, match="not signed"):
        log.verify([log.checkpoint(NOW, None)], key.public_key())


def test_appends_after_pruning_everything_continue_the_chain(log: SQLiteDecisionLog) -> None:
    assert log.prune(NOW + timedelta(days=1), NOW + timedelta(days=2)) == len(REQUESTS)
    log.append(record_for(REQUESTS[0], 500))
    report = log.verify()
    assert (report.records, report.first_seq) == (1, len(REQUESTS) + 1)


def test_rule_filter_is_exact(log: SQLiteDecisionLog) -> None:
    assert log.query(Query(rule="kpb_delegation")) == []
    assert len(log.query(Query(rule="kpb:delegation"))) == 2


def test_live_excludes_decisions_after_now(log: SQLiteDecisionLog) -> None:
    live = readable(log.live(NOW + timedelta(minutes=2, seconds=30)))
    assert {r.decision_id for r in live} <= {f"01TEST{n:020d}" for n in range(3)}


def test_one_bad_record_does_not_refuse_its_batch_mates(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")
    base = record_for(REQUESTS[2], 0)
    log.append(base)
    outcomes: dict[str, str] = {}

    def append(decision_id: str) -> None:
        try:
            log.append(at(base, decision_id))
            outcomes[decision_id] = "ok"
        except DecisionLogError:
            outcomes[decision_id] = "refused"

    threads = [threading.Thread(target=append, args=(i,)) for i in [base.decision_id] + [f"01N{i:023d}" for i in range(19)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes[base.decision_id] == "refused"
    assert sum(v == "ok" for v in outcomes.values()) == 19 and log.verify().records == 20


@pytest.mark.parametrize(("setting", "pragma"), [("full", 2), ("normal", 1)])
def test_the_durability_setting_reaches_sqlite(tmp_path: Path, setting: str, pragma: int) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db", synchronous=setting)
    assert log._conn is not None and log._conn.execute("PRAGMA synchronous").fetchone()[0] == pragma
    log.close()


def test_an_unknown_durability_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DecisionLogError, match="synchronous must be full or normal"):
        SQLiteDecisionLog(tmp_path / "d.db", synchronous="off")
    assert not (tmp_path / "d.db").exists()


def test_sortable_time_is_the_strftime_text_the_stored_columns_hold() -> None:
    """Columns are hashed into the chain: the fast formatting must give the old text exactly."""
    from datetime import timezone

    from keycloak_policy_bridge.decision_log.chain import sortable

    rng = random.Random(20261203)
    for _ in range(5000):
        moment = datetime(1, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(9998 * 365 * 86400 * 10**6))
        if rng.random() < 0.3:
            moment = moment.replace(microsecond=0)
        if rng.random() < 0.3 and moment.year > 1:
            moment = moment.astimezone(timezone(timedelta(hours=rng.randrange(-12, 13))))
        assert sortable(moment) == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
