"""The normalized snapshot reader and the identity index."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import ACME, NOW, make_snapshot, record
from keycloak_policy_bridge.errors import EntitlementSourceError
from keycloak_policy_bridge.snapshot_loader import load_snapshot

HEADER = "subject_id,subject_type,subject_status,keycloak_user_id,username,email,source,account,entitlement_kind,entitlement_value"


def write_snapshot(root: Path, contents: dict[str, bytes], **manifest: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, data in contents.items():
        (root / name).write_bytes(data)
        lines = [line for line in data.decode("utf-8-sig", "replace").split("\n") if line.strip()]
        records = len(lines) - (1 if name.endswith(".csv") else 0)
        entries.append({"name": name, "records": records, "sha256": hashlib.sha256(data).hexdigest()})
    doc = {
        "spec": "kpb-entitlements/1",
        "snapshot_id": "s1",
        "source_system": "test",
        "generated_at": "2026-11-28T02:00:00Z",
        "complete": True,
        "files": entries,
    }
    doc.update(manifest)
    (root / "manifest.json").write_text(json.dumps(doc))
    return root


def test_acme_snapshot_loads_and_indexes_every_join_key() -> None:
    snapshot = load_snapshot(ACME / "entitlements")
    assert snapshot.record_count == 22 and len(snapshot.identities) == 8
    assert snapshot.resolve(keycloak_user_id="a11ce000-0000-4000-8000-000000000001").identity.subject_id == "E1001"  # type: ignore[union-attr]
    assert snapshot.resolve(keycloak_client_id="billing-bot").identity.kind == "service_account"  # type: ignore[union-attr]
    # Every acme identity is pinned: username and (verified) e-mail reach them, as mismatches only.
    assert snapshot.resolve(keycloak_user_id="kc-other", username="BOB").mismatched == ("E1002",)
    assert snapshot.resolve(keycloak_user_id="kc-other", email="Carol@ACME.example", email_verified=True).matched_by == "email"
    assert snapshot.resolve(username="nobody").identity is None
    assert snapshot.digest.startswith("sha256:")


def test_quoted_commas_quotes_newlines_bom_and_crlf(tmp_path: Path) -> None:
    rows = [
        HEADER,
        'E1,human,active,kc1,u1,,"billing, invoicing","dave, ""ops""",app_role,"CN=Admins,OU=Groups"',
        'E1,human,active,kc1,u1,,crm,u1,app_role,"multi\r\nline"',
    ]
    data = ("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8")
    root = tmp_path / "snap"
    root.mkdir()
    (root / "e.csv").write_bytes(data)
    manifest = {
        "spec": "kpb-entitlements/1",
        "snapshot_id": "s",
        "generated_at": "2026-11-28T02:00:00Z",
        "complete": True,
        "files": [{"name": "e.csv", "records": 2, "sha256": hashlib.sha256(data).hexdigest()}],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    identity = load_snapshot(root).identity("E1")
    assert identity is not None
    assert [(r.source, r.account, r.value) for r in identity.records] == [
        ("billing, invoicing", 'dave, "ops"', "CN=Admins,OU=Groups"),
        ("crm", "u1", "multi\r\nline"),
    ]
    assert identity.records[1].line == 4  # physical line where the quoted record ends


def test_headers_are_matched_by_name_not_position(tmp_path: Path) -> None:
    data = b"entitlement_value,SOURCE,subject_id,Subject_Type,subject_status,entitlement_kind\ncrm:read,crm,E1,human,active,app_role\n"
    snapshot = load_snapshot(write_snapshot(tmp_path / "s", {"e.csv": data}))
    assert snapshot.identity("E1").records[0].value == "crm:read"  # type: ignore[union-attr]


def test_jsonl_files(tmp_path: Path) -> None:
    lines = [json.dumps(record("E1")), json.dumps(record("E2", entitlement_value="x"))]
    snapshot = load_snapshot(write_snapshot(tmp_path / "s", {"e.jsonl": ("\n".join(lines) + "\n").encode()}))
    assert sorted(snapshot.identities) == ["E1", "E2"]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"complete": False}, "not marked complete"),
        ({"spec": "other"}, "must be 'kpb-entitlements/1'"),
        ({"generated_at": "yesterday"}, "RFC 3339"),
        ({"files": []}, "must list at least one"),
    ],
)
def test_manifest_guards(tmp_path: Path, change: dict[str, Any], fragment: str) -> None:
    root = write_snapshot(tmp_path / "s", {"e.csv": f"{HEADER}\nE1,human,active,kc1,u1,,crm,u1,app_role,r\n".encode()}, **change)
    with pytest.raises(EntitlementSourceError) as err:
        load_snapshot(root)
    assert any(fragment in i.message for i in err.value.issues), err.value.issues


def test_missing_manifest_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text(HEADER + "\n")
    with pytest.raises(EntitlementSourceError, match="no readable manifest.json"):
        load_snapshot(tmp_path)


def test_truncated_file_fails_hash_and_count(tmp_path: Path) -> None:
    full = f"{HEADER}\nE1,human,active,kc1,u1,,crm,u1,app_role,r1\nE1,human,active,kc1,u1,,crm,u1,app_role,r2\n".encode()
    root = write_snapshot(tmp_path / "s", {"e.csv": full})
    (root / "e.csv").write_bytes(full.rsplit(b"\n", 2)[0] + b"\n")  # the last row is lost in transfer
    with pytest.raises(EntitlementSourceError) as err:
        load_snapshot(root)
    assert [i.code for i in err.value.issues] == ["hash_mismatch"]
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = hashlib.sha256((root / "e.csv").read_bytes()).hexdigest()  # hashed after the loss
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EntitlementSourceError) as err:
        load_snapshot(root)
    assert err.value.issues[0].code == "count_mismatch"
    manifest["files"][0].pop("sha256")
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EntitlementSourceError) as err:
        load_snapshot(root)
    assert [(i.path, i.code) for i in err.value.issues] == [("$.files[0].sha256", "bad_manifest")]


def test_header_only_file_never_means_everyone_lost_everything(tmp_path: Path) -> None:
    root = write_snapshot(tmp_path / "s", {"e.csv": f"{HEADER}\n".encode()})
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][0]["records"] = 1000
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EntitlementSourceError) as err:
        load_snapshot(root)
    assert "holds 0 records, the manifest says 1000" in err.value.issues[0].message


def test_every_bad_row_is_reported(tmp_path: Path) -> None:
    data = (
        f"{HEADER}\n"
        "E1,robot,active,kc1,u1,,crm,u1,app_role,r\n"
        "E2,human,gone,kc2,u2,,crm,u2,app_role,r\n"
        ",human,active,kc3,u3,,crm,u3,app_role,r\n"
        "E4,human,active,kc4,u4,,crm,u4,app_role\n"
    ).encode()
    with pytest.raises(EntitlementSourceError) as err:
        load_snapshot(write_snapshot(tmp_path / "s", {"e.csv": data}))
    assert [(i.path, i.code) for i in err.value.issues] == [
        ("e.csv:5", "bad_row"),
        ("e.csv:2", "bad_value"),
        ("e.csv:3", "bad_value"),
        ("e.csv:4", "missing_value"),
    ]


def test_duplicate_rows_count_once_and_status_conflict_takes_the_strictest() -> None:
    snapshot = make_snapshot([record("E1"), record("E1"), record("E1", subject_status="terminated", entitlement_value="x")])
    identity = snapshot.identity("E1")
    assert identity is not None
    assert snapshot.record_count == 2 and identity.status == "terminated"
    assert identity.effective_records(NOW) == ()
    assert [w.code for w in snapshot.warnings] == ["status_conflict"]


def test_ambiguous_join_keys_are_reported() -> None:
    snapshot = make_snapshot([record("E1", username="same", keycloak_user_id=""), record("E2", username="same", keycloak_user_id="")])
    resolution = snapshot.resolve(username="same")
    assert resolution.identity is None and resolution.ambiguous == ("E1", "E2")
    assert [w.code for w in snapshot.warnings] == ["ambiguous_join_key"]


def test_conflicting_duplicates_and_status_conflicts_warn_in_either_order() -> None:
    snapshot = make_snapshot(
        [
            record("E1", subject_status="terminated"),
            record("E1", entitlement_value="x"),  # active after terminated: still a conflict
            record("E1", privilege_level="high"),  # duplicate of the first row, different privilege
        ]
    )
    assert [w.code for w in snapshot.warnings] == ["status_conflict", "duplicate_conflict"]
    identity = snapshot.identity("E1")
    assert identity is not None and identity.status == "terminated"
    assert [r.privilege_level for r in identity.records if r.value == "crm:read"] == ["none"]


def test_jsonl_values_may_hold_raw_line_separators(tmp_path: Path) -> None:
    line = json.dumps(record("E1", entitlement_value="a\u2028b\u0085c"), ensure_ascii=False)
    snapshot = load_snapshot(write_snapshot(tmp_path / "s", {"e.jsonl": (line + "\n").encode()}))
    assert snapshot.identity("E1").records[0].value == "a\u2028b\u0085c"  # type: ignore[union-attr]


def test_the_digest_covers_the_profile(tmp_path: Path) -> None:
    from keycloak_policy_bridge.profile import compile_profile
    from keycloak_policy_bridge.snapshot_loader import LoadOptions

    columns = {
        "subject_id": {"from": "id"},
        "subject_type": {"value": "human"},
        "subject_status": {"value": "active"},
        "source": {"from": "app"},
        "entitlement_kind": {"value": "app_role"},
        "entitlement_value": {"from": "role"},
    }
    doc = {"spec": "kpb-profile/1", "name": "p", "source_system": "s", "format": {"type": "csv"}, "columns": columns}
    root = write_snapshot(tmp_path / "s", {"e.csv": b"id,app,role\nE1,crm,reader\n"})
    first = load_snapshot(root, LoadOptions(profile=compile_profile(doc)))
    columns["entitlement_kind"] = {"value": "group"}
    second = load_snapshot(root, LoadOptions(profile=compile_profile(doc)))
    assert first.digest != second.digest


def test_a_manifest_profile_path_is_relative_to_the_snapshot(tmp_path: Path) -> None:
    columns = {
        "subject_id": {"from": "id"},
        "subject_type": {"value": "human"},
        "subject_status": {"value": "active"},
        "source": {"from": "app"},
        "entitlement_kind": {"value": "app_role"},
        "entitlement_value": {"from": "role"},
    }
    root = write_snapshot(tmp_path / "s", {"e.txt": b'{"id": "E1", "app": "crm", "role": "reader"}\n'}, profile="mine.json")
    (root / "mine.json").write_text(
        json.dumps({"spec": "kpb-profile/1", "name": "mine", "source_system": "s", "format": {"type": "jsonl"}, "columns": columns})
    )
    snapshot = load_snapshot(root)  # format.type jsonl, although the file is .txt
    assert snapshot.identity("E1").records[0].value == "reader"  # type: ignore[union-attr]


@pytest.mark.parametrize("named", ["../outside.json", "../missing.json", "/etc/hostname", "link.json", "."])
def test_a_manifest_profile_outside_the_snapshot_is_refused_alike_whether_or_not_it_exists(tmp_path: Path, named: str) -> None:
    """Security review, defect 8: the manifest is the IGA's, so it may not make the bridge read (or
    probe for) a file of the bridge host; existing and missing files get the same error."""
    (tmp_path / "outside.json").write_text(json.dumps({"spec": "kpb-profile/1", "name": "x", "db_password": "hunter2"}))
    root = write_snapshot(tmp_path / "s", {"e.csv": b"subject_id\n"}, profile=named)
    (root / "link.json").symlink_to(tmp_path / "outside.json")
    with pytest.raises(EntitlementSourceError) as err:
        load_snapshot(root)
    assert err.value.message == f"{root / 'manifest.json'}: profile must be a shipped profile or a file inside the snapshot directory"
    assert [(i.path, i.code) for i in err.value.issues] == [("$.profile", "bad_manifest")]
    assert "hunter2" not in str(err.value) and "db_password" not in str(err.value)


def test_a_data_file_that_links_out_of_the_snapshot_is_refused_even_with_a_matching_hash(tmp_path: Path) -> None:
    outside = tmp_path / "host-file.csv"
    outside.write_bytes(
        b"subject_id,subject_type,subject_status,source,entitlement_kind,entitlement_value\nE1,human,active,crm,app_role,admin\n"
    )
    root = write_snapshot(tmp_path / "s", {"e.csv": outside.read_bytes()})
    (root / "e.csv").unlink()
    (root / "e.csv").symlink_to(outside)
    with pytest.raises(EntitlementSourceError) as err:
        load_snapshot(root)
    assert [(i.code, i.message) for i in err.value.issues] == [("bad_manifest", "file 'e.csv' leads outside the snapshot directory")]
