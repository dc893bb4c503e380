"""The re-evaluation toolkit replay, drift and explain share: inputs (recorded or given, masked join
keys undone one way), the recorded policy by digest, compiled once, and one record re-evaluated.

Over the in-memory storage, so these also show that the audit side depends only on the storage
interfaces (``DecisionLogReader``, ``PolicyStore``)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import NOW
from keycloak_policy_bridge.decision_log import InMemoryDecisionLog, InMemoryPolicyStore, Query
from keycloak_policy_bridge.drift import drift
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.errors import DecisionLogError, DecisionNotFoundError, UnresolvableRecordError
from keycloak_policy_bridge.record import DecisionRecord, Masker, build_record, recorded_snapshot
from keycloak_policy_bridge.reevaluate import RECORDED, Inputs, PolicyCache, describe_error, reevaluate
from keycloak_policy_bridge.replay import reproduce
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import load_snapshot
from test_replay import FEEDS, POLICY, SNAPSHOT, email_join_request, load_request, unpin_alice, write_snapshot

MASKER = Masker(("context.ip", "subject.email"), b"mask-key" * 4)


def decided(document: dict[str, Any], n: int, *, snapshot: Any = SNAPSHOT, masker: Masker | None = None) -> DecisionRecord:
    request = parse_request(document)
    decision = evaluate(POLICY, snapshot, request, NOW, FEEDS)
    return build_record(f"01TEST{n:020d}", decision, request, snapshot, FEEDS, masker=masker, token_ttl_seconds=300)


class CountingStore(InMemoryPolicyStore):
    """A policy store that counts its lookups."""

    lookups = 0

    def policy(self, policy_digest: str) -> dict[str, Any]:
        self.lookups += 1
        return super().policy(policy_digest)


def test_recorded_inputs_reproduce_the_decision() -> None:
    record = decided(load_request("alice-login"), 1)
    again = reevaluate(record, POLICY, Inputs(), record.evaluated_at)
    assert again.response(record.decision_id) == record.response()
    assert Inputs().describe_entitlements() == Inputs().describe_feeds() == RECORDED


def test_recorded_inputs_are_rebuilt_once_per_content(monkeypatch: pytest.MonkeyPatch) -> None:
    import keycloak_policy_bridge.reevaluate as module

    built: list[str] = []
    original = recorded_snapshot

    def counting(record: DecisionRecord) -> Any:
        built.append(record.decision_id)
        return original(record)

    monkeypatch.setattr(module, "recorded_snapshot", counting)
    inputs = Inputs()
    first, second = decided(load_request("alice-login"), 1), decided(load_request("alice-login"), 2)
    other = decided(load_request("bob-login"), 3)
    for record in (first, second, other, first):
        reevaluate(record, POLICY, inputs, record.evaluated_at)
    assert built == [first.decision_id, other.decision_id]  # the same identities read: one rebuild


def test_recorded_inputs_shared_by_records_are_found_by_object() -> None:
    """Records read through one log reader share their decoded inputs: the rebuilt snapshot and
    feeds are found by object (issue 13), and a record with equal but distinct inputs still by content."""
    first = decided(load_request("alice-login"), 1)
    shares = replace(first, decision_id="01TEST-shares")  # the same identities, snapshot and feeds objects
    equal = copy.deepcopy(first)
    inputs = Inputs()
    snapshot, feeds = inputs.snapshot(first), inputs.context_feeds(first)
    assert inputs.snapshot(shares) is snapshot and inputs.context_feeds(shares) is feeds
    assert equal.identities is not first.identities and equal.feeds is not first.feeds
    assert inputs.snapshot(equal) is snapshot and inputs.context_feeds(equal) is feeds


def test_given_inputs_are_used_as_given() -> None:
    record = decided(load_request("alice-login"), 1)
    inputs = Inputs(SNAPSHOT, {})
    assert inputs.describe_entitlements() == f"{SNAPSHOT.snapshot_id} ({SNAPSHOT.digest})" and inputs.describe_feeds() == "none"
    assert reevaluate(record, POLICY, inputs, NOW).feeds == {}


def test_a_masked_join_is_undone_only_with_the_key(tmp_path: Path) -> None:
    unpinned = load_snapshot(write_snapshot(tmp_path / "unpinned", change=unpin_alice))
    record = decided(email_join_request(), 1, snapshot=unpinned, masker=MASKER)
    assert record.joined_subject()[0] == "E1001" and record.request["subject"]["email"].startswith("hmac-sha256:")
    # Recorded inputs hold the same keyed hash on both sides: no key needed.
    assert reevaluate(record, POLICY, Inputs(), NOW).principals[0].subject_id == "E1001"
    with pytest.raises(UnresolvableRecordError, match="needs the masking key"):
        reevaluate(record, POLICY, Inputs(unpinned), NOW)
    with pytest.raises(UnresolvableRecordError, match="is not the one subject.email was masked with"):
        reevaluate(record, POLICY, Inputs(unpinned, masker=Masker((), b"another-key" * 3)), NOW)
    decision = reevaluate(record, POLICY, Inputs(unpinned, masker=Masker((), MASKER.key)), NOW)
    assert (decision.principals[0].subject_id, decision.principals[0].matched_by) == ("E1001", "email")


def test_the_policy_cache_looks_each_digest_up_once() -> None:
    store = CountingStore()
    store.store_policy(POLICY.document)
    cache = PolicyCache(store)
    assert cache.get(POLICY.digest).digest == POLICY.digest
    assert cache.get(POLICY.digest) is cache.get(POLICY.digest) and store.lookups == 1
    missing = "sha256:" + "0" * 64
    for _ in range(3):
        with pytest.raises(DecisionNotFoundError, match=f"the recorded policy {missing} is not stored in the log"):
            cache.get(missing)
    assert store.lookups == 2  # a failure is remembered too
    known = PolicyCache(store, known=(POLICY,))
    assert known.get(POLICY.digest) is POLICY and store.lookups == 2


def test_the_policy_cache_refuses_a_modified_or_uncompilable_document() -> None:
    store = InMemoryPolicyStore()
    document = copy.deepcopy(POLICY.document)
    document["version"] = "rewritten"
    store._policies[POLICY.digest] = json.dumps(document).encode()  # the store's table, rewritten in place
    with pytest.raises(DecisionLogError, match=f"the stored policy {POLICY.digest} does not match its digest"):
        PolicyCache(store).get(POLICY.digest)
    broken = {**POLICY.document, "rules": [{"id": "x", "effect": "sideways"}]}
    digest = store.store_policy(broken)
    with pytest.raises(DecisionLogError, match=f"the recorded policy {digest} does not compile"):
        PolicyCache(store).get(digest)


def test_describe_error_words_bad_recorded_data() -> None:
    assert describe_error(KeyError("client")) == "the record lacks 'client' (bad recorded data)"
    assert describe_error(UnresolvableRecordError("why")) == "why"
    assert describe_error(TypeError("x")) == "the record is malformed (TypeError: x)"


def test_replay_and_drift_run_over_the_storage_interfaces() -> None:
    """The in-memory log and policy store serve replay and drift as the SQLite ones do."""
    log, policies = InMemoryDecisionLog(default_token_ttl=timedelta(hours=1)), InMemoryPolicyStore()
    policies.store_policy(POLICY.document)
    for n, name in enumerate(("alice-login", "dave-login", "carol-refresh")):
        log.append(decided(load_request(name), n))
    records = list(log.iterate(Query(limit=None)))
    report = reproduce(records, policies)
    assert (report.replayed, report.unchanged, report.errors) == (3, 3, 0)
    later = drift(log, POLICY, SNAPSHOT, FEEDS, NOW + timedelta(minutes=4))
    assert later.checked == 2 and later.subjects == ()  # carol was denied: no token
    expired = drift(log, POLICY, SNAPSHOT, FEEDS, NOW + timedelta(minutes=6))
    assert expired.checked == 0  # the recorded 300 s lifetime, not the log's default hour
