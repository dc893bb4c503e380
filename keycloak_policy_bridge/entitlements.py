"""Entitlement snapshots: the subject's current access, as the IGA system exported it.

A ``Snapshot`` is immutable and indexed by every join key of contract-v1 section 2, so that
resolving a Keycloak principal and listing its records are dictionary lookups. Whether a record
*grants* anything (assignment state, start/end window, subject status) is decided at evaluation
time against the engine's ``now`` (``EntitlementRecord.effective_at``), never at load, so replay
at a past instant sees exactly what the original evaluation saw.

Reading export directories (manifest, encodings, vendor profiles, guards) is ``snapshot_loader``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from keycloak_policy_bridge.canonical import digest
from keycloak_policy_bridge.errors import EntitlementSourceError, Issue
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339

REQUIRED_COLUMNS = ("subject_id", "subject_type", "subject_status", "source", "entitlement_kind", "entitlement_value")
OPTIONAL_COLUMNS = (
    "subject_owner_id",
    "keycloak_user_id",
    "keycloak_client_id",
    "username",
    "email",
    "account",
    "privilege_level",
    "via",
    "via_id",
    "assignment_state",
    "start_at",
    "end_at",
    "last_certified_at",
)
SUBJECT_TYPES = {"human": "human", "service_account": "service_account", "ai_agent": "agent"}
SUBJECT_STATUSES = ("active", "inactive", "terminated", "suspended")
ASSIGNMENT_STATES = ("active", "pending", "expired", "revoked", "disconnected")
PRIVILEGE_LEVELS = ("none", "low", "medium", "high")
# When rows of one subject disagree on its status, the most restrictive one wins: a partial
# export must never make a terminated identity look active.
_JOIN_KEYS = ("keycloak_user_id", "keycloak_client_id", "username", "email")  # the contract's join order
_ID_KEYS = _JOIN_KEYS[:2]  # pin an identity: only these ever match a pinned one
_NAME_KEYS = _JOIN_KEYS[2:]  # case-insensitive; join pinned identities only by an explicit opt-out
# An identity's fields besides its id and records, in ``Identity`` order (the builder keeps them
# as a list in this order); the join keys are the last four, in the contract's join order.
SUBJECT_FIELDS = ("subject_type", "status", "owner_id") + _JOIN_KEYS
_STATUS_RANK = {"active": 0, "inactive": 1, "suspended": 2, "terminated": 3}


class EntitlementRecord(NamedTuple):
    """One normalized export row: a subject holds an entitlement on a source, via a path.

    Immutable. A NamedTuple rather than a frozen dataclass because a load builds a million of
    them: construction costs 0.4 us instead of 2.3 us (frozen ``__init__`` sets each field
    through ``object.__setattr__``).
    """

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
    _timeless: tuple[EntitlementRecord, ...] | None = field(default=None, repr=False, compare=False)
    _windowed: tuple[EntitlementRecord, ...] = field(default=(), repr=False, compare=False)

    @property
    def kind(self) -> str:
        """The policy's principal kind: human, service_account or agent."""
        return SUBJECT_TYPES.get(self.subject_type, self.subject_type)

    def effective_records(self, now: datetime) -> tuple[EntitlementRecord, ...]:
        """Records that grant something at ``now``; none at all unless the identity is active."""
        if self.status != "active":
            return ()
        if self._timeless is None:
            return tuple(r for r in self.records if r.effective_at(now))
        # Most records are active with no window: only the windowed ones depend on `now`.
        timeless, windowed = self._timeless, self._windowed
        return timeless + tuple(r for r in windowed if r.effective_at(now)) if windowed else timeless

    @staticmethod
    def split(records: tuple[EntitlementRecord, ...]) -> tuple[tuple[EntitlementRecord, ...], tuple[EntitlementRecord, ...]]:
        """(active records without a window, active records with one); inactive ones never grant."""
        timeless = tuple(r for r in records if r.assignment_state == "active" and r.start_at is None and r.end_at is None)
        windowed = tuple(r for r in records if r.assignment_state == "active" and (r.start_at is not None or r.end_at is not None))
        return timeless, windowed


@dataclass(frozen=True)
class Resolution:
    """The outcome of joining a Keycloak principal to the snapshot.

    ``identity`` is set only for a match. ``ambiguous`` and ``mismatched`` are never a match:
    the engine denies both (``kpb:identity``, ``kpb:identity-mismatch``), ``matched_by`` naming
    the join key that reached them.
    """

    identity: Identity | None
    matched_by: str | None = None
    ambiguous: tuple[str, ...] = ()  # the candidate subject ids when two or more matched
    # Pinned subject ids (they carry a keycloak_user_id or keycloak_client_id) that the principal
    # reached by username or e-mail under another Keycloak id: a look-alike, not the identity.
    mismatched: tuple[str, ...] = ()


@dataclass(frozen=True)
class JoinOptions:
    """The policy's explicit opt-outs from the strict join (policy ``identity_join``, chosen per IGA
    source system of the snapshot); both off by default, and neither ever weakens an id join.

    ``unverified_email``: e-mail joins identities without a pin even when the request does not say
    the e-mail is verified. ``username_to_pinned``: username also joins pinned identities (their pin
    is not enforced for username joins; e-mail never reaches a pinned identity).
    """

    unverified_email: bool = False
    username_to_pinned: bool = False


STRICT_JOIN = JoinOptions()
_NO_MATCH = Resolution(None)


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
    # Prebuilt outcomes by join key and value. Ids: one Resolution. Username and e-mail: a pair
    # (strict: a pinned candidate makes a mismatch; pins ignored: every candidate counts).
    _index: Mapping[str, Mapping[str, Resolution]] = field(default_factory=lambda: {k: {} for k in _ID_KEYS}, repr=False)
    _names: Mapping[str, Mapping[str, tuple[Resolution, Resolution]]] = field(
        default_factory=lambda: {k: {} for k in _NAME_KEYS}, repr=False
    )
    # Precomputed by a compiled snapshot (``snapshot_file``), whose identities live in a file:
    # counting them would read every record.
    _counts: Mapping[str, Mapping[str, int]] | None = field(default=None, repr=False, compare=False)

    def identity(self, subject_id: str) -> Identity | None:
        return self.identities.get(subject_id)

    def resolve(
        self,
        *,
        keycloak_user_id: str | None = None,
        keycloak_client_id: str | None = None,
        username: str | None = None,
        email: str | None = None,
        email_verified: bool = False,
        options: JoinOptions = STRICT_JOIN,
    ) -> Resolution:
        """Join a principal in the contract's order: user id, client id, username, email.

        The join rule (contract v1 section 2, revised December 2026), here and nowhere else:

        * An identity with a ``keycloak_user_id`` or ``keycloak_client_id`` is *pinned*: only that
          id matches it. Reached by username or e-mail instead (the principal's ids matched
          nothing, so it is another Keycloak principal), the result is ``mismatched``, never a
          match: whoever sets a victim's e-mail or username in Keycloak gets nothing of hers.
        * Username and e-mail match identities without a pin; e-mail only when
          ``email_verified`` (the mapper's report; absent means not verified). An unverified
          e-mail is not compared at all, so it is neither a match nor a mismatch.
        * ``options`` are the policy's explicit opt-outs (``JoinOptions``).

        The first key that reaches anything decides; two identities reached by that key is an
        ambiguity. Username and e-mail are compared case-insensitively (Keycloak stores
        usernames lower-cased). Ambiguities and mismatches are for the engine to deny.
        """
        # Index entries are prebuilt Resolution objects (a pair for username and e-mail, the
        # join rule applied at build time): a lookup is at most four dict reads.
        index = self._index
        if keycloak_user_id:
            found = index["keycloak_user_id"].get(keycloak_user_id)
            if found is not None:
                return found
        if keycloak_client_id:
            found = index["keycloak_client_id"].get(keycloak_client_id)
            if found is not None:
                return found
        if username:
            pair = self._names["username"].get(username.lower())
            if pair is not None:
                return pair[1] if options.username_to_pinned else pair[0]
        if email and (email_verified or options.unverified_email):
            pair = self._names["email"].get(email.lower())
            if pair is not None:
                return pair[0]  # no opt-out lets an e-mail reach a pinned identity
        return _NO_MATCH

    def age_seconds(self, now: datetime) -> int:
        """Seconds from ``generated_at`` to ``now`` (0 if the snapshot is from the future)."""
        return max(0, int((now - self.generated_at).total_seconds()))

    def counts(self) -> dict[str, dict[str, int]]:
        """Record counts per subject type, source and entitlement kind (for `check` output)."""
        if self._counts is not None:
            return {k: dict(v) for k, v in self._counts.items()}
        return count_records(self.identities.values())


def count_records(identities: Iterable[Identity]) -> dict[str, dict[str, int]]:
    """Identities per subject type, records per source and per entitlement kind."""
    out: dict[str, dict[str, int]] = {"subject_type": {}, "source": {}, "entitlement_kind": {}}
    for identity in identities:
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

    ``rows`` is consumed once, as a stream, so a million-row export is never held twice.
    Every bad row is reported, not just the first.

    Raises:
        EntitlementSourceError: with one ``Issue`` per bad row (location ``file:line``).
    """
    builder = SnapshotBuilder(keep_canonical=content_digest is None)
    for row, file, line in rows:
        builder.add(row, file, line)
    return builder.finish(snapshot_id, source_system, generated_at, content_digest)


COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS  # the order of a values tuple in add_values
# A row that passed SnapshotBuilder._check: its stripped values (COLUMNS order) and its normalized
# subject type, status, privilege level and assignment state.
Checked = tuple[tuple[str, ...], str, str, str, str]
_TABLES = {
    "subject_type": {t: t for t in SUBJECT_TYPES},
    "subject_status": {s: s for s in SUBJECT_STATUSES},
    "privilege_level": {"": "none", **{p: p for p in PRIVILEGE_LEVELS}},
    "assignment_state": {"": "active", **{s: s for s in ASSIGNMENT_STATES}},
}
_TYPE, _STATUS, _PRIVILEGE, _STATE = (_TABLES[c] for c in ("subject_type", "subject_status", "privilege_level", "assignment_state"))
_FORMULA = frozenset("=+-@")


class RecordGroup:
    """One subject's records while a snapshot is built, with what deduplicates them."""

    __slots__ = ("records", "seen")

    def __init__(self, records: list[EntitlementRecord] | None = None) -> None:
        self.records: list[EntitlementRecord] = []
        # grant -> hash of its details: only compared to decide whether to warn, so a hash is
        # enough. Per subject rather than per snapshot: at ten million rows a snapshot-wide
        # table alone would cost a gigabyte.
        self.seen: dict[tuple[Any, ...], int] = {}
        for record in records or ():
            self.add(record)

    def add(self, record: EntitlementRecord) -> int | None:
        """Keep ``record`` unless its grant is already here; return the kept copy's detail hash
        when it is a duplicate (so the caller can warn when the details differ), else None."""
        # The grant: (source, kind, value, account, via, via_id); its details: privilege,
        # state and window (EntitlementRecord field order).
        grant = record[1:5] + record[6:8]
        detail = hash(record[5:6] + record[8:12])
        known = self.seen.get(grant)
        if known is not None:
            return known if known != detail else 0
        self.seen[grant] = detail
        self.records.append(record)
        return None


class SnapshotBuilder:
    """Accumulates normalized rows into identities; ``finish`` indexes them into a Snapshot.

    The hot path of a load (a million ``add_values`` calls): values are stripped and interned in
    C loops (exports repeat sources, kinds, values and timestamps endlessly), enum columns are
    checked with one dict lookup each, and each distinct timestamp text is parsed once. Rows
    that need more (case folding, defaults, errors) take the slow path.

    Records are kept per subject by ``_group``; ``snapshot_file.SnapshotFileBuilder`` overrides
    it (and ``finish``) to keep one subject in memory and the rest in a compiled file.
    """

    # Intern every value: a heap of a million records shares one object per distinct source,
    # kind, value and date. A builder that keeps nothing on the heap (SnapshotFileBuilder) skips
    # it: interning is a third of a row's cost.
    intern = True

    def __init__(self, keep_canonical: bool = False) -> None:
        self.issues: list[Issue] = []
        self.warnings: list[Issue] = []
        self.subjects: dict[str, list[Any]] = {}  # subject id -> its SUBJECT_FIELDS, merged over its rows
        self.groups: dict[str, RecordGroup] = {}
        # Rows for the content digest, only when the caller has no digest of the files.
        self.canonical: list[Any] | None = [] if keep_canonical else None
        self.count = 0
        self.formula_cells = 0
        self.times: dict[str, datetime | None] = {"": None}
        self.sources: dict[str, int] = {}
        self.kinds: dict[str, int] = {}

    def add(self, row: Mapping[str, Any], file: str, line: int) -> None:
        """Add one row given as a mapping of normalized column names."""
        self.add_values(self.values_of(row), file, line)

    @staticmethod
    def values_of(row: Mapping[str, Any]) -> tuple[str, ...]:
        """A mapping of normalized column names as strings in ``COLUMNS`` order (absent: "")."""
        get = row.get
        return tuple("" if (v := get(c)) is None else v if type(v) is str else str(v) for c in COLUMNS)

    def add_values(self, raw: tuple[str, ...], file: str, line: int) -> None:
        """Add one row given as strings in ``COLUMNS`` order."""
        checked = self._check(raw, file, line)
        if checked is not None:
            self._take(checked, file, line)

    def _check(self, raw: tuple[str, ...], file: str, line: int) -> Checked | None:
        """The row's own checks: its stripped values and normalized enumerations, or None when the
        row is bad (its problems are in ``issues``)."""
        values = tuple(map(sys.intern, map(str.strip, raw))) if self.intern else tuple(map(str.strip, raw))
        subject_id, subject_type, subject_status, source, kind, value = values[:6]
        kind_ = _TYPE.get(subject_type)
        status = _STATUS.get(subject_status)
        privilege_ = _PRIVILEGE.get(values[12])
        state_ = _STATE.get(values[15])
        if None in (kind_, status, privilege_, state_) or not (subject_id and source and kind and value):
            checked = self._slow_checks(values, f"{file}:{line}")
            if checked is None:
                return None
            kind_, status, privilege_, state_ = checked
        times = self.times
        start_text, end_text, certified_text = values[16:]
        if (
            (start_text not in times and self._time(start_text, "start_at", file, line) is False)
            | (end_text not in times and self._time(end_text, "end_at", file, line) is False)
            | (certified_text not in times and self._time(certified_text, "last_certified_at", file, line) is False)
        ):
            return None  # every bad timestamp of the row is reported (| evaluates all three)
        return values, kind_, status, privilege_, state_  # type: ignore[return-value]  # None ruled out above

    def _take(self, checked: Checked, file: str, line: int) -> None:
        """Add a row that ``_check`` accepted: group it, deduplicate it, merge its subject."""
        values, kind_, status, privilege_, state_ = checked
        (
            subject_id,
            _subject_type,
            _subject_status,
            source,
            kind,
            value,
            owner,
            user_id,
            client_id,
            username,
            email,
            account,
            _privilege,
            via,
            via_id,
            _state,
            start_text,
            end_text,
            certified_text,
        ) = values
        times = self.times
        start = times[start_text] if start_text in times else self._time(start_text, "start_at", file, line)
        end = times[end_text] if end_text in times else self._time(end_text, "end_at", file, line)
        certified = times[certified_text] if certified_text in times else self._time(certified_text, "last_certified_at", file, line)
        # _make, not the constructor: one C-level tuple copy. The timestamps parsed in _check, so
        # each is a datetime or None.
        record = EntitlementRecord._make(
            (subject_id, source, kind, value, account, privilege_, via, via_id, state_, start, end, certified, file, line)
        )
        known_detail = self._group(subject_id).add(record)
        if known_detail is not None:
            # The same grant exported twice (overlapping report pages) grants once; a second
            # copy that disagrees is worth a look, the first one stands.
            if known_detail:
                self.warnings.append(
                    Issue(
                        f"{file}:{line}",
                        f"duplicate of an earlier row for subject {subject_id} with different "
                        "privilege, state or dates; the first row is kept",
                        "duplicate_conflict",
                    )
                )
            return
        self.count += 1
        self.sources[source] = self.sources.get(source, 0) + 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if value[:1] in _FORMULA or account[:1] in _FORMULA or source[:1] in _FORMULA:
            self.formula_cells += 1
        known = self.subjects.get(subject_id)
        if (
            known is None
            or status != known[1]
            or (owner and not known[2])
            or (user_id and not known[3])
            or (client_id and not known[4])
            or (username and not known[5])
            or (email and not known[6])
        ):
            # New subject, or one whose fields this row may change (status, a missing key).
            # SUBJECT_FIELDS order; a list, not a dict: a million subjects' fields cost a third.
            fields = [kind_, status, owner or None, user_id or None, client_id or None, username or None, email or None]
            if known is None:
                self.subjects[subject_id] = fields
            else:
                self._merge(known, fields, subject_id, f"{file}:{line}")
        if self.canonical is not None:
            self.canonical.append(values)

    def _group(self, subject_id: str) -> RecordGroup:
        """The records of ``subject_id`` so far (a new, empty group for a new subject)."""
        group = self.groups.get(subject_id)
        if group is None:
            group = self.groups[subject_id] = RecordGroup()
        return group

    def _slow_checks(self, values: tuple[str, ...], where: str) -> tuple[str, str, str, str] | None:
        bad = False
        for column, value in zip(REQUIRED_COLUMNS, values, strict=False):  # values holds every column; the required ones come first
            if not value:
                self.issues.append(Issue(where, f"required column '{column}' is empty", "missing_value"))
                bad = True
        out = []
        for column in ("subject_type", "subject_status", "privilege_level", "assignment_state"):
            value = values[COLUMNS.index(column)]
            table = _TABLES[column]
            normalized = table.get(value) or table.get(value.lower())
            if normalized is None:
                if value:
                    allowed = ", ".join(sorted(k for k in table if k))
                    self.issues.append(Issue(where, f"{column} must be one of {allowed}", "bad_value"))
                bad = True
            out.append(normalized or "")
        return None if bad else (out[0], out[1], out[2], out[3])

    def _time(self, text: str, column: str, file: str, line: int) -> datetime | None | bool:
        if not text:
            return None
        try:
            parsed = parse_rfc3339(text)
        except ValueError:
            self.issues.append(Issue(f"{file}:{line}", f"{column} is not an RFC 3339 timestamp with an offset", "bad_timestamp"))
            return False
        self.times[text] = parsed
        return parsed

    def _merge(self, fields: list[Any], new: list[Any], subject_id: str, where: str) -> None:
        if new[1] != fields[1]:
            self.warnings.append(
                Issue(where, f"subject {subject_id} has conflicting statuses; using the most restrictive", "status_conflict")
            )
            if _STATUS_RANK[new[1]] > _STATUS_RANK[fields[1]]:
                fields[1] = new[1]
        for n in range(2, len(SUBJECT_FIELDS)):  # owner and the join keys: the first value given stands
            if not fields[n] and new[n]:
                fields[n] = new[n]

    def finish(self, snapshot_id: str, source_system: str, generated_at: datetime, content_digest: str | None) -> Snapshot:
        """Index what was added.

        Raises:
            EntitlementSourceError: every bad row added, with its location.
        """
        if self.issues:
            raise EntitlementSourceError(f"entitlement snapshot is invalid: {len(self.issues)} bad row(s)", self.issues)
        identities = {sid: make_identity(sid, fields, tuple(self.groups[sid].records)) for sid, fields in self.subjects.items()}
        self.groups.clear()
        index: dict[str, dict[str, list[str]]] = {k: {} for k in _JOIN_KEYS}
        for subject_id, fields in self.subjects.items():
            for key, value in join_values(fields):
                index[key].setdefault(value, []).append(subject_id)
        ids: dict[str, dict[str, Resolution]] = {k: {} for k in _ID_KEYS}
        names: dict[str, dict[str, tuple[Resolution, Resolution]]] = {k: {} for k in _NAME_KEYS}
        for key, mapping in index.items():
            for value, subject_ids in mapping.items():
                if len(subject_ids) > 1:
                    self.warn_ambiguous(key, subject_ids)
                candidates = [identities[i] for i in subject_ids]
                if key in ids:
                    ids[key][value] = id_resolution(key, candidates)
                else:
                    names[key][value] = name_resolutions(key, candidates)
        self.warn_formulas(snapshot_id)
        if content_digest is None:
            content_digest = digest({"generated_at": format_rfc3339(generated_at), "rows": sorted(self.canonical or [])})
        return Snapshot(
            snapshot_id=snapshot_id,
            source_system=source_system,
            generated_at=generated_at,
            digest=content_digest,
            identities=identities,
            record_count=self.count,
            warnings=tuple(self.warnings),
            _index=ids,
            _names=names,
        )

    def warn_ambiguous(self, key: str, subject_ids: Sequence[str]) -> None:
        """Warn that one ``key`` value is shared by ``subject_ids`` (the engine denies it)."""
        self.warnings.append(Issue(key, f"{len(subject_ids)} subjects share one {key}: {', '.join(subject_ids)}", "ambiguous_join_key"))

    def warn_formulas(self, snapshot_id: str) -> None:
        """Warn about cells that look like spreadsheet formulas, once every row is in."""
        if self.formula_cells:
            self.warnings.append(
                Issue(
                    snapshot_id,
                    f"{self.formula_cells} record(s) have a value starting like a spreadsheet formula; kept as plain text",
                    "formula_like_cell",
                )
            )

    def record_counts(self) -> dict[str, dict[str, int]]:
        """What ``Snapshot.counts`` reports, counted while rows were added."""
        types: dict[str, int] = {}
        for fields in self.subjects.values():
            types[fields[0]] = types.get(fields[0], 0) + 1
        return {"subject_type": types, "source": dict(self.sources), "entitlement_kind": dict(self.kinds)}


# --------------------------------------------------------------------------------------------
# The join rule's parts, shared by the in-memory index above and the compiled one
# (``snapshot_file``), so that both resolve a principal identically.


def make_identity(
    subject_id: str,
    fields: Sequence[Any],
    records: tuple[EntitlementRecord, ...],
    split: tuple[tuple[EntitlementRecord, ...], tuple[EntitlementRecord, ...]] | None = None,
) -> Identity:
    """An ``Identity`` from its ``SUBJECT_FIELDS`` (``SnapshotBuilder.subjects``) and records;
    ``split`` is ``Identity.split(records)`` when the caller has it already."""
    subject_type, status, owner_id, user_id, client_id, username, email = fields
    timeless, windowed = split if split is not None else Identity.split(records)
    return Identity(
        subject_id, subject_type, status, owner_id, user_id, client_id, username, email, records, _timeless=timeless, _windowed=windowed
    )


def join_values(fields: Sequence[Any]) -> Iterator[tuple[str, str]]:
    """(join key, indexed value) for each join key an identity has; names are lower-cased."""
    for n, key in enumerate(_JOIN_KEYS, start=3):
        value = fields[n]
        if value:
            yield key, value.lower() if key in _NAME_KEYS else value


def id_resolution(key: str, candidates: Sequence[Identity]) -> Resolution:
    """What a keycloak_user_id or keycloak_client_id value reaches: a match, or an ambiguity."""
    if len(candidates) == 1:
        return Resolution(candidates[0], key)
    return Resolution(None, key, tuple(c.subject_id for c in candidates))


def name_resolutions(key: str, candidates: Sequence[Identity]) -> tuple[Resolution, Resolution]:
    """What a username or e-mail value reaches: (strict, pins ignored); see ``Snapshot.resolve``."""
    every = id_resolution(key, candidates)
    pinned = tuple(c.subject_id for c in candidates if c.keycloak_user_id or c.keycloak_client_id)
    return (Resolution(None, key, mismatched=pinned) if pinned else every), every


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


def ownership_warnings(snapshot: Snapshot) -> list[Issue]:
    """Non-human identities without an accountable, active human owner (OWASP NHI: orphans).

    These load fine (the policy decides what an orphan may do) but an operator should see them.
    """
    warnings = []
    for identity in snapshot.identities.values():
        if identity.kind == "human":
            continue
        where = f"subject {identity.subject_id}"
        if not identity.owner_id:
            warnings.append(Issue(where, f"{identity.kind} has no owner", "orphan"))
            continue
        owner = snapshot.identity(identity.owner_id)
        if owner is None:
            warnings.append(Issue(where, f"{identity.kind} owner {identity.owner_id} is not in the snapshot", "orphan"))
        elif owner.kind != "human" or owner.status != "active":
            warnings.append(
                Issue(where, f"{identity.kind} owner {owner.subject_id} is a {owner.status} {owner.kind}, not an active human", "orphan")
            )
    return warnings
