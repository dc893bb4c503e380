"""Shipped vendor profiles: each one maps a messy, vendor-shaped fixture export to exact normalized
records; and the profile compiler's and DateRule's edge cases."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from keycloak_policy_bridge import profile
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.errors import EntitlementSourceError, Issue
from keycloak_policy_bridge.profile import DateRule, RowError, compile_profile, load_profile
from keycloak_policy_bridge.snapshot_loader import LoadOptions, load_snapshot

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "profiles"
PROFILES_DIR = Path(profile.__file__).resolve().parent / "profiles"
NEW_YORK = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def identities(snapshot: Snapshot) -> dict[str, tuple[Any, ...]]:
    """subject_id -> (subject_type, kind, status, owner, username, email)."""
    return {sid: (i.subject_type, i.kind, i.status, i.owner_id, i.username, i.email) for sid, i in snapshot.identities.items()}


def records(snapshot: Snapshot, subject_id: str) -> list[tuple[Any, ...]]:
    """The subject's records in export order, every normalized field but provenance."""
    identity = snapshot.identity(subject_id)
    assert identity is not None, subject_id
    return [
        (
            r.source,
            r.account,
            r.kind,
            r.value,
            r.privilege_level,
            r.via,
            r.via_id,
            r.assignment_state,
            r.start_at,
            r.end_at,
            r.last_certified_at,
        )
        for r in identity.records
    ]


def codes(snapshot: Snapshot) -> list[str]:
    return [w.code for w in snapshot.warnings]


def copy_fixture(tmp_path: Path, name: str, old: bytes | None = None, new: bytes = b"", **manifest_changes: Any) -> Path:
    """A copy of a fixture with one byte string of its data file replaced (the manifest's hash
    follows, so the change is seen by the row checks and not by the hash guard)."""
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    manifest = json.loads((root / "manifest.json").read_text("utf-8"))
    entry = manifest["files"][0]
    if old is not None:
        path = root / entry["name"]
        data = path.read_bytes()
        assert data.count(old) == 1, old
        data = data.replace(old, new)
        path.write_bytes(data)
        entry["sha256"] = hashlib.sha256(data).hexdigest()
    for key, value in manifest_changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    (root / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    return root


def rejection(root: Path) -> list[Issue]:
    with pytest.raises(EntitlementSourceError) as info:
        load_snapshot(root)
    return list(info.value.issues)


# --------------------------------------------------------------------------------------------
# The shipped profiles themselves


def test_every_profile_file_compiles_and_is_listed() -> None:
    files = sorted(p.stem for p in PROFILES_DIR.glob("*.json"))
    assert files == profile.shipped_profiles()
    assert len(files) >= 4
    for name in files:
        document = json.loads((PROFILES_DIR / f"{name}.json").read_text("utf-8"))
        assert document["spec"] == "kpb-profile/1"
        assert document["name"] == name
        assert document["$schema"] == "../schemas/profile.v1.schema.json"
        assert (PROFILES_DIR / document["$schema"]).resolve().is_file()
        assert document["vendor"].strip() and len(document["description"]) > 200
        compiled = load_profile(name)
        assert compiled.name == name and compiled.description == document["description"]


def test_every_shipped_profile_has_a_fixture_whose_manifest_names_it() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == profile.shipped_profiles()
    for name in profile.shipped_profiles():
        manifest = json.loads((FIXTURES / name / "manifest.json").read_text("utf-8"))
        assert manifest["profile"] == name and manifest["complete"] is True
        for entry in manifest["files"]:
            data = (FIXTURES / name / entry["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_a_profile_can_also_be_given_as_a_file(tmp_path: Path) -> None:
    explicit = load_profile(str(PROFILES_DIR / "sailpoint-isc-search-export.json"))
    snapshot = load_snapshot(FIXTURES / "sailpoint-isc-search-export", LoadOptions(profile=explicit))
    assert snapshot.record_count == 9


# --------------------------------------------------------------------------------------------
# SailPoint Identity Security Cloud: search export, access exploded into rows

ADA, GRACE, RENEE = "2c9180835d2e5168015d32f890ca1581", "2c9180835d2e5168015d32f890ca1582", "2c9180835d2e5168015d32f890ca1583"
LEO, PAT = "2c9180835d2e5168015d32f890ca1584", "2c9180835d2e5168015d32f890ca1585"
BOT, COPILOT = "2c9180867f1a0a2b017f1c3d4e5f0001", "2c9180867f1a0a2b017f1c3d4e5f0002"


def test_sailpoint_isc_search_export() -> None:
    snapshot = load_snapshot(FIXTURES / "sailpoint-isc-search-export")
    assert (snapshot.snapshot_id, snapshot.source_system) == ("isc-2026-11-28T02:00Z", "sailpoint_isc")
    assert identities(snapshot) == {
        ADA: ("human", "human", "active", GRACE, "ada.lovelace", "ada.lovelace@acme.example"),
        GRACE: ("human", "human", "active", None, "grace.hopper", "grace.hopper@acme.example"),
        RENEE: ("human", "human", "terminated", GRACE, "renee.dubois", "renee.dubois@acme.example"),  # leaver
        BOT: ("service_account", "service_account", "active", GRACE, "billing-bot", None),  # subtype Application
        COPILOT: ("ai_agent", "agent", "active", ADA, "support-copilot", None),  # subtype AI Agent
        LEO: ("human", "human", "suspended", GRACE, "leo.tanaka", "leo.tanaka@acme.example"),  # loa
        PAT: ("human", "human", "inactive", GRACE, "pat.kim", "pat.kim@acme.example"),  # unknown lifecycle state
    }
    ad, crm = "Active Directory", "Salesforce CRM"
    users, groups = "OU=Users,DC=acme,DC=com", "OU=Groups,DC=acme,DC=com"
    assert records(snapshot, ADA) == [
        (ad, f"CN=Lovelace\\, Ada,{users}", "group", f"CN=Billing-RW,{groups}", "high", "direct", "", "active", None, None, None),
        (crm, "ada.lovelace@acme.example", "app_role", "crm:read", "low", "role", "", "active", None, None, None),
        ("Slack", "U024BE7LH", "group", "@payroll-approvers", "medium", "direct", "", "active", None, None, None),
    ]
    assert records(snapshot, GRACE) == [
        (crm, "grace.hopper@acme.example", "app_role", "crm:admin", "high", "direct", "", "active", None, utc(2026, 12, 31, 23), None),
    ]
    # The decomposed "e + combining acute" of the export is NFC-normalized to one code point.
    assert records(snapshot, RENEE) == [
        (ad, f"CN=Dubois\\, Ren\u00e9e,{users}", "group", f"CN=VPN Users,{groups}", "none", "direct", "", "active", None, None, None),
    ]
    assert records(snapshot, BOT) == [
        (crm, "billing-bot@acme.example", "app_role", "crm:write", "none", "role", "", "active", None, utc(2027, 3, 31), None),
    ]
    assert records(snapshot, COPILOT) == [
        ("ServiceNow", "support-copilot", "app_role", "itil", "low", "direct", "", "active", None, None, None),
    ]
    assert records(snapshot, LEO) == [
        (ad, f"CN=Tanaka\\, Leo,{users}", "group", f"CN=Finance,{groups}", "none", "role", "", "active", None, None, None),
    ]
    assert records(snapshot, PAT) == [
        ("Workday", "pat.kim", "entitlement", "Contingent_Worker", "none", "direct", "", "active", None, None, None),
    ]
    # 10 rows, one an exact repeat (overlapping pages); the first row's quoted description holds
    # a newline, so the next record ends on physical line 4.
    assert snapshot.record_count == 9
    assert [r.line for r in snapshot.identity(ADA).records] == [3, 4, 5]  # type: ignore[union-attr]
    assert "formula_like_cell" in codes(snapshot)
    assert snapshot.resolve(username="Ada.Lovelace").identity.subject_id == ADA  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------
# SailPoint IdentityIQ: Identity Entitlements Detail report, Windows-1252, CRLF


def test_sailpoint_iiq_identity_entitlements() -> None:
    snapshot = load_snapshot(FIXTURES / "sailpoint-iiq-identity-entitlements")
    assert (snapshot.snapshot_id, snapshot.source_system) == ("iiq-2026-11-28T07:15Z", "sailpoint_iiq")
    assert identities(snapshot) == {
        "jsmith": ("human", "human", "active", None, "jsmith", "john.smith@acme.local"),
        "sobrien": ("human", "human", "active", None, "sobrien", "sean.obrien@acme.local"),
        "svc-backup": ("service_account", "service_account", "active", "jsmith", "svc-backup", None),
        "rpa-invoice": ("service_account", "service_account", "active", "sobrien", "rpa-invoice", None),
        "agent-helpdesk": ("ai_agent", "agent", "active", "jsmith", "agent-helpdesk", "helpdesk-agent@acme.local"),
        "mlee": ("human", "human", "inactive", None, "mlee", "mlee@acme.local"),
    }
    ad = "Active Directory"
    smith = "CN=Smith\\, John,OU=Staff,DC=acme,DC=local"
    admins = "CN=Domain Admins,CN=Users,DC=acme,DC=local"
    formula = '=HYPERLINK("http://evil.example/x","open")'
    # "01/15/2026 09:30:00 AM" America/Chicago (CST) and the epoch-ms certification 1761955200000.
    start, certified = utc(2026, 1, 15, 15, 30), utc(2025, 11, 1)
    assert records(snapshot, "jsmith") == [
        # One cell "IT Admin,Infrastructure Oncall": one grant path per role.
        (ad, smith, "group", admins, "high", "role", "IT Admin", "active", start, None, certified),
        (ad, smith, "group", admins, "high", "role", "Infrastructure Oncall", "active", start, None, certified),
        # A formula-like value stays verbatim text; the entitlement is Disconnected on the target.
        ("Salesforce", "jsmith@acme.local", "app_role", formula, "none", "direct", "", "disconnected", None, None, None),
        # A role row: no application, so source IdentityIQ; a US date without time is local midnight.
        ("IdentityIQ", "", "role", "IT Admin", "none", "direct", "", "active", utc(2026, 3, 1, 6), None, None),
    ]
    # Windows-1252 bytes 0x92 (right single quote) and 0xE1 (a acute) decoded as declared in the manifest.
    obrien, vpn = "CN=O\u2019Brien\\, Se\u00e1n,OU=Contractors,DC=acme,DC=local", "CN=VPN Users,OU=Groups,DC=acme,DC=local"
    assert records(snapshot, "sobrien") == [
        # Dates: epoch ms; 5 PM CDT; the first 1:30 of the DST-end day.
        (ad, obrien, "group", vpn, "none", "direct", "", "active", utc(2026, 1, 1), utc(2026, 6, 30, 22), utc(2026, 11, 1, 6, 30)),
    ]
    svc_backup, backup_operators = "CN=svc-backup,OU=Service Accounts,DC=acme,DC=local", "CN=Backup Operators,CN=Builtin,DC=acme,DC=local"
    assert records(snapshot, "svc-backup") == [
        (ad, svc_backup, "group", backup_operators, "high", "detected", "", "active", None, None, None),
    ]
    assert records(snapshot, "rpa-invoice") == [
        ("SAP ECC", "RPA_INVOICE", "app_role", "Z_AP_CLERK", "medium", "birthright", "", "active", None, utc(2027, 1, 1, 5, 59), None),
    ]
    assert records(snapshot, "agent-helpdesk") == [
        ("ServiceNow", "agent-helpdesk", "app_role", "itil", "none", "direct", "", "active", None, None, None),
    ]
    assert records(snapshot, "mlee") == [
        ("Salesforce", "mlee@acme.local", "app_role", "crm:read", "none", "role", "Sales Rep", "active", None, None, None),
    ]
    # 9 rows: one row split in two, and its exact repeat (both of whose records are dropped).
    assert snapshot.record_count == 9
    assert [r.line for r in snapshot.identity("jsmith").records] == [2, 2, 4, 5]  # type: ignore[union-attr]
    assert "formula_like_cell" in codes(snapshot)


def test_iiq_windows_1252_export_without_its_declaration_is_rejected(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path, "sailpoint-iiq-identity-entitlements", encoding=None)
    issues = rejection(root)
    assert [(i.path, i.code) for i in issues] == [("identity-entitlements.csv", "bad_encoding")]


# --------------------------------------------------------------------------------------------
# Saviynt: analytics report, UTF-8 BOM, CRLF, MM/DD/YYYY in America/New_York


def test_saviynt_access_report() -> None:
    snapshot = load_snapshot(FIXTURES / "saviynt-access-report")
    assert (snapshot.snapshot_id, snapshot.source_system) == ("saviynt-2026-11-28", "saviynt_eic")
    assert identities(snapshot) == {
        "1001": ("human", "human", "active", "1005", "jdoe", "jane.doe@corp.example"),
        "1002": ("human", "human", "inactive", "1005", "bsmith", "bsmith@corp.example"),  # statuskey 0
        "1003": ("service_account", "service_account", "active", "1001", "svc_etl", None),
        "1004": ("ai_agent", "agent", "active", "1005", "ai-triage-bot", None),
        "1005": ("human", "human", "active", None, "mgarcia", "mgarcia@corp.example"),
        "1006": ("human", "human", "active", "1005", "kwong", "kwong@corp.example"),  # empty usertype
    }
    # 03/01/2026 is EST midnight; the inclusive last day 12/31/2026 ends at 01/01/2027 EST midnight.
    start, end = utc(2026, 3, 1, 5), utc(2027, 1, 1, 5)
    ebs = ("Oracle EBS", "JDOE", "responsibility")
    ad = "Active Directory"
    jane, sql_admins = "CN=Doe\\, Jane,OU=Finance,DC=corp,DC=example", "CN=SQL Admins,OU=Groups,DC=corp,DC=example"
    assert records(snapshot, "1001") == [
        # "GL Inquiry|AP Clerk|Comptabilité – Lecture": one record per value.
        (*ebs, "GL Inquiry", "none", "direct", "88231", "active", start, end, None),
        (*ebs, "AP Clerk", "none", "direct", "88231", "active", start, end, None),
        (*ebs, "Comptabilit\u00e9 \u2013 Lecture", "none", "direct", "88231", "active", start, end, None),
        # Blank arstaskkey: provisioned outside Saviynt. priviliged TRUE.
        (ad, jane, "memberof", sql_admins, "high", "unmanaged", "", "active", None, None, None),
    ]
    bob, vpn = "CN=Smith\\, Bob,OU=Sales,DC=corp,DC=example", "CN=VPN,OU=Groups,DC=corp,DC=example"
    assert records(snapshot, "1002") == [
        (ad, bob, "memberof", vpn, "none", "direct", "77001", "active", None, None, None),
    ]
    # 03:30 on the day DST starts is EDT.
    assert records(snapshot, "1003") == [
        ("Snowflake", "SVC_ETL", "role", "SYSADMIN", "high", "direct", "90412", "active", utc(2026, 3, 8, 7, 30), None, None),
    ]
    # 11/01/2026 (DST ends that night) starts at EDT midnight; the last day 03/13/2027 ends at EST midnight.
    triage_start, triage_end = utc(2026, 11, 1, 4), utc(2027, 3, 14, 5)
    assert records(snapshot, "1004") == [
        ("ServiceNow", "ai-triage-bot", "role", "itil", "none", "direct", "90555", "active", triage_start, triage_end, None),
    ]
    assert records(snapshot, "1005") == [
        ("ServiceNow", "mgarcia", "group", "@dba-oncall", "none", "direct", "90001", "revoked", None, None, None),
    ]
    viewer = 'Reports "Finance" Viewer'
    assert records(snapshot, "1006") == [
        ("Workday", "kwong", "security group", viewer, "none", "direct", "91000", "active", utc(2026, 2, 1, 13), None, None),
    ]
    # 8 rows: one exact repeat, one row split in three.
    assert snapshot.record_count == 9
    assert "formula_like_cell" in codes(snapshot)


# --------------------------------------------------------------------------------------------
# Entra ID Governance: accessPackageAssignment JSON Lines from Graph

U_ADA, U_BOB, U_CAROL = (f"5d9c1e2a-3b4c-4d5e-8f60-7a8b9c0d1e0{i}" for i in (1, 2, 3))
U_DANA, U_ERIN = "5d9c1e2a-3b4c-4d5e-8f60-7a8b9c0d1e04", "5d9c1e2a-3b4c-4d5e-8f60-7a8b9c0d1e05"
SP_BOT = "9f1e7c3b-2a4d-4e6f-9a0b-1c2d3e4f5a06"
ENTRA = "entra-access-package-assignments"
AP_SALES, AP_FIN, AP_BILL, AP_PAY = (f"1b7f2d9e-0c3a-4b5d-8e6f-a0b1c2d3e4f{c}" for c in "789a")


def test_entra_access_package_assignments() -> None:
    snapshot = load_snapshot(FIXTURES / "entra-access-package-assignments")
    assert (snapshot.snapshot_id, snapshot.source_system) == ("entra-2026-11-28T03:00Z", "entra_id_governance")
    # Entra exports no subject status (constant active) and no owners.
    assert identities(snapshot) == {
        U_ADA: ("human", "human", "active", None, "ada.lovelace@contoso.com", "ada.lovelace@contoso.com"),
        SP_BOT: ("service_account", "service_account", "active", None, None, None),
        U_BOB: ("human", "human", "active", None, "bob@contoso.com", "bob@contoso.com"),
        U_CAROL: ("human", "human", "active", None, "carol@contoso.com", "carol@contoso.com"),
        U_DANA: ("human", "human", "active", None, "dana@contoso.com", "dana@contoso.com"),
        U_ERIN: ("human", "human", "active", None, "erin@contoso.com", "erin@contoso.com"),
    }
    entra = ("entra-id-governance", "", "access_package")
    sales, payroll = "Sales CRM \u2013 Standard", "=Payroll Admins (legacy)"
    assert records(snapshot, U_ADA) == [
        (*entra, sales, "none", "access_package", AP_SALES, "active", utc(2026, 10, 1, 8), utc(2027, 1, 31), None),
        # delivering -> pending; "+01:00" offset normalized; noExpiration.
        (*entra, "\u00c9quipe Finance \u2013 Lecture", "none", "access_package", AP_FIN, "pending", utc(2026, 11, 27, 8), None, None),
    ]
    # 0001-01-01T00:00:00Z and the GUID sentinel in timestamp fields mean "no value".
    assert records(snapshot, SP_BOT) == [(*entra, "Billing API Access", "none", "access_package", AP_BILL, "active", None, None, None)]
    assert records(snapshot, U_BOB) == [
        (*entra, sales, "none", "access_package", AP_SALES, "expired", utc(2026, 8, 20, 10), utc(2026, 11, 20, 10), None),
    ]
    assert records(snapshot, U_CAROL) == [
        (*entra, payroll, "none", "access_package", AP_PAY, "revoked", utc(2026, 11, 26, 12), utc(2026, 12, 26, 12), None),
    ]
    assert records(snapshot, U_DANA) == [(*entra, sales, "none", "access_package", AP_SALES, "pending", utc(2026, 11, 27), None, None)]
    # No expiration object at all: end_at falls back to expiredDateTime.
    assert records(snapshot, U_ERIN) == [
        (*entra, sales, "none", "access_package", AP_SALES, "expired", utc(2026, 9, 1), utc(2026, 11, 25, 17, 30), None),
    ]
    assert snapshot.record_count == 7  # 8 lines, one repeated page
    assert [r.line for r in snapshot.identity(U_ADA).records] == [1, 3]  # type: ignore[union-attr]
    assert "formula_like_cell" in codes(snapshot)


# --------------------------------------------------------------------------------------------
# Rejections


@pytest.mark.parametrize(
    ("fixture", "old", "new", "where", "column"),
    [
        ("saviynt-access-report", b",bsmith,Employee,0,", b",bsmith,Employee,7,", "access-report.csv:5", "subject_status"),
        ("sailpoint-isc-search-export", b",AI Agent,", b",Robot,", "identities.csv:10", "subject_type"),
        ("sailpoint-iiq-identity-entitlements", b",Sensitive,", b",Top Secret,", "identity-entitlements.csv:8", "privilege_level"),
        (ENTRA, b'"state":"partiallyDelivered"', b'"state":"suspended"', "assignments.jsonl:7", "assignment_state"),
        (ENTRA, b'"subjectType":"servicePrincipal"', b'"subjectType":"notSpecified"', "assignments.jsonl:4", "subject_type"),
    ],
)
def test_a_value_missing_from_a_map_rejects_the_row(tmp_path: Path, fixture: str, old: bytes, new: bytes, where: str, column: str) -> None:
    issues = rejection(copy_fixture(tmp_path, fixture, old, new))
    assert [(i.path, i.code) for i in issues] == [(where, "bad_value")]
    assert column in issues[0].message


def test_an_entra_record_without_a_state_is_rejected_not_active(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path, "entra-access-package-assignments", b'"state":"partiallyDelivered",', b"")
    issues = rejection(root)
    assert [(i.path, i.code) for i in issues] == [("assignments.jsonl:7", "bad_value")]
    assert "assignment_state" in issues[0].message


def test_a_date_in_no_declared_format_rejects_the_row(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path, "sailpoint-iiq-identity-entitlements", b",12/31/2026 23:59,", b",31/12/2026 23:59,")
    issues = rejection(root)
    assert [(i.path, i.code) for i in issues] == [("identity-entitlements.csv:8", "bad_value")]
    assert "not a date" in issues[0].message


def test_a_date_error_names_its_column(tmp_path: Path) -> None:
    root = copy_fixture(tmp_path, "sailpoint-iiq-identity-entitlements", b",12/31/2026 23:59,", b",31/12/2026 23:59,")
    assert "end_at" in rejection(root)[0].message


@pytest.mark.parametrize(
    ("fixture", "old", "new", "needs"),
    [
        ("sailpoint-isc-search-export", b"Access.Source.Name", b"Access.SourceName", "access.source.name"),
        # A template column is required even though its empty cells have a default.
        ("sailpoint-isc-search-export", b",SUBTYPE,", b",SUBTYPE_ID,", "subtype"),
        ("saviynt-access-report", b",StatusKey,", b",Status_Key,", "statuskey"),
        ("sailpoint-iiq-identity-entitlements", b",Application,", b",App,", "Application"),
    ],
)
def test_a_missing_required_header_rejects_the_file(tmp_path: Path, fixture: str, old: bytes, new: bytes, needs: str) -> None:
    issues = rejection(copy_fixture(tmp_path, fixture, old, new))
    missing = [i for i in issues if i.code == "missing_column"]
    assert len(missing) == 1 and issues[0] is missing[0]
    assert missing[0].path.endswith(".csv:1") and repr(needs) in missing[0].message
    # The only other issue allowed is the consequence: no row of the file was read (count_mismatch).
    assert {i.code for i in issues} <= {"missing_column", "count_mismatch"}


# --------------------------------------------------------------------------------------------
# compile_profile


def minimal(**columns: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "spec": "kpb-profile/1",
        "name": "t",
        "source_system": "t",
        "format": {"type": "csv"},
        "columns": {
            "subject_id": {"from": "id"},
            "subject_type": {"value": "human"},
            "subject_status": {"value": "active"},
            "source": {"from": "app"},
            "entitlement_kind": {"value": "group"},
            "entitlement_value": {"from": "groups"},
        },
    }
    document["columns"].update(columns)
    return document


def compile_issues(document: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(EntitlementSourceError) as info:
        compile_profile(document)
    return [(i.path, i.code) for i in info.value.issues]


def test_compile_rejects_two_splitting_columns() -> None:
    document = minimal(entitlement_value={"from": "groups", "split": "|"}, via_id={"from": "roles", "split": ","})
    assert compile_issues(document) == [("$.columns", "ambiguous_split")]


def test_compile_rejects_an_unknown_time_zone() -> None:
    document = minimal(end_at={"from": "end", "date": {"formats": ["%m/%d/%Y"], "timezone": "Mars/Olympus_Mons"}})
    assert compile_issues(document) == [("$.columns.end_at.date.timezone", "bad_timezone")]


def test_compile_rejects_an_unknown_encoding() -> None:
    document = minimal()
    document["format"]["encoding"] = "klingon-8"
    assert compile_issues(document) == [("$.format.encoding", "bad_encoding")]


def test_compile_reports_every_problem_at_once() -> None:
    document = minimal(
        entitlement_value={"from": "groups", "split": "|"},
        via_id={"from": "roles", "split": ","},
        start_at={"from": "start", "date": {"formats": ["rfc3339"], "timezone": "Nowhere/Special"}},
    )
    document["format"]["encoding"] = "no-such-codec"
    assert sorted(compile_issues(document)) == [
        ("$.columns", "ambiguous_split"),
        ("$.columns.start_at.date.timezone", "bad_timezone"),
        ("$.format.encoding", "bad_encoding"),
    ]


def test_compile_rejects_a_column_with_two_origins() -> None:
    assert compile_issues(minimal(source={"from": "app", "value": "crm"})) == [("$.columns.source", "schema")]


def test_split_gives_one_row_per_value_and_drops_empty_and_null_parts() -> None:
    compiled = compile_profile(minimal(entitlement_value={"from": "groups", "split": ";", "null_values": ["N/A"]}))
    rows = compiled.apply({"id": "E1", "app": "crm", "groups": " a ; ;N/A; b"})
    assert [r["entitlement_value"] for r in rows] == ["a", "b"]
    assert all(r["subject_id"] == "E1" and r["source"] == "crm" for r in rows)


# --------------------------------------------------------------------------------------------
# DateRule


def test_us_dates_in_new_york_follow_daylight_saving_time() -> None:
    rule = DateRule(("%m/%d/%Y %H:%M",), NEW_YORK, False)
    assert rule.parse("03/07/2026 12:00") == "2026-03-07T17:00:00Z"  # EST, UTC-5
    assert rule.parse("03/09/2026 12:00") == "2026-03-09T16:00:00Z"  # EDT, UTC-4
    assert rule.parse("11/01/2026 01:30") == "2026-11-01T05:30:00Z"  # ambiguous: the first (EDT) 01:30
    assert rule.parse("3/9/2026 12:00") == "2026-03-09T16:00:00Z"  # US exports drop leading zeros


def test_epoch_milliseconds_and_seconds() -> None:
    assert DateRule(("epoch_ms",), NEW_YORK, False).parse("1767225600000") == "2026-01-01T00:00:00Z"
    assert DateRule(("epoch_ms",), NEW_YORK, False).parse("1761955200123") == "2025-11-01T00:00:00.123000Z"
    assert DateRule(("epoch_s",), NEW_YORK, True).parse("1767225600") == "2026-01-01T00:00:00Z"  # never shifted
    with pytest.raises(RowError):
        DateRule(("epoch_ms",), NEW_YORK, False).parse("1.767E+12")  # what Excel makes of it


def test_date_only_end_is_the_next_local_midnight() -> None:
    rule = DateRule(("%m/%d/%Y %H:%M", "%m/%d/%Y"), NEW_YORK, True)
    assert rule.parse("03/07/2026") == "2026-03-08T05:00:00Z"  # last day 7 March: ends at EST midnight
    assert rule.parse("03/08/2026") == "2026-03-09T04:00:00Z"  # a 23-hour day: ends at EDT midnight
    assert rule.parse("10/31/2026") == "2026-11-01T04:00:00Z"
    assert rule.parse("03/07/2026 10:00") == "2026-03-07T15:00:00Z"  # a time is an instant, not a day
    assert DateRule(("%m/%d/%Y",), NEW_YORK, False).parse("03/07/2026") == "2026-03-07T05:00:00Z"


def test_rfc3339_keeps_its_own_offset_and_formats_are_tried_in_order() -> None:
    rule = DateRule(("rfc3339", "%m/%d/%Y"), NEW_YORK, False)
    assert rule.parse("2026-11-01T09:00:00+01:00") == "2026-11-01T08:00:00Z"
    assert rule.parse("2026-11-01T09:00:00.250Z") == "2026-11-01T09:00:00.250000Z"
    assert rule.parse("11/01/2026") == "2026-11-01T04:00:00Z"
    with pytest.raises(RowError):
        DateRule(("rfc3339",), NEW_YORK, False).parse("2026-11-01T09:00:00")  # no offset: not RFC 3339
    with pytest.raises(RowError, match="not a date"):
        rule.parse("yesterday")


def test_a_profile_zone_can_be_a_fixed_offset() -> None:
    compiled = compile_profile(minimal(start_at={"from": "start", "date": {"formats": ["%Y-%m-%d %H:%M"], "timezone": "+02:00"}}))
    (row,) = compiled.apply({"id": "E1", "app": "crm", "groups": "g", "start": "2026-07-01 10:00"})
    assert row["start_at"] == "2026-07-01T08:00:00Z"


# --------------------------------------------------------------------------------------------
# Regressions for the gaps found while writing the fixtures


def test_a_lost_optional_column_rejects_the_file_instead_of_reading_as_empty(tmp_path: Path) -> None:
    """Renaming the privilege column must not turn every HIGH entitlement into 'none'."""
    root = copy_fixture(tmp_path, "sailpoint-isc-search-export", b"access.privilegeLevel", b"access.privilege_lvl")
    issues = rejection(root)
    assert [i.code for i in issues] == ["missing_column"]  # and no spurious count_mismatch after it
    assert "privilege_level" in issues[0].message


def test_optional_columns_may_be_absent() -> None:
    profile_ = compile_profile(minimal(end_at={"from": "until", "optional": True}))
    assert profile_.missing_headers(["id", "app", "groups"]) == []
    assert compile_profile(minimal(end_at={"from": "until"})).missing_headers(["id", "app", "groups"]) == [
        ("end_at", "end_at (from 'until')")
    ]


def test_alternative_sources_take_the_first_non_empty_cell() -> None:
    profile_ = compile_profile(minimal(end_at={"from": ["end", "expired"], "date": {"formats": ["rfc3339"]}}))
    [row] = profile_.apply({"id": "u", "app": "a", "groups": "g", "end": "", "expired": "2026-01-01T00:00:00Z"})
    assert row["end_at"] == "2026-01-01T00:00:00Z"


def test_a_template_over_empty_cells_is_empty_not_its_separators() -> None:
    profile_ = compile_profile(minimal(entitlement_value={"template": "{app}:{groups}"}))
    [row] = profile_.apply({"id": "u", "app": "", "groups": ""})
    assert row["entitlement_value"] == ""


def test_duplicate_headers_reject_the_file(tmp_path: Path) -> None:
    root = tmp_path / "dup"
    root.mkdir()
    data = b"id,app,groups,app\nu,a,g,b\n"
    (root / "e.csv").write_bytes(data)
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "spec": "kpb-entitlements/1",
                "snapshot_id": "d",
                "generated_at": "2026-11-28T00:00:00Z",
                "complete": True,
                "files": [{"name": "e.csv", "records": 1, "sha256": hashlib.sha256(data).hexdigest()}],
            }
        )
    )
    with pytest.raises(EntitlementSourceError) as info:
        load_snapshot(root, LoadOptions(profile=compile_profile(minimal())))
    assert [(i.path, i.code) for i in info.value.issues] == [("e.csv:1", "duplicate_column")]


@pytest.mark.parametrize(
    ("formats", "zone", "end", "text", "expected"),
    [
        (("%m/%d/%Y %X",), "America/New_York", True, "03/07/2026 10:00:00", "2026-03-07T15:00:00Z"),  # %X has a time
        (("epoch_s",), "UTC", False, "1_000", None),
        (("epoch_s",), "UTC", False, "12", None),
        (("epoch_ms",), "UTC", False, "-1764316800000", None),
        (("%m/%d/%Y %H:%M",), "America/New_York", False, "03/08/2026 02:30", None),  # inside the DST gap
    ],
)
def test_date_rule_edge_cases(formats: tuple[str, ...], zone: str, end: bool, text: str, expected: str | None) -> None:
    rule = DateRule(formats, ZoneInfo(zone), end)
    if expected is None:
        with pytest.raises(RowError):
            rule.parse(text)
    else:
        assert rule.parse(text) == expected


def test_a_split_cell_of_bare_separators_is_an_empty_cell() -> None:
    profile_ = compile_profile(minimal(entitlement_value={"from": "groups", "split": "|"}))
    assert [r["entitlement_value"] for r in profile_.apply({"id": "u", "app": "a", "groups": "|"})] == [""]
