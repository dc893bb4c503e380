"""Drift: live tokens whose claims the current entitlements no longer justify."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import ACME, NOW
from keycloak_policy_bridge.decision_log import Query, SQLiteDecisionLog, SQLitePolicyStore, UnreadableRecord
from keycloak_policy_bridge.drift import drift
from keycloak_policy_bridge.record import DecisionRecord, Masker
from keycloak_policy_bridge.snapshot_loader import load_snapshot
from test_replay import (
    FEEDS,
    POLICY,
    SNAPSHOT,
    email_join_request,
    invoke,
    load_request,
    record_decision,
    unpin_alice,
    write_snapshot,
)

LATER = NOW + timedelta(minutes=30)
MASKER = Masker(("context.ip", "subject.email"), b"mask-key")


@pytest.fixture
def log(tmp_path: Path) -> SQLiteDecisionLog:
    """Alice and dave log in at NOW (tokens live for the log's default hour); bob logged in
    three hours earlier (his token has expired); the billing bot's 5-minute token too."""
    log = SQLiteDecisionLog(tmp_path / "decisions.db")
    SQLitePolicyStore(log.path).store_policy(POLICY.document)
    record_decision(log, load_request("alice-login"), NOW, bytes(10))
    record_decision(log, load_request("dave-login"), NOW, b"\x01" * 10)
    record_decision(log, load_request("bob-login"), NOW - timedelta(hours=3), b"\x02" * 10)
    record_decision(log, load_request("billing-bot-client-credentials"), NOW, b"\x03" * 10)
    record_decision(log, load_request("carol-refresh"), NOW, b"\x04" * 10)  # denied: no token at all
    return log


@pytest.fixture
def newer(tmp_path: Path) -> Path:
    """The next export: alice lost crm:write, bob lost crm:read, the bot lost its write role."""
    lost = {("E1001", "crm:write"), ("E1002", "crm:read"), ("S2001", "billing:invoice.write")}
    return write_snapshot(
        tmp_path / "newer", drop=lambda r: (r["subject_id"], r["entitlement_value"]) in lost, generated_at="2026-11-28T08:15:00Z"
    )


def test_a_removed_entitlement_is_drift_and_an_expired_token_is_not(log: SQLiteDecisionLog, newer: Path) -> None:
    report = drift(log, POLICY, load_snapshot(newer), FEEDS, LATER)
    assert report.checked == 2  # alice and dave: bob's and the bot's tokens have expired, carol got none
    assert [s.subject_id for s in report.subjects] == ["E1001"]
    alice = report.subjects[0]
    assert alice.claims == {"roles": ["crm:write"]}
    assert alice.keycloak_user_id == "a11ce000-0000-4000-8000-000000000001"
    assert alice.denied_now is False and alice.reasons == ()
    assert alice.token_expires_at == "2026-11-28T09:00:00Z"
    assert alice.decisions == (log.query(Query(subject="E1001"))[0].decision_id,)
    assert report.unresolvable == () and report.errors == ()


def test_nothing_drifts_against_the_same_snapshot(log: SQLiteDecisionLog) -> None:
    report = drift(log, POLICY, SNAPSHOT, FEEDS, LATER)
    assert (report.checked, report.subjects) == (2, ())


def test_a_short_lived_token_is_drift_only_while_it_lives(log: SQLiteDecisionLog, newer: Path) -> None:
    report = drift(log, POLICY, load_snapshot(newer), FEEDS, NOW + timedelta(minutes=2))
    bot = next(s for s in report.subjects if s.subject_id == "S2001")
    assert bot.claims == {"roles": ["billing:invoice.write"]}
    assert bot.token_expires_at == "2026-11-28T08:05:00Z"


def test_a_subject_now_denied_loses_every_claim(log: SQLiteDecisionLog, tmp_path: Path) -> None:
    def terminate_dave(row: dict[str, str]) -> dict[str, str]:
        return {**row, "subject_status": "terminated"} if row["subject_id"] == "E1004" else row

    report = drift(log, POLICY, load_snapshot(write_snapshot(tmp_path / "t", change=terminate_dave)), FEEDS, LATER)
    dave = report.subjects[0]
    assert (dave.subject_id, dave.denied_now) == ("E1004", True)
    assert dave.claims == {"roles": ["crm:read"], "tenant": ["acme-us"]}
    assert dave.reasons == ("deny-inactive-principal: IGA status is not active",)


def test_several_live_tokens_of_one_subject_are_grouped(log: SQLiteDecisionLog, newer: Path) -> None:
    record_decision(log, load_request("alice-login"), NOW + timedelta(minutes=20), b"\x05" * 10)
    record_decision(log, load_request("agent-exchange-for-alice"), NOW, b"\x06" * 10)  # the agent never held crm:write
    report = drift(log, POLICY, load_snapshot(newer), FEEDS, LATER)
    alice = report.subjects[0]
    assert len(alice.decisions) == 2 and alice.claims == {"roles": ["crm:write"]}
    assert alice.token_expires_at == "2026-11-28T09:20:00Z"  # the last of them


def test_a_masked_join_is_unresolvable_without_the_key(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "masked.db")
    SQLitePolicyStore(log.path).store_policy(POLICY.document)
    # An e-mail join needs an identity without a pinned Keycloak id: alice's, in both exports.
    unpinned = load_snapshot(write_snapshot(tmp_path / "unpinned", change=unpin_alice))
    lost = {("E1001", "crm:write"), ("E1002", "crm:read"), ("S2001", "billing:invoice.write")}
    newer = write_snapshot(
        tmp_path / "newer-unpinned",
        drop=lambda r: (r["subject_id"], r["entitlement_value"]) in lost,
        change=unpin_alice,
        generated_at="2026-11-28T08:15:00Z",
    )
    masked = record_decision(log, email_join_request(), NOW, bytes(10), masker=MASKER, snapshot=unpinned)
    record_decision(log, load_request("dave-login"), NOW, b"\x01" * 10, masker=MASKER, snapshot=unpinned)  # joined by id: checkable
    report = drift(log, POLICY, load_snapshot(newer), FEEDS, LATER)
    assert report.checked == 1 and report.subjects == ()
    assert [u.decision_id for u in report.unresolvable] == [masked.decision_id]
    assert report.unresolvable[0].subject_id == "E1001"
    assert "masked subject.email" in report.unresolvable[0].reason
    with_key = drift(log, POLICY, load_snapshot(newer), FEEDS, LATER, masker=Masker((), b"mask-key"))
    assert with_key.unresolvable == ()
    assert [(s.subject_id, s.claims) for s in with_key.subjects] == [("E1001", {"roles": ["crm:write"]})]


def test_a_bad_record_is_an_error_not_a_crash(log: SQLiteDecisionLog, newer: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = log.live

    def live(now: datetime) -> Iterator[DecisionRecord | UnreadableRecord]:
        for record in original(now):
            if isinstance(record, DecisionRecord) and record.subject_id == "E1004":
                record = replace(record, request={k: v for k, v in record.request.items() if k != "subject"})
            yield record
        # What the log yields for a stored body it cannot read.
        yield UnreadableRecord(
            "01M8GJP4000000000000000099", "2026-11-28T08:00:00Z", "E1002", "acme-web", "the stored record cannot be read (damaged)"
        )

    monkeypatch.setattr(log, "live", live)
    report = drift(log, POLICY, load_snapshot(newer), FEEDS, LATER)
    assert [s.subject_id for s in report.subjects] == ["E1001"]
    assert [e.reason for e in report.errors] == [
        "the record lacks 'subject' (bad recorded data)",
        "the stored record cannot be read (damaged)",
    ]
    assert [(e.subject_id, e.token_expires_at) for e in report.errors] == [("E1004", "2026-11-28T09:00:00Z"), ("E1002", None)]


def test_cli_drift(log: SQLiteDecisionLog, newer: Path) -> None:
    args = (
        "drift",
        "--log",
        str(log.path),
        "--policy",
        str(ACME / "policy.json"),
        "--entitlements",
        str(newer),
        "--feed",
        str(ACME / "feeds" / "risk"),
        "--now",
        "2026-11-28T08:30:00Z",
    )
    code, out, _ = invoke(*args)
    assert code == 0, out
    assert "2 live decision(s) checked, 1 subject(s) with claims no longer justified" in out
    assert "E1001 (keycloak a11ce000-0000-4000-8000-000000000001)  tokens live until 2026-11-28T09:00:00Z" in out
    assert "    roles: crm:write" in out
    assert "E1002" not in out
    code, out, _ = invoke(*args, "--json")
    assert code == 0
    report = json.loads(out)
    assert [s["subject_id"] for s in report["subjects"]] == ["E1001"] and report["now"] == "2026-11-28T08:30:00Z"


def test_cli_drift_bad_input_exits_2(log: SQLiteDecisionLog, tmp_path: Path) -> None:
    code, _, err = invoke("drift", "--log", str(log.path), "--policy", str(ACME / "policy.json"), "--entitlements", str(tmp_path))
    assert code == 2 and "manifest" in err
    code, _, err = invoke(
        "drift", "--log", str(tmp_path / "none.db"), "--policy", str(ACME / "policy.json"), "--entitlements", str(ACME / "entitlements")
    )
    assert code == 2 and "no decision log there" in err


def test_drift_finds_the_same_on_a_compiled_snapshot(log: SQLiteDecisionLog, newer: Path, tmp_path: Path) -> None:
    """What a bridge serving compiled snapshots (snapshot_file) reports is what an in-memory load reports."""
    from keycloak_policy_bridge.snapshot_compiler import compile_export

    compiled = compile_export(newer, tmp_path / "snapshots")[1]
    expected = drift(log, POLICY, load_snapshot(newer), FEEDS, LATER).to_dict()
    assert drift(log, POLICY, compiled, FEEDS, LATER).to_dict() == expected
    assert [s["subject_id"] for s in expected["subjects"]] == ["E1001"]
