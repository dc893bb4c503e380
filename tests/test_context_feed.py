"""Context feeds: loading, typed columns, windows, and what the engine does with them."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from conftest import NOW, make_policy, make_request, make_snapshot, record
from keycloak_policy_bridge.context_feed import load_feed, load_feeds, unique_feed_names
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.errors import DuplicateFeedError, EntitlementSourceError


def write_feed(root: Path, name: str, text: str, filename: str = "feed.csv", **manifest: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    (root / filename).write_bytes(data)
    records = len([line for line in text.splitlines() if line.strip()]) - (1 if filename.endswith(".csv") else 0)
    doc = {
        "spec": "kpb-context/1",
        "feed": name,
        "snapshot_id": f"{name}-1",
        "generated_at": "2026-11-28T07:00:00Z",
        "complete": True,
        "files": [{"name": filename, "records": records, "sha256": hashlib.sha256(data).hexdigest()}],
    }
    doc.update(manifest)
    (root / "manifest.json").write_text(json.dumps(doc))
    return root


RISK_CSV = "subject_id,score,managed,assessed_at\nE1,12,true,2026-11-28T06:00:00Z\nE2,91,false,2026-11-28T06:30:00Z\n"
RISK_COLUMNS = {"score": "int", "managed": "bool", "assessed_at": "timestamp"}


def test_csv_feed_with_typed_columns(tmp_path: Path) -> None:
    feed = load_feed(write_feed(tmp_path / "risk", "risk", RISK_CSV, columns=RISK_COLUMNS))
    assert feed.name == "risk" and feed.record_count == 2
    [row] = feed.effective("E2", NOW)
    assert row["score"] == 91 and row["managed"] is False and row["assessed_at"].hour == 6
    assert feed.age_seconds(NOW) == 3600


def test_jsonl_feed_keeps_json_types_and_windows(tmp_path: Path) -> None:
    lines = [
        {"subject_id": "E1", "claim": "roles", "value": "crm:export", "ticket": "CHG-1", "end_at": "2026-11-28T09:00:00Z"},
        {"subject_id": "E1", "claim": "roles", "value": "old", "ticket": "CHG-0", "end_at": "2026-11-01T00:00:00Z"},
    ]
    feed = load_feed(write_feed(tmp_path / "x", "exceptions", "\n".join(map(json.dumps, lines)) + "\n", "x.jsonl"))
    assert [r["ticket"] for r in feed.effective("E1", NOW)] == ["CHG-1"]
    assert feed.effective("E1", NOW + timedelta(hours=2)) == []


@pytest.mark.parametrize(
    ("text", "columns", "code"),
    [
        ("subject_id,score\nE1,high\n", {"score": "int"}, "bad_value"),
        ("subject_id,score\n,3\n", {}, "missing_value"),
        ("subject_id,score\n", {}, "empty_snapshot"),
        ("subject_id,end_at\nE1,tomorrow\n", {}, "bad_timestamp"),
    ],
)
def test_bad_feeds_are_rejected(tmp_path: Path, text: str, columns: dict[str, str], code: str) -> None:
    with pytest.raises(EntitlementSourceError) as err:
        load_feed(write_feed(tmp_path / "f", "risk", text, columns=columns))
    assert code in [i.code for i in err.value.issues]


def test_feed_manifest_must_name_the_feed(tmp_path: Path) -> None:
    with pytest.raises(EntitlementSourceError, match="feed manifest rejected"):
        load_feed(write_feed(tmp_path / "f", "bad name!", RISK_CSV))


RISK_RULE = {
    "id": "deny-high-risk",
    "effect": "deny",
    "reason": "risk too high",
    "condition": "feeds.risk.stale || (feeds.risk.record != null && feeds.risk.record.score >= 80)",
}
ROLES = {"id": "roles", "effect": "grant", "claims": {"roles": {"from_entitlements": {"kind": "app_role"}}}}


@pytest.fixture
def risk(tmp_path: Path) -> Any:
    return load_feed(write_feed(tmp_path / "risk", "risk", RISK_CSV, columns=RISK_COLUMNS))


def test_policy_reads_the_principals_feed_record(risk: Any) -> None:
    policy = make_policy([ROLES, RISK_RULE], freshness={"feeds": {"risk": {"max_age_seconds": 7200}}})
    snapshot = make_snapshot([record("E1"), record("E2", keycloak_user_id="kc-E2")])
    low = evaluate(policy, snapshot, make_request(), NOW, {"risk": risk})
    assert low.effect == "permit"
    assert low.feeds["risk"]["stale"] is False and low.feeds["risk"]["digest"] == risk.digest
    high = evaluate(policy, snapshot, make_request(subject={"id": "kc-E2"}), NOW, {"risk": risk})
    assert high.effect == "deny" and high.reasons[0].rule == "deny-high-risk"


@pytest.mark.parametrize("on_stale", ["deny", "ignore"])
def test_stale_or_missing_feed(risk: Any, on_stale: str) -> None:
    policy = make_policy([ROLES], freshness={"feeds": {"risk": {"max_age_seconds": 600, "on_stale": on_stale}}})
    snapshot = make_snapshot([record("E1")])
    for feeds in ({"risk": risk}, {}):  # 3600 s old, then not loaded at all
        decision = evaluate(policy, snapshot, make_request(), NOW, feeds)
        assert decision.effect == ("deny" if on_stale == "deny" else "permit")
        assert [(r.rule, r.kind) for r in decision.reasons] == [("kpb:freshness", on_stale if on_stale == "deny" else "omit")]


def test_ignored_stale_feed_is_hidden_from_conditions(risk: Any) -> None:
    policy = make_policy([ROLES, RISK_RULE], freshness={"feeds": {"risk": {"max_age_seconds": 600}}})
    snapshot = make_snapshot([record("E1")])
    decision = evaluate(policy, snapshot, make_request(), NOW, {"risk": risk})
    assert decision.effect == "deny"  # the rule fails closed on feeds.risk.stale


def test_type_map_names_are_folded_and_must_exist(tmp_path: Path) -> None:
    feed = load_feed(write_feed(tmp_path / "a", "risk", RISK_CSV, columns={"Score": "int"}))
    assert feed.effective("E1", NOW)[0]["score"] == 12
    with pytest.raises(EntitlementSourceError) as err:
        load_feed(write_feed(tmp_path / "b", "risk", RISK_CSV, columns={"scroe": "int"}))
    assert [(i.path, i.code) for i in err.value.issues] == [("$.columns.scroe", "bad_manifest")]


def test_time_bound_exceptions_from_a_feed_expire_by_themselves(tmp_path: Path) -> None:
    rows = [
        {"subject_id": "E1", "claim": "roles", "value": "crm:export", "ticket": "CHG-4711", "end_at": "2026-12-15T00:00:00Z"},
        {"subject_id": "E1", "claim": "tier", "value": "gold", "ticket": "CHG-1", "end_at": "2026-12-31T00:00:00Z"},
    ]
    feed = load_feed(write_feed(tmp_path / "x", "exceptions", "\n".join(map(json.dumps, rows)) + "\n", "x.jsonl"))
    rule = {
        "id": "exceptions-from-feed",
        "effect": "grant",
        "when": {"pass": "subject"},
        "condition": "size(feeds.exceptions.records) > 0",
        "claims": {"roles": {"expr": "feeds.exceptions.records.filter(e, e.claim == 'roles').map(e, e.value)"}},
    }
    policy = make_policy([ROLES, rule])
    snapshot = make_snapshot([record("E1")], generated_at="2026-12-20T00:00:00Z")
    assert evaluate(policy, snapshot, make_request(), NOW, {"exceptions": feed}).claims["roles"] == ["crm:export", "crm:read"]
    later = NOW.replace(month=12, day=20)
    assert evaluate(policy, snapshot, make_request(), later, {"exceptions": feed}).claims["roles"] == ["crm:read"]


def test_device_posture_feed(tmp_path: Path) -> None:
    feed = load_feed(write_feed(tmp_path / "d", "device", "subject_id,managed\nE1,false\nE2,true\n", columns={"managed": "bool"}))
    rule = {
        "id": "deny-unmanaged-device",
        "effect": "deny",
        "reason": "device is not managed",
        "condition": "feeds.device.record == null || !feeds.device.record.managed",
    }
    policy = make_policy([ROLES, rule])
    snapshot = make_snapshot([record("E1"), record("E2", keycloak_user_id="kc-E2")])
    assert evaluate(policy, snapshot, make_request(), NOW, {"device": feed}).effect == "deny"
    assert evaluate(policy, snapshot, make_request(subject={"id": "kc-E2"}), NOW, {"device": feed}).effect == "permit"


# -- several feeds: each name once ---------------------------------------------------------------


def test_load_feeds_keys_each_feed_by_its_manifest_name(tmp_path: Path) -> None:
    risk = write_feed(tmp_path / "a", "risk", "subject_id,score\nE1,10\n")
    posture = write_feed(tmp_path / "b", "posture", "subject_id,managed\nE1,true\n")
    feeds = load_feeds([risk, posture])
    assert list(feeds) == ["risk", "posture"] and feeds["posture"].name == "posture"
    assert load_feeds([]) == {}


def test_two_directories_of_one_feed_name_are_refused_naming_both(tmp_path: Path) -> None:
    first = write_feed(tmp_path / "a", "risk", "subject_id,score\nE1,10\n")
    second = write_feed(tmp_path / "b", "risk", "subject_id,score\nE1,90\n")
    with pytest.raises(DuplicateFeedError) as err:
        load_feeds([first, second])
    assert err.value.message == f"two context feeds are named 'risk': {first} and {second} (give each feed name once)"
    assert err.value.code == "duplicate_feed"


def test_unique_feed_names_checks_configured_names_in_order() -> None:
    assert unique_feed_names([("risk", "/a"), ("posture", Path("/b"))]) == {"risk": Path("/a"), "posture": Path("/b")}
    with pytest.raises(DuplicateFeedError, match="two context feeds are named 'risk': /a and /c"):
        unique_feed_names([("risk", "/a"), ("posture", "/b"), ("risk", "/c"), ("risk", "/d")])
