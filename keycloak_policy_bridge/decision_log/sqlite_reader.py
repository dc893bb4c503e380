"""Reading the SQLite decision log: ``SQLiteDecisionReader`` (``DecisionLogReader``).

Every read opens its own read-only connection (WAL: readers never block the writer or each
other) and reads a record's inputs on that same connection, so from the same snapshot: a prune
committing meanwhile cannot take them away. A stored body is decoded through the record package
(``record.load_record``: ``/2`` and ``/1`` alike); one that cannot be decoded is an
``UnreadableRecord`` when streamed (``iterate``, ``live``) and a ``DecisionLogError`` naming the
decision when asked for (``get``, ``query``, ``document``), never quoting the body.

Streams read rows in batches (``_BATCH``); the inputs a batch references that are not cached
yet are read with one query (``InputCache.prefetch``), and the decoded inputs are shared by every
record the reader returns (``record.DecodedInputs``): replay's cost per record is its own
document, not its inputs.

``SQLiteDecisionLog`` (``sqlite``) is this reader plus the writer, on the same file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from keycloak_policy_bridge.decision_log.activations import Activation, ActivationKeys
from keycloak_policy_bridge.decision_log.chain import RecordColumns, sortable
from keycloak_policy_bridge.decision_log.input_store import InputCache, as_bytes
from keycloak_policy_bridge.decision_log.integrity import verify_log
from keycloak_policy_bridge.decision_log.interfaces import Checkpoint, UnreadableRecord, VerifyReport
from keycloak_policy_bridge.decision_log.policies import activation_rows
from keycloak_policy_bridge.decision_log.rows import StoredRowsReader, refs_of, rfc3339_of
from keycloak_policy_bridge.decision_log.sqlitefile import connect_reader, has_table, looks_like_id, meta, require_file
from keycloak_policy_bridge.errors import DecisionNotFoundError
from keycloak_policy_bridge.record import DecisionRecord, RecordFormatError, decode, load_record

# What ``record_upgrade`` notes in ``meta`` of a log written by ``kpb decisions upgrade``.
UPGRADE_META = ("upgraded_from_log_id", "upgraded_from_head_hash", "upgraded_at")
_COLUMNS = ", ".join(RecordColumns.NAMES)
# What a reader selects: enough of the row to name an unreadable record, and the body (as a BLOB
# whatever its storage class: an edit by hand can store binary bytes as TEXT, which Python's
# sqlite3 would fail to decode as UTF-8).
_ROW = "SELECT decision_id, evaluated_at, subject_id, client_id, CAST(body AS BLOB) FROM decisions"
_BATCH = 64  # rows fetched together; a batch's missing inputs are read with one query


@dataclass
class SQLiteDecisionReader(StoredRowsReader):
    """Reads a SQLite decision log. Thread-safe (a connection per call).

    Args:
        path: the database file; it must exist and be a decision log.
        default_token_ttl: lifetime assumed for a token whose record has no TTL (``live``, drift).

    Raises:
        DecisionLogError: no file there, or not a readable decision log.
    """

    path: Path
    default_token_ttl: timedelta = timedelta(hours=1)
    _cache: InputCache = field(default_factory=InputCache, repr=False, init=False)
    ROW = _ROW
    PLACEHOLDER = "?"
    CONTAINS = "instr"  # exact and case-sensitive, unlike LIKE

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        require_file(self.path)
        self._read().close()  # raises DecisionLogError unless it is a readable kpb log

    # -- reading ----------------------------------------------------------------------------

    def _read(self) -> sqlite3.Connection:
        return connect_reader(self.path, "SELECT 1 FROM decisions LIMIT 1")

    def _stored(self, conn: sqlite3.Connection, decision_id: str) -> tuple[Any, ...]:
        row = conn.execute(f"{_ROW} WHERE decision_id = ?", (decision_id,)).fetchone()
        if row is None:
            raise DecisionNotFoundError(f"no decision {decision_id!r} in {self.path}" if looks_like_id(decision_id) else "no such decision")
        return tuple(row)

    @property
    def location(self) -> str:
        return str(self.path)

    def _input_reader(self, conn: sqlite3.Connection) -> Any:
        return self._cache.reader(conn)

    def _load_batch(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> Iterator[DecisionRecord | UnreadableRecord]:
        """The records of ``rows``, in order. Each body is decoded when its record is due (decoded
        documents kept waiting cost the garbage collector more than decoding ahead saves), until a
        record needs an input that is not cached: then the bodies still due are decoded too, and
        every input they lack is read with one query (``InputCache.reader``)."""
        ahead: dict[int, dict[str, Any] | RecordFormatError] = {}  # bodies decoded before their turn
        at = 0
        current: dict[str, Any] | RecordFormatError | None = None

        def body(i: int) -> dict[str, Any] | RecordFormatError:
            try:
                return decode(as_bytes(rows[i][4]))
            except RecordFormatError as exc:
                return exc

        def refs_due() -> list[str]:
            for i in range(at + 1, len(rows)):
                if i not in ahead:
                    ahead[i] = body(i)
            return refs_of(d for d in (current, *ahead.values()) if isinstance(d, dict))

        input_of = self._cache.reader(conn, refs_due)
        decoded = self._cache.decoded
        for at, row in enumerate(rows):
            current = ahead.pop(at) if at in ahead else body(at)
            try:
                if isinstance(current, RecordFormatError):
                    raise current
                yield load_record(current, input_of, decoded)
            except RecordFormatError as exc:
                yield UnreadableRecord(row[0], rfc3339_of(row[1]), row[2], row[3], str(exc))

    def live(self, now: datetime) -> Iterator[DecisionRecord | UnreadableRecord]:
        """Permits made at or before ``now`` whose token can still be live at ``now``."""
        at = sortable(now)
        # Through the expiry index (the live tokens are the newest few): written as a plain filter
        # with ORDER BY seq, SQLite would rather scan the whole table in seq order.
        sql = (
            f"{_ROW} WHERE seq IN (SELECT seq FROM decisions WHERE effect = 'permit' AND token_expires_at > ?) "
            "AND evaluated_at <= ? ORDER BY seq"
        )
        yield from self._stream(sql, [at, at])

    def _stream(self, sql: str, args: list[Any]) -> Iterator[DecisionRecord | UnreadableRecord]:
        with self._reading() as conn:
            cursor = conn.execute(sql, args)
            while batch := cursor.fetchmany(_BATCH):
                yield from self._load_batch(conn, batch)

    @contextmanager
    def _rows(self, sql: str, args: list[Any]) -> Iterator[tuple[sqlite3.Connection, Iterator[tuple[Any, ...]]]]:
        """Stream ``sql``'s rows; the inputs they reference are read on the same connection, so
        from the same snapshot (a prune committing meanwhile cannot take them away)."""
        with self._reading() as conn:
            yield conn, iter(conn.execute(sql, args))

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        conn = self._read()
        try:
            yield conn
        finally:
            conn.close()

    def count(self) -> int:
        with self._reading() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    def stored_columns(self) -> Iterator[RecordColumns]:
        """Every record's queryable columns as stored (what queries filter on and the chain
        covers), oldest first, streamed; ``kpb decisions upgrade`` compares the two logs' with them."""
        with self._rows(f"SELECT {_COLUMNS} FROM decisions ORDER BY seq", []) as (_, rows):
            for row in rows:
                yield RecordColumns(*row)

    def log_id(self) -> str:
        """The log's id (``meta``), which checkpoints and activation MACs are bound to."""
        with self._reading() as conn:
            return meta(conn, "log_id") or ""

    def upgraded_from(self) -> dict[str, str]:
        """What ``record_upgrade`` noted (``UPGRADE_META`` keys), empty for a log not upgraded."""
        with self._reading() as conn:
            return {key: value for key in UPGRADE_META if (value := meta(conn, key)) is not None}

    def verify(
        self, checkpoints: list[Checkpoint] | None = None, public_key: Any = None, activation_keys: ActivationKeys | None = None
    ) -> VerifyReport:
        """Recompute the decision chain, check the stored inputs, the stored policies and the
        activation chain (and the activations' MACs, with ``activation_keys``), and compare them
        with ``checkpoints`` (and their signatures, with ``public_key``). With ``public_key``, a
        pruned log must hold a signed prune statement for its boundary (``prune``);
        ``kind == "prune"`` lines among ``checkpoints`` count too. ``integrity`` lists the checks.

        Raises:
            ChainError: naming the first record, input, activation, checkpoint or boundary that
                does not hold, with a stable issue code.
        """
        with self._reading() as conn:
            return verify_log(SQLiteRows(conn), list(checkpoints or ()), public_key, activation_keys)

    def prune_boundary(self) -> Checkpoint | None:
        """The prune statement of the last prune (signed if it was given a key), or None."""
        with self._reading() as conn:
            stored = meta(conn, "pruned_checkpoint")
        return Checkpoint(**json.loads(stored)) if stored else None


@dataclass(frozen=True)
class SQLiteRows:
    """``integrity.StoredLog`` over one read connection of the file (one WAL snapshot while a
    statement or transaction is open); rows are streamed as SQLite steps through them."""

    conn: sqlite3.Connection

    def meta(self, key: str) -> str | None:
        return meta(self.conn, key)

    def chain(self) -> Iterable[tuple[Any, ...]]:
        return self.conn.execute(f"SELECT seq, {_COLUMNS}, CAST(body AS BLOB), prev_hash, hash FROM decisions ORDER BY seq")

    def inputs(self) -> Iterable[tuple[str, Any]]:
        if not has_table(self.conn, "inputs"):
            return ()  # a log no /2 record was written to
        return self.conn.execute("SELECT ref, CAST(document AS BLOB) FROM inputs ORDER BY ref")

    def policies(self) -> Iterable[tuple[str, Any]]:
        if not has_table(self.conn, "policies"):
            return ()
        return self.conn.execute("SELECT digest, document FROM policies ORDER BY digest")

    def activations(self) -> Iterable[Activation]:
        return activation_rows(self.conn, "ORDER BY seq", ())
