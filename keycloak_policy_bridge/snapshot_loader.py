"""Reading an entitlement export directory into a ``Snapshot``, with the guards that keep a bad
export from granting or revoking anything.

A snapshot directory holds ``manifest.json`` and one or more data files (contract-v1 section 2).
Files are in the normalized format, or in a vendor's shape mapped by a profile (``profile``).

Guards, each a rejection with a stable code (the caller keeps its last good snapshot):
  * ``missing_manifest`` / ``bad_manifest`` / ``incomplete_export``: no manifest, malformed, or
    ``complete`` is not true;
  * ``hash_mismatch`` / ``count_mismatch``: a file differs from what the manifest promised
    (a truncated transfer);
  * ``empty_snapshot``: no records at all, however the manifest describes it; an empty or
    header-only export never means "everyone lost everything";
  * ``record_drop``: fewer records than ``baseline_records`` x (1 - ``max_drop``) unless
    ``allow_drop`` (an operator's explicit decision, never the export's own say-so);
  * row-level problems (``bad_row``, ``bad_value``, ``missing_value``, ``bad_timestamp``...):
    one bad row rejects the snapshot, and every bad row is listed.

Parsing: the encoding comes from a BOM (UTF-8, UTF-16), else the manifest entry's ``encoding``,
else the profile's, else UTF-8; text is NFC-normalized; CSV is RFC 4180 (quoted delimiters,
doubled quotes, embedded newlines, CRLF or LF) with headers matched by name; cells are text and
are never evaluated (a leading ``=`` stays a character, and is counted as a warning).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from keycloak_policy_bridge.canonical import digest
from keycloak_policy_bridge.entitlements import COLUMNS, REQUIRED_COLUMNS, Snapshot, SnapshotBuilder
from keycloak_policy_bridge.errors import EntitlementSourceError, Issue
from keycloak_policy_bridge.profile import Profile, RowError, header_key, load_profile, shipped_profiles
from keycloak_policy_bridge.timeutil import parse_rfc3339

MANIFEST = "manifest.json"
MANIFEST_SPEC = "kpb-entitlements/1"
DEFAULT_MAX_DROP = 0.10
Row = tuple[str, ...] | dict[str, Any]  # values in COLUMNS order, or a mapping by column name


@dataclass(frozen=True)
class LoadOptions:
    """How strictly a snapshot is judged against the last good one."""

    profile: Profile | None = None
    baseline_records: int | None = None  # record count of the last good snapshot
    max_drop: float = DEFAULT_MAX_DROP
    allow_drop: bool = False


def load_snapshot(directory: str | Path, options: LoadOptions | None = None, *, builder: SnapshotBuilder | None = None) -> Snapshot:
    """Read, check and index the snapshot in ``directory``.

    The profile is ``options.profile``, else the manifest's ``profile`` (a shipped name), else
    none (normalized columns). ``builder`` is where the rows go: a new in-memory
    ``SnapshotBuilder`` by default, or a ``snapshot_file.SnapshotFileBuilder``.

    Raises:
        EntitlementSourceError: the snapshot is rejected; ``issues`` lists every reason.
    """
    options = options or LoadOptions()
    root = Path(directory)
    manifest = read_manifest(root)
    profile = options.profile
    if profile is None and isinstance(manifest.get("profile"), str):
        profile = load_profile(_manifest_profile(root, manifest["profile"]))
    issues: list[Issue] = []
    file_digests: list[tuple[str, str]] = []
    builder = builder if builder is not None else SnapshotBuilder()
    add_values, add = builder.add_values, builder.add
    for row, name, line in _stream(root, manifest["files"], profile, issues, file_digests, raw=False):
        if type(row) is tuple:
            add_values(row, name, line)
        else:
            add(row, name, line)  # type: ignore[arg-type]  # a mapping from a profile or JSON Lines
    snapshot = None
    try:
        snapshot = builder.finish(
            manifest["snapshot_id"],
            manifest.get("source_system") or (profile.source_system if profile else ""),
            parse_rfc3339(manifest["generated_at"]),
            # The mapping is part of what the snapshot means: the same files read through two
            # profiles are two snapshots.
            digest({"manifest": manifest, "files": file_digests, "profile": profile.digest if profile else None}),
        )
    except EntitlementSourceError as exc:
        issues.extend(exc.issues)  # row problems too, so that one run lists everything
    if snapshot is not None:
        issues.extend(guard_issues(root, snapshot.record_count, options, rejected=bool(issues)))
    if issues or snapshot is None:
        raise EntitlementSourceError(f"{root}: snapshot rejected ({len(issues)} problem(s))", issues)
    return snapshot


def guard_issues(root: Path, record_count: int, options: LoadOptions, *, rejected: bool = False) -> list[Issue]:
    """The whole-export guards: ``empty_snapshot`` (unless the export is ``rejected`` already for
    other reasons), and ``record_drop`` against ``options.baseline_records``, the served
    snapshot's count: judging a new export needs no second copy of the old one."""
    issues = []
    if record_count == 0 and not rejected:
        issues.append(Issue(str(root), "the export holds no records; an empty export is never applied", "empty_snapshot"))
    if options.baseline_records and not options.allow_drop:
        floor = options.baseline_records * (1 - options.max_drop)
        if record_count < floor:
            issues.append(
                Issue(
                    str(root),
                    f"{record_count} records is {1 - record_count / options.baseline_records:.0%} fewer than "
                    f"the last good snapshot ({options.baseline_records}); more than {options.max_drop:.0%} needs an explicit allow",
                    "record_drop",
                )
            )
    return issues


def iter_data_files(
    root: Path, entries: list[dict[str, Any]], issues: list[Issue], file_digests: list[tuple[str, str]]
) -> Iterator[tuple[dict[str, Any], str, int]]:
    """Yield every record of the manifest's files as a dict keyed by lower-cased header, with
    the same hash, count and encoding checks as an entitlement export (context feeds use this).
    """
    for row, name, line in _stream(root, entries, None, issues, file_digests, raw=True):
        assert isinstance(row, dict)
        yield row, name, line


def _stream(
    root: Path, entries: list[dict[str, Any]], profile: Profile | None, issues: list[Issue], file_digests: list[tuple[str, str]], raw: bool
) -> Iterator[tuple[Row, str, int]]:
    """Yield normalized rows file by file, checking each file against its manifest entry.

    Files are streamed (a ten-million-row export is never in memory as text): each is read twice,
    first to check its hash and encoding, then to parse it. A file whose hash or encoding fails
    yields nothing; a count
    mismatch is known only at the end of the file and is reported then (the snapshot is rejected
    either way, so rows already yielded are discarded with it).
    """
    default_encoding = profile.encoding if profile else "utf-8"
    for entry in entries:
        name = entry["name"]
        if Path(name).name != name or name in ("", ".", ".."):
            issues.append(Issue(f"{MANIFEST}: files", f"file name '{name}' must not contain a directory", "bad_manifest"))
            continue
        if _inside(root, name) is None:  # a symbolic link out of the drop
            issues.append(Issue(f"{MANIFEST}: files", f"file '{name}' leads outside the snapshot directory", "bad_manifest"))
            continue
        path = root / name
        try:
            actual, encoding, undecodable, nfc = _check_file(path, name, entry.get("encoding") or default_encoding)
        except OSError:
            issues.append(Issue(name, "listed in the manifest but cannot be read", "missing_file"))
            continue
        if entry["sha256"].lower().removeprefix("sha256:") != actual:
            issues.append(Issue(name, "SHA-256 does not match the manifest", "hash_mismatch"))
            continue
        file_digests.append((name, actual))
        if undecodable is not None:
            issues.append(undecodable)
            continue
        counter = [0]
        before = len(issues)
        yield from _parse(name, path, encoding, nfc, profile, issues, counter, raw)
        header_rejected = any(i.path == f"{name}:1" for i in issues[before:])
        if not header_rejected and counter[0] != entry["records"]:
            issues.append(Issue(name, f"holds {counter[0]} records, the manifest says {entry['records']}", "count_mismatch"))


def _manifest_profile(root: Path, named: str) -> str:
    """What a manifest's ``profile`` names: a shipped profile, or a file inside the snapshot.

    The manifest comes from the IGA's drop, not from the operator: a path that leaves the snapshot
    directory (``..``, an absolute path, a symbolic link pointing out) is refused with one message
    whether or not the file exists, so a manifest can neither read nor probe the bridge's files.

    Raises:
        EntitlementSourceError: the path leaves the snapshot directory.
    """
    if named in shipped_profiles():
        return named
    target = _inside(root, named)
    if target is None:
        raise EntitlementSourceError(
            f"{root / 'manifest.json'}: profile must be a shipped profile or a file inside the snapshot directory",
            [Issue("$.profile", "names a path outside the snapshot directory", "bad_manifest")],
        )
    return str(target)


def _inside(root: Path, name: str) -> Path | None:
    """``root / name`` with every link resolved, or None when that leaves ``root`` (or is ``root``)."""
    base = root.resolve()
    target = (base / name).resolve()
    return target if target.is_relative_to(base) and target != base else None


def read_manifest(root: Path, spec: str | None = MANIFEST_SPEC) -> dict[str, Any]:
    """Read and check ``manifest.json`` (of an entitlement export, or of a feed by ``spec``;
    ``spec=None`` accepts either, for tools that dispatch on it).

    Raises:
        EntitlementSourceError: missing, not JSON, incomplete, or malformed.
    """
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError:
        raise EntitlementSourceError(
            f"{root}: no readable {MANIFEST}; a snapshot without one is never loaded",
            [Issue(str(path), "missing", "missing_manifest")],
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "encoding"
        raise EntitlementSourceError(f"{path}: not valid JSON ({where})", [Issue(str(path), "not valid JSON", "bad_manifest")]) from None
    if not isinstance(manifest, dict):
        raise EntitlementSourceError(f"{path}: must be a JSON object", [Issue("$", "must be an object", "bad_manifest")])
    problems = []
    expected = (MANIFEST_SPEC, "kpb-context/1") if spec is None else (spec,)
    if manifest.get("spec") not in expected:
        problems.append(Issue("$.spec", f"must be '{' or '.join(expected)}'", "bad_manifest"))
    if manifest.get("complete") is not True:
        problems.append(Issue("$.complete", "the export is not marked complete: true", "incomplete_export"))
    if not isinstance(manifest.get("snapshot_id"), str) or not manifest.get("snapshot_id"):
        problems.append(Issue("$.snapshot_id", "required", "bad_manifest"))
    try:
        parse_rfc3339(manifest.get("generated_at", ""))
    except ValueError:
        problems.append(Issue("$.generated_at", "must be an RFC 3339 timestamp with an offset", "bad_manifest"))
    files = manifest.get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, dict) for f in files):
        problems.append(Issue("$.files", "must list at least one {name, records, sha256}", "bad_manifest"))
    else:
        for i, entry in enumerate(files):
            if not isinstance(entry.get("name"), str) or not entry["name"]:
                problems.append(Issue(f"$.files[{i}].name", "required", "bad_manifest"))
            if type(entry.get("records")) is not int or entry["records"] < 0:
                problems.append(Issue(f"$.files[{i}].records", "required: the file's record count, a whole number", "bad_manifest"))
            sha = entry.get("sha256")
            if not isinstance(sha, str) or len(sha.lower().removeprefix("sha256:")) != 64:
                problems.append(Issue(f"$.files[{i}].sha256", "required: the file's SHA-256 in hex", "bad_manifest"))
    if problems:
        raise EntitlementSourceError(f"{path}: manifest rejected", problems)
    return manifest


_CHUNK = 1 << 20


def _check_file(path: Path, name: str, declared: str) -> tuple[str, str, Issue | None, bool]:
    """(SHA-256 of the file, the codec to read it with, why it cannot be decoded or None, whether
    its text is NFC already: then lines need no normalizing, the common case).

    A BOM is the file's own statement of its encoding and wins over any declaration; the codec
    returned drops it (``utf-8-sig``; ``utf-16`` reads its BOM itself).

    Raises:
        OSError: the file cannot be read.
    """
    sha = hashlib.sha256()
    problem = None
    nfc = True
    with path.open("rb") as handle:
        chunk = handle.read(_CHUNK)
        if chunk.startswith(codecs.BOM_UTF8):
            encoding, shown = "utf-8-sig", "utf-8"
        elif chunk.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            encoding = shown = "utf-16"
        else:
            encoding = shown = declared
        decoder = None
        try:
            decoder = codecs.getincrementaldecoder(encoding)()
        except LookupError:
            problem = Issue(name, f"unknown encoding '{encoding}'", "bad_encoding")
        offset = 0
        while True:
            sha.update(chunk)
            if decoder is not None:
                try:
                    text = decoder.decode(chunk, final=not chunk)
                    nfc = nfc and (text.isascii() or unicodedata.is_normalized("NFC", text))
                except UnicodeDecodeError as exc:
                    where = offset + exc.start
                    problem = Issue(name, f"not valid {shown} (byte {where}); declare the encoding in the manifest", "bad_encoding")
                    decoder = None
            if not chunk:
                break
            offset += len(chunk)
            chunk = handle.read(_CHUNK)
    return sha.hexdigest(), encoding, problem, nfc


def _lines(path: Path, encoding: str, newline: str, nfc: bool) -> Iterator[str]:
    """The file's lines, decoded and (unless ``nfc``: already) NFC-normalized one line at a time.

    Line by line is exact: a line break is a starter that nothing composes across.
    """
    normalize, is_normalized = unicodedata.normalize, unicodedata.is_normalized
    with path.open(encoding=encoding, newline=newline) as handle:
        if nfc:
            yield from handle
            return
        for line in handle:
            yield line if line.isascii() or is_normalized("NFC", line) else normalize("NFC", line)


def _parse(
    name: str, path: Path, encoding: str, nfc: bool, profile: Profile | None, issues: list[Issue], counter: list[int], raw: bool
) -> Iterator[tuple[Row, str, int]]:
    """Yield the rows of one file (normalized, or ``raw`` dicts); ``counter[0]`` ends as its record count."""
    # A profile says what its files are; without one, the extension does.
    file_type = profile.file_type if profile is not None and not raw else None
    if file_type == "jsonl" or (file_type is None and name.endswith((".jsonl", ".ndjson"))):
        # "\n" alone ends a JSON Lines record: JSON strings may hold U+2028, U+2029 or U+0085 raw.
        records: Iterator[tuple[int, Row | None]] = _jsonl_records(name, _lines(path, encoding, "\n", nfc), issues)
    elif file_type == "csv" or name.endswith((".csv", ".tsv", ".txt")):
        records = _csv_records(name, _lines(path, encoding, "", nfc), profile, issues, raw)
    else:
        issues.append(Issue(name, "unsupported file type (use .csv, .tsv or .jsonl)", "bad_manifest"))
        return
    for line, record in records:
        counter[0] += 1
        if record is None:
            continue  # already reported
        if profile is None or raw:
            yield record, name, line
            continue
        assert isinstance(record, dict)  # profiles read mappings, never the positional fast path
        try:
            mapped_rows = profile.apply({k: "" if v is None else str(v) for k, v in record.items()})
        except RowError as exc:
            issues.append(Issue(f"{name}:{line}", str(exc), "bad_value"))
            continue
        for mapped in mapped_rows:
            yield mapped, name, line


def _csv_records(
    name: str, lines: Iterator[str], profile: Profile | None, issues: list[Issue], raw: bool = False
) -> Iterator[tuple[int, Row | None]]:
    delimiter = profile.delimiter if profile else ("\t" if name.endswith(".tsv") else ",")
    quotechar = profile.quotechar if profile else '"'
    reader = csv.reader(lines, delimiter=delimiter, quotechar=quotechar, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        issues.append(Issue(name, "file is empty (not even a header)", "empty_file"))
        return
    except csv.Error as exc:
        issues.append(Issue(f"{name}:1", f"malformed CSV header: {exc}", "bad_row"))
        return
    columns = [header_key(h) for h in header]
    duplicates = sorted({c for c in columns if columns.count(c) > 1 and c})
    if duplicates:
        # dict(zip()) would keep the last of two "status" columns without a word
        issues.append(Issue(f"{name}:1", f"duplicate column(s): {', '.join(duplicates)}", "duplicate_column"))
        return
    if raw:
        pass  # a feed's columns are its own; only subject_id is required, checked per row
    elif profile is None:
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            issues.append(Issue(f"{name}:1", f"missing required column(s): {', '.join(missing)}", "missing_column"))
            return
    else:
        absent = profile.missing_headers(header)
        if absent:
            text = "; ".join(description for _, description in absent)
            issues.append(Issue(f"{name}:1", f"profile {profile.name}: missing column(s) for {text}", "missing_column"))
            return
    width = len(columns)
    # Normalized files skip the per-row dict: a C-level itemgetter picks the columns in
    # SnapshotBuilder order, and absent optional columns read a "" appended to each row.
    pick = itemgetter(*[columns.index(c) if c in columns else width for c in COLUMNS]) if profile is None and not raw else None
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            issues.append(Issue(f"{name}:{reader.line_num}", f"malformed CSV: {exc}", "bad_row"))
            yield reader.line_num, None
            return  # the reader cannot resynchronize after broken quoting
        if not "".join(values).strip():
            continue  # blank line, or a row of bare delimiters
        # reader.line_num is the physical line the record ended on; quoted newlines make it
        # larger than the record number, and it is what a person finds in an editor.
        line = reader.line_num
        if len(values) != width:
            issues.append(Issue(f"{name}:{line}", f"has {len(values)} fields, the header has {width}", "bad_row"))
            yield line, None
            continue
        if pick is not None:
            values.append("")
            yield line, pick(values)
        else:
            yield line, dict(zip(columns, values, strict=True))


def _jsonl_records(name: str, lines: Iterator[str], issues: list[Issue]) -> Iterator[tuple[int, Row | None]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            issues.append(Issue(f"{name}:{number}", "not valid JSON", "bad_row"))
            yield number, None
            continue
        if not isinstance(value, dict):
            issues.append(Issue(f"{name}:{number}", "must be a JSON object", "bad_row"))
            yield number, None
            continue
        yield number, _flatten(value)


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested JSON objects become dotted keys (``target.objectId``), as profiles address them."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        if isinstance(item, dict):
            out.update(_flatten(item, f"{dotted}."))
        else:
            out[header_key(dotted)] = item if not isinstance(item, list) else ";".join(str(i) for i in item)
    return out
