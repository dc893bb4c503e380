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

``verify`` and ``prune_boundary`` are ``sqlite_reader``'s: the checks are ``integrity``'s, run over
this database's rows (``PostgresRows``) in one snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg

from keycloak_policy_bridge.decision_log.activations import Activation, ActivationKeys
from keycloak_policy_bridge.decision_log.chain import RecordColumns, sortable
from keycloak_policy_bridge.decision_log.input_store import InputCache
from keycloak_policy_bridge.decision_log.integrity import verify_log
from keycloak_policy_bridge.decision_log.interfaces import Checkpoint, UnreadableRecord, VerifyReport
from keycloak_policy_bridge.decision_log.postgres_schema import describe, ensure_schema, log_id, open_pool, pooled, reason
from keycloak_policy_bridge.decision_log.rows import StoredRowsReader, refs_of, rfc3339_of
from keycloak_policy_bridge.decision_log.sqlitefile import looks_like_id
from keycloak_policy_bridge.errors import DecisionLogError, DecisionNotFoundError
from keycloak_policy_bridge.record import DecisionRecord, RecordFormatError, decode, load_record

_ROW = "SELECT decision_id, evaluated_at, subject_id, client_id, body FROM decisions"
_BATCH = 64  # rows fetched together; a batch's missing inputs are read with one query
VERIFY_BATCH = 2_000  # rows per round trip when verify streams the chain (no decoding: larger batches pay)
_COLUMNS = ", ".join(RecordColumns.NAMES)
ACTIVATION_ROW = "SELECT seq, digest, version, activated_by, activated_at, prev_hash, hash, key_id, mac FROM activations"
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

        create: create the schema when the database has none (the service); False for the commands
            that read an existing log (``kpb decisions``, explain, replay, drift).

    Raises:
        DecisionLogError: the database cannot be reached, migrated, or is newer than this code;
            or (``create=False``) holds no decision log.
    """

    ROW = _ROW
    PLACEHOLDER = "%s"
    CONTAINS = "strpos"  # exact and case-sensitive, unlike LIKE

    def __init__(
        self,
        url: str,
        *,
        default_token_ttl: timedelta = timedelta(hours=1),
        pool_size: int = 4,
        timeout: float = 5.0,
        create: bool = True,
    ) -> None:
        self.url = url
        self.where = describe(url)
        self.default_token_ttl = default_token_ttl
        self._cache = _Inputs()
        self._readers = open_pool(url, 1, max(1, pool_size), timeout, "kpb-log-readers")
        try:
            if not create:
                self._require_log()
            ensure_schema(self._readers, url)
        except BaseException:
            self._readers.close()
            raise

    def _require_log(self) -> None:
        """For ``create=False`` (the commands that read a log): a database without the log's
        schema is refused rather than given one.

        Raises:
            DecisionLogError: no decision log in the database, or it cannot be reached.
        """
        try:
            with pooled(self._readers) as conn:
                row = conn.execute("SELECT to_regclass('kpb_schema') IS NOT NULL AND to_regclass('decisions') IS NOT NULL").fetchone()
        except psycopg.Error as exc:
            raise DecisionLogError(f"{self.where}: cannot open the decision log ({reason(exc)})") from None
        if not (row and row[0]):
            raise DecisionLogError(f"{self.where}: no decision log there (the database has no kpb schema)")

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

    def log_id(self) -> str:
        """The log's id (``meta``), which checkpoints and activation MACs are bound to."""
        with self._reading() as conn:
            return log_id(conn)

    # -- integrity ----------------------------------------------------------------------------

    def verify(
        self, checkpoints: list[Checkpoint] | None = None, public_key: Any = None, activation_keys: ActivationKeys | None = None
    ) -> VerifyReport:
        """``SQLiteDecisionReader.verify``, on the database: the same checks in the same order,
        the same issue codes and messages (``integrity``), in one repeatable-read snapshot while
        replicas keep appending (what they commit after it began is not seen). The chain is read
        through a server-side cursor in batches of ``VERIFY_BATCH``: memory does not grow with the log.

        Raises:
            ChainError: naming the first record, input, activation, checkpoint or boundary that
                does not hold, with a stable issue code.
            DecisionLogError: the database failed during the read.
        """
        with self._reading() as conn:
            return verify_log(PostgresRows(conn), list(checkpoints or ()), public_key, activation_keys)

    def prune_boundary(self) -> Checkpoint | None:
        """The prune statement of the last prune (signed if it was given a key), or None."""
        with self._reading() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'pruned_checkpoint'").fetchone()
        return Checkpoint(**json.loads(row[0])) if row else None


def _batches(conn: Conn, sql: str, args: list[Any], size: int = _BATCH, name: str = "kpb_stream") -> Iterator[list[tuple[Any, ...]]]:
    """``sql``'s rows in batches, through a server-side cursor (a stream never holds them all)."""
    with conn.cursor(name=name) as cursor:
        cursor.itersize = size
        cursor.execute(sql, args)
        while batch := cursor.fetchmany(size):
            yield [tuple(row) for row in batch]


class PostgresRows:
    """``integrity.StoredLog`` over one connection in a repeatable-read transaction: every table
    read from the same snapshot; the chain and the inputs streamed through server-side cursors."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return str(row[0]) if row else None

    def chain(self) -> Iterator[tuple[Any, ...]]:
        sql = f"SELECT seq, {_COLUMNS}, body, prev_hash, hash FROM decisions ORDER BY seq"
        for batch in _batches(self.conn, sql, [], VERIFY_BATCH, "kpb_verify_chain"):
            yield from batch

    def inputs(self) -> Iterator[tuple[str, Any]]:
        for batch in _batches(self.conn, "SELECT ref, document FROM inputs ORDER BY ref", [], VERIFY_BATCH, "kpb_verify_inputs"):
            yield from batch

    def policies(self) -> Iterator[tuple[str, Any]]:
        yield from self.conn.execute("SELECT digest, document FROM policies ORDER BY digest")

    def activations(self) -> Iterator[Activation]:
        for row in self.conn.execute(f"{ACTIVATION_ROW} ORDER BY seq"):
            yield Activation(*row)
