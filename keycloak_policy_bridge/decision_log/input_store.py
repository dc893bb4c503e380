"""Recorded inputs in the SQLite log: the ``inputs`` table, written once per document, read cached.

A ``kpb-decision/2`` record references its inputs (the identities and feed rows its evaluation
read) by ``record.inputs.input_ref``, and the log stores each distinct input document once
(``inputs``: ref -> ``record.encode(document)``), in the same transaction as the first record that
references it. A subject's thousand logins under one export store its identity once.

Three pieces of bookkeeping keep that cheap and sound:

* ``KnownInputs``: the refs this process knows are stored, so an append does not re-send them.
  It is valid for one *inputs generation* (``meta.inputs_generation``): ``prune`` deletes the
  inputs no remaining record references and bumps the generation, and every append reads it
  inside its transaction, so a process never skips a document that was collected meanwhile.
* ``InputCache``: decoded documents by ref, for readers (an input is content-addressed: the
  document of a ref never changes, so a cached one is never stale), and the engine objects
  decoded from them (``record.DecodedInputs``), shared by every record the reader returns. A
  reader reading records in batches resolves the refs a batch lacks with one query.
* ``referenced_refs``: the refs records reference, read from their stored bodies without
  parsing them whole (``record.codec.stored_input_refs``), for ``prune``'s collection.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from keycloak_policy_bridge.record import DecodedInputs, RecordFormatError, decode
from keycloak_policy_bridge.record.codec import V2, stored_input_refs

GENERATION_KEY = "inputs_generation"
SCHEMA = "CREATE TABLE IF NOT EXISTS inputs (ref TEXT PRIMARY KEY, document BLOB NOT NULL) WITHOUT ROWID;"
KNOWN_LIMIT = 50_000  # refs remembered per process (about 8 MB); a forgotten one is re-sent and ignored
CACHE_LIMIT = 4_096  # decoded documents kept per log instance for readers
_IN_LIST = 500  # refs per ``IN (...)`` query when a batch is resolved


class KnownInputs:
    """The refs known to be stored in the current inputs generation (bounded; thread-safe)."""

    def __init__(self, limit: int = KNOWN_LIMIT) -> None:
        self._limit = limit
        self._refs: dict[str, None] = {}
        self._generation: str | None = None
        self._lock = threading.Lock()

    def __contains__(self, ref: object) -> bool:
        return ref in self._refs

    def sync(self, generation: str) -> None:
        """Forget every ref when the stored generation is not the one they were learnt in."""
        with self._lock:
            if generation != self._generation:
                self._refs.clear()
                self._generation = generation

    def learn(self, refs: Iterable[str], generation: str) -> None:
        """Remember ``refs``, committed in ``generation`` (ignored if the generation moved on)."""
        with self._lock:
            if generation != self._generation:
                return
            for ref in refs:
                self._refs[ref] = None
            while len(self._refs) > self._limit:
                del self._refs[next(iter(self._refs))]

    def forget(self) -> None:
        with self._lock:
            self._refs.clear()
            self._generation = None


class InputCache:
    """Decoded input documents by ref, least recently used first out (thread-safe), and
    ``decoded``: the objects decoded from them, for ``record.load_record``."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self._limit = limit
        self._documents: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.decoded = DecodedInputs()

    def reader(self, conn: sqlite3.Connection, batch: Callable[[], Iterable[str]] | None = None) -> Callable[[str], Mapping[str, Any]]:
        """``input_of`` for ``record.load_record`` over ``conn``.

        ``batch``: the refs of the records being read together; at the first ref not cached, all
        of them not cached are read at once (``prefetch``), not one query per ref.

        The function raises KeyError for a ref the table lacks, and ``RecordFormatError`` for a
        stored document that cannot be decoded (the record package names the ref).
        """
        pending = [batch]

        def input_of(ref: str) -> Mapping[str, Any]:
            found = self._cached(ref)
            if found is not None:
                return found
            refs, pending[0] = pending[0], None
            if refs is not None:
                self.prefetch(conn, refs())
                found = self._cached(ref)
                if found is not None:
                    return found
            row = conn.execute("SELECT CAST(document AS BLOB) FROM inputs WHERE ref = ?", (ref,)).fetchone()
            if row is None:
                raise KeyError(ref)
            document = decode(as_bytes(row[0]))
            self._store([(ref, document)])
            return document

        return input_of

    def prefetch(self, conn: sqlite3.Connection, refs: Iterable[str]) -> None:
        """Read and cache the documents of ``refs`` not cached yet, a few hundred per query (at
        most half the cache). A ref the table lacks, or whose document cannot be decoded, is left
        out: ``reader``'s function reports it when a record asks for it."""
        with self._lock:
            missing = [ref for ref in dict.fromkeys(refs) if ref not in self._documents][: self._limit // 2]
        for start in range(0, len(missing), _IN_LIST):
            chunk = missing[start : start + _IN_LIST]
            sql = f"SELECT ref, CAST(document AS BLOB) FROM inputs WHERE ref IN ({', '.join('?' * len(chunk))})"
            found = []
            for ref, blob in conn.execute(sql, chunk):
                try:
                    found.append((ref, decode(as_bytes(blob))))
                except RecordFormatError:
                    continue
            self._store(found)

    def _cached(self, ref: str) -> Mapping[str, Any] | None:
        with self._lock:
            found = self._documents.get(ref)
            if found is not None:
                self._documents.move_to_end(ref)
            return found

    def _store(self, documents: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        with self._lock:
            for ref, document in documents:
                self._documents[ref] = document
            while len(self._documents) > self._limit:
                self._documents.popitem(last=False)


def referenced_refs(conn: sqlite3.Connection, after_seq: int, through_seq: int | None = None) -> set[str]:
    """The input refs of the ``/2`` records with ``after_seq < seq <= through_seq`` (no upper bound
    when None). A body in any other format (``/1``: inputs inline) references none.

    Raises:
        RecordFormatError: a ``/2`` body cannot be read (its refs are unknown: collecting now
            could delete what it references).
    """
    sql, args = "SELECT CAST(body AS BLOB) FROM decisions WHERE seq > ? AND substr(CAST(body AS BLOB), 1, 1) = ?", [after_seq, V2]
    if through_seq is not None:
        sql += " AND seq <= ?"
        args.append(through_seq)
    refs: set[str] = set()
    for (blob,) in conn.execute(sql, args):
        refs.update(stored_input_refs(blob))
    return refs


def as_bytes(blob: bytes | str) -> bytes:
    """A stored body or document as bytes (an edit by hand can turn a BLOB into TEXT)."""
    return blob.encode("utf-8") if isinstance(blob, str) else bytes(blob)
