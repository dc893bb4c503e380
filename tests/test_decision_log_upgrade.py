"""``kpb decisions upgrade``: a ``kpb-decision/1`` log rewritten into a new ``/2`` log, re-verified.

The committed ``/1`` log (tests/fixtures/decision-log-v1, written by the code before record v2)
is upgraded on a copy with the keys it was written with (``produce.py``). The new log must
verify, be smaller, and answer every decision exactly as the old one: the same responses, rules,
effects, token expiries and stored columns, the same reproduction, explanations, list, replays
and drift (the outputs ``expected/`` holds for the old log), and activations a bridge follows.

Refusals (exit 2, the new file never created, nothing left behind): the new file exists, the old
log does not verify (a body byte or a column changed, another activation key), no activation
key. A ``/1`` record whose ``/2`` form would answer differently is carried over unchanged.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import test_record_v1_compat as v1
from conftest import ACME
from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.cli import main
from keycloak_policy_bridge.decision_log import ActivationKeys, Nonce, Query, SQLiteDecisionLog, SQLitePolicyStore
from keycloak_policy_bridge.decision_log import upgrade as upgrade_module
from keycloak_policy_bridge.decision_log.chain import RecordColumns, chain_link
from keycloak_policy_bridge.decision_log.upgrade import Verification, upgrade_file
from keycloak_policy_bridge.errors import AuthenticationError, DecisionLogError
from keycloak_policy_bridge.record import RECORD_SCHEMA, RECORD_SCHEMA_V1, DecisionRecord

KEYS = ActivationKeys((("fixture", v1.ACTIVATION_KEY),))
DEFAULT_TTL = timedelta(hours=1)  # what the CLI opens a log with, and the upgrade's default
OLD_HEAD = json.loads((v1.FIXTURE / "checkpoints.jsonl").read_text())["head_hash"]
DENY_WITH_MESSAGE = "01M8GJP4000000000000000001"  # seq 1: a deny whose response has a user_message
EXTRA_ID = "01M8GJZCVG000000000000000S"  # a /2 decision appended to a copy of the /1 log


@dataclass(frozen=True)
class Run:
    exit: int
    stdout: str
    stderr: str


def kpb(*args: str, env: dict[str, str | None] | None = None) -> Run:
    result = CliRunner().invoke(main, list(args), env={**v1.ENV, **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr)


def upgrade(old: str, new: str, *extra: str, env: dict[str, str | None] | None = None) -> Run:
    return kpb("decisions", "upgrade", "--log", old, "--out", new, *extra, env=env)


def witness(db: str) -> tuple[str, ...]:
    folder = Path(db).parent
    return ("--checkpoints", str(folder / "checkpoints.jsonl"), "--public-key", str(folder / "witness-public.pem"))


def records(db: str | Path) -> list[DecisionRecord]:
    found = list(SQLiteDecisionLog(Path(db), readonly=True).iterate(Query(limit=None)))
    assert all(isinstance(r, DecisionRecord) for r in found)
    return [r for r in found if isinstance(r, DecisionRecord)]


def columns(db: str | Path) -> list[RecordColumns]:
    return list(SQLiteDecisionLog(Path(db), readonly=True).stored_columns())


def directory_after_refusal(db: str) -> list[str]:
    """What a refused upgrade may leave: the old log's folder exactly as copy_fixture made it."""
    return sorted(p.name for p in Path(db).parent.iterdir())


def rewrite_body(db: str, seq: int, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit the /1 body of record ``seq`` and recompute the chain from it on, as someone with
    write access and the code could: the log still verifies (without its old checkpoint)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            f"SELECT seq, {', '.join(RecordColumns.NAMES)}, CAST(body AS BLOB), prev_hash FROM decisions WHERE seq >= ? ORDER BY seq",
            (seq,),
        ).fetchall()
        prev = rows[0][-1]
        for row in rows:
            body = row[10]
            if row[0] == seq:
                document = json.loads(body)
                edit(document)
                body = canonical_json(document)
            link = chain_link(prev, tuple(row[1:10]), body)
            conn.execute("UPDATE decisions SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?", (body, prev, link, row[0]))
            prev = link


# -- the fixture, upgraded -------------------------------------------------------------------------


@dataclass(frozen=True)
class Upgraded:
    old: str
    new: str
    run: Run


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> Upgraded:
    old = v1.copy_fixture(tmp_path_factory.mktemp("upgrade") / "log")
    new = str(Path(old).parent / "decisions-v2.db")
    return Upgraded(old, new, upgrade(old, new, *witness(old)))


def test_the_upgrade_succeeds_and_reports(upgraded: Upgraded) -> None:
    run = upgraded.run
    assert run.exit == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"upgraded {upgraded.old} -> {upgraded.new}"
    assert "  records      24: 24 converted to kpb-decision/2, 0 kept as kpb-decision/1, 0 already kpb-decision/2" in lines
    assert "  policies     2 copied (same digests)" in lines
    assert "  activations  2 copied, sealed (KPB_ACTIVATION_KEYS); 0 unsealed legacy activation(s) left out" in lines
    before, after = os.path.getsize(upgraded.old), os.path.getsize(upgraded.new)
    assert f"  size         {before:,} bytes -> {after:,} bytes ({100 * after / before:.0f}%)" in lines
    old_id = SQLiteDecisionLog(Path(upgraded.old), readonly=True).log_id()
    new_id = SQLiteDecisionLog(Path(upgraded.new), readonly=True).log_id()
    assert f"  log id       {old_id} -> {new_id}" in lines
    assert f"  head         {OLD_HEAD}" in lines
    assert "  verified     old: seq 1..24, 1 checkpoint(s) matched; new: verifies, every decision answers as before" in lines
    assert max(len(line) for line in lines if upgraded.new not in line) <= 120  # but for the paths
    assert f"  kpb decisions checkpoint --log {upgraded.new} --key WITNESS-KEY.pem >> NEW-CHECKPOINTS.jsonl" in lines
    assert len(lines) <= 24  # one screen
    assert v1.ACTIVATION_KEY.hex() not in run.stdout + run.stderr


def test_the_new_log_verifies_is_smaller_and_is_v2(upgraded: Upgraded) -> None:
    out = kpb("decisions", "verify", "--log", upgraded.new)
    assert out.exit == 0 and out.stdout.startswith("OK: 24 records (seq 1..24), head "), out.stdout
    assert "2 activation(s) sealed, MACs checked (KPB_ACTIVATION_KEYS)" in out.stdout
    new_head = out.stdout.split("head ")[1].split(",")[0]
    assert f"            -> {new_head} (a new chain, from genesis)" in upgraded.run.stdout.splitlines()
    assert os.path.getsize(upgraded.new) < os.path.getsize(upgraded.old)
    assert {r.schema for r in records(upgraded.new)} == {RECORD_SCHEMA}
    assert sorted(p.name for p in Path(upgraded.new).parent.iterdir() if "upgrading" in p.name) == []  # no temporary file left


def test_the_new_log_says_where_it_came_from(upgraded: Upgraded) -> None:
    log = SQLiteDecisionLog(Path(upgraded.new), readonly=True)
    origin = log.upgraded_from()
    assert origin["upgraded_from_log_id"] == SQLiteDecisionLog(Path(upgraded.old), readonly=True).log_id()
    assert origin["upgraded_from_head_hash"] == OLD_HEAD
    assert datetime.now(UTC) - datetime.fromisoformat(origin["upgraded_at"]) < timedelta(minutes=5)
    assert log.log_id() != origin["upgraded_from_log_id"]  # a new log: old checkpoints do not apply
    assert SQLiteDecisionLog(Path(upgraded.old), readonly=True).upgraded_from() == {}


def test_every_record_answers_as_before(upgraded: Upgraded) -> None:
    old, new = records(upgraded.old), records(upgraded.new)
    assert [r.decision_id for r in new] == [r.decision_id for r in old] == v1.DECISION_IDS
    for a, b in zip(old, new, strict=True):
        assert b.response() == a.response(), a.decision_id
        assert (b.rules, b.effect, b.token_expires_at(DEFAULT_TTL)) == (a.rules, a.effect, a.token_expires_at(DEFAULT_TTL))
        assert b == replace(a, schema=RECORD_SCHEMA)  # the same record, only its format changed
    assert columns(upgraded.new) == columns(upgraded.old)  # what queries filter on, expiry included


@pytest.mark.parametrize(
    "name",
    ["reproduce.json", "list.txt", "replay-candidate.json", "replay-current.json", "drift.json"]
    + [f"explain-{i}.json" for i in v1.DECISION_IDS[::5]],
)
def test_the_new_log_prints_what_the_old_one_printed(upgraded: Upgraded, name: str) -> None:
    """Reproduction (0 changed), explanations, the list, replays and drift: on the new log, the
    outputs the code that wrote the old log printed for it (``expected/``)."""
    out = kpb(*v1.commands(upgraded.new)[name])
    assert (out.exit, out.stdout) == (v1.expected(name).exit, v1.expected(name).stdout)


def test_explain_gives_the_same_json_on_both_logs(upgraded: Upgraded) -> None:
    for decision_id in v1.DECISION_IDS[1::6]:
        name = f"explain-{decision_id}.json"
        assert kpb(*v1.commands(upgraded.new)[name]).stdout == kpb(*v1.commands(upgraded.old)[name]).stdout


def test_activations_are_sealed_and_the_bridge_follows_the_latest(upgraded: Upgraded) -> None:
    old = SQLitePolicyStore(Path(upgraded.old), activation_keys=KEYS, readonly=True)
    new = SQLitePolicyStore(Path(upgraded.new), activation_keys=KEYS, readonly=True)
    history = new.activation_history()
    assert [(a.digest, a.version, a.activated_by, a.activated_at) for a in history] == [
        (a.digest, a.version, a.activated_by, a.activated_at) for a in old.activation_history()
    ]
    assert all(a.hash is not None and a.mac is not None and a.key_id == "fixture" for a in history)
    latest = new.latest_activation()
    assert latest is not None and latest.version == "2026-11-29.1" and new.activation_problem(latest) is None
    assert new.policy_digests() == old.policy_digests()
    for policy_digest in old.policy_digests():
        assert new.policy(policy_digest) == old.policy(policy_digest)


# -- refusals: exit 2, nothing written ---------------------------------------------------------------


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    old = v1.copy_fixture(tmp_path / "log")
    new = Path(old).parent / "taken.db"
    new.write_text("someone else's file")
    before = directory_after_refusal(old)
    out = upgrade(old, str(new))
    assert out.exit == 2 and out.stdout == ""
    assert out.stderr == f"error [decision_log_unavailable]: {new}: already exists; an upgrade never overwrites a file\n"
    assert new.read_text() == "someone else's file" and directory_after_refusal(old) == before


@pytest.mark.parametrize(
    ("tamper", "found"),
    [
        ("body", "record seq 5 (decision 01M8GJP7X00000000000000005): hash does not match its content; the record was modified"),
        ("column", "record seq 7 (decision 01M8GJP9VG0000000000000007): hash does not match its content; the record was modified"),
        ("checkpoint", "checkpoint at seq 24: head hash differs from the log; records up to seq 24 were rewritten"),
    ],
)
def test_a_log_that_does_not_verify_is_refused(tmp_path: Path, tamper: str, found: str) -> None:
    old = v1.copy_fixture(tmp_path / "log")
    with sqlite3.connect(old) as conn:
        if tamper == "body":  # one byte of a /1 body
            (body,) = conn.execute("SELECT CAST(body AS BLOB) FROM decisions WHERE seq = 5").fetchone()
            i = body.index(b'"deny"') + 2
            conn.execute("UPDATE decisions SET body = ? WHERE seq = 5", (body[:i] + bytes([body[i] ^ 1]) + body[i + 1 :],))
        elif tamper == "column":
            conn.execute("UPDATE decisions SET client_id = 'another-client' WHERE seq = 7")
    if tamper == "checkpoint":  # a consistent rewrite (chain recomputed): only the witness catches it
        rewrite_body(old, 24, lambda document: document["result"].update(claims={}))
    before = directory_after_refusal(old)
    new = Path(old).parent / "decisions-v2.db"
    out = upgrade(old, str(new), *witness(old))
    assert out.exit == 2 and out.stdout == ""
    assert out.stderr.startswith(f"error [decision_log_tampered]: {old}: does not verify: {found}"), out.stderr
    assert not new.exists() and directory_after_refusal(old) == before


def test_no_activation_key_is_refused(tmp_path: Path) -> None:
    old = v1.copy_fixture(tmp_path / "log")
    before = directory_after_refusal(old)
    new = Path(old).parent / "decisions-v2.db"
    out = upgrade(old, str(new), env={"KPB_ACTIVATION_KEYS": None, "KPB_HMAC_SECRETS": None})
    assert out.exit == 2 and out.stderr.startswith("error [config_invalid]: no activation key: set KPB_ACTIVATION_KEYS")
    assert not new.exists() and directory_after_refusal(old) == before


def test_another_activation_key_is_refused_and_never_shown(tmp_path: Path) -> None:
    old = v1.copy_fixture(tmp_path / "log")
    new = Path(old).parent / "decisions-v2.db"
    other = "ab" * 32
    out = upgrade(old, str(new), env={"KPB_ACTIVATION_KEYS": f"other={other}"})
    assert out.exit == 2 and out.stderr.startswith(f"error [decision_log_tampered]: {old}: does not verify: activation seq 1 ")
    assert "'fixture', which is not configured" in out.stderr
    assert other not in out.stderr and v1.ACTIVATION_KEY.hex() not in out.stderr
    assert not new.exists()


def test_a_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = v1.copy_fixture(tmp_path / "log")
    before = directory_after_refusal(old)

    def broken(*_: Any) -> None:
        raise DecisionLogError("disk full")

    monkeypatch.setattr(SQLiteDecisionLog, "record_upgrade", broken)
    new = Path(old).parent / "decisions-v2.db"
    with pytest.raises(DecisionLogError, match="disk full"):
        upgrade_file(Path(old), new, Verification(KEYS), DEFAULT_TTL, datetime.now(UTC))
    assert not new.exists() and directory_after_refusal(old) == before


def test_a_file_that_appears_meanwhile_is_not_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = v1.copy_fixture(tmp_path / "log")
    new = Path(old).parent / "decisions-v2.db"
    settle = upgrade_module._settle

    def racing(path: Path) -> None:
        settle(path)
        new.write_text("written meanwhile")

    monkeypatch.setattr(upgrade_module, "_settle", racing)
    with pytest.raises(DecisionLogError, match="appeared during the upgrade; it was not overwritten"):
        upgrade_file(Path(old), new, Verification(KEYS), DEFAULT_TTL, datetime.now(UTC))
    assert new.read_text() == "written meanwhile"
    assert [p.name for p in new.parent.iterdir() if "upgrading" in p.name] == []


def test_the_new_log_is_no_more_readable_than_the_old(tmp_path: Path) -> None:
    old = v1.copy_fixture(tmp_path / "log")
    os.chmod(old, 0o600)
    new = Path(old).parent / "decisions-v2.db"
    assert upgrade(old, str(new)).exit == 0
    assert stat.S_IMODE(new.stat().st_mode) == 0o600


# -- a record the /2 form would change is kept as /1 -------------------------------------------------


def test_a_record_whose_v2_form_would_answer_differently_is_kept_as_v1(tmp_path: Path) -> None:
    """A deny recorded before ``user_message`` existed: its ``/2`` form would render the default
    message, so the log would claim an answer that was never given. It is carried over unchanged
    (and reproduction tolerates the additive field, on both logs)."""
    old = v1.copy_fixture(tmp_path / "log")
    rewrite_body(old, 1, lambda document: document["result"].pop("user_message"))
    assert kpb("decisions", "verify", "--log", old).exit == 0
    new = str(Path(old).parent / "decisions-v2.db")
    out = upgrade(old, new)
    assert out.exit == 0, out.stderr
    assert "  records      24: 23 converted to kpb-decision/2, 1 kept as kpb-decision/1, 0 already kpb-decision/2" in out.stdout
    assert f"    kept {DENY_WITH_MESSAGE}: its kpb-decision/2 form would answer differently (user_message)" in out.stdout
    assert kpb("decisions", "verify", "--log", new).exit == 0
    kept = SQLiteDecisionLog(Path(new), readonly=True).get(DENY_WITH_MESSAGE)
    assert kept.schema == RECORD_SCHEMA_V1 and "user_message" not in kept.response()
    assert [r.schema for r in records(new)].count(RECORD_SCHEMA) == 23
    old_log, new_log = SQLiteDecisionLog(Path(old), readonly=True), SQLiteDecisionLog(Path(new), readonly=True)
    assert new_log.document(DENY_WITH_MESSAGE) == old_log.document(DENY_WITH_MESSAGE)  # the /1 body unchanged
    assert [r.response() for r in records(new)] == [r.response() for r in records(old)]
    assert columns(new) == columns(old)
    reproduce = kpb(*v1.commands(new)["reproduce.json"])
    assert (reproduce.exit, reproduce.stdout) == (v1.expected("reproduce.json").exit, v1.expected("reproduce.json").stdout)


def test_a_kept_v1_record_keeps_the_columns_its_row_had(tmp_path: Path) -> None:
    """The oldest /1 records predate ``principals``: today's model derives no ``subject_id`` from
    them, but their row was written with one, and queries must still find them by it."""
    old = v1.copy_fixture(tmp_path / "log")
    rewrite_body(old, 2, lambda document: document["result"].pop("principals"))
    new = str(Path(old).parent / "decisions-v2.db")
    out = upgrade(old, new)
    assert out.exit == 0, out.stderr
    assert "    kept 01M8GJP4Z80000000000000002: its kpb-decision/2 form would answer differently (principals)" in out.stdout
    assert columns(new) == columns(old) and columns(new)[1].subject_id == "E1001"
    assert (
        kpb("decisions", "list", "--log", new, "--subject", "E1001").stdout
        == kpb("decisions", "list", "--log", old, "--subject", "E1001").stdout
    )


# -- a log already holding /2 records, nonces, unsealed activations -----------------------------------


def mixed_log(tmp_path: Path, ttl: int | None = 300) -> tuple[str, Nonce]:
    """The /1 fixture with one /2 record appended (the service's path), with a signed request's nonce."""
    old = v1.copy_fixture(tmp_path / "log")
    log = SQLiteDecisionLog(Path(old))
    base = records(old)[-1]
    now = int(datetime.now(UTC).timestamp())
    nonce = Nonce(b"n" * 32, expires_at=now + 300, now=now)
    try:
        log.append(replace(base, decision_id=EXTRA_ID, schema=RECORD_SCHEMA, recorded_response=None, token_ttl_seconds=ttl), nonce)
    finally:
        log.close()
    return old, nonce


def test_v2_records_and_unexpired_nonces_are_carried_over(tmp_path: Path) -> None:
    old, nonce = mixed_log(tmp_path)
    new = str(Path(old).parent / "decisions-v2.db")
    out = upgrade(old, new)
    assert out.exit == 0, out.stderr
    assert "  records      25: 24 converted to kpb-decision/2, 0 kept as kpb-decision/1, 1 already kpb-decision/2" in out.stdout
    assert "  nonces       1 unexpired signed-request nonce(s) carried over" in out.stdout
    old_log, new_log = SQLiteDecisionLog(Path(old), readonly=True), SQLiteDecisionLog(Path(new), readonly=True)
    assert new_log.document(EXTRA_ID) == old_log.document(EXTRA_ID)
    writer = SQLiteDecisionLog(Path(new))
    try:
        with pytest.raises(AuthenticationError) as replayed:  # a request answered through the old log is a replay on the new one
            writer.append(replace(records(old)[0], decision_id="01M8GJZCVG000000000000000T", schema=RECORD_SCHEMA), nonce)
        assert replayed.value.reason == "replayed_signature"
    finally:
        writer.close()


def test_another_default_token_lifetime_is_refused(tmp_path: Path) -> None:
    """A record without a recorded lifetime gets its expiry column from the default: upgrading
    with another default would change when its token is considered live."""
    old, _ = mixed_log(tmp_path, ttl=None)
    new = Path(old).parent / "decisions-v2.db"
    assert upgrade(old, str(new), "--default-ttl-seconds", "3600").exit == 0
    new.unlink()
    out = upgrade(old, str(new), "--default-ttl-seconds", "600")
    assert out.exit == 2 and not new.exists()
    assert (
        f"decision {EXTRA_ID}: stored column(s) token_expires_at differ in the upgraded log (was the log written with another default"
        in out.stderr
    )


def test_unsealed_legacy_activations_are_left_out(tmp_path: Path) -> None:
    """An activation from before sealing is never followed by a bridge: it is not copied, and
    the new log's activations are all sealed."""
    old = tmp_path / "legacy.db"
    policies = SQLitePolicyStore(old, activation_keys=KEYS)
    SQLiteDecisionLog(old).close()
    legacy = json.loads((ACME / "policy.json").read_text())
    current = json.loads((ACME / "candidate-policy.json").read_text())
    with sqlite3.connect(old) as conn:
        conn.execute(
            "INSERT INTO activations (seq, digest, version, activated_by, activated_at) VALUES (1, ?, ?, 'file:policy.json', ?)",
            (policies.store_policy(legacy), legacy["version"], "2026-11-01T08:00:00.000000Z"),
        )
    policies.record_activation(policies.store_policy(current), current["version"], "admin:ada", v1.T0)
    policies.close()
    new = tmp_path / "upgraded.db"
    out = upgrade(str(old), str(new))
    assert out.exit == 0, out.stderr
    assert "  records      0: 0 converted to kpb-decision/2, 0 kept as kpb-decision/1, 0 already kpb-decision/2" in out.stdout
    assert "  activations  1 copied, sealed (KPB_ACTIVATION_KEYS); 1 unsealed legacy activation(s) left out" in out.stdout
    assert "  policies     2 copied (same digests)" in out.stdout
    store = SQLitePolicyStore(new, activation_keys=KEYS, readonly=True)
    (only,) = store.activation_history()
    assert (only.seq, only.version, only.activated_by) == (1, current["version"], "admin:ada") and store.activation_problem(only) is None
