"""Replay: exact reproduction of recorded decisions, and the impact of a candidate policy."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import ACME, NOW
from keycloak_policy_bridge.cli import main
from keycloak_policy_bridge.context_feed import load_feed
from keycloak_policy_bridge.decision import ClaimValue, ValueSource
from keycloak_policy_bridge.decision_log import Query, SQLiteDecisionLog, SQLitePolicyStore, UnreadableRecord
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.policy import Policy, compile_policy, load_policy
from keycloak_policy_bridge.record import RECORD_SCHEMA_V1, DecisionRecord, Masker, build_record
from keycloak_policy_bridge.replay import ReplayReport, replay, reproduce
from keycloak_policy_bridge.replay_html import render_html
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import load_snapshot
from keycloak_policy_bridge.ulid import make_ulid

POLICY = load_policy(ACME / "policy.json")
SNAPSHOT = load_snapshot(ACME / "entitlements")
FEEDS = {"risk": load_feed(ACME / "feeds" / "risk")}
REQUEST_FILES = sorted((ACME / "requests").glob("*.json"))
START, END = datetime(2026, 11, 28, 3, tzinfo=UTC), datetime(2026, 12, 1, 0, tzinfo=UTC)
TENANTS = (None, "acme-eu", "acme-us", "acme-apac")
ACTOR_CHAINS: tuple[list[dict[str, Any]] | None, ...] = (
    None,  # as in the file
    [{"sub": "9a7e0000-0000-4000-8000-0000000000dd", "client_id": "summarizer-agent", "kind_hint": "agent"}],
    [{"sub": "9a7e0000-0000-4000-8000-0000000000ee", "client_id": "rogue-agent", "kind_hint": "agent"}],
    [
        {"sub": "9a7e0000-0000-4000-8000-0000000000cc", "client_id": "research-agent", "kind_hint": "agent"},
        {"sub": "9a7e0000-0000-4000-8000-0000000000dd", "client_id": "summarizer-agent", "kind_hint": "agent"},
    ],
)
ALICE_KC_ID = "a11ce000-0000-4000-8000-000000000001"


# -- helpers -------------------------------------------------------------------------------------


def load_request(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ACME / "requests" / f"{name}.json").read_text())
    return document


def record_decision(
    log: SQLiteDecisionLog,
    document: dict[str, Any],
    now: datetime,
    entropy: bytes,
    *,
    snapshot: Any = SNAPSHOT,
    feeds: Any = None,
    masker: Masker | None = None,
    policy: Policy = POLICY,
    token_ttl_seconds: int | None = None,
) -> DecisionRecord:
    """Evaluate ``document`` at ``now`` and append the record; return it."""
    feeds = FEEDS if feeds is None else feeds
    request = parse_request(document)
    decision = evaluate(policy, snapshot, request, now, feeds)
    record = build_record(make_ulid(now, entropy), decision, request, snapshot, feeds, masker=masker, token_ttl_seconds=token_ttl_seconds)
    log.append(record)
    return record


def generated_requests(per_combination: int, seed: int = 4) -> Iterator[tuple[dict[str, Any], datetime, bool]]:
    """Every acme request file x tenants x actor chains (delegated ones) x feed present/absent x
    ``per_combination`` instants spread over 2026-11-28T03:00Z..2026-12-01T00:00Z."""
    rng = random.Random(seed)
    span = int((END - START).total_seconds())
    for path in REQUEST_FILES:
        base = json.loads(path.read_text())
        chains = ACTOR_CHAINS if base.get("actors") else (None,)
        for tenant in TENANTS:
            for chain in chains:
                for with_feed in (True, False):
                    for _ in range(per_combination):
                        doc = copy.deepcopy(base)
                        if tenant is not None:
                            doc.setdefault("context", {})["tenant"] = tenant
                        if chain is not None:
                            doc["actors"] = chain
                        now = START + timedelta(seconds=rng.randrange(span + 1), microseconds=rng.choice((0, rng.randrange(1_000_000))))
                        yield doc, now, with_feed


def write_snapshot(
    target: Path,
    drop: Callable[[dict[str, str]], bool] = lambda row: False,
    change: Callable[[dict[str, str]], dict[str, str]] = lambda row: row,
    generated_at: str = "2026-11-28T02:00:04Z",
) -> Path:
    """The acme export with rows dropped or changed, and a manifest that matches it."""
    with open(ACME / "entitlements" / "entitlements.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or ())
        rows = [change(dict(r)) for r in reader if not drop(r)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = out.getvalue().encode("utf-8")
    target.mkdir(parents=True)
    (target / "entitlements.csv").write_bytes(data)
    manifest = json.loads((ACME / "entitlements" / "manifest.json").read_text())
    manifest.update(snapshot_id=f"acme-modified-{target.name}", generated_at=generated_at)
    manifest["files"] = [{"name": "entitlements.csv", "records": len(rows), "sha256": hashlib.sha256(data).hexdigest()}]
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def candidate(edit: Callable[[dict[str, Any]], None], version: str = "candidate") -> Policy:
    document = copy.deepcopy(POLICY.document)
    document["version"] = version
    edit(document)
    return compile_policy(document)


def without_rule(rule_id: str) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        document["rules"] = [r for r in document["rules"] if r["id"] != rule_id]

    return edit


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def all_records(log: SQLiteDecisionLog) -> list[DecisionRecord]:
    records = [r for r in log.iterate(Query(limit=None)) if isinstance(r, DecisionRecord)]
    assert len(records) == log.count()  # every stored record is readable
    return records


def with_claims(record: DecisionRecord, **claims: Any) -> DecisionRecord:
    """``record`` as if it had recorded ``claims`` too (a test's edit of a stored record)."""
    return replace(record, decision=replace(record.decision, claims={**record.decision.claims, **claims}))


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[SQLiteDecisionLog, int]:
    log = SQLiteDecisionLog(tmp_path_factory.mktemp("generated") / "decisions.db")
    SQLitePolicyStore(log.path).store_policy(POLICY.document)
    rng = random.Random(7)
    count = 0
    for doc, now, with_feed in generated_requests(per_combination=20):
        record_decision(log, doc, now, rng.randbytes(10), feeds=FEEDS if with_feed else {})
        count += 1
    return log, count


@pytest.fixture
def small_log(tmp_path: Path) -> SQLiteDecisionLog:
    """One decision per acme request file, a minute apart from NOW."""
    log = SQLiteDecisionLog(tmp_path / "small.db")
    SQLitePolicyStore(log.path).store_policy(POLICY.document)
    for n, path in enumerate(REQUEST_FILES):
        record_decision(log, json.loads(path.read_text()), NOW + timedelta(minutes=n), n.to_bytes(10, "big"))
    return log


def by_subject_and_client(report: ReplayReport, subject: str, client: str) -> Any:
    found = [d for d in report.changed_decisions if d.subject_id == subject and d.client_id == client]
    assert len(found) == 1, found
    return found[0]


# -- exact reproduction ------------------------------------------------------------------------


def test_recorded_policy_and_inputs_reproduce_every_decision_exactly(generated_log: tuple[SQLiteDecisionLog, int]) -> None:
    log, count = generated_log
    records = all_records(log)
    started = time.perf_counter()
    report = reproduce(records, SQLitePolicyStore(log.path))
    elapsed = time.perf_counter() - started
    print(f"\nreproduced {report.replayed} decisions in {elapsed:.2f}s: {report.replayed / elapsed:.0f} records/s")
    assert report.replayed == count >= 2000
    assert (report.changed, report.errors, report.unchanged) == (0, 0, count), (report.changed_decisions[:3], report.failed_decisions[:3])
    # The generated decisions are varied: both effects, delegation, stale feeds, omitted values.
    effects = {r.effect for r in records}
    reasons = {(reason.rule, reason.kind) for r in records for reason in r.decision.reasons}
    assert effects == {"permit", "deny"}
    assert {
        ("kpb:delegation", "deny"),
        ("kpb:freshness", "omit"),
        ("tenant-must-be-held", "deny"),
        ("deny-inactive-principal", "deny"),
        ("crm-export-exception-chg-4711", "exception"),
    } <= reasons
    assert any("risk" not in r.feeds for r in records) and any("risk" in r.feeds for r in records)


def test_an_edited_record_does_not_reproduce(small_log: SQLiteDecisionLog) -> None:
    records = all_records(small_log)
    at = next(i for i, r in enumerate(records) if r.request["request_id"] == "req-alice-login")
    alice = with_claims(records[at], roles=[*records[at].decision.claims["roles"], "crm:admin"])
    records[at] = replace(alice, decision=replace(alice.decision, snapshot_age_seconds=alice.decision.snapshot_age_seconds + 1))
    report = reproduce(records, SQLitePolicyStore(small_log.path))
    assert (report.replayed, report.changed, report.errors) == (len(records), 1, 0)
    changed = report.changed_decisions[0]
    assert changed.decision_id == alice.decision_id
    assert changed.removed == {"roles": ["crm:admin"]} and changed.added == {}
    assert changed.differences == ("claims", "entitlements")


def test_a_deny_recorded_before_user_message_existed_still_reproduces(small_log: SQLiteDecisionLog) -> None:
    """user_message is an additive response field: a record written before it is not "changed"."""
    # As an older bridge recorded its denies: a /1 record keeps the response exactly as answered.
    records = [
        replace(r, schema=RECORD_SCHEMA_V1, recorded_response={k: v for k, v in r.response().items() if k != "user_message"})
        for r in all_records(small_log)
    ]
    assert any(r.effect == "deny" for r in records)
    report = reproduce(records, SQLitePolicyStore(small_log.path))
    assert (report.replayed, report.changed, report.errors) == (len(records), 0, 0), report.changed_decisions[:1]
    carol = next(r for r in all_records(small_log) if r.request["request_id"] == "req-carol-refresh")
    carol = replace(carol, decision=replace(carol.decision, user_message="Something else."))  # a recorded text that differs is a change
    assert reproduce([carol], SQLitePolicyStore(small_log.path)).changed_decisions[0].differences == ("user_message",)


def _perturbed(value: Any, other: Any) -> Any:
    """A different value of a decision field: another decision's when it differs, else one made up."""
    if other != value:
        return other
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "~"
    if isinstance(value, datetime):
        return value + timedelta(seconds=1)
    if value is None:
        return "a value"
    if isinstance(value, dict):
        return {**value, "extra": {}}
    return value[:-1]  # a tuple


def test_the_fast_comparison_never_hides_a_difference_in_the_response() -> None:
    """Issue 13: a reproduction settles an unchanged decision by comparing the fields a response is
    made of, without rendering it; any field whose change changes the response must be among them
    (a new response field fails this until it is compared too)."""
    decisions = [evaluate(POLICY, SNAPSHOT, parse_request(json.loads(p.read_text())), NOW, FEEDS) for p in REQUEST_FILES]
    permit = next(d for d in decisions if d.permitted and d.provenance and d.max_ttl_seconds is not None)
    deny = next(d for d in decisions if not d.permitted and d.user_message)
    response_fields = set()
    for a, b in ((permit, deny), (deny, permit)):
        assert a.renders_like(copy.deepcopy(a))
        for name in (f.name for f in fields(a)):
            changed = replace(a, **{name: _perturbed(getattr(a, name), getattr(b, name))})
            if changed.response("id") != a.response("id"):
                response_fields.add(name)
                assert not a.renders_like(changed), name
    assert response_fields >= {"effect", "claims", "reasons", "provenance", "principals", "evaluated_at", "policy_digest"}
    assert response_fields.isdisjoint({"inputs", "feed_reads"})  # recorded, not answered


def test_an_unknown_policy_digest_is_an_error_naming_it(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")  # the policy is never stored
    record_decision(log, load_request("alice-login"), NOW, bytes(10))
    report = reproduce(all_records(log), SQLitePolicyStore(log.path))
    assert (report.replayed, report.errors, report.changed) == (1, 1, 0)
    assert report.failed_decisions[0].error == f"the recorded policy {POLICY.digest} is not stored in the log"


def test_a_rewritten_stored_policy_is_an_error(small_log: SQLiteDecisionLog) -> None:
    document = copy.deepcopy(POLICY.document)
    document["rules"] = [r for r in document["rules"] if r["id"] != "deny-inactive-principal"]
    with sqlite3.connect(small_log.path) as conn:
        conn.execute("UPDATE policies SET document = ? WHERE digest = ?", (json.dumps(document), POLICY.digest))
    report = reproduce(all_records(small_log), SQLitePolicyStore(small_log.path))
    assert (report.errors, report.changed) == (10, 0)
    assert report.failed_decisions[0].error == f"the stored policy {POLICY.digest} does not match its digest (the document was modified)"


def test_bad_recorded_data_is_an_error_not_a_crash(small_log: SQLiteDecisionLog) -> None:
    records: list[Any] = all_records(small_log)
    records[0] = replace(records[0], request={k: v for k, v in records[0].request.items() if k != "client"})
    # What the log yields for a stored body it cannot read.
    records[1] = UnreadableRecord(
        records[1].decision_id, "2026-11-28T08:01:00Z", "E1001", "acme-web", "the stored record cannot be read (damaged)"
    )
    records[2] = "not a record"
    report = replay(records, POLICY)
    assert (report.replayed, report.errors, report.unchanged) == (len(records), 3, len(records) - 3)
    messages = [d.error for d in report.failed_decisions]
    assert messages[0] == "the record lacks 'client' (bad recorded data)"
    assert messages[1] == "the stored record cannot be read (damaged)"
    assert report.failed_decisions[1].to_dict()["subject_id"] == "E1001"
    assert report.failed_decisions[2].decision_id == "?"


# -- impact of a candidate policy ------------------------------------------------------------


def test_the_same_policy_changes_nothing(small_log: SQLiteDecisionLog) -> None:
    report = replay(all_records(small_log), POLICY)
    assert (report.replayed, report.unchanged, report.changed, report.errors) == (10, 10, 0, 0)
    assert report.by_rule == {} and report.by_claim == {}


def test_a_removed_rule_and_an_added_value(small_log: SQLiteDecisionLog) -> None:
    def edit(document: dict[str, Any]) -> None:
        without_rule("tenant-from-entitlements")(document)
        document["rules"].append(
            {"id": "crm-audit-for-web", "effect": "grant", "when": {"clients": ["acme-web"]}, "claims": {"roles": {"value": ["crm:audit"]}}}
        )

    report = replay(all_records(small_log), candidate(edit))
    # Permitted before: alice (web, agent exchange), bob (web), dave (web), billing-bot (cc).
    assert (report.replayed, report.changed, report.errors) == (10, 5, 0)
    alice = by_subject_and_client(report, "E1001", "acme-web")
    assert alice.added == {"roles": ["crm:audit"]} and alice.removed == {"tenant": ["acme-eu"]}
    assert alice.effect_before == alice.effect_after == "permit"
    assert "tenant-from-entitlements" in alice.rules_before and "tenant-from-entitlements" not in alice.rules_after
    assert "crm-audit-for-web" in alice.rules_after
    bob = by_subject_and_client(report, "E1002", "acme-web")
    assert bob.removed == {"tenant": ["acme-us"]}  # the single value bob asked for
    agent = by_subject_and_client(report, "E1001", "research-agent")
    assert agent.added == {} and agent.removed == {"tenant": ["acme-eu"]}
    assert report.by_claim == {
        "roles": {"added": {"crm:audit": 3}, "removed": {}},
        "tenant": {"added": {}, "removed": {"acme-eu": 3, "acme-us": 2}},
    }
    assert report.by_rule == {
        "tenant-from-entitlements": {"decisions": 5, "added": 0, "removed": 5, "effect": 0},
        "crm-audit-for-web": {"decisions": 3, "added": 3, "removed": 0, "effect": 0},
    }


def test_a_scalar_change_is_the_old_value_removed_and_the_new_added(small_log: SQLiteDecisionLog) -> None:
    def edit(document: dict[str, Any]) -> None:
        document["rules"].append({"id": "level", "effect": "grant", "claims": {"level": {"value": "gold"}}})

    records = all_records(small_log)
    with_level = replay(records, candidate(edit))
    assert by_subject_and_client(with_level, "E1001", "acme-web").added["level"] == ["gold"]

    def silver(document: dict[str, Any]) -> None:
        document["rules"].append({"id": "level", "effect": "grant", "claims": {"level": {"value": "silver"}}})

    # Replaying the gold records under a silver policy: one scalar swapped.
    log_records = []
    for record in records:
        if record.effect == "permit":
            record = with_claims(record, level="gold")
            gold = (ClaimValue("gold", (ValueSource("level", "subject"),)),)
            record = replace(record, decision=replace(record.decision, provenance={**record.decision.provenance, "level": gold}))
        log_records.append(record)
    report = replay(log_records, candidate(silver))
    alice = by_subject_and_client(report, "E1001", "acme-web")
    assert alice.added == {"level": ["silver"]} and alice.removed == {"level": ["gold"]}
    assert report.by_rule["level"] == {"decisions": 5, "added": 5, "removed": 5, "effect": 0}


def test_effect_changes_count_for_the_deny_rules(small_log: SQLiteDecisionLog) -> None:
    def edit(document: dict[str, Any]) -> None:
        without_rule("deny-inactive-principal")(document)
        document["rules"].insert(0, {"id": "no-billing-bot", "effect": "deny", "when": {"clients": ["billing-bot"]}, "reason": "paused"})

    report = replay(all_records(small_log), candidate(edit))
    bot = by_subject_and_client(report, "S2001", "billing-bot")
    assert (bot.effect_before, bot.effect_after) == ("permit", "deny")
    assert bot.removed == {"roles": ["billing:invoice.read", "billing:invoice.write"], "tenant": ["acme-eu"]}
    assert (bot.ttl_before, bot.ttl_after) == (300, None)
    carol = by_subject_and_client(report, "E1003", "acme-web")  # terminated: no longer denied, still nothing granted
    assert (carol.effect_before, carol.effect_after, carol.added) == ("deny", "permit", {})
    # The values the bot loses are the new deny rule's doing, not the grant rules'.
    assert report.by_rule["no-billing-bot"] == {"decisions": 1, "added": 0, "removed": 3, "effect": 1}
    assert report.by_rule["deny-inactive-principal"] == {"decisions": 1, "added": 0, "removed": 0, "effect": 1}
    assert "roles-from-app-roles" not in report.by_rule
    # billing-bot-password was already denied (interactive grant) and stays denied: unchanged.
    assert report.changed == 2


def test_a_lifetime_cap_change_is_a_change(small_log: SQLiteDecisionLog) -> None:
    def edit(document: dict[str, Any]) -> None:
        next(r for r in document["rules"] if r["id"] == "service-accounts-short-lived")["max_ttl_seconds"] = 120

    report = replay(all_records(small_log), candidate(edit))
    bot = by_subject_and_client(report, "S2001", "billing-bot")
    assert (bot.ttl_before, bot.ttl_after, bot.added, bot.removed) == (300, 120, {}, {})
    assert report.changed == 1 and report.by_rule == {}


def test_current_entitlements_show_what_the_snapshot_changed(small_log: SQLiteDecisionLog, tmp_path: Path) -> None:
    current = load_snapshot(write_snapshot(tmp_path / "current", drop=lambda r: r["entitlement_value"] == "finance:approve"))
    report = replay(all_records(small_log), POLICY, entitlements=current)
    assert report.entitlements.startswith("acme-modified-current (sha256:")
    alice = by_subject_and_client(report, "E1001", "acme-web")
    assert alice.removed == {"roles": ["finance:approve"]} and alice.added == {}
    assert report.by_rule == {"roles-from-app-roles": {"decisions": 1, "added": 0, "removed": 1, "effect": 0}}
    # The agent exchange never carried finance:approve (the agent does not hold it): unchanged.
    assert report.changed == 1


def test_given_feeds_replace_the_recorded_rows(small_log: SQLiteDecisionLog, tmp_path: Path) -> None:
    feed_dir = tmp_path / "risk"
    feed_dir.mkdir()
    data = b"subject_id,score,source,assessed_at\nE1001,95,idp-risk-engine,2026-11-28T05:40:00Z\n"
    (feed_dir / "risk.csv").write_bytes(data)
    manifest = json.loads((ACME / "feeds" / "risk" / "manifest.json").read_text())
    manifest["files"] = [{"name": "risk.csv", "records": 1, "sha256": hashlib.sha256(data).hexdigest()}]
    (feed_dir / "manifest.json").write_text(json.dumps(manifest))
    report = replay(all_records(small_log), POLICY, feeds={"risk": load_feed(feed_dir)})
    assert {d.subject_id for d in report.changed_decisions} == {"E1001"}
    assert {(d.effect_before, d.effect_after) for d in report.changed_decisions} == {("permit", "deny")}
    assert report.by_rule["deny-high-risk"]["effect"] == 2


# -- masking -------------------------------------------------------------------------------------

MASKER = Masker(("context.ip", "subject.email"), b"mask-key")


def email_join_request() -> dict[str, Any]:
    """Alice as a principal whose only matching join key is her (verified) e-mail address."""
    doc = load_request("alice-login")
    doc["request_id"] = "req-alice-by-email"
    doc["subject"].update(id="kc-unmatched", username=None, email="Alice@Acme.example", email_verified=True)
    return doc


def unpin_alice(row: dict[str, str]) -> dict[str, str]:
    """Alice's rows without her Keycloak user id: only an identity without a pin joins by e-mail."""
    return {**row, "keycloak_user_id": ""} if row["subject_id"] == "E1001" else row


@pytest.fixture
def masked_log(tmp_path: Path) -> SQLiteDecisionLog:
    log = SQLiteDecisionLog(tmp_path / "masked.db")
    SQLitePolicyStore(log.path).store_policy(POLICY.document)
    unpinned = load_snapshot(write_snapshot(tmp_path / "unpinned", change=unpin_alice))
    record_decision(log, load_request("alice-login"), NOW, bytes(10), masker=MASKER, snapshot=unpinned)
    record_decision(log, email_join_request(), NOW, b"\x01" * 10, masker=MASKER, snapshot=unpinned)
    return log


def test_masked_records_reproduce_exactly_with_the_key(masked_log: SQLiteDecisionLog) -> None:
    records = all_records(masked_log)
    assert records[1].masked == ("context.ip", "subject.email")
    assert records[1].decision.principals[0].matched_by == "email"
    assert records[1].decision.claims["roles"] == ["crm:read", "crm:write", "finance:approve"]
    report = reproduce(records, SQLitePolicyStore(masked_log.path), masker=Masker((), b"mask-key"))
    assert (report.replayed, report.changed, report.errors) == (2, 0, 0)


def test_masked_records_reproduce_without_the_key(masked_log: SQLiteDecisionLog) -> None:
    """Masked join keys are recorded hashed in the request and in the identities alike, so
    recorded inputs replay exactly without the key, and the record holds no clear value."""
    records = all_records(masked_log)
    report = reproduce(records, SQLitePolicyStore(masked_log.path))
    assert (report.replayed, report.unchanged, report.changed, report.errors) == (2, 2, 0, 0)
    assert "alice@acme.example" not in json.dumps([masked_log.document(r.decision_id) for r in records])


def test_a_masked_join_against_a_given_snapshot(masked_log: SQLiteDecisionLog, tmp_path: Path) -> None:
    records = all_records(masked_log)
    current = load_snapshot(write_snapshot(tmp_path / "current", drop=lambda r: r["entitlement_value"] == "crm:write", change=unpin_alice))
    with_key = replay(records, POLICY, entitlements=current, masker=MASKER)
    assert (with_key.changed, with_key.errors) == (2, 0)
    assert {tuple(d.removed["roles"]) for d in with_key.changed_decisions} == {("crm:write",)}
    without_key = replay(records, POLICY, entitlements=current)
    assert (without_key.changed, without_key.errors) == (1, 1)
    assert "masking key" in (without_key.failed_decisions[0].error or "")


# -- the HTML report -----------------------------------------------------------------------------


def test_the_html_report_is_one_self_contained_file(small_log: SQLiteDecisionLog) -> None:
    report = replay(all_records(small_log), candidate(without_rule("tenant-from-entitlements")))
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for label, n in (("replayed", 10), ("unchanged", 5), ("changed", 5), ("errors", 0)):
        assert f'<div class="n">{n}</div><div class="l">{label}</div>' in page
    assert page.count("<svg") == 3  # the share bar, by rule, by claim
    assert "tenant-from-entitlements" in page and "acme-eu" in page
    lowered = page.lower()
    for external in ("src=", "href=", "<script", "<link", "@import", "url(", "http://", "https://"):
        assert external not in lowered, external


def test_the_html_report_escapes_every_value(small_log: SQLiteDecisionLog) -> None:
    def edit(document: dict[str, Any]) -> None:
        document["rules"].append({"id": "x-markup", "effect": "grant", "claims": {"roles": {"value": ["<img src=x onerror=alert(1)>"]}}})

    page = render_html(replay(all_records(small_log), candidate(edit)))
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_the_html_report_of_a_clean_reproduction(small_log: SQLiteDecisionLog) -> None:
    page = render_html(reproduce(all_records(small_log), SQLitePolicyStore(small_log.path)))
    assert "No decision changes" in page and "Every replayed decision is unchanged." in page


# -- the command line ------------------------------------------------------------------------------


def test_cli_recorded_reproduction_exits_0(small_log: SQLiteDecisionLog) -> None:
    code, out, _ = invoke("replay", "--log", str(small_log.path), "--recorded")
    assert code == 0, out
    assert "replayed 10  unchanged 10  changed 0  errors 0" in out


def test_cli_candidate_that_changes_decisions_exits_1(small_log: SQLiteDecisionLog, tmp_path: Path) -> None:
    path = tmp_path / "candidate.json"
    path.write_text(json.dumps(candidate(without_rule("tenant-from-entitlements")).document))
    html = tmp_path / "report.html"
    code, out, _ = invoke("replay", "--log", str(small_log.path), "--policy", str(path), "--html", str(html))
    assert code == 1, out
    assert "replayed 10  unchanged 5  changed 5  errors 0" in out
    assert "  tenant-from-entitlements                         5       0       5      0" in out
    assert "tenant: -acme-eu x3, -acme-us x2" in out
    assert "-tenant: acme-us" in out
    assert html.read_text().count("<svg") == 3
    code, out, _ = invoke("replay", "--log", str(small_log.path), "--policy", str(path), "--json", "--subject", "E1002")
    assert code == 1
    report = json.loads(out)
    assert (report["replayed"], report["changed"]) == (1, 1)
    assert report["changed_decisions"][0]["removed"] == {"tenant": ["acme-us"]}


def test_cli_same_policy_exits_0(small_log: SQLiteDecisionLog) -> None:
    code, out, _ = invoke("replay", "--log", str(small_log.path), "--policy", str(ACME / "policy.json"), "--client", "acme-web")
    assert code == 0, out
    assert "replayed 5  unchanged 5  changed 0  errors 0" in out


def test_cli_entitlements_current(small_log: SQLiteDecisionLog, tmp_path: Path) -> None:
    current = write_snapshot(tmp_path / "current", drop=lambda r: r["subject_id"] == "E1004")
    args = ("replay", "--log", str(small_log.path), "--policy", str(ACME / "policy.json"))
    code, out, _ = invoke(*args, "--entitlements", "current", "--snapshot", str(current))
    assert code == 1, out
    assert "E1004  acme-web  permit -> deny  -roles: crm:read" in out
    assert "deny-unknown-principal" in out
    code, out2, _ = invoke(*args, "--entitlements", str(current))  # a directory works the same
    assert code == 1 and out2 == out
    code, _, err = invoke(*args, "--entitlements", "current")
    assert code == 2 and "--entitlements current needs --snapshot DIR" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--recorded", "--policy", str(ACME / "policy.json")), "exactly one of --policy"),
        ((), "exactly one of --policy"),
        (("--recorded", "--entitlements", "current"), "takes no --entitlements"),
        (("--policy", str(ACME / "no-such-policy.json")), "cannot read policy file"),
        (("--policy", str(ACME / "policy.json"), "--entitlements", str(ACME / "no-such-dir")), "no-such-dir"),
    ],
)
def test_cli_bad_input_exits_2(small_log: SQLiteDecisionLog, args: tuple[str, ...], message: str) -> None:
    code, _, err = invoke("replay", "--log", str(small_log.path), *args)
    assert code == 2
    assert message in err


def test_cli_missing_log_exits_2(tmp_path: Path) -> None:
    code, _, err = invoke("replay", "--log", str(tmp_path / "none.db"), "--recorded")
    assert code == 2 and "no decision log there" in err


def test_cli_unknown_policy_digest_exits_2(tmp_path: Path) -> None:
    log = SQLiteDecisionLog(tmp_path / "d.db")
    record_decision(log, load_request("bob-login"), NOW, bytes(10))
    code, out, _ = invoke("replay", "--log", str(log.path), "--recorded")
    assert code == 2
    assert "replayed 1  unchanged 0  changed 0  errors 1" in out
    assert f"the recorded policy {POLICY.digest} is not stored in the log" in out


def test_cli_masking_key_from_the_environment(masked_log: SQLiteDecisionLog) -> None:
    code, out, _ = invoke("replay", "--log", str(masked_log.path), "--recorded", env={"KPB_MASK_KEY": ""})
    assert code == 0, out  # recorded inputs need no key
    code, out, _ = invoke("replay", "--log", str(masked_log.path), "--recorded", "--mask-key-env", "MY_KEY", env={"MY_KEY": "mask-key"})
    assert code == 0, out
