"""Entitlement snapshots: the subject's current access, as the IGA system exported it.

A ``Snapshot`` is immutable and indexed by every join key of contract-v1 section 2, so that
resolving a Keycloak principal and listing its records are dictionary lookups. Whether a record
*grants* anything (assignment state, start/end window, subject status) is decided at evaluation
time against the engine's ``now`` (``EntitlementRecord.effective_at``), never at load, so replay
at a past instant sees exactly what the original evaluation saw.

This module also holds the reader for the normalized export format (manifest + CSV/JSON Lines).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from keycloak_policy_bridge.canonical import digest
from keycloak_policy_bridge.errors import EntitlementSourceError, Issue
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339

MANIFEST = "manifest.json"
MANIFEST_SPEC = "kpb-entitlements/1"
REQUIRED_COLUMNS = ("subject_id", "subject_type", "subject_status", "source", "entitlement_kind", "entitlement_value")
OPTIONAL_COLUMNS = (
    "subject_owner_id", "keycloak_user_id", "keycloak_client_id", "username", "email", "account",
    "privilege_level", "via", "via_id", "assignment_state", "start_at", "end_at", "last_certified_at",
)  # fmt: skip
SUBJECT_TYPES = {"human": "human", "service_account": "service_account", "ai_agent": "agent"}
SUBJECT_STATUSES = ("active", "inactive", "terminated", "suspended")
ASSIGNMENT_STATES = ("active", "pending", "expired", "revoked", "disconnected")
PRIVILEGE_LEVELS = ("none", "low", "medium", "high")
# When rows of one subject disagree on its status, the most restrictive one wins: a partial
# export must never make a terminated identity look active.
_STATUS_RANK = {"active": 0, "inactive": 1, "suspended": 2, "terminated": 3}
_Rows = list[tuple[Mapping[str, Any], str, int]]


@dataclass(frozen=True, slots=True)
class EntitlementRecord:
    """One normalized export row: a subject holds an entitlement on a source, via a path."""

    subject_id: str
    source: str
    kind: str
    value: str
    account: str = ""
    privilege_level: str = "none"
    via: str = ""
    via_id: str = ""
    assignment_state: str = "active"
    start_at: datetime | None = None
    end_at: datetime | None = None
    last_certified_at: datetime | None = None
    file: str = ""
    line: int = 0

    def effective_at(self, now: datetime) -> bool:
        """True when the assignment is active and ``now`` lies in [start_at, end_at)."""
        if self.assignment_state != "active":
            return False
        if self.start_at is not None and now < self.start_at:
            return False
        return self.end_at is None or now < self.end_at

    def evidence(self) -> dict[str, Any]:
        """The record as provenance: what it grants and where it came from (file and line)."""
        out: dict[str, Any] = {
            "subject_id": self.subject_id,
            "source": self.source,
            "account": self.account,
            "entitlement_kind": self.kind,
            "entitlement_value": self.value,
            "privilege_level": self.privilege_level,
            "via": self.via,
            "via_id": self.via_id,
            "origin": {"file": self.file, "line": self.line},
        }
        if self.last_certified_at is not None:
            out["last_certified_at"] = format_rfc3339(self.last_certified_at)
        return out


@dataclass(frozen=True)
class Identity:
    """An IGA identity (human, service account or agent) and all its records."""

    subject_id: str
    subject_type: str  # as exported: human | service_account | ai_agent
    status: str
    owner_id: str | None = None
    keycloak_user_id: str | None = None
    keycloak_client_id: str | None = None
    username: str | None = None
    email: str | None = None
    records: tuple[EntitlementRecord, ...] = ()

    @property
    def kind(self) -> str:
        """The policy's principal kind: human, service_account or agent."""
        return SUBJECT_TYPES.get(self.subject_type, self.subject_type)

    def effective_records(self, now: datetime) -> tuple[EntitlementRecord, ...]:
        """Records that grant something at ``now``; none at all unless the identity is active."""
        if self.status != "active":
            return ()
        return tuple(r for r in self.records if r.effective_at(now))


@dataclass(frozen=True)
class Resolution:
    """The outcome of joining a Keycloak principal to the snapshot."""

    identity: Identity | None
    matched_by: str | None = None
    ambiguous: tuple[str, ...] = ()  # the candidate subject ids when two or more matched


@dataclass(frozen=True)
class Snapshot:
    """An immutable, indexed entitlement snapshot with a content digest."""

    snapshot_id: str
    source_system: str
    generated_at: datetime
    digest: str
    identities: Mapping[str, Identity]
    record_count: int
    warnings: tuple[Issue, ...] = ()
    _index: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict, repr=False)

    def identity(self, subject_id: str) -> Identity | None:
        return self.identities.get(subject_id)

    def resolve(
        self,
        *,
        keycloak_user_id: str | None = None,
        keycloak_client_id: str | None = None,
        username: str | None = None,
        email: str | None = None,
    ) -> Resolution:
        """Join a principal in the contract's order: user id, client id, username, email.

        The first key that matches anything decides; two identities matching that key is an
        ambiguity the engine denies. Username and email are compared case-insensitively
        (Keycloak stores usernames lower-cased).
        """
        keys = (
            ("keycloak_user_id", keycloak_user_id),
            ("keycloak_client_id", keycloak_client_id),
            ("username", username.lower() if username else None),
            ("email", email.lower() if email else None),
        )
        for name, value in keys:
            if not value:
                continue
            found = self._index.get(name, {}).get(value)
            if not found:
                continue
            if len(found) > 1:
                return Resolution(None, name, found)
            return Resolution(self.identities[found[0]], name)
        return Resolution(None)

    def age_seconds(self, now: datetime) -> int:
        """Seconds from ``generated_at`` to ``now`` (0 if the snapshot is from the future)."""
        return max(0, int((now - self.generated_at).total_seconds()))

    def counts(self) -> dict[str, dict[str, int]]:
        """Record counts per subject type, source and entitlement kind (for `check` output)."""
        out: dict[str, dict[str, int]] = {"subject_type": {}, "source": {}, "entitlement_kind": {}}
        for identity in self.identities.values():
            bucket = out["subject_type"]
            bucket[identity.subject_type] = bucket.get(identity.subject_type, 0) + 1
            for record in identity.records:
                out["source"][record.source] = out["source"].get(record.source, 0) + 1
                out["entitlement_kind"][record.kind] = out["entitlement_kind"].get(record.kind, 0) + 1
        return out


# --------------------------------------------------------------------------------------------
# Building


def build_snapshot(
    rows: Iterable[tuple[Mapping[str, Any], str, int]],
    *,
    snapshot_id: str,
    source_system: str,
    generated_at: datetime,
    content_digest: str | None = None,
) -> Snapshot:
    """Build an indexed snapshot from normalized rows ``(row, file, line)``.

    Every bad row is reported, not just the first.

    Raises:
        EntitlementSourceError: with one ``Issue`` per bad row (location ``file:line``).
    """
    issues: list[Issue] = []
    warnings: list[Issue] = []
    by_subject: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, ...]] = set()
    canonical_rows: list[Any] = []
    count = 0
    for row, file, line in rows:
        where = f"{file}:{line}"
        normalized = _normalize_row(row, where, issues)
        if normalized is None:
            continue
        key = (
            normalized["subject_id"], normalized["account"], normalized["source"], normalized["entitlement_kind"],
            normalized["entitlement_value"], normalized["via"], normalized["via_id"],
        )  # fmt: skip
        if key in seen:
            continue  # the same grant exported twice (overlapping report pages) grants once
        seen.add(key)
        if content_digest is None:
            canonical_rows.append(sorted((k, str(v)) for k, v in normalized.items()))
        count += 1
        entry = by_subject.setdefault(normalized["subject_id"], {"rows": [], "fields": {}})
        _merge_identity_fields(entry["fields"], normalized, where, warnings)
        if normalized["entitlement_kind"]:
            entry["rows"].append(
                EntitlementRecord(
                    subject_id=normalized["subject_id"],
                    source=normalized["source"],
                    kind=normalized["entitlement_kind"],
                    value=normalized["entitlement_value"],
                    account=normalized["account"],
                    privilege_level=normalized["privilege_level"],
                    via=normalized["via"],
                    via_id=normalized["via_id"],
                    assignment_state=normalized["assignment_state"],
                    start_at=normalized["start_at"],
                    end_at=normalized["end_at"],
                    last_certified_at=normalized["last_certified_at"],
                    file=file,
                    line=line,
                )
            )
    if issues:
        raise EntitlementSourceError(f"entitlement snapshot is invalid: {len(issues)} bad row(s)", issues)
    identities: dict[str, Identity] = {}
    index: dict[str, dict[str, list[str]]] = {k: {} for k in ("keycloak_user_id", "keycloak_client_id", "username", "email")}
    for subject_id, entry in by_subject.items():
        fields = entry["fields"]
        identity = Identity(subject_id=subject_id, records=tuple(entry["rows"]), **fields)
        identities[subject_id] = identity
        for key in index:
            value = fields.get(key)
            if value:
                index[key].setdefault(value.lower() if key in ("username", "email") else value, []).append(subject_id)
    frozen_index = {k: {v: tuple(ids) for v, ids in m.items()} for k, m in index.items()}
    for key, mapping in frozen_index.items():
        for value_ids in mapping.values():
            if len(value_ids) > 1:
                warnings.append(Issue(key, f"{len(value_ids)} subjects share one {key}: {', '.join(value_ids)}", "ambiguous_join_key"))
    return Snapshot(
        snapshot_id=snapshot_id,
        source_system=source_system,
        generated_at=generated_at,
        digest=content_digest or digest({"generated_at": format_rfc3339(generated_at), "rows": sorted(canonical_rows)}),
        identities=identities,
        record_count=count,
        warnings=tuple(warnings),
        _index=frozen_index,
    )


def _merge_identity_fields(fields: dict[str, Any], row: Mapping[str, Any], where: str, warnings: list[Issue]) -> None:
    if not fields:
        fields.update(
            subject_type=row["subject_type"],
            status=row["subject_status"],
            owner_id=row["subject_owner_id"] or None,
            keycloak_user_id=row["keycloak_user_id"] or None,
            keycloak_client_id=row["keycloak_client_id"] or None,
            username=row["username"] or None,
            email=row["email"] or None,
        )
        return
    if _STATUS_RANK[row["subject_status"]] > _STATUS_RANK[fields["status"]]:
        warnings.append(Issue(where, f"subject {row['subject_id']} has conflicting statuses; using the most restrictive", "status_conflict"))
        fields["status"] = row["subject_status"]
    for key, column in (("owner_id", "subject_owner_id"), ("keycloak_user_id", "keycloak_user_id"),
                        ("keycloak_client_id", "keycloak_client_id"), ("username", "username"), ("email", "email")):  # fmt: skip
        if not fields[key] and row[column]:
            fields[key] = row[column]


def _normalize_row(row: Mapping[str, Any], where: str, issues: list[Issue]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    bad = False
    for column in REQUIRED_COLUMNS:
        value = row.get(column)
        text = "" if value is None else str(value).strip()
        if not text:
            issues.append(Issue(where, f"required column '{column}' is empty", "missing_value"))
            bad = True
        out[column] = text
    for column in OPTIONAL_COLUMNS:
        value = row.get(column)
        out[column] = "" if value is None else str(value).strip()
    checks = (
        ("subject_type", tuple(SUBJECT_TYPES)),
        ("subject_status", SUBJECT_STATUSES),
    )
    for column, allowed in checks:
        out[column] = out[column].lower()
        if out[column] and out[column] not in allowed:
            issues.append(Issue(where, f"{column} must be one of {', '.join(allowed)}", "bad_value"))
            bad = True
    out["privilege_level"] = out["privilege_level"].lower() or "none"
    if out["privilege_level"] not in PRIVILEGE_LEVELS:
        issues.append(Issue(where, f"privilege_level must be one of {', '.join(PRIVILEGE_LEVELS)}", "bad_value"))
        bad = True
    out["assignment_state"] = out["assignment_state"].lower() or "active"
    if out["assignment_state"] not in ASSIGNMENT_STATES:
        issues.append(Issue(where, f"assignment_state must be one of {', '.join(ASSIGNMENT_STATES)}", "bad_value"))
        bad = True
    for column in ("start_at", "end_at", "last_certified_at"):
        if not out[column]:
            out[column] = None
            continue
        try:
            out[column] = parse_rfc3339(out[column])
        except ValueError:
            issues.append(Issue(where, f"{column} is not an RFC 3339 timestamp with an offset", "bad_timestamp"))
            bad = True
    return None if bad else out


# --------------------------------------------------------------------------------------------
# Reading the normalized export format


def load_snapshot(directory: str | Path) -> Snapshot:
    """Read a normalized snapshot directory (``manifest.json`` + CSV/JSONL files).

    The manifest must say ``complete: true`` and match each file's record count and SHA-256:
    a truncated transfer is rejected, never read as "these subjects lost their access".

    Raises:
        EntitlementSourceError: the manifest or a file is missing, inconsistent or malformed.
    """
    root = Path(directory)
    manifest = _read_manifest(root)
    rows: _Rows = []
    file_digests = []
    issues: list[Issue] = []
    for entry in manifest["files"]:
        name = entry["name"]
        path = root / name
        if Path(name).name != name:
            issues.append(Issue(f"{MANIFEST}: files", f"file name '{name}' must not contain a directory", "bad_manifest"))
            continue
        try:
            data = path.read_bytes()
        except OSError:
            issues.append(Issue(name, "listed in the manifest but cannot be read", "missing_file"))
            continue
        actual = hashlib.sha256(data).hexdigest()
        if entry.get("sha256") and entry["sha256"].lower().removeprefix("sha256:") != actual:
            issues.append(Issue(name, "SHA-256 does not match the manifest", "hash_mismatch"))
            continue
        file_digests.append((name, actual))
        parsed, total = _parse_file(name, data, issues)
        if "records" in entry and total != entry["records"]:
            issues.append(Issue(name, f"holds {total} records, the manifest says {entry['records']}", "count_mismatch"))
            continue
        rows.extend(parsed)
    try:
        snapshot = build_snapshot(
            rows,
            snapshot_id=manifest["snapshot_id"],
            source_system=manifest.get("source_system", ""),
            generated_at=parse_rfc3339(manifest["generated_at"]),
            content_digest=digest({"manifest": manifest, "files": file_digests}),
        )
    except EntitlementSourceError as exc:
        issues.extend(exc.issues)  # row problems too, so one run lists everything
    if issues:
        raise EntitlementSourceError(f"{root}: snapshot rejected", issues)
    return snapshot


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError:
        raise EntitlementSourceError(f"{root}: no readable {MANIFEST}; a snapshot without one is never loaded") from None
    except json.JSONDecodeError as exc:
        raise EntitlementSourceError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno})") from None
    problems = []
    if not isinstance(manifest, dict):
        raise EntitlementSourceError(f"{path}: must be a JSON object")
    if manifest.get("spec") != MANIFEST_SPEC:
        problems.append(Issue("$.spec", f"must be '{MANIFEST_SPEC}'", "bad_manifest"))
    if manifest.get("complete") is not True:
        problems.append(Issue("$.complete", "the export is not marked complete: true", "incomplete_export"))
    if not isinstance(manifest.get("snapshot_id"), str) or not manifest.get("snapshot_id"):
        problems.append(Issue("$.snapshot_id", "required", "bad_manifest"))
    try:
        parse_rfc3339(manifest.get("generated_at", ""))
    except ValueError:
        problems.append(Issue("$.generated_at", "must be an RFC 3339 timestamp with an offset", "bad_manifest"))
    files = manifest.get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in files):
        problems.append(Issue("$.files", "must list at least one {name, records, sha256}", "bad_manifest"))
    if problems:
        raise EntitlementSourceError(f"{path}: manifest rejected", problems)
    return manifest


def _parse_file(name: str, data: bytes, issues: list[Issue]) -> tuple[_Rows, int]:
    """Parse one data file; return its good rows and its total record count (good and bad)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        issues.append(Issue(name, f"not UTF-8 (byte {exc.start})", "bad_encoding"))
        return [], 0
    if name.endswith((".jsonl", ".ndjson")):
        return _parse_jsonl(name, text, issues)
    if name.endswith(".csv"):
        return _parse_csv(name, text, issues)
    issues.append(Issue(name, "unsupported file type (use .csv or .jsonl)", "bad_manifest"))
    return [], 0


def _parse_csv(name: str, text: str, issues: list[Issue]) -> tuple[_Rows, int]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        issues.append(Issue(name, "file is empty (no header)", "empty_file"))
        return [], 0
    columns = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        issues.append(Issue(f"{name}:1", f"missing required column(s): {', '.join(missing)}", "missing_column"))
        return [], 0
    rows = []
    total = 0
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        total += 1
        # reader.line_num is the physical line the record ended on; quoted newlines make it
        # larger than the record number, and it is what a person finds in an editor.
        line = reader.line_num
        if len(values) != len(columns):
            issues.append(Issue(f"{name}:{line}", f"has {len(values)} fields, the header has {len(columns)}", "bad_row"))
            continue
        rows.append((dict(zip(columns, values)), name, line))
    return rows, total


def _parse_jsonl(name: str, text: str, issues: list[Issue]) -> tuple[_Rows, int]:
    rows = []
    total = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        total += 1
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            issues.append(Issue(f"{name}:{number}", "not valid JSON", "bad_row"))
            continue
        if not isinstance(value, dict):
            issues.append(Issue(f"{name}:{number}", "must be a JSON object", "bad_row"))
            continue
        rows.append(({str(k).lower(): v for k, v in value.items()}, name, number))
    return rows, total


def snapshot_from_document(document: Mapping[str, Any], location: str = "<inline>") -> Snapshot:
    """Build a snapshot from ``{"generated_at", "records": [...]}`` (policy test files use this).

    Raises:
        EntitlementSourceError: a field is missing or a record is malformed.
    """
    try:
        generated_at = parse_rfc3339(document["generated_at"])
    except (KeyError, ValueError):
        raise EntitlementSourceError(f"{location}: generated_at must be an RFC 3339 timestamp") from None
    records = document.get("records")
    if not isinstance(records, list):
        raise EntitlementSourceError(f"{location}: records must be a list")
    rows = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise EntitlementSourceError(f"{location}: records[{i}] must be an object")
        rows.append(({str(k).lower(): v for k, v in record.items()}, location, i + 1))
    return build_snapshot(
        rows,
        snapshot_id=str(document.get("snapshot_id", "inline")),
        source_system=str(document.get("source_system", "inline")),
        generated_at=generated_at,
    )
