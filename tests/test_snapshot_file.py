"""Compiled snapshot files: the same snapshot as an in-memory load, read from a shared file."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import ACME
from keycloak_policy_bridge.entitlements import COLUMNS, JoinOptions, Snapshot
from keycloak_policy_bridge.errors import EntitlementSourceError
from keycloak_policy_bridge.snapshot_file import FORMAT, SnapshotFileBuilder, open_snapshot_file
from keycloak_policy_bridge.snapshot_loader import load_snapshot

PROFILES = Path(__file__).resolve().parent / "fixtures" / "profiles"
NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
ALICE = "a11ce000-0000-4000-8000-000000000001"
OPTIONS = (JoinOptions(), JoinOptions(unverified_email=True, username_to_pinned=True))


def write_export(directory: Path, rows: list[list[str]], snapshot_id: str = "gen") -> Path:
    """A normalized CSV export of ``rows`` (values in COLUMNS order) with its manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    data = text.getvalue().encode()
    (directory / "entitlements.csv").write_bytes(data)
    manifest = {
        "spec": "kpb-entitlements/1",
        "snapshot_id": snapshot_id,
        "source_system": "test",
        "generated_at": "2026-11-28T02:00:00Z",
        "complete": True,
        "files": [{"name": "entitlements.csv", "records": len(rows), "sha256": hashlib.sha256(data).hexdigest()}],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def tricky_rows(seed: int = 5) -> list[list[str]]:
    """Rows exercising every rule: windows, states, duplicates (equal and conflicting), status
    conflicts, keys filled in by later rows, shared (ambiguous) join keys, pinned and unpinned
    identities, formula-like cells, microsecond timestamps; subjects interleaved, not grouped."""
    rng = random.Random(seed)
    rows = []
    for s in range(60):
        pinned = s % 3 != 0
        username = f"User{s}" if s != 7 else "User6"  # 6 and 7 share a username
        email = f"u{s}@example.test" if s % 11 else "shared@example.test"
        for r in range(rng.randint(1, 6)):
            rows.append(
                [
                    f"S{s}",
                    "human" if s % 5 else "service_account",
                    "active" if s % 13 else "terminated",
                    f"app{rng.randrange(4)}",
                    rng.choice(("app_role", "group")),
                    rng.choice(("=cmd", f"role{rng.randrange(5)}")),
                    "" if s % 5 else "S1",
                    f"kc-{s}" if pinned and r else "",  # the id arrives with a later row
                    f"client-{s}" if s % 5 == 0 and pinned else "",
                    username,
                    email,
                    f"acct{s}",
                    rng.choice(("", "low", "high")),
                    rng.choice(("direct", "role")),
                    f"R{rng.randrange(3)}",
                    rng.choice(("active", "active", "pending", "")),
                    rng.choice(("", "2026-01-01T00:00:00Z", "2026-12-01T00:00:00.250001+02:00")),
                    rng.choice(("", "2026-11-30T00:00:00Z")),
                    "2026-10-01T00:00:00Z",
                ]
            )
    rows.append(list(rows[3]))  # an exact duplicate: kept once, no warning
    conflict = list(rows[4])
    conflict[12] = "medium" if conflict[12] != "medium" else "low"
    rows.append(conflict)  # a duplicate that disagrees: warned
    status = list(rows[5])
    status[2] = "suspended"
    status[5] = "another"
    rows.append(status)  # a status conflict
    rng.shuffle(rows)
    return rows


def compile_into(tmp_path: Path, directory: Path) -> Snapshot:
    return load_snapshot(directory, builder=SnapshotFileBuilder(tmp_path / "compiled.kpbsnap"))


def assert_same(memory: Snapshot, compiled: Snapshot) -> None:
    """Everything a caller can observe is equal: metadata, identities, records, joins."""
    for field in ("snapshot_id", "source_system", "generated_at", "digest", "record_count", "warnings"):
        assert getattr(compiled, field) == getattr(memory, field), field
    assert compiled.counts() == memory.counts()
    assert len(compiled.identities) == len(memory.identities)
    assert sorted(compiled.identities) == sorted(memory.identities)
    for subject_id, identity in memory.identities.items():
        other = compiled.identity(subject_id)
        assert other == identity
        assert other is not None and other.records == identity.records  # file and line included
        assert other.effective_records(NOW) == identity.effective_records(NOW)
    assert compiled.identity("nobody") is None
    assert sorted(i.subject_id for i in compiled.identities.values()) == sorted(memory.identities)
    probes: list[dict[str, str]] = [{"keycloak_user_id": "nope", "username": "nope", "email": "nope"}]
    for identity in memory.identities.values():
        for key in ("keycloak_user_id", "keycloak_client_id", "username", "email"):
            value = getattr(identity, key)
            if value:
                probes.append({key: value.upper() if key in ("username", "email") else value})
    for probe in probes:
        for options in OPTIONS:
            for verified in (False, True):
                expected = memory.resolve(**probe, email_verified=verified, options=options)
                assert compiled.resolve(**probe, email_verified=verified, options=options) == expected, probe


@pytest.mark.parametrize(
    "directory",
    [ACME / "entitlements", *sorted(p for p in PROFILES.iterdir() if (p / "manifest.json").exists())],
    ids=lambda p: p.name if p.name != "entitlements" else "acme",
)
def test_a_compiled_export_is_the_same_snapshot_as_a_loaded_one(tmp_path: Path, directory: Path) -> None:
    assert_same(load_snapshot(directory), compile_into(tmp_path, directory))


def test_every_rule_survives_compiling_an_interleaved_export(tmp_path: Path) -> None:
    directory = write_export(tmp_path / "e", tricky_rows())
    memory = load_snapshot(directory)
    assert {w.code for w in memory.warnings} >= {"duplicate_conflict", "status_conflict", "ambiguous_join_key", "formula_like_cell"}
    assert any(r.last_certified_at for i in memory.identities.values() for r in i.records)
    assert_same(memory, compile_into(tmp_path, directory))


def test_a_rejected_export_leaves_no_file(tmp_path: Path) -> None:
    rows = tricky_rows()
    rows[10][1] = "robot"  # not a subject type
    directory = write_export(tmp_path / "e", rows)
    target = tmp_path / "compiled.kpbsnap"
    with pytest.raises(EntitlementSourceError) as raised:
        load_snapshot(directory, builder=SnapshotFileBuilder(target))
    with pytest.raises(EntitlementSourceError) as in_memory:
        load_snapshot(directory)
    assert raised.value.issues == in_memory.value.issues
    assert [i.code for i in raised.value.issues] == ["bad_value"]
    assert not target.exists()


def test_a_file_that_is_not_a_compiled_snapshot_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.kpbsnap"
    junk.write_bytes(b"not lmdb" * 1000)
    for path in (junk, tmp_path / "absent.kpbsnap"):
        with pytest.raises(EntitlementSourceError) as raised:
            open_snapshot_file(path)
        assert [i.code for i in raised.value.issues] == ["bad_snapshot_file"]


def test_a_file_of_another_format_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keycloak_policy_bridge.snapshot_file as snapshot_file

    monkeypatch.setattr(snapshot_file, "FORMAT", "kpb-snapshot/0")
    path = tmp_path / "old.kpbsnap"
    load_snapshot(ACME / "entitlements", builder=SnapshotFileBuilder(path))
    monkeypatch.setattr(snapshot_file, "FORMAT", FORMAT)
    snapshot_file._OPEN.clear()
    with pytest.raises(EntitlementSourceError, match="kpb-snapshot/0") as raised:
        open_snapshot_file(path)
    assert [i.code for i in raised.value.issues] == ["bad_snapshot_file"]


def test_one_file_opened_twice_in_a_process_is_one_snapshot(tmp_path: Path) -> None:
    compiled = compile_into(tmp_path, ACME / "entitlements")
    assert open_snapshot_file(tmp_path / "compiled.kpbsnap") is compiled


def test_another_process_reads_the_same_file(tmp_path: Path) -> None:
    """What workers do: each maps the file its sibling compiled."""
    memory = load_snapshot(ACME / "entitlements")
    compile_into(tmp_path, ACME / "entitlements")
    script = (
        "import sys, json\n"
        "from keycloak_policy_bridge.snapshot_file import open_snapshot_file\n"
        "s = open_snapshot_file(sys.argv[1])\n"
        "r = s.resolve(keycloak_user_id=sys.argv[2])\n"
        "print(json.dumps([s.digest, r.identity.subject_id, [x.value for x in r.identity.records]]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "compiled.kpbsnap"), ALICE], capture_output=True, text=True, check=True
    )
    alice = memory.resolve(keycloak_user_id=ALICE).identity
    assert alice is not None
    assert json.loads(out.stdout) == [memory.digest, alice.subject_id, [r.value for r in alice.records]]


def test_decisions_and_their_records_are_the_same_on_a_compiled_snapshot(tmp_path: Path) -> None:
    """evaluate and the decision record (recorded inputs included) cannot tell the two apart."""
    from keycloak_policy_bridge.engine import evaluate
    from keycloak_policy_bridge.policy import load_policy
    from keycloak_policy_bridge.record.build import build_record
    from keycloak_policy_bridge.record.codec import to_document
    from keycloak_policy_bridge.request import parse_request

    policy = load_policy(ACME / "policy.json")
    memory, compiled = load_snapshot(ACME / "entitlements"), compile_into(tmp_path, ACME / "entitlements")
    requests = sorted((ACME / "requests").glob("*.json"))
    assert len(requests) >= 5
    for path in requests:
        request = parse_request(json.loads(path.read_text()))
        now = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
        expected, actual = evaluate(policy, memory, request, now), evaluate(policy, compiled, request, now)
        assert actual.response("01M8GJP4004N4JWT8BWR3734T6") == expected.response("01M8GJP4004N4JWT8BWR3734T6"), path.name
        assert to_document(build_record("01M8GJP4004N4JWT8BWR3734T6", actual, request, compiled)) == to_document(
            build_record("01M8GJP4004N4JWT8BWR3734T6", expected, request, memory)
        ), path.name
