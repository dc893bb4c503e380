"""Reading the PostgreSQL decision log: ``PostgresDecisionReader`` (``DecisionLogReader``).

The same contract as ``sqlite_reader``: a stored body is decoded through the record package
(``record.load_record``); one that cannot be decoded is an ``UnreadableRecord`` when streamed
(``iterate``, ``live``) and a ``DecisionLogError`` naming the decision when asked for (``get``,
``query``, ``document``), never quoting the body.

Every read runs in one ``REPEATABLE READ, READ ONLY`` transaction on a connection of the
readers' pool, and reads a record's inputs in that same transaction: one snapshot, so a prune
committing meanwhile cannot take them away (what SQLite's WAL snapshot gives ``sqlite_reader``).
Streams read through a server-side cursor in batches (``_BATCH``); the inputs a batch references
that are not cached yet are read with one query, and decoded inputs are shared by every record
the reader returns (``input_store.InputCache``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg

from keycloak_policy_bridge.decision_log.chain import sortable
from keycloak_policy_bridge.decision_log.input_store import InputCache
from keycloak_policy_bridge.decision_log.interfaces import UnreadableRecord
from keycloak_policy_bridge.decision_log.postgres_schema import describe, ensure_schema, open_pool, pooled, reason
from keycloak_policy_bridge.decision_log.rows import StoredRowsReader, refs_of, rfc3339_of
from keycloak_policy_bridge.decision_log.sqlitefile import looks_like_id
from keycloak_policy_bridge.errors import DecisionLogError, DecisionNotFoundError
from keycloak_policy_bridge.record import DecisionRecord, RecordFormatError, decode, load_record

_ROW = "SELECT decision_id, evaluated_at, subject_id, client_id, body FROM decisions"
_BATCH = 64  # rows fetched together; a batch's missing inputs are read with one query
Conn = psycopg.Connection[Any]


class _Inputs(InputCache):
    """``InputCache`` over a PostgreSQL connection."""

    def fetch(self, conn: Conn, refs: Iterable[str]) -> None:
        """Read and cache the documents of ``refs`` not cached yet (one query). A ref the table
        lacks, or whose document cannot be decoded, is left out: ``input_of`` reports it."""
        missing = [ref for ref in dict.fromkeys(refs) if self._cached(ref) is None]
        if not missing:
            return
        found = []
        for ref, blob in conn.execute("SELECT ref, document FROM inputs WHERE ref = ANY(%s)", (missing,)):
            try:
                found.append((ref, decode(bytes(blob))))
            except RecordFormatError:
                continue
        self._store(found)

    def input_of(self, conn: Conn) -> Any:
        """``input_of`` for ``record.load_record``: KeyError for a ref the table lacks,
        ``RecordFormatError`` for a stored document that cannot be decoded."""

        def input_of(ref: str) -> Any:
            found = self._cached(ref)
            if found is not None:
                return found
            row = conn.execute("SELECT document FROM inputs WHERE ref = %s", (ref,)).fetchone()
            if row is None:
                raise KeyError(ref)
            document = decode(bytes(row[0]))
            self._store([(ref, document)])
            return document

        return input_of


class PostgresDecisionReader(StoredRowsReader):
    """Reads the decision log in a PostgreSQL database. Thread-safe (a pooled connection per call).

    Args:
        url: a libpq URL (``postgresql://user@host:port/db``); the schema is created or migrated
            when missing or older (``postgres_schema``).
        default_token_ttl: lifetime assumed for a token whose record has no TTL (``live``, drift).
        pool_size: at most this many readers at once (each stream holds one connection).
        timeout: seconds to wait for a connection before a read fails.

    Raises:
        DecisionLogError: the database cannot be reached, migrated, or is newer than this code.
    """

    ROW = _ROW
    PLACEHOLDER = "%s"
    CONTAINS = "strpos"  # exact and case-sensitive, unlike LIKE

    def __init__(self, url: str, *, default_token_ttl: timedelta = timedelta(hours=1), pool_size: int = 4, timeout: float = 5.0) -> None:
        self.url = url
        self.where = describe(url)
        self.default_token_ttl = default_token_ttl
        self._cache = _Inputs()
        self._readers = open_pool(url, 1, max(1, pool_size), timeout, "kpb-log-readers")
        try:
            ensure_schema(self._readers, url)
        except BaseException:
            self._readers.close()
            raise

    def close(self) -> None:
        self._readers.close()

    @property
    def location(self) -> str:
        return self.where

    def _input_reader(self, conn: Conn) -> Any:
        return self._cache.input_of(conn)

    @contextmanager
    def _rows(self, sql: str, args: list[Any]) -> Iterator[tuple[Conn, Iterator[tuple[Any, ...]]]]:
        with self._reading() as conn:
            yield conn, (row for batch in _batches(conn, sql, args) for row in batch)

    @contextmanager
    def _reading(self) -> Iterator[Conn]:
        """A connection in a read-only, repeatable-read transaction (module docstring).

        Raises:
            DecisionLogError: the database failed (connection, timeout) during the read.
        """
        try:
            with pooled(self._readers) as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield conn
        except psycopg.Error as exc:
            raise DecisionLogError(f"{self.where}: cannot read the decision log ({reason(exc)})") from None

    def _stored(self, conn: Conn, decision_id: str) -> tuple[Any, ...]:
        row = conn.execute(f"{_ROW} WHERE decision_id = %s", (decision_id,)).fetchone()
        if row is None:
            raise DecisionNotFoundError(
                f"no decision {decision_id!r} in {self.where}" if looks_like_id(decision_id) else "no such decision"
            )
        return tuple(row)

    def _load_batch(self, conn: Conn, rows: list[tuple[Any, ...]]) -> Iterator[DecisionRecord | UnreadableRecord]:
        """The records of ``rows``, in order; the inputs they lack are read with one query."""
        bodies: list[dict[str, Any] | RecordFormatError] = []
        for row in rows:
            try:
                bodies.append(decode(bytes(row[4])))
            except RecordFormatError as exc:
                bodies.append(exc)
        self._cache.fetch(conn, refs_of(b for b in bodies if isinstance(b, dict)))
        input_of = self._cache.input_of(conn)
        for row, body in zip(rows, bodies, strict=True):
            try:
                if isinstance(body, RecordFormatError):
                    raise body
                yield load_record(body, input_of, self._cache.decoded)
            except RecordFormatError as exc:
                yield UnreadableRecord(row[0], rfc3339_of(row[1]), row[2], row[3], str(exc))

    def live(self, now: datetime) -> Iterator[DecisionRecord | UnreadableRecord]:
        """Permits made at or before ``now`` whose token can still be live at ``now``."""
        at = sortable(now)
        yield from self._stream(f"{_ROW} WHERE effect = 'permit' AND token_expires_at > %s AND evaluated_at <= %s ORDER BY seq", [at, at])

    def _stream(self, sql: str, args: list[Any]) -> Iterator[DecisionRecord | UnreadableRecord]:
        with self._reading() as conn:
            for batch in _batches(conn, sql, args):
                yield from self._load_batch(conn, batch)

    def count(self) -> int:
        with self._reading() as conn:
            row = conn.execute("SELECT count(*) FROM decisions").fetchone()
            return int(row[0]) if row else 0


def _batches(conn: Conn, sql: str, args: list[Any]) -> Iterator[list[tuple[Any, ...]]]:
    """``sql``'s rows in batches, through a server-side cursor (a stream never holds them all)."""
    with conn.cursor(name="kpb_stream") as cursor:
        cursor.itersize = _BATCH
        cursor.execute(sql, args)
        while batch := cursor.fetchmany(_BATCH):
            yield [tuple(row) for row in batch]
