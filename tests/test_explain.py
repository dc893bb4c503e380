"""Explain (issue 4): per claim value, the rule, its condition and the export rows behind it;
whether the current inputs still grant it; deny explanations; `kpb explain ID`."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import ACME, NOW
from keycloak_policy_bridge.cli import main
from keycloak_policy_bridge.context_feed import ContextFeed, load_feed
from keycloak_policy_bridge.decision_log import SQLiteDecisionLog, SQLitePolicyStore
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.errors import DecisionLogError, DecisionNotFoundError
from keycloak_policy_bridge.explain import Explanation, ValueExplanation, explain
from keycloak_policy_bridge.policy import Policy, compile_policy, load_policy
from keycloak_policy_bridge.record import DecisionRecord, Masker, build_record
from keycloak_policy_bridge.replay import replay
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import load_snapshot
from keycloak_policy_bridge.ulid import make_ulid

NOW_TEXT = "2026-11-28T08:00:00Z"
REQUESTS = ("alice-login", "carol-refresh", "agent-exchange-for-alice", "bob-login")


@dataclass(frozen=True)
class AcmeLog:
    """A decision log holding one decision per acme request, and the inputs behind them."""

    path: Path
    ids: dict[str, str]  # request name -> decision id
    policy: Policy
    snapshot: Snapshot
    feeds: dict[str, ContextFeed]

    def record(self, name: str) -> DecisionRecord:
        log = SQLiteDecisionLog(self.path)
        try:
            return log.get(self.ids[name])
        finally:
            log.close()


def build_log(path: Path, masker: Masker | None = None) -> AcmeLog:
    """Record the acme example requests at NOW through the core, as the service would."""
    policy = load_policy(ACME / "policy.json")
    snapshot = load_snapshot(ACME / "entitlements")
    feeds = {"risk": load_feed(ACME / "feeds" / "risk")}
    log = SQLiteDecisionLog(path)
    ids = {}
    try:
        SQLitePolicyStore(path).store_policy(policy.document)
        for name in REQUESTS:
            request = parse_request(json.loads((ACME / "requests" / f"{name}.json").read_text()))
            decision = evaluate(policy, snapshot, request, NOW, feeds)
            decision_id = make_ulid(NOW, hashlib.sha256(name.encode()).digest())
            log.append(build_record(decision_id, decision, request, snapshot, feeds, masker=masker))
            ids[name] = decision_id
    finally:
        log.close()
    return AcmeLog(path, ids, policy, snapshot, feeds)


def snapshot_without(tmp_path: Path, line: int, replace: tuple[str, str] | None = None) -> Path:
    """A copy of the acme snapshot with export line ``line`` dropped (or edited), manifest updated."""
    target = tmp_path / "current-entitlements"
    shutil.copytree(ACME / "entitlements", target)
    csv = target / "entitlements.csv"
    lines = csv.read_bytes().split(b"\n")
    if replace is None:
        del lines[line - 1]
    else:
        lines[line - 1] = lines[line - 1].replace(replace[0].encode(), replace[1].encode())
    data = b"\n".join(lines)
    csv.write_bytes(data)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    manifest["files"][0]["records"] = sum(1 for x in lines[1:] if x.strip())
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.fixture
def acme_log(tmp_path: Path) -> AcmeLog:
    return build_log(tmp_path / "decisions.db")


def values_of(explanation: Explanation, claim: str) -> dict[Any, ValueExplanation]:
    return {json.dumps(v.value): v for v in explanation.values if v.claim == claim}


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


# -- the core -----------------------------------------------------------------------------------


def test_provenance_reaches_the_export_row(acme_log: AcmeLog) -> None:
    e = explain(acme_log.record("alice-login"), acme_log.policy, current=None, now=NOW)
    assert (e.effect, e.evaluated_at, e.policy_id, e.policy_version) == ("permit", NOW_TEXT, "acme-token-policy", "2026-11-28.1")
    assert e.policy_digest == acme_log.policy.digest and e.snapshot_digest == acme_log.snapshot.digest
    assert e.claims == {"roles": ["crm:read", "crm:write", "finance:approve"], "tenant": "acme-eu"}
    assert e.remove_claims == ("realm_access", "resource_access") and e.masked == ()
    approve = values_of(e, "roles")['"finance:approve"']
    assert approve.still_granted is None
    [source] = approve.sources
    assert source.evaluation_pass == "subject"
    assert source.rule.id == "roles-from-app-roles" and source.rule.known and source.rule.effect == "grant"
    assert source.rule.description.startswith("Rule 2: roles are the effective app_role entitlements")
    assert source.rule.condition is None  # granted whenever its scope matches
    index = next(r.index for r in acme_log.policy.rules if r.id == "roles-from-app-roles")
    assert source.rule.path == f"$.rules[{index}]"
    assert source.grant_path == f"$.rules[{index}].claims.roles"
    assert source.grant_form == "from_entitlements $.selectors.app-roles"
    [row] = source.records
    assert (row.file, row.line, row.origin) == ("entitlements.csv", 4, "entitlements.csv:4")
    assert (row.subject_id, row.source, row.kind, row.value) == ("E1001", "finance", "app_role", "finance:approve")
    assert (row.privilege_level, row.via, row.via_id, row.account) == ("high", "access_profile", "AP-FIN-APPROVER", "alice.f")
    assert row.last_certified_at == "2026-10-01T00:00:00Z"
    tenant = values_of(e, "tenant")['"acme-eu"']
    assert tenant.sources[0].rule.id == "tenant-from-entitlements"
    assert (tenant.sources[0].records[0].line, tenant.sources[0].records[0].last_certified_at) == (5, None)
    json.dumps(e.to_dict())  # the JSON output is plain data


def test_still_granted_with_the_inputs_it_was_decided_on(acme_log: AcmeLog) -> None:
    current = (acme_log.policy, acme_log.snapshot, acme_log.feeds)
    e = explain(acme_log.record("alice-login"), acme_log.policy, current=current, now=NOW)
    assert all(v.still_granted is True and v.now_reasons == () for v in e.values)
    assert e.current is not None and e.current.effect == "permit"
    assert e.current.policy["digest"] == acme_log.policy.digest and e.current.evaluated_at == NOW_TEXT


def test_a_removed_entitlement_is_no_longer_granted(acme_log: AcmeLog, tmp_path: Path) -> None:
    current = (acme_log.policy, load_snapshot(snapshot_without(tmp_path, 4)), acme_log.feeds)
    e = explain(acme_log.record("alice-login"), acme_log.policy, current=current, now=NOW)
    roles = values_of(e, "roles")
    assert roles['"finance:approve"'].still_granted is False
    assert roles['"finance:approve"'].now_reasons[0]["message"] == "no rule grants this value under the current policy and entitlements"
    assert roles['"crm:read"'].still_granted is True and roles['"crm:write"'].still_granted is True
    assert values_of(e, "tenant")['"acme-eu"'].still_granted is True
    # the recorded provenance is unchanged: it says why the token *had* the value
    assert roles['"finance:approve"'].sources[0].records[0].line == 4


def test_a_value_left_out_now_says_why(acme_log: AcmeLog, tmp_path: Path) -> None:
    # The current export says alice's high-privilege role was last certified 119 days ago.
    snapshot = load_snapshot(snapshot_without(tmp_path, 4, replace=("2026-10-01T00:00:00Z", "2026-08-01T00:00:00Z")))
    e = explain(acme_log.record("alice-login"), acme_log.policy, current=(acme_log.policy, snapshot, {}), now=NOW)
    approve = values_of(e, "roles")['"finance:approve"']
    assert approve.still_granted is False
    assert [r["rule"] for r in approve.now_reasons] == ["roles-from-app-roles"]
    assert "certification within 90 days is required" in approve.now_reasons[0]["message"]


def test_a_current_deny_withdraws_every_value(acme_log: AcmeLog, tmp_path: Path) -> None:
    snapshot = load_snapshot(snapshot_without(tmp_path, 2, replace=(",active,,a11ce", ",terminated,,a11ce")))
    e = explain(acme_log.record("alice-login"), acme_log.policy, current=(acme_log.policy, snapshot, {}), now=NOW)
    assert e.current is not None and e.current.effect == "deny"
    assert e.values and all(v.still_granted is False for v in e.values)
    assert {r["rule"] for v in e.values for r in v.now_reasons} == {"deny-inactive-principal"}


def test_a_deny_is_explained_with_the_rules_condition(acme_log: AcmeLog) -> None:
    e = explain(acme_log.record("carol-refresh"), acme_log.policy, current=None, now=NOW)
    assert e.effect == "deny" and e.values == () and e.claims == {}
    [reason] = e.reasons
    assert (reason.kind, reason.message, reason.evaluation_pass) == ("deny", "IGA status is not active", "subject")
    assert reason.rule.id == "deny-inactive-principal" and reason.rule.effect == "deny"
    assert reason.rule.condition == "principal.found && principal.status != 'active'"
    assert reason.rule.description == "Rule 1: only identities whose IGA status is active get tokens."
    assert reason.rule.path == "$.rules[1]"
    assert e.principals[0]["status"] == "terminated"


def test_delegated_values_show_both_passes_and_the_engine_written_act(acme_log: AcmeLog) -> None:
    e = explain(acme_log.record("agent-exchange-for-alice"), acme_log.policy, current=None, now=NOW)
    read = values_of(e, "roles")['"crm:read"']
    assert [(s.evaluation_pass, s.records[0].subject_id, s.records[0].line) for s in read.sources] == [
        ("subject", "E1001", 2),
        ("actor", "A3001", 21),
    ]
    [act] = [v for v in e.values if v.claim == "act"]
    assert act.sources == () and act.note is not None and "actor chain" in act.note
    assert {(r.rule.id, r.rule.builtin, r.kind) for r in e.reasons} == {("kpb:delegation", True, "omit")}
    assert e.max_ttl_seconds == 300


MASKER = Masker(("subject.id", "subject.username", "subject.email", "context.ip"), b"k" * 32)


def test_masked_join_keys_are_restored_with_the_masking_key(tmp_path: Path) -> None:
    acme = build_log(tmp_path / "masked.db", MASKER)
    record = acme.record("alice-login")
    assert record.request["subject"]["id"].startswith("hmac-sha256:")
    e = explain(record, acme.policy, current=(acme.policy, acme.snapshot, acme.feeds), now=NOW, masker=Masker((), MASKER.key))
    assert set(e.masked) == set(MASKER.paths)
    assert all(v.still_granted for v in e.values) and e.unresolvable is None
    assert e.notes == ("masked request paths other than join keys were re-evaluated as their keyed hashes",)


def test_without_the_masking_key_the_current_part_is_unresolvable(tmp_path: Path) -> None:
    """Alice was joined by her (masked) Keycloak id: which identity it is today is unknown
    without the key, so explain says so instead of guessing, and still explains the record."""
    acme = build_log(tmp_path / "masked.db", MASKER)
    record = acme.record("alice-login")
    current = (acme.policy, acme.snapshot, acme.feeds)
    e = explain(record, acme.policy, current=current, now=NOW)
    assert e.unresolvable == (
        "the subject was joined by the masked subject.id; re-evaluating it against another snapshot needs the masking key"
    )
    assert e.current is None and e.notes == () and all(v.still_granted is None for v in e.values)
    assert e.to_dict()["unresolvable"] == e.unresolvable
    assert explain(record, acme.policy, current=None, now=NOW).to_dict().keys() == e.to_dict().keys() - {"unresolvable"}
    keyed = explain(record, acme.policy, current=current, now=NOW, masker=Masker((), MASKER.key))
    assert (e.values[0].sources, e.reasons, e.claims) == (keyed.values[0].sources, keyed.reasons, keyed.claims)
    wrong_key = explain(record, acme.policy, current=current, now=NOW, masker=Masker((), b"x" * 32))
    assert wrong_key.unresolvable == "the masking key is not the one subject.id was masked with"


def test_explain_and_replay_agree_on_masked_records(tmp_path: Path) -> None:
    acme = build_log(tmp_path / "masked.db", MASKER)
    record = acme.record("alice-login")
    current = load_snapshot(snapshot_without(tmp_path, 4))  # finance:approve is gone
    key = Masker((), MASKER.key)
    e = explain(record, acme.policy, current=(acme.policy, current, acme.feeds), now=record.evaluated_at, masker=key)
    lost = [v.value for v in e.values if v.still_granted is False]
    [changed] = replay([record], acme.policy, entitlements=current, feeds=acme.feeds, masker=key).changed_decisions
    assert lost == changed.removed["roles"] == ["finance:approve"]
    without = explain(record, acme.policy, current=(acme.policy, current, acme.feeds), now=record.evaluated_at)
    [failed] = replay([record], acme.policy, entitlements=current, feeds=acme.feeds).failed_decisions
    assert without.unresolvable == failed.error


def test_a_policy_other_than_the_recorded_one_is_refused(acme_log: AcmeLog) -> None:
    document = dict(acme_log.policy.document, version="other")
    with pytest.raises(DecisionLogError, match="was evaluated with sha256:"):
        explain(acme_log.record("alice-login"), compile_policy(document), current=None, now=NOW)


def test_an_unknown_decision_id_is_not_found(acme_log: AcmeLog) -> None:
    log = SQLiteDecisionLog(acme_log.path)
    try:
        with pytest.raises(DecisionNotFoundError, match="no decision '01KB000000000000000000NONE'"):
            log.get("01KB000000000000000000NONE")
    finally:
        log.close()


# -- kpb explain ID -------------------------------------------------------------------------------


def test_cli_explains_a_decision_down_to_the_row(acme_log: AcmeLog) -> None:
    code, out, err = invoke("explain", acme_log.ids["alice-login"], "--log", str(acme_log.path))
    assert code == 0, err
    assert f"decision {acme_log.ids['alice-login']}: PERMIT at {NOW_TEXT}" in out
    block = out.split('roles = "finance:approve"')[1].split("\n  tenant")[0]
    assert "granted by rule roles-from-app-roles (subject pass) at $.rules[" in block
    assert "condition: none (the rule's scope alone)" in block
    assert "record entitlements.csv:4: E1001 finance app_role finance:approve (high, via access_profile AP-FIN-APPROVER" in block
    assert "still granted now" not in out  # no current inputs given


def test_cli_still_granted_now(acme_log: AcmeLog, tmp_path: Path) -> None:
    current = snapshot_without(tmp_path, 4)
    code, out, err = invoke(
        "explain",
        acme_log.ids["alice-login"],
        "--log",
        str(acme_log.path),
        "--policy",
        str(ACME / "policy.json"),
        "--entitlements",
        str(current),
        "--feed",
        str(ACME / "feeds" / "risk"),
        "--now",
        NOW_TEXT,
    )
    assert code == 0, err
    read, approve = out.split('roles = "crm:read"')[1], out.split('roles = "finance:approve"')[1]
    assert read.split("\n  roles")[0].rstrip().endswith("still granted now: yes")
    assert "still granted now: no" in approve.split("\n  tenant")[0]
    assert "now: PERMIT under acme-token-policy" in out


def test_cli_json(acme_log: AcmeLog) -> None:
    code, out, _ = invoke("explain", acme_log.ids["alice-login"], "--log", str(acme_log.path), "--json")
    assert code == 0
    document = json.loads(out)["explanation"]
    approve = next(v for v in document["values"] if v["value"] == "finance:approve")
    assert approve["sources"][0]["rule"]["id"] == "roles-from-app-roles"
    assert approve["sources"][0]["records"][0]["origin"] == {"file": "entitlements.csv", "line": 4}


def test_cli_deny(acme_log: AcmeLog) -> None:
    code, out, _ = invoke("explain", acme_log.ids["carol-refresh"], "--log", str(acme_log.path))
    assert code == 0
    assert "DENY" in out and "denied because:" in out
    assert "[deny] deny-inactive-principal (subject pass): IGA status is not active" in out
    assert "condition: principal.found && principal.status != 'active'" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["01KB000000000000000000NONE"], "error [decision_not_found]: no decision '01KB000000000000000000NONE'"),
        ([], "give either a decision ID or --token"),
        (["X", "--policy", str(ACME / "policy.json")], "--policy and --entitlements go together"),
        (["X", "--issuer", "https://kc"], "apply to --token"),
    ],
)
def test_cli_errors_exit_2(acme_log: AcmeLog, args: list[str], message: str) -> None:
    code, _, err = invoke("explain", *args, "--log", str(acme_log.path))
    assert code == 2
    assert message in err


def test_cli_corrupt_or_missing_log(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    code, _, err = invoke("explain", "01KB000000000000000000NONE", "--log", str(corrupt))
    assert code == 2 and "error [decision_log_unavailable]" in err
    assert corrupt.read_bytes() == b"this is not a database" * 100  # nothing changed
    empty = tmp_path / "empty.db"
    empty.touch()
    code, _, err = invoke("explain", "01KB000000000000000000NONE", "--log", str(empty))
    assert code == 2 and "not a decision log" in err and empty.stat().st_size == 0
    code, _, err = invoke("explain", "01KB000000000000000000NONE", "--log", str(tmp_path / "absent.db"))
    assert code == 2 and "absent.db: no decision log there" in err and not (tmp_path / "absent.db").exists()


def test_cli_masking_key_from_the_environment(tmp_path: Path) -> None:
    acme = build_log(tmp_path / "masked.db", MASKER)
    args = ["explain", acme.ids["alice-login"], "--log", str(acme.path), "--policy", str(ACME / "policy.json")]
    args += ["--entitlements", str(ACME / "entitlements"), "--now", NOW_TEXT]
    result = CliRunner().invoke(main, [*args, "--mask-key-env", "MY_KEY"], env={"MY_KEY": MASKER.key.decode()})
    assert result.exit_code == 0, result.stderr
    assert "still granted now: yes" in result.stdout and "UNRESOLVABLE" not in result.stdout
    result = CliRunner().invoke(main, args, env={"KPB_MASK_KEY": None})
    assert result.exit_code == 0, result.stderr  # the recorded decision is still explained
    assert 'roles = "finance:approve"' in result.stdout and "still granted now" not in result.stdout
    assert "now: UNRESOLVABLE: the subject was joined by the masked subject.id" in result.stdout
    assert "(the masking key is read from the environment variable KPB_MASK_KEY)" in result.stdout
