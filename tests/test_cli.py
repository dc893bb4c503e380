"""The kpb command line, run in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import ACME
from keycloak_policy_bridge.cli import main

POLICY = str(ACME / "policy.json")
SNAPSHOT = str(ACME / "entitlements")
NOW = "2026-11-28T08:00:00Z"


def invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_validate_valid_policy_prints_one_line_summary() -> None:
    code, out, _ = invoke("policy", "validate", POLICY)
    assert code == 0
    assert out.startswith(f"{POLICY}: OK: acme-token-policy 2026-11-28.1 (sha256:")
    assert len(out.strip().splitlines()) == 1


def test_validate_broken_policy_lists_every_problem(tmp_path: Path) -> None:
    doc = json.loads((ACME / "policy.json").read_text())
    index = {rule["id"]: i for i, rule in enumerate(doc["rules"])}
    roles, tenant = index["roles-from-app-roles"], index["tenant-from-entitlements"]
    doc["rules"][0]["condition"] = "principal.found =="
    doc["rules"][roles]["claims"]["exp"] = {"value": 1}
    doc["rules"][tenant]["claims"]["tenant"]["from_entitlements"] = "no-such-selector"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    code, out, _ = invoke("policy", "validate", str(bad))
    assert code == 1
    assert "INVALID: policy is invalid: 3 problem(s)" in out
    assert "  $.rules[0].condition: CEL does not compile" in out
    assert f"  $.rules[{roles}].claims.exp: 'exp' is a reserved claim and cannot be set by policy" in out
    assert f"  $.rules[{tenant}].claims.tenant.from_entitlements: unknown selector 'no-such-selector'" in out


def test_evaluate_prints_the_contract_response() -> None:
    args = (
        "evaluate",
        "--policy",
        POLICY,
        "--entitlements",
        SNAPSHOT,
        "--request",
        str(ACME / "requests" / "billing-bot-client-credentials.json"),
        "--now",
        NOW,
    )
    code, out, _ = invoke(*args)
    assert code == 0
    response = json.loads(out)
    for key in ("decision_id", "effect", "claims", "remove_claims", "max_ttl_seconds", "reasons", "policy", "entitlements"):
        assert key in response
    assert response["effect"] == "permit"
    assert response["claims"] == {"roles": ["billing:invoice.read", "billing:invoice.write"], "tenant": "acme-eu"}
    assert response["max_ttl_seconds"] == 300
    assert response["remove_claims"] == ["realm_access", "resource_access"]
    assert set(response["policy"]) == {"id", "version", "digest"}
    assert response["entitlements"] == {
        "snapshot": response["entitlements"]["snapshot"],
        "generated_at": "2026-11-28T02:00:04Z",
        "age_seconds": 21596,
        "stale": False,
    }
    assert len(response["decision_id"]) == 26
    again = json.loads(invoke(*args)[1])
    assert again == response  # the same inputs print the same document, id included


def test_evaluate_deny_still_exits_zero() -> None:
    code, out, _ = invoke(
        "evaluate", "--policy", POLICY, "--entitlements", SNAPSHOT, "--request", str(ACME / "requests" / "carol-refresh.json"), "--now", NOW
    )
    assert code == 0
    assert json.loads(out)["effect"] == "deny"


def test_evaluate_reads_stdin_and_rejects_bad_input(tmp_path: Path) -> None:
    code, _, err = invoke("evaluate", "--policy", POLICY, "--entitlements", SNAPSHOT, "--request", "-", "--now", NOW, stdin="{not json")
    assert code == 2 and "error [invalid_request]: -: not valid JSON (line 1 column 2)" in err
    code, _, err = invoke(
        "evaluate",
        "--policy",
        POLICY,
        "--entitlements",
        str(tmp_path),
        "--request",
        str(ACME / "requests" / "alice-login.json"),
        "--now",
        NOW,
    )
    assert code == 2 and "error [entitlements_invalid]" in err and "no readable manifest.json" in err
    code, _, err = invoke(
        "evaluate",
        "--policy",
        POLICY,
        "--entitlements",
        SNAPSHOT,
        "--request",
        str(ACME / "requests" / "alice-login.json"),
        "--now",
        "yesterday",
    )
    assert code == 2 and "--now" in err


def test_policy_test_passes_and_fails(tmp_path: Path) -> None:
    suite = {
        "spec": "kpb-policy-tests/1",
        "name": "cli",
        "now": NOW,
        "entitlements": str(ACME / "entitlements"),
        "tests": [
            {
                "name": "alice gets roles",
                "request": str(ACME / "requests" / "alice-login.json"),
                "expect": {"effect": "permit", "claims_include": {"roles": ["crm:read"]}},
            },
            {
                "name": "wrong on purpose",
                "request": str(ACME / "requests" / "alice-login.json"),
                "request_patch": {"context": {"tenant": "acme-us"}},
                "expect": {"effect": "permit"},
            },
        ],
    }
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(suite))
    code, out, _ = invoke("policy", "test", POLICY, str(path))
    assert code == 1
    assert "FAIL suite.json :: wrong on purpose" in out
    assert "  effect: expected permit, got deny" in out
    assert out.strip().endswith("policy-tests: 1 passed, 1 failed")


def test_policy_test_bad_suite_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"spec": "kpb-policy-tests/1", "name": "x", "tests": []}))
    code, _, err = invoke("policy", "test", POLICY, str(path))
    assert code == 2 and "error [policy_test_invalid]" in err and "$.tests" in err


def test_policy_schema_command_prints_the_schema() -> None:
    code, out, _ = invoke("policy", "schema")
    assert code == 0 and json.loads(out)["$id"].endswith("policy.v1.schema.json")


def test_entitlements_check_reports_counts_and_warnings() -> None:
    code, out, _ = invoke("entitlements", "check", SNAPSHOT)
    assert code == 0
    assert f"{SNAPSHOT}: OK: acme-2026-11-28T02:00Z from sailpoint_isc, generated 2026-11-28T02:00:04Z" in out
    assert "  22 records, 8 subjects, digest sha256:" in out
    assert "  subjects by type: ai_agent 2, human 4, service_account 2" in out
    assert "  warning [orphan] subject S2002: service_account owner E1003 is a terminated human, not an active human" in out


def test_entitlements_check_rejects_with_every_reason_and_exit_1(tmp_path: Path) -> None:
    import shutil

    target = tmp_path / "snap"
    shutil.copytree(ACME / "entitlements", target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["complete"] = False
    (target / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = invoke("entitlements", "check", str(target))
    assert code == 1
    assert "REJECTED" in out and "[incomplete_export] $.complete" in out and "keeps its last good snapshot" in out


def test_entitlements_check_drop_guard_against_a_baseline(tmp_path: Path) -> None:
    import hashlib
    import shutil

    target = tmp_path / "snap"
    shutil.copytree(ACME / "entitlements", target)
    lines = (target / "entitlements.csv").read_text().splitlines()[:5]
    data = ("\n".join(lines) + "\n").encode()
    (target / "entitlements.csv").write_bytes(data)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["files"][0].update(records=4, sha256=hashlib.sha256(data).hexdigest())
    (target / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = invoke("entitlements", "check", str(target), "--baseline", SNAPSHOT, "--json")
    report = json.loads(out)
    assert code == 1 and report["accepted"] is False
    assert [i["code"] for i in report["issues"]] == ["record_drop"]
    assert invoke("entitlements", "check", str(target), "--baseline", SNAPSHOT, "--allow-drop")[0] == 0


def test_entitlements_check_reads_context_feeds() -> None:
    code, out, _ = invoke("entitlements", "check", str(ACME / "feeds" / "risk"))
    assert code == 0 and "OK: context feed 'risk', 4 records for 4 subjects" in out


def test_entitlements_profiles_lists_the_shipped_profiles() -> None:
    code, out, _ = invoke("entitlements", "profiles")
    names = [line.split(":")[0] for line in out.splitlines()]
    assert code == 0 and names == [
        "entra-access-package-assignments",
        "sailpoint-iiq-identity-entitlements",
        "sailpoint-isc-search-export",
        "saviynt-access-report",
    ]


def test_evaluate_with_a_feed_records_it() -> None:
    args = (
        "evaluate",
        "--policy",
        POLICY,
        "--entitlements",
        SNAPSHOT,
        "--feed",
        str(ACME / "feeds" / "risk"),
        "--request",
        str(ACME / "requests" / "alice-login.json"),
        "--now",
        NOW,
    )
    code, out, _ = invoke(*args)
    response = json.loads(out)
    assert code == 0 and response["effect"] == "permit"
    assert response["context_feeds"]["risk"]["age_seconds"] == 7200 and response["context_feeds"]["risk"]["stale"] is False


def test_evaluate_with_log_records_and_decisions_commands_read_it(tmp_path: Path) -> None:
    db = str(tmp_path / "d.db")
    base = ("evaluate", "--policy", POLICY, "--entitlements", SNAPSHOT, "--now", NOW, "--log", db)
    ids = []
    for name in ("alice-login.json", "carol-refresh.json"):
        code, out, _ = invoke(*base, "--request", str(ACME / "requests" / name))
        assert code == 0
        ids.append(json.loads(out)["decision_id"])
    code, out, _ = invoke("decisions", "list", "--log", db, "--effect", "deny")
    assert code == 0 and ids[1] in out and ids[0] not in out and "deny-inactive-principal" in out
    code, out, _ = invoke("decisions", "show", ids[0], "--log", db)
    assert code == 0 and json.loads(out)["result"]["claims"]["tenant"] == "acme-eu"
    code, out, _ = invoke("decisions", "export", "--log", db)
    assert [json.loads(line)["decision_id"] for line in out.splitlines()] == ids
    code, out, _ = invoke("decisions", "verify", "--log", db)
    assert code == 0 and out.startswith("OK: 2 records")
    code, _, err = invoke("decisions", "show", "01NOPE", "--log", db)
    assert code == 2 and "error [decision_not_found]" in err


def test_evaluate_masks_with_a_key_from_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    db = str(tmp_path / "d.db")
    args = (
        "evaluate",
        "--policy",
        POLICY,
        "--entitlements",
        SNAPSHOT,
        "--now",
        NOW,
        "--log",
        db,
        "--mask",
        "context.ip",
        "--request",
        str(ACME / "requests" / "alice-login.json"),
    )
    code, _, err = invoke(*args)
    assert code == 2 and "KPB_MASK_KEY" in err
    monkeypatch.setenv("KPB_MASK_KEY", "s3cret")
    code, out, _ = invoke(*args)
    record = json.loads(invoke("decisions", "show", json.loads(out)["decision_id"], "--log", db)[1])
    assert record["masked"] == ["context.ip"] and record["request"]["context"]["ip"].startswith("hmac-sha256:")


def test_checkpoint_and_verify_with_a_signing_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    db = str(tmp_path / "d.db")
    invoke(
        "evaluate",
        "--policy",
        POLICY,
        "--entitlements",
        SNAPSHOT,
        "--now",
        NOW,
        "--log",
        db,
        "--request",
        str(ACME / "requests" / "alice-login.json"),
    )
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "p.pem").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    code, out, _ = invoke("decisions", "checkpoint", "--log", db, "--key", str(tmp_path / "k.pem"), "--key-id", "w1")
    assert code == 0 and json.loads(out)["signature"]
    (tmp_path / "cp.jsonl").write_text(out)
    code, out, _ = invoke(
        "decisions", "verify", "--log", db, "--checkpoints", str(tmp_path / "cp.jsonl"), "--public-key", str(tmp_path / "p.pem")
    )
    assert code == 0 and "1 checkpoint(s) matched" in out
    import sqlite3

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE decisions SET effect = 'deny'")
    code, out, _ = invoke("decisions", "verify", "--log", db)
    assert code == 1 and out.startswith("TAMPERED: record seq 1")


# -- one refusal for a feed name given twice --------------------------------------------------


RISK = str(ACME / "feeds" / "risk")


def _logged_decision(db: str) -> str:
    """A decision recorded in a new log at ``db`` (alice's login, with the risk feed); its id."""
    code, out, err = invoke(
        "evaluate",
        "--policy",
        POLICY,
        "--entitlements",
        SNAPSHOT,
        "--feed",
        RISK,
        "--now",
        NOW,
        "--log",
        db,
        "--request",
        str(ACME / "requests" / "alice-login.json"),
    )
    assert code == 0, err
    decision_id: str = json.loads(out)["decision_id"]
    return decision_id


FEED_COMMANDS = {
    "evaluate": lambda db, feeds: [
        "evaluate",
        "--policy",
        POLICY,
        "--entitlements",
        SNAPSHOT,
        "--now",
        NOW,
        "--request",
        str(ACME / "requests" / "alice-login.json"),
        *feeds,
    ],
    "replay": lambda db, feeds: ["replay", "--log", db, "--policy", POLICY, *feeds],
    "explain": lambda db, feeds: ["explain", _logged_decision(db), "--log", db, "--policy", POLICY, "--entitlements", SNAPSHOT, *feeds],
    "drift": lambda db, feeds: ["drift", "--log", db, "--policy", POLICY, "--entitlements", SNAPSHOT, "--now", NOW, *feeds],
}


@pytest.mark.parametrize("command", sorted(FEED_COMMANDS))
def test_every_command_refuses_two_feeds_of_one_name_the_same_way(command: str, tmp_path: Path) -> None:
    """kpb evaluate, replay, explain and drift: exit 2, naming the feed and both directories
    (kpb serve refuses KPB_FEEDS the same way: tests/test_config.py)."""
    second = tmp_path / "risk-copy"
    shutil.copytree(RISK, second)  # the same manifest: a feed named risk
    db = str(tmp_path / "d.db")
    if command != "explain":
        _logged_decision(db)  # something to replay and drift over
    code, out, err = invoke(*FEED_COMMANDS[command](db, ["--feed", RISK, "--feed", str(second)]))
    assert code == 2, out + err
    assert err == f"error [duplicate_feed]: two context feeds are named 'risk': {RISK} and {second} (give each feed name once)\n"
    assert out == ""


def test_two_feeds_of_different_names_are_both_used(tmp_path: Path) -> None:
    other = tmp_path / "posture"
    shutil.copytree(RISK, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "feed": "posture"}))
    code, out, err = invoke(*FEED_COMMANDS["evaluate"]("", ["--feed", RISK, "--feed", str(other)]))
    assert code == 0, err
    assert sorted(json.loads(out)["context_feeds"]) == ["posture", "risk"]


def test_commands_read_the_compiled_snapshot_where_the_bridge_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With KPB_SNAPSHOT_CACHE set (a bridge's host), evaluate reads the export's compiled file
    (compiling it there first) and prints exactly what an in-memory load prints."""
    args = (
        "evaluate",
        "--policy",
        POLICY,
        "--entitlements",
        SNAPSHOT,
        "--request",
        str(ACME / "requests" / "alice-login.json"),
        "--now",
        NOW,
    )
    in_memory = json.loads(invoke(*args)[1])
    monkeypatch.setenv("KPB_SNAPSHOT_CACHE", str(tmp_path / "snapshots"))
    code, out, _ = invoke(*args)
    assert code == 0 and json.loads(out) == in_memory
    assert len(list((tmp_path / "snapshots").glob("*.kpbsnap"))) == 1
