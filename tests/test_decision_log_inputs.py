"""Recorded inputs in the SQLite log: stored once, checked by ``verify``, collected by ``prune``."""

from __future__ import annotations

import json
import sqlite3
import zlib
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import ACME, NOW
from keycloak_policy_bridge.context_feed import load_feed
from keycloak_policy_bridge.decision_log import Nonce, Query, SQLiteDecisionLog, UnreadableRecord
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.errors import AuthenticationError, ChainError
from keycloak_policy_bridge.policy import load_policy
from keycloak_policy_bridge.record import DecisionRecord, build_record, decode, encode, to_document
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import load_snapshot

POLICY = load_policy(ACME / "policy.json")
FEEDS = {"risk": load_feed(ACME / "feeds" / "risk")}
SNAPSHOT = load_snapshot(ACME / "entitlements")


def record_of(name: str, decision_id: str, now: datetime = NOW) -> DecisionRecord:
    request = parse_request(json.loads((ACME / "requests" / f"{name}.json").read_text()))
    return build_record(decision_id, evaluate(POLICY, SNAPSHOT, request, now, FEEDS), request, SNAPSHOT, FEEDS)


ALICE = record_of("alice-login", "01ALICE")
BOB = record_of("bob-login", "01BOB")


def refs_of(record: DecisionRecord) -> set[str]:
    return set(to_document(record)[1])


def stored_refs(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {ref for (ref,) in conn.execute("SELECT ref FROM inputs")}


def again(record: DecisionRecord, n: int, minutes: int = 0) -> DecisionRecord:
    return replace(
        record, decision_id=f"{record.decision_id}-{n}", decision=replace(record.decision, evaluated_at=NOW + timedelta(minutes=minutes))
    )


def test_a_subjects_identity_is_stored_once(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")
    inserts: list[str] = []
    assert log._conn is not None
    log._conn.set_trace_callback(lambda sql: inserts.append(sql) if "INTO inputs" in sql else None)
    for n in range(100):
        log.append(again(ALICE, n, minutes=n))
    assert len(refs_of(ALICE)) == 2  # alice's identity and her risk feed row
    assert stored_refs(log.path) == refs_of(ALICE)
    assert len(inserts) == 2  # one per input, in the first commit; known to be stored after it, never sent again
    other = SQLiteDecisionLog(log.path)  # another process: sends them once, ignored
    other.append(again(ALICE, 100))
    assert stored_refs(log.path) == refs_of(ALICE) and log.verify().inputs == 2


def test_inputs_of_a_refused_append_are_not_taken_as_stored(tmp_path: Path) -> None:
    """The transaction that would have stored bob's inputs rolled back: the next append sends them."""
    log = SQLiteDecisionLog(tmp_path / "d.db")
    nonce = Nonce(b"\x01" * 32, expires_at=2_000_000_300, now=2_000_000_000)
    log.append(ALICE, nonce)
    with pytest.raises(AuthenticationError):
        log.append(BOB, nonce)  # a replay: nothing recorded
    assert stored_refs(log.path) == refs_of(ALICE)
    log.append(BOB)
    assert stored_refs(log.path) == refs_of(ALICE) | refs_of(BOB)
    assert log.verify().records == 2


def test_a_modified_input_is_named_by_verify(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")
    log.append(ALICE)
    ref = to_document(ALICE)[0]["identities"][0]
    with sqlite3.connect(log.path) as conn:
        document = decode(conn.execute("SELECT document FROM inputs WHERE ref = ?", (ref,)).fetchone()[0])
        document["records"][0]["value"] = "crm:admin"
        conn.execute("UPDATE inputs SET document = ? WHERE ref = ?", (encode(document), ref))
    with pytest.raises(ChainError, match=f"recorded input {ref[:16]}: its document no longer matches its reference") as err:
        log.verify()
    assert err.value.issues[0].code == "input_modified"


def test_a_damaged_input_is_named_by_verify(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")
    log.append(ALICE)
    with sqlite3.connect(log.path) as conn:
        conn.execute("UPDATE inputs SET document = x'02ff00'")
    with pytest.raises(ChainError) as err:
        log.verify()
    assert err.value.issues[0].code == "input_modified"


def test_a_deleted_input_is_named_by_verify_with_the_first_record_needing_it(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")
    log.append(BOB)
    log.append(ALICE)
    log.append(again(ALICE, 1))
    ref = to_document(ALICE)[0]["identities"][0]
    with sqlite3.connect(log.path) as conn:
        conn.execute("DELETE FROM inputs WHERE ref = ?", (ref,))
    with pytest.raises(ChainError, match=f"record seq 2 \\(decision 01ALICE\\): its recorded input {ref[:16]} is not stored") as err:
        log.verify()
    assert err.value.issues[0].code == "input_missing"


def test_prune_collects_the_inputs_no_remaining_record_references(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")
    other = SQLiteDecisionLog(log.path)  # another process, which knows alice's inputs are stored
    other.append(again(ALICE, 0, minutes=0))
    log.append(again(ALICE, 1, minutes=1))
    log.append(again(BOB, 2, minutes=2))
    assert log.prune(NOW + timedelta(minutes=2), NOW + timedelta(days=1)) == 2
    assert stored_refs(log.path) == refs_of(BOB)  # alice's identity went with her last record
    assert log.verify().inputs == len(refs_of(BOB))
    # Both processes learnt of the collection: each sends alice's inputs again.
    other.append(again(ALICE, 3, minutes=3))
    log.append(again(ALICE, 4, minutes=4))
    assert stored_refs(log.path) == refs_of(ALICE) | refs_of(BOB)
    assert log.verify().records == 3
    assert log.get(f"{ALICE.decision_id}-3") == again(ALICE, 3, minutes=3)


def test_a_record_without_inputs_needs_none(tmp_path: Path) -> None:
    erin = record_of("erin-login", "01ERIN")  # unknown: joined nothing, read no feed row
    log = SQLiteDecisionLog(tmp_path / "d.db")
    log.append(erin)
    assert stored_refs(log.path) == set() and log.get("01ERIN") == erin and log.verify().inputs == 0


def test_a_record_appended_while_prune_reads_keeps_its_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prune reads the remaining records without the write lock; a record appended meanwhile (by
    a process that knows its inputs are stored, so sends none) is read under the lock."""
    from keycloak_policy_bridge.decision_log import retention

    log = SQLiteDecisionLog(tmp_path / "d.db")
    other = SQLiteDecisionLog(log.path)
    other.append(again(ALICE, 0, minutes=0))  # the only record referencing alice's inputs, pruned below
    log.append(again(BOB, 1, minutes=1))
    plan = retention.plan

    def plan_then_append(conn: sqlite3.Connection, before: datetime) -> retention.PrunePlan:
        planned = plan(conn, before)
        other.append(again(ALICE, 2, minutes=2))  # references alice's inputs; nothing sent
        return planned

    monkeypatch.setattr(retention, "plan", plan_then_append)
    assert log.prune(NOW + timedelta(minutes=1), NOW + timedelta(days=1)) == 1
    assert stored_refs(log.path) == refs_of(ALICE) | refs_of(BOB)
    assert log.verify().records == 2


def test_the_refs_verify_reads_from_stored_bytes_are_the_documents() -> None:
    """``verify`` and ``prune`` read a record's refs without parsing all of it; the same refs."""
    from keycloak_policy_bridge.record import Masker
    from keycloak_policy_bridge.record.codec import _DICTIONARY, RecordFormatError, input_refs, stored_input_refs

    masker = Masker(("subject.email", "context.ip"), b"k" * 32)
    for path in sorted((ACME / "requests").glob("*.json")):
        request = parse_request(json.loads(path.read_text()))
        decision = evaluate(POLICY, SNAPSHOT, request, NOW, FEEDS)
        for record in (
            build_record("01R", decision, request, SNAPSHOT, FEEDS),
            build_record("01R", decision, request, SNAPSHOT, FEEDS, masker=masker),
        ):
            document, inputs = to_document(record)
            assert stored_input_refs(encode(document)) == input_refs(document) and set(input_refs(document)) == set(inputs)
    document = to_document(ALICE)[0]
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=_DICTIONARY)
    spaced = json.dumps({"result": document["result"], **document}).encode()  # not compact, not sorted: read whole
    assert stored_input_refs(b"\x02" + deflate.compress(spaced) + deflate.flush()) == input_refs(document)
    with pytest.raises(RecordFormatError):
        stored_input_refs(encode(document)[:-5])  # cut short
    assert stored_input_refs(json.dumps({"schema": "kpb-decision/1"}).encode()) == ()


def test_a_body_in_no_known_format_is_named_by_verify_even_with_its_hash_recomputed(tmp_path: Path) -> None:
    """A rewrite that recomputes the chain over bytes nothing can read is reported, not passed."""
    from keycloak_policy_bridge.decision_log.chain import chain_link

    log = SQLiteDecisionLog(tmp_path / "d.db")
    log.append(ALICE)
    log.close()
    with sqlite3.connect(tmp_path / "d.db") as conn:
        row = conn.execute(
            "SELECT seq, decision_id, evaluated_at, subject_id, keycloak_user_id, client_id, effect, rules, policy_digest, "
            "token_expires_at, CAST(body AS BLOB), prev_hash FROM decisions"
        ).fetchone()
        body = b"\x03" + bytes(row[10])[1:]
        conn.execute("UPDATE decisions SET body = ?, hash = ? WHERE seq = ?", (body, chain_link(row[11], tuple(row[1:10]), body), row[0]))
    with pytest.raises(ChainError) as caught:
        SQLiteDecisionLog(tmp_path / "d.db", readonly=True).verify()
    assert [i.code for i in caught.value.issues] == ["record_unreadable"]
    assert "decision 01ALICE" in caught.value.message


def _traced_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements the log's readers run from now on."""
    import keycloak_policy_bridge.decision_log.sqlite_reader as reader_module
    from keycloak_policy_bridge.decision_log.sqlitefile import connect_reader as connect

    statements: list[str] = []

    def traced(path: Path, probe: str) -> sqlite3.Connection:
        conn = connect(path, probe)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(reader_module, "connect_reader", traced)
    return statements


def test_a_stream_reads_the_inputs_a_batch_lacks_with_one_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: not one query per input. Records read together also share their decoded inputs,
    and read exactly as records read one at a time."""
    log = SQLiteDecisionLog(tmp_path / "d.db")
    names = ["alice-login", "bob-login", "dave-login", "agent-exchange-for-alice", "billing-bot-client-credentials"]
    written = [again(record_of(name, f"01{name.upper()}"), n, minutes=n) for n in range(3) for name in names]
    for record in written:
        log.append(record)
    statements = _traced_reads(monkeypatch)
    streamed = list(SQLiteDecisionLog(log.path).iterate(Query()))
    assert streamed == written
    assert len([s for s in statements if "FROM inputs" in s]) == 1
    assert len({ref for record in written for ref in refs_of(record)}) > 5  # more inputs than the one query
    alice = [r for r in streamed if isinstance(r, DecisionRecord) and r.decision_id.startswith("01ALICE-LOGIN")]
    assert len(alice) == 3 and alice[0].identities is alice[1].identities is alice[2].identities
    fresh = SQLiteDecisionLog(log.path)
    assert [fresh.get(r.decision_id) for r in written] == written


def test_a_batch_missing_an_input_still_reads_the_others(tmp_path: Path) -> None:
    """An input deleted from under a batch fails the records that need it, and only those."""
    log = SQLiteDecisionLog(tmp_path / "d.db")
    for record in (again(ALICE, 0), again(BOB, 1), again(ALICE, 2)):
        log.append(record)
    ref = to_document(ALICE)[0]["identities"][0]
    with sqlite3.connect(log.path) as conn:
        conn.execute("DELETE FROM inputs WHERE ref = ?", (ref,))
    streamed = list(SQLiteDecisionLog(log.path).iterate(Query()))
    assert [type(r).__name__ for r in streamed] == ["UnreadableRecord", "DecisionRecord", "UnreadableRecord"]
    assert streamed[1] == again(BOB, 1)
    assert all(f"recorded input {ref} is missing" in r.reason for r in streamed if isinstance(r, UnreadableRecord))
