"""Context feeds: per-subject runtime facts (risk scores, device posture, time-bound exceptions).

A feed is delivered like an entitlement export: a directory with ``manifest.json`` (``spec``
``kpb-context/1``, ``feed`` name, ``generated_at``, ``complete``, files with counts and hashes)
and CSV or JSON Lines files whose rows carry ``subject_id`` plus the feed's own fields. The same
guards apply (manifest, hashes, counts, no empty feed, rows checked); each feed has its own
``generated_at`` and so its own freshness, judged by the policy (``freshness.feeds``).

Rows may carry ``start_at``/``end_at``: like entitlements, a row outside its window is not
effective at the engine's ``now`` (so an exception row stops applying by itself). CSV cells are
text; the manifest's ``columns`` map converts named columns to ``int``, ``float``, ``bool`` or
``timestamp``. JSON Lines keep their JSON types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from keycloak_policy_bridge.canonical import digest
from keycloak_policy_bridge.errors import DuplicateFeedError, EntitlementSourceError, Issue
from keycloak_policy_bridge.profile import header_key
from keycloak_policy_bridge.snapshot_loader import iter_data_files, read_manifest
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339

FEED_SPEC = "kpb-context/1"
_CONVERTERS = ("int", "float", "bool", "timestamp", "string")
_TRUE = frozenset({"true", "1", "y", "yes"})
_FALSE = frozenset({"false", "0", "n", "no", ""})


@dataclass(frozen=True)
class FeedRow:
    """One row of a feed for one subject; ``values`` excludes subject_id and the window."""

    values: dict[str, Any]
    start_at: datetime | None
    end_at: datetime | None
    file: str
    line: int

    def effective_at(self, now: datetime) -> bool:
        if self.start_at is not None and now < self.start_at:
            return False
        return self.end_at is None or now < self.end_at


@dataclass(frozen=True)
class ContextFeed:
    """An immutable, per-subject indexed feed."""

    name: str
    snapshot_id: str
    generated_at: datetime
    digest: str
    rows: Mapping[str, tuple[FeedRow, ...]] = field(repr=False)
    record_count: int = 0

    def age_seconds(self, now: datetime) -> int:
        return max(0, int((now - self.generated_at).total_seconds()))

    def effective(self, subject_id: str | None, now: datetime) -> list[dict[str, Any]]:
        """The subject's rows in force at ``now``, as plain dicts for CEL (timestamps stay datetimes)."""
        if subject_id is None:
            return []
        return [dict(r.values) for r in self.rows.get(subject_id, ()) if r.effective_at(now)]

    def reference(self, now: datetime) -> dict[str, Any]:
        """What a decision records about the feed it used."""
        return {"digest": self.digest, "generated_at": format_rfc3339(self.generated_at), "age_seconds": self.age_seconds(now)}


def load_feed(directory: str | Path) -> ContextFeed:
    """Read and check a context feed directory.

    Raises:
        EntitlementSourceError: the feed is rejected; ``issues`` lists every reason.
    """
    root = Path(directory)
    manifest = read_manifest(root, FEED_SPEC)
    problems = []
    name = manifest.get("feed")
    if not isinstance(name, str) or not name.replace("_", "a").isalnum() or not name[:1].isalpha():
        problems.append(Issue("$.feed", "must name the feed: letters, digits and _ (e.g. risk)", "bad_manifest"))
    columns = manifest.get("columns", {})
    if not isinstance(columns, dict) or any(v not in _CONVERTERS for v in columns.values()):
        problems.append(Issue("$.columns", f"maps column names to one of {', '.join(_CONVERTERS)}", "bad_manifest"))
        columns = {}
    if problems:
        raise EntitlementSourceError(f"{root}: feed manifest rejected", problems)
    # Headers are compared case- and space-insensitively, so the type map is too.
    columns = {header_key(k): v for k, v in columns.items()}
    seen_columns: set[str] = set()
    issues: list[Issue] = []
    rows: dict[str, list[FeedRow]] = {}
    count = 0
    file_digests: list[tuple[str, str]] = []
    for record, file, line in iter_data_files(root, manifest["files"], issues, file_digests):
        seen_columns.update(record)
        row = _row(record, columns, f"{file}:{line}", issues)
        if row is None:
            continue
        subject_id, values, start, end = row
        rows.setdefault(subject_id, []).append(FeedRow(values, start, end, file, line))
        count += 1
    if not issues and count == 0:
        issues.append(Issue(str(root), "the feed holds no records; an empty feed is never applied", "empty_snapshot"))
    for name_ in sorted(set(columns) - seen_columns) if count else ():
        # A typed column that matches no header would leave its values as text, and a
        # condition comparing them with numbers would then fail closed for everyone.
        issues.append(Issue(f"$.columns.{name_}", "is typed in the manifest but no file has that column", "bad_manifest"))
    if issues:
        raise EntitlementSourceError(f"{root}: feed rejected ({len(issues)} problem(s))", issues)
    return ContextFeed(
        name=str(name),
        snapshot_id=manifest["snapshot_id"],
        generated_at=parse_rfc3339(manifest["generated_at"]),
        digest=digest({"manifest": manifest, "files": file_digests}),
        rows={k: tuple(v) for k, v in rows.items()},
        record_count=count,
    )


def unique_feed_names(feeds: Iterable[tuple[str, str | Path]]) -> dict[str, Path]:
    """``{name: directory}`` for feeds given as ``(name, directory)`` pairs, in their order.

    Every command that takes several feeds checks them here (``kpb evaluate``, ``replay``,
    ``explain`` and ``drift`` with the names of the loaded manifests, ``KPB_FEEDS`` with the
    configured names), so that a name given twice is refused everywhere, with one message,
    rather than one directory silently replacing the other.

    Raises:
        DuplicateFeedError: naming the first repeated name and both of its directories.
    """
    directories: dict[str, Path] = {}
    for name, directory in feeds:
        if name in directories:
            raise DuplicateFeedError(
                f"two context feeds are named '{name}': {directories[name]} and {directory} (give each feed name once)"
            )
        directories[name] = Path(directory)
    return directories


def load_feeds(directories: Iterable[str | Path]) -> dict[str, ContextFeed]:
    """Load each feed directory (``load_feed``), keyed by the feed name its manifest gives.

    Raises:
        EntitlementSourceError: a feed is rejected.
        DuplicateFeedError: two directories hold feeds of the same name (``unique_feed_names``).
    """
    loaded = [(load_feed(directory), directory) for directory in directories]
    unique_feed_names((feed.name, directory) for feed, directory in loaded)
    return {feed.name: feed for feed, _ in loaded}


def feed_from_document(name: str, document: Mapping[str, Any], location: str = "<inline>") -> ContextFeed:
    """Build a feed from ``{"generated_at", "records": [...]}`` (policy test files use this).

    Raises:
        EntitlementSourceError: a field is missing or a record is malformed.
    """
    try:
        generated_at = parse_rfc3339(document["generated_at"])
    except (KeyError, ValueError, TypeError):
        raise EntitlementSourceError(f"{location}: generated_at must be an RFC 3339 timestamp") from None
    records = document.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise EntitlementSourceError(f"{location}: records must be a list of objects")
    issues: list[Issue] = []
    rows: dict[str, list[FeedRow]] = {}
    for i, record in enumerate(records, start=1):
        row = _row({str(k).lower(): v for k, v in record.items()}, {}, f"{location}: records[{i - 1}]", issues)
        if row is not None:
            rows.setdefault(row[0], []).append(FeedRow(row[1], row[2], row[3], location, i))
    if issues:
        raise EntitlementSourceError(f"{location}: feed is invalid", issues)
    return ContextFeed(
        name, "inline", generated_at, digest({"name": name, **document}), {k: tuple(v) for k, v in rows.items()}, len(records)
    )


def _row(
    record: Mapping[str, Any], columns: Mapping[str, str], where: str, issues: list[Issue]
) -> tuple[str, dict[str, Any], datetime | None, datetime | None] | None:
    subject_id = record.get("subject_id")
    if isinstance(subject_id, int) and not isinstance(subject_id, bool):
        subject_id = str(subject_id)  # JSON Lines may carry numeric ids
    if not isinstance(subject_id, str) or not subject_id.strip():
        issues.append(Issue(where, "required column 'subject_id' is empty", "missing_value"))
        return None
    values: dict[str, Any] = {}
    window: dict[str, datetime | None] = {"start_at": None, "end_at": None}
    for key, value in record.items():
        if key == "subject_id":
            continue
        if key in window:
            if value in (None, ""):
                continue
            try:
                window[key] = parse_rfc3339(str(value))
            except ValueError:
                issues.append(Issue(where, f"{key} is not an RFC 3339 timestamp with an offset", "bad_timestamp"))
                return None
            continue
        try:
            values[key] = _convert(value, columns.get(key))
        except ValueError as exc:
            issues.append(Issue(where, f"{key}: {exc}", "bad_value"))
            return None
    values.update({k: v for k, v in window.items() if v is not None})
    return subject_id.strip(), values, window["start_at"], window["end_at"]


def _convert(value: Any, kind: str | None) -> Any:
    if kind is None or kind == "string" or not isinstance(value, str):
        return value
    text = value.strip()
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError("not an integer") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError("not a number") from None
    if kind == "bool":
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("not a boolean (true/false, 1/0, y/n)")
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise ValueError("not an RFC 3339 timestamp") from None
