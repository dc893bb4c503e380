"""Compiled entitlement snapshots: an export compiled once into an immutable file that every
worker memory-maps, so that workers share one copy and a reload swaps files instead of heaps.

A compiled snapshot is a ``Snapshot`` like any other (``open_snapshot_file``): the same
``resolve``, ``identity`` and ``Identity`` objects, the same digest, the same provenance (every
record keeps its export file and line). Only where it lives differs: its identities, records and
join index are read from the file on demand, and a worker's heap holds a small cache of them.

The file, ``FORMAT`` (an LMDB environment in one file: a B+tree on a memory map, readers need no
lock and share the operating system's page cache). Written once, by ``SnapshotFileBuilder``, under
a temporary name, and never modified after it is renamed into place. Databases:

  * ``meta``: ``b"snapshot"`` -> JSON ``{format, snapshot_id, source_system, generated_at, digest,
    record_count, subjects, warnings: [{path, message, code}], counts}``.
  * ``identities``: subject id (UTF-8) -> marshal ``(subject_type, status, owner_id,
    keycloak_user_id, keycloak_client_id, username, email, ordinal)``, absent fields None;
    ``ordinal`` is the key of the subject's records.
  * ``records``: ordinal (4 bytes, big-endian; written in increasing order, so pages are full)
    -> marshal ``(columns, (timeless, windowed))``: the subject's records in export order as 13
    columns ``source, kind, value, account, privilege_level, via, via_id, assignment_state,
    start_at, end_at, last_certified_at, file, line`` (a timestamp is None, an int: whole seconds
    since the Unix epoch, UTC, or a 1-tuple of int microseconds), and two bytes of one flag per
    record: active without a window, active with one (``Identity.split``, done at compile time).
    (marshal: the standard library's fast, versioned serialization of plain values; the file is
    written and read by the same bridge version, and ``FORMAT`` names the layout.)
  * ``join`` (sorted duplicates): a key letter, NUL, the indexed value -> one entry per identity
    holding that value: its place in the export (4 bytes, big-endian, so that duplicates list in
    export order, as the in-memory index does) and its subject id; letters ``u``
    keycloak_user_id, ``c`` keycloak_client_id, ``n`` username and ``e`` email (both lower-cased,
    ``entitlements.join_values``).

A lookup that misses the cache costs a decode (15-25 us for ten records: CPython object
creation, bench/RESULTS.md "Large estates"); the cache keeps the recently used identities.

Concurrency: a reader opens the file read-only without LMDB's lock file (nothing writes it after
the rename), and every lookup runs in its own short read transaction, so any number of threads
and processes read one file at once. An open snapshot keeps its mapping until the last reference
to it is dropped: a request that took the old snapshot finishes on it after a swap.
"""

from __future__ import annotations

import json
import marshal
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import compress, repeat
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from keycloak_policy_bridge.entitlements import (
    SUBJECT_FIELDS,
    EntitlementRecord,
    Identity,
    RecordGroup,
    Snapshot,
    SnapshotBuilder,
    id_resolution,
    join_values,
    make_identity,
    name_resolutions,
)
from keycloak_policy_bridge.errors import EntitlementSourceError, Issue
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339

FORMAT = "kpb-snapshot/1"
SUFFIX = ".kpbsnap"
_LETTERS = {"keycloak_user_id": b"u", "keycloak_client_id": b"c", "username": b"n", "email": b"e"}
V = TypeVar("V")
_ORDER = {name: n for n, name in enumerate(_LETTERS)}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COMMIT_EVERY = 20_000  # subjects per write transaction: bounds the writer's dirty pages
_MAP_SIZE = 1 << 40  # address space only (a sparse reservation); the file grows as it is written
# Identities a reader keeps decoded, least recently used out: a login and its refreshes ask for
# the same subject, and a decode costs 15-25 us against 1-2 for a hit. About 40 MB per process at
# ten records a subject.
_CACHE = 16_384
_TIMES = 65_536  # distinct timestamps a reader keeps decoded


class _Moments(dict[Any, Any]):
    """datetime -> its encoding (module docstring), computed on first use: exports repeat a few
    thousand dates, so a compile encodes each once. None encodes as None."""

    def __init__(self) -> None:
        super().__init__({None: None})

    def __missing__(self, moment: datetime) -> int | tuple[int]:
        delta = moment - _EPOCH
        seconds = delta.days * 86_400 + delta.seconds
        encoded = seconds if not delta.microseconds else (seconds * 1_000_000 + delta.microseconds,)
        if len(self) < _TIMES:
            self[moment] = encoded
        return encoded


def _encode(records: list[EntitlementRecord], moments: _Moments) -> bytes:
    """One subject's records as columns (see the module docstring), with its timeless/windowed split."""
    columns = list(zip(*records, strict=True))[1:]  # all but subject_id, which the key gives
    get = moments.__getitem__
    columns[8:11] = (tuple(map(get, columns[8])), tuple(map(get, columns[9])), tuple(map(get, columns[10])))
    timeless, windowed = ({id(r) for r in part} for part in Identity.split(tuple(records)))
    flags = (bytes(id(r) in timeless for r in records), bytes(id(r) in windowed for r in records))
    return marshal.dumps((tuple(columns), flags))


class SnapshotFileBuilder(SnapshotBuilder):
    """A ``SnapshotBuilder`` that writes a compiled snapshot file instead of a heap.

    Memory: one subject's records at a time, plus every subject's fields. Exports are usually
    grouped by subject; a subject that reappears later is read back from the file and rewritten,
    so a shuffled export builds the same file, more slowly. ``finish`` writes ``path`` (which
    must not exist) and opens it; on any rejection the partial file is removed.
    """

    intern = False

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._env = lmdb.open(str(self.path), subdir=False, map_size=_MAP_SIZE, max_dbs=4, sync=False, metasync=False, lock=False)
        self._records = self._env.open_db(b"records")
        self._txn = self._env.begin(write=True)
        self._open_id: str | None = None
        self._open: RecordGroup | None = None
        self._next = 0
        self._moments = _Moments()
        self._closed = False

    def _group(self, subject_id: str) -> RecordGroup:
        if subject_id == self._open_id:
            assert self._open is not None
            return self._open
        self._flush()
        records = None
        fields = self.subjects.get(subject_id)
        if fields is not None:  # seen before, not in a row: read back, rewritten when it closes
            key = fields.pop().to_bytes(4, "big")  # its ordinal (see _flush)
            blob = self._txn.get(key, db=self._records)
            assert blob is not None, "every flushed ordinal holds its records"
            records = list(_decode(subject_id, blob, _Times())[0])
            self._txn.delete(key, db=self._records)
        self._open_id, self._open = subject_id, RecordGroup(records)
        return self._open

    def _flush(self) -> None:
        if self._open_id is None or self._open is None or not self._open.records:
            return
        # The ordinal rides at the end of the subject's fields (SUBJECT_FIELDS, then the ordinal, as
        # the identities database stores them): a dictionary of a million ordinals costs 100 MB.
        ordinal = self._next
        self.subjects[self._open_id].append(ordinal)
        self._next += 1
        self._txn.put(ordinal.to_bytes(4, "big"), _encode(self._open.records, self._moments), append=True, db=self._records)
        self._open_id = self._open = None
        if self._next % _COMMIT_EVERY == 0:
            self._txn.commit()
            self._txn = self._env.begin(write=True)

    def abandon(self) -> None:
        """Close and remove the file, finished or not (a rejected export leaves nothing behind)."""
        if not self._closed:
            self._closed = True
            self._txn.abort()
            self._env.close()
        self.path.unlink(missing_ok=True)

    def finish(self, snapshot_id: str, source_system: str, generated_at: datetime, content_digest: str | None) -> Snapshot:
        """Write the identities, the join index and the metadata; then open the file.

        Raises:
            EntitlementSourceError: every bad row added (the partial file is removed).
        """
        if self.issues:
            self.abandon()
            raise EntitlementSourceError(f"entitlement snapshot is invalid: {len(self.issues)} bad row(s)", self.issues)
        if content_digest is None:
            self.abandon()
            raise ValueError("a compiled snapshot needs the digest of its files")
        self._flush()
        identities = self._env.open_db(b"identities", txn=self._txn)
        join = self._env.open_db(b"join", txn=self._txn, dupsort=True)
        ambiguous: dict[tuple[str, str], list[str]] = {}
        txn = self._txn
        for place, (subject_id, fields) in enumerate(self.subjects.items()):
            assert len(fields) == len(SUBJECT_FIELDS) + 1, "every subject has flushed records"
            key = subject_id.encode()
            txn.put(key, marshal.dumps(tuple(fields)), db=identities)  # SUBJECT_FIELDS and the ordinal
            holder = place.to_bytes(4, "big") + key  # duplicates sort by place: first seen, first listed
            for name, value in join_values(fields):
                entry = _LETTERS[name] + b"\0" + value.encode()
                if not txn.put(entry, holder, dupdata=False, overwrite=False, db=join):
                    # Rare: a second identity with this value; collect every holder for the warning.
                    holders = ambiguous.setdefault((name, value), [txn.get(entry, b"", db=join)[4:].decode()])
                    holders.append(subject_id)
                    txn.put(entry, holder, dupdata=True, db=join)
        # Warned in the in-memory builder's order: by join key, then by the first holder's place.
        firsts = {holders[0] for holders in ambiguous.values()}
        order = {sid: n for n, sid in enumerate(self.subjects) if sid in firsts}
        for (name, _value), holders in sorted(ambiguous.items(), key=lambda item: (_ORDER[item[0][0]], order[item[1][0]])):
            self.warn_ambiguous(name, holders)
        self.warn_formulas(snapshot_id)
        meta = {
            "format": FORMAT,
            "snapshot_id": snapshot_id,
            "source_system": source_system,
            "generated_at": format_rfc3339(generated_at),
            "digest": content_digest,
            "record_count": self.count,
            "subjects": len(self.subjects),
            "warnings": [w.to_dict() for w in self.warnings],
            "counts": self.record_counts(),
        }
        txn.put(b"snapshot", json.dumps(meta).encode(), db=self._env.open_db(b"meta", txn=txn))
        txn.commit()
        self._env.sync(True)
        self._env.close()
        self._closed = True
        self.subjects.clear()
        return open_snapshot_file(self.path)


def _decode(subject_id: str, blob: bytes, times: _Times) -> tuple[tuple[EntitlementRecord, ...], tuple[bytes, bytes]]:
    """The records of one subject and its split flags (``_encode`` reversed).

    Column by column and in C loops (``zip``, ``map``): a decode builds each record with one call
    and no Python frame, which is most of what a lookup that misses the cache costs.
    """
    columns, flags = marshal.loads(blob)
    source, kind, value, account, privilege, via, via_id, state, start, end, certified, file, line = columns
    get = times.__getitem__
    rows = zip(
        repeat(subject_id),
        source,
        kind,
        value,
        account,
        privilege,
        via,
        via_id,
        state,
        map(get, start),
        map(get, end),
        map(get, certified),
        file,
        line,
    )
    return tuple(map(_RECORD, rows)), flags


_RECORD = partial(tuple.__new__, EntitlementRecord)  # EntitlementRecord._make without its Python frame


class _Times(dict[Any, "datetime | None"]):
    """Encoded timestamp -> datetime, computed on first use; a bounded memo (exports repeat a
    few thousand dates). None maps to None."""

    def __init__(self) -> None:
        super().__init__({None: None})

    def __missing__(self, encoded: int | tuple[int]) -> datetime:
        if len(self) >= _TIMES:
            self.clear()
            self[None] = None
        if type(encoded) is tuple:
            moment = _EPOCH + timedelta(microseconds=encoded[0])
        else:
            moment = _EPOCH + timedelta(seconds=encoded)  # type: ignore[arg-type]
        self[encoded] = moment
        return moment


def _identity(subject_id: str, fields: tuple[Any, ...], blob: bytes, times: _Times) -> Identity:
    records, (timeless, windowed) = _decode(subject_id, blob, times)
    return make_identity(subject_id, fields[:-1], records, (tuple(compress(records, timeless)), tuple(compress(records, windowed))))


class _Identities(Mapping[str, Identity]):
    """Subject id -> ``Identity``, decoded from the file on demand (a bounded cache in front)."""

    def __init__(self, env: Any, count: int) -> None:
        self._env = env
        self._identities = env.open_db(b"identities", create=False)
        self._records = env.open_db(b"records", create=False)
        self._count = count
        self._cache: dict[str, Identity] = {}
        self._times = _Times()

    def get(self, subject_id: str, default: Any = None) -> Any:
        cache = self._cache
        found = cache.pop(subject_id, None)
        if found is not None:
            cache[subject_id] = found  # now the most recently used
            return found
        with self._env.begin() as txn:
            encoded = txn.get(subject_id.encode(), db=self._identities)
            if encoded is None:
                return default
            fields = marshal.loads(encoded)
            blob = txn.get(fields[-1].to_bytes(4, "big"), db=self._records)
        return self._remember(subject_id, fields, blob)

    def _remember(self, subject_id: str, fields: tuple[Any, ...], blob: bytes) -> Identity:
        identity = _identity(subject_id, fields, blob, self._times)
        cache = self._cache
        if len(cache) >= _CACHE:
            try:
                cache.pop(next(iter(cache)), None)  # least recently used first (dicts keep insertion order)
            except (StopIteration, RuntimeError):
                pass  # another thread changed the cache under the iterator: nothing to evict now
        cache[subject_id] = identity
        return identity

    def __getitem__(self, subject_id: str) -> Identity:
        found = self.get(subject_id)
        if found is None:
            raise KeyError(subject_id)
        return found  # type: ignore[no-any-return]

    def __contains__(self, subject_id: object) -> bool:
        return isinstance(subject_id, str) and self.get(subject_id) is not None

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        with self._env.begin() as txn:
            for key in txn.cursor(db=self._identities).iternext(keys=True, values=False):
                yield bytes(key).decode()

    def values(self) -> Iterator[Identity]:  # type: ignore[override]
        """Every identity, in subject id order, read in one pass (not through the cache)."""
        with self._env.begin() as txn:
            for key, encoded in txn.cursor(db=self._identities):
                subject_id, fields = bytes(key).decode(), marshal.loads(encoded)
                yield _identity(subject_id, fields, txn.get(fields[-1].to_bytes(4, "big"), db=self._records), self._times)


class _JoinIndex(Mapping[str, V]):
    """One join key's index: value -> what the identities holding it resolve to, by ``rule``
    (``entitlements.id_resolution`` or ``name_resolutions``: the join rule, applied as the
    in-memory index applies it). A lookup table, not a collection: it is neither counted nor
    iterated."""

    def __init__(self, env: Any, name: str, identities: _Identities, rule: Callable[[str, Sequence[Identity]], V]) -> None:
        self._env = env
        self._join = env.open_db(b"join", create=False, dupsort=True)
        self._name = name
        self._prefix = _LETTERS[name] + b"\0"
        self._identities = identities
        self._rule = rule

    def candidates(self, value: str) -> list[Identity]:
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._join)
            if not cursor.set_key(self._prefix + value.encode()):
                return []
            ids = [bytes(v)[4:].decode() for v in cursor.iternext_dup()]
        found = [self._identities.get(i) for i in ids]
        return [i for i in found if i is not None]

    def get(self, value: str, default: Any = None) -> Any:
        candidates = self.candidates(value)
        return self._rule(self._name, candidates) if candidates else default

    def __getitem__(self, value: str) -> V:
        found = self.get(value)
        if found is None:
            raise KeyError(value)
        return found  # type: ignore[no-any-return]

    def __len__(self) -> int:
        raise TypeError("a compiled join index is not counted")

    def __iter__(self) -> Iterator[str]:
        raise TypeError("a compiled join index is not iterated")


_OPEN: weakref.WeakValueDictionary[tuple[int, int], Snapshot] = weakref.WeakValueDictionary()
_OPEN_LOCK = threading.Lock()


def open_snapshot_file(path: str | Path) -> Snapshot:
    """Open a compiled snapshot read-only; a file this process has open already is shared.

    (LMDB allows one environment per file and process: two stores, or a reload of an unchanged
    export, get the snapshot already open, keyed by the file's device and inode.)

    Raises:
        EntitlementSourceError: the file is missing, not a compiled snapshot, or of another format
            (code ``bad_snapshot_file``).
    """
    where = str(path)
    try:
        st = os.stat(where)
    except OSError as exc:
        raise EntitlementSourceError(
            f"{where}: not a compiled snapshot", [Issue(where, exc.strerror or "cannot read", "bad_snapshot_file")]
        ) from None
    with _OPEN_LOCK:
        known = _OPEN.get((st.st_dev, st.st_ino))
        if known is None:
            known = _OPEN[(st.st_dev, st.st_ino)] = _open(where)
        return known


def _open(where: str) -> Snapshot:
    try:
        env = lmdb.open(where, subdir=False, readonly=True, lock=False, readahead=False, max_dbs=4)
        with env.begin() as txn:
            raw = txn.get(b"snapshot", db=env.open_db(b"meta", txn=txn, create=False))
        meta = json.loads(raw) if raw is not None else {}
    except (lmdb.Error, ValueError) as exc:
        raise EntitlementSourceError(f"{where}: not a compiled snapshot", [Issue(where, str(exc), "bad_snapshot_file")]) from None
    if meta.get("format") != FORMAT:
        raise EntitlementSourceError(
            f"{where}: compiled snapshot format {meta.get('format')!r}, this bridge reads {FORMAT!r}",
            [Issue(where, "another format; compile the export again", "bad_snapshot_file")],
        )
    identities = _Identities(env, meta["subjects"])
    return Snapshot(
        snapshot_id=meta["snapshot_id"],
        source_system=meta["source_system"],
        generated_at=parse_rfc3339(meta["generated_at"]),
        digest=meta["digest"],
        identities=identities,
        record_count=meta["record_count"],
        warnings=tuple(map(Issue.from_dict, meta["warnings"])),
        _index={name: _JoinIndex(env, name, identities, id_resolution) for name in ("keycloak_user_id", "keycloak_client_id")},
        _names={name: _JoinIndex(env, name, identities, name_resolutions) for name in ("username", "email")},
        _counts=meta["counts"],
    )


def file_size(path: str | Path) -> int:
    """Bytes the compiled file occupies on disk (what a fully resident mapping costs)."""
    return os.stat(path).st_blocks * 512
