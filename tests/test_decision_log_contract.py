"""The storage interfaces' contracts, run against every implementation (SQLite, in memory).

What ``Bridge``, replay, drift and the admin API rely on (``decision_log.interfaces``): a record
reads back equal to what was appended, queries filter and order alike, a duplicate decision or a
replayed nonce is refused with nothing recorded, an unreadable record is reported rather than
crashing a stream, and activations are sealed and checked alike.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from conftest import ACME, NOW
from keycloak_policy_bridge.context_feed import load_feed
from keycloak_policy_bridge.decision_log import (
    Activation,
    ActivationKeys,
    DecisionLog,
    InMemoryDecisionLog,
    InMemoryPolicyStore,
    Nonce,
    PolicyStore,
    Query,
    SQLiteDecisionLog,
    SQLitePolicyStore,
    UnreadableRecord,
)
from keycloak_policy_bridge.decision_log.postgres import PostgresDecisionLog
from keycloak_policy_bridge.decision_log.postgres_policies import PostgresPolicyStore
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.errors import AuthenticationError, DecisionLogError, DecisionNotFoundError
from keycloak_policy_bridge.policy import load_policy
from keycloak_policy_bridge.record import DecisionRecord, Masker, build_record
from keycloak_policy_bridge.record.inputs import input_ref
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import load_snapshot

POLICY = load_policy(ACME / "policy.json")
SNAPSHOT = load_snapshot(ACME / "entitlements")
FEEDS = {"risk": load_feed(ACME / "feeds" / "risk")}
REQUESTS = sorted((ACME / "requests").glob("*.json"))
KEYS = ActivationKeys((("k1", bytes(range(32))),))
MASKER = Masker(("subject.email", "context.ip"), b"contract mask key")


def record_for(n: int, now: datetime = NOW, masker: Masker | None = None) -> DecisionRecord:
    request = parse_request(json.loads(REQUESTS[n % len(REQUESTS)].read_text()))
    decision = evaluate(POLICY, SNAPSHOT, request, now, FEEDS)
    return build_record(f"01CONTRACT{n:016d}", decision, request, SNAPSHOT, FEEDS, masker=masker, token_ttl_seconds=900)


RECORDS = [record_for(n, NOW + timedelta(minutes=n), MASKER if n % 2 else None) for n in range(len(REQUESTS))]


def damage_inputs(log: DecisionLog) -> None:
    """Delete every stored input, as someone with the storage would."""
    if isinstance(log, SQLiteDecisionLog):
        with sqlite3.connect(log.path) as conn:
            conn.execute("DELETE FROM inputs")
        log._cache = type(log._cache)()  # this process's cache would still answer
    elif isinstance(log, PostgresDecisionLog):
        with psycopg.connect(log.url, autocommit=True) as conn:
            conn.execute("DELETE FROM inputs")
        log._cache = type(log._cache)()
    else:
        assert isinstance(log, InMemoryDecisionLog)
        log._inputs.clear()


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[DecisionLog, PolicyStore]]:
    if request.param == "sqlite":
        log = SQLiteDecisionLog(tmp_path / "decisions.db")
        policies = SQLitePolicyStore(tmp_path / "decisions.db", activation_keys=KEYS)
        yield log, policies
        log.close()
        policies.close()
    elif request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        pg_log, pg_policies = PostgresDecisionLog(url), PostgresPolicyStore(url, activation_keys=KEYS)
        yield pg_log, pg_policies
        pg_log.close()
        pg_policies.close()
    else:
        yield InMemoryDecisionLog(), InMemoryPolicyStore(activation_keys=KEYS)


@pytest.fixture
def log(backend: tuple[DecisionLog, PolicyStore]) -> DecisionLog:
    log = backend[0]
    for record in RECORDS:
        log.append(record)
    return log


# -- the decision log -------------------------------------------------------------------------


def test_a_record_reads_back_as_appended(log: DecisionLog) -> None:
    for record in RECORDS:
        assert log.get(record.decision_id) == record
        assert log.get(record.decision_id).response() == record.response()
    assert log.count() == len(RECORDS)
    with pytest.raises(DecisionNotFoundError):
        log.get("01NOPE")


def test_the_stored_document_carries_its_inputs(log: DecisionLog) -> None:
    document = log.document(RECORDS[1].decision_id)  # agent-exchange-for-alice, masked
    assert document["schema"] == "kpb-decision/2" and document["decision_id"] == RECORDS[1].decision_id
    assert set(document["inputs"]) == set(document["identities"]) | {r for rows in document["feeds"]["risk"]["rows"].values() for r in rows}
    assert all(input_ref(doc) == ref for ref, doc in document["inputs"].items())
    assert [d["decision_id"] for d in log.documents(Query(limit=None))] == [r.decision_id for r in RECORDS]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (Query(), len(RECORDS)),
        (Query(effect="deny"), 5),
        (Query(subject="E1001"), 3),
        (Query(subject="a11ce000-0000-4000-8000-000000000001"), 3),  # by Keycloak user id too
        (Query(client="billing-bot"), 2),
        (Query(rule="kpb:delegation"), 2),
        (Query(rule="kpb_delegation"), 0),  # exact, not a pattern
        (Query(since=NOW + timedelta(minutes=5)), 5),
        (Query(until=NOW + timedelta(minutes=2)), 2),
        (Query(subject="E1001", effect="permit", since=NOW + timedelta(minutes=1)), 2),
        (Query(limit=3), 3),
    ],
)
def test_queries_filter_newest_first(log: DecisionLog, query: Query, expected: int) -> None:
    def matches(r: DecisionRecord) -> bool:
        return (
            query.subject in (None, r.subject_id, r.keycloak_user_id)
            and query.client in (None, r.client_id)
            and query.effect in (None, r.effect)
            and (query.rule is None or query.rule in r.rules)
            and (query.since is None or r.evaluated_at >= query.since)
            and (query.until is None or r.evaluated_at < query.until)
        )

    matching = [r.decision_id for r in RECORDS if matches(r)]
    newest = [r.decision_id for r in log.query(query)]
    assert len(newest) == expected and newest == matching[::-1][: query.limit]
    assert [r.decision_id for r in log.iterate(query)] == matching  # oldest first, no limit


def test_live_is_the_permits_whose_token_can_still_be_live(log: DecisionLog) -> None:
    at = NOW + timedelta(minutes=16)  # 900 s tokens (300 s where the policy caps them)
    expected = [r.decision_id for r in RECORDS if r.permitted and r.evaluated_at <= at < r.token_expires_at(timedelta(hours=1))]
    assert [r.decision_id for r in log.live(at)] == expected and len(expected) == 3
    assert list(log.live(NOW - timedelta(seconds=1))) == []  # nothing made after now is live


def test_both_backends_chain_alike(tmp_path: Path) -> None:
    sqlite_log, memory_log = SQLiteDecisionLog(tmp_path / "d.db"), InMemoryDecisionLog()
    assert [sqlite_log.append(r) for r in RECORDS] == [memory_log.append(r) for r in RECORDS]


def test_a_duplicate_decision_is_refused_and_nothing_is_recorded(log: DecisionLog) -> None:
    with pytest.raises(DecisionLogError, match="the decision was not recorded"):
        log.append(RECORDS[0])
    assert log.count() == len(RECORDS)


def test_a_replayed_nonce_is_refused_and_nothing_is_recorded(log: DecisionLog) -> None:
    nonce = Nonce(b"\x07" * 32, expires_at=2_000_000_300, now=2_000_000_000)
    log.append(replace(RECORDS[2], decision_id="01NONCE1"), nonce)
    with pytest.raises(AuthenticationError) as err:
        log.append(replace(RECORDS[2], decision_id="01NONCE2"), nonce)
    assert err.value.reason == "replayed_signature"
    assert log.count() == len(RECORDS) + 1
    with pytest.raises(DecisionNotFoundError):
        log.get("01NONCE2")


def test_a_closed_log_refuses_appends(backend: tuple[DecisionLog, PolicyStore]) -> None:
    log = backend[0]
    assert log.writable()
    log.close()
    assert not log.writable()
    with pytest.raises(DecisionLogError, match="the decision was not recorded"):
        log.append(RECORDS[0])


def test_an_unreadable_record_is_named_and_streams_go_on(log: DecisionLog) -> None:
    damage_inputs(log)  # a record that read any identity or feed row cannot be read now
    streamed = list(log.iterate(Query(limit=None)))
    without_inputs = [r.decision_id for r in RECORDS if not r.identities and not any(f.rows for f in r.feeds.values())]
    assert without_inputs == [RECORDS[8].decision_id]  # erin: unknown, nothing read
    assert [r.decision_id for r in streamed if isinstance(r, DecisionRecord)] == without_inputs
    assert len(streamed) == len(RECORDS)  # the stream went on
    first = streamed[0]
    assert isinstance(first, UnreadableRecord)
    assert first == UnreadableRecord(
        RECORDS[0].decision_id, "2026-11-28T08:00:00Z", RECORDS[0].subject_id, RECORDS[0].client_id, first.reason
    )
    assert "is missing" in first.reason
    assert all(isinstance(r, UnreadableRecord) for r in log.live(NOW + timedelta(minutes=16)))
    with pytest.raises(DecisionLogError, match=f"decision {RECORDS[0].decision_id} cannot be read") as err:
        log.get(RECORDS[0].decision_id)
    assert "alice" not in str(err.value)
    with pytest.raises(DecisionLogError, match=f"decision {RECORDS[4].decision_id}"):  # newest first
        log.query(Query(client="billing-bot"))
    with pytest.raises(DecisionLogError):
        log.document(RECORDS[0].decision_id)


# -- the policy store -------------------------------------------------------------------------


def test_policies_are_stored_once_by_digest(backend: tuple[DecisionLog, PolicyStore]) -> None:
    policies = backend[1]
    assert policies.store_policy(POLICY.document) == POLICY.digest == policies.store_policy(POLICY.document)
    assert policies.policy(POLICY.digest) == POLICY.document
    with pytest.raises(DecisionNotFoundError):
        policies.policy("sha256:" + "0" * 64)


def test_activations_are_sealed_and_checked(backend: tuple[DecisionLog, PolicyStore]) -> None:
    policies = backend[1]
    assert policies.latest_activation() is None and policies.activations() == []
    first = policies.record_activation(POLICY.digest, "v1", "ada", NOW)
    second = policies.record_activation(POLICY.digest, "v2", "ada", NOW + timedelta(minutes=1))
    assert policies.activations() == [second, first] and policies.activations(limit=1) == [second]
    assert policies.latest_activation() == second and second.prev_hash == first.hash
    assert policies.activation_problem(second) is None
    assert second.to_dict() == {"digest": POLICY.digest, "version": "v2", "activated_by": "ada", "activated_at": "2026-11-28T08:01:00Z"}
    assert "modified" in (policies.activation_problem(replace(second, activated_by="mallory")) or "")
    assert "not sealed" in (policies.activation_problem(replace(second, hash=None)) or "")
    forged = Activation(3, POLICY.digest, "v3", "mallory", second.activated_at)
    assert policies.activation_problem(forged) is not None


def test_without_keys_nothing_is_recorded_or_trusted(tmp_path: Path) -> None:
    for policies in (SQLitePolicyStore(tmp_path / "d.db"), InMemoryPolicyStore()):
        with pytest.raises(DecisionLogError, match="without an activation key"):
            policies.record_activation(POLICY.digest, "v1", "ada", datetime(2026, 1, 1, tzinfo=UTC))
        assert policies.activations() == []
