"""The SQLite decision log: an append-only, hash-chained, queryable store of decision records.

Storage is one SQLite file in WAL mode (the embedded default), shared with the policy store
(``policies``). It implements ``DecisionLogWriter`` and ``DecisionLogReader``.

Durability: ``append`` returns only after the record's transaction has committed with
``synchronous=FULL`` (WAL fsync at commit). If the write fails, ``append`` raises
``DecisionLogError`` and the caller must not return the decision as a permit. An operator may
choose ``synchronous="normal"`` instead (``KPB_DECISION_LOG_SYNC=normal``): the commit is then in
the WAL in the operating system's cache when ``append`` returns, which survives a crash of the
bridge but not of the machine (power loss may drop the last records). On this project's VM
that removes ~3 ms of fsync wait per decision (bench/RESULTS.md); the default stays FULL.

Group commit (``group_commit``): concurrent ``append`` calls share transactions. The first
caller to find no write in progress becomes the leader and commits everything queued so far in
one transaction (one fsync); callers that arrive meanwhile wait, each on its own lock, and are
committed by the next leader (no thundering herd of every waiter at every commit). A waiting
caller, and the leader while it commits, gives back its worker's application slot, so the
requests behind it are decided meanwhile and join the next commit. There is no
background thread, so a process that never appends has nothing running.

Checkpoints: the writer connection does not checkpoint the WAL inside a commit (SQLite's
automatic checkpoint would: every waiter of that batch, and every batch behind it, would wait
for it). Instead, after every ``CHECKPOINT_EVERY_RECORDS`` records this process committed, the
leader that crossed the mark, once it has woken its batch, runs a passive checkpoint on a
connection of its own, while the next leaders keep committing: only its own caller waits for it.

Across processes (the workers of one host share the file): a leader takes an exclusive
``flock`` on ``<log>-writer`` before ``BEGIN IMMEDIATE`` and drops it after ``COMMIT``. The kernel
hands the lock to the next process's leader the moment it is released, so the workers' leaders
take turns, each committing its whole queue with one fsync; SQLite's own busy handler, which
polls with sleeps of up to 100 ms, is left to writers that do not take the lock (the policy
store, ``kpb decisions prune``), which are rare.

Stored form: a ``kpb-decision/2`` body is ``record.encode`` of its document (deflated canonical
JSON); the inputs it references are stored once each in ``inputs`` (``input_store``), in the
same transaction. Rows written before (``kpb-decision/1``, plain JSON bodies with inline inputs)
stay as they are and are read by the same code (``record.load_record``); a ``/1`` log opened
for writing gains the ``inputs`` table and continues its chain with ``/2`` rows.

Tamper evidence (``chain``, ``integrity``): each row stores ``prev_hash`` and a hash over its
columns and body as stored; ``verify`` names the first record that was modified, deleted,
inserted or reordered, an input that was modified or deleted, and checks checkpoints (record
count, head hash and activation head, optionally signed with Ed25519 and exported to an off-box
witness). ``prune`` removes a prefix, keeps the chain verifiable from the boundary it records,
signs that boundary, and deletes the inputs no remaining record references.

Upgrading (``upgrade``, ``kpb decisions upgrade``): a ``/1`` log can be rewritten into a new
file as ``/2``; ``append_v1_document`` carries over, unchanged, a ``/1`` record whose ``/2`` form
would not answer exactly what was answered, through the same group commit and chain.

Replay across processes: ``append`` can record a signed request's ``Nonce`` in the same
transaction as its decision, under a primary key, so that processes sharing the log answer one
signed request once (the second append fails, nothing is recorded). Expired nonces are purged
inside a commit at most once a minute per process.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from keycloak_policy_bridge import app_slots
from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.decision_log import retention
from keycloak_policy_bridge.decision_log.chain import GENESIS, RecordColumns, chain_link, head_checkpoint
from keycloak_policy_bridge.decision_log.group_commit import GroupCommit
from keycloak_policy_bridge.decision_log.input_store import GENERATION_KEY, KnownInputs
from keycloak_policy_bridge.decision_log.input_store import SCHEMA as INPUTS_SCHEMA
from keycloak_policy_bridge.decision_log.interfaces import Checkpoint, Nonce
from keycloak_policy_bridge.decision_log.policies import activation_head
from keycloak_policy_bridge.decision_log.rows import PendingAppend
from keycloak_policy_bridge.decision_log.sqlite_reader import UPGRADE_META, SQLiteDecisionReader
from keycloak_policy_bridge.decision_log.sqlitefile import has_table, meta, open_writer, reason
from keycloak_policy_bridge.errors import AuthenticationError, DecisionLogError
from keycloak_policy_bridge.record import (
    RECORD_SCHEMA_V1,
    DecisionRecord,
    RecordFormatError,
    encode,
    from_v1,
)
from keycloak_policy_bridge.timeutil import format_rfc3339

CHECKPOINT_EVERY_RECORDS = 512  # ~3 MB of WAL at ~6 KB per record (1 KiB pages; sqlitefile.PAGE_SIZE)
NONCE_PURGE_SECONDS = 60  # expired nonces are deleted inside a commit at most this often (per process)
REPLAYED_SIGNATURE = "replayed_signature"  # signature.REPLAYED_SIGNATURE; not imported, to keep this module below the HTTP layer
# Indexes: a subject's, user's or client's records in seq order (the rowid every index carries:
# a filtered query reads newest first without sorting), time for since/until and prune, and the
# expiry of permits only (``live``: a deny mints no token). A /1 log keeps the indexes it was
# created with (the same names, wider definitions); both serve the same queries.
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY,
    decision_id TEXT NOT NULL UNIQUE,
    evaluated_at TEXT NOT NULL,
    subject_id TEXT,
    keycloak_user_id TEXT,
    client_id TEXT,
    effect TEXT NOT NULL,
    rules TEXT NOT NULL,
    policy_digest TEXT NOT NULL,
    token_expires_at TEXT,
    body BLOB NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_subject ON decisions (subject_id);
CREATE INDEX IF NOT EXISTS decisions_kc_user ON decisions (keycloak_user_id);
CREATE INDEX IF NOT EXISTS decisions_client ON decisions (client_id);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (evaluated_at);
CREATE INDEX IF NOT EXISTS decisions_expiry ON decisions (token_expires_at) WHERE effect = 'permit';
{INPUTS_SCHEMA}
CREATE TABLE IF NOT EXISTS nonces (nonce BLOB PRIMARY KEY, expires_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_at);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY, count INTEGER NOT NULL, head_hash TEXT NOT NULL, created_at TEXT NOT NULL,
    key_id TEXT, signature TEXT
);
"""
_INSERT = f"INSERT INTO decisions (seq, {', '.join(RecordColumns.NAMES)}, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"


@dataclass
class SQLiteDecisionLog(SQLiteDecisionReader):
    """The SQLite decision log: the reader (``sqlite_reader``) and the writer. Thread-safe; one
    instance per process and file.

    Args:
        path: the database file (created with its directory unless ``readonly``).
        default_token_ttl: lifetime assumed for a token whose record has no TTL (``live``, drift).
        readonly: for query, explain, replay and verify: never creates or alters a file.
        synchronous: ``"full"`` (fsync at every commit) or ``"normal"`` (the module docstring).
    """

    readonly: bool = False
    synchronous: str = "full"
    _group: GroupCommit = field(init=False, repr=False)
    _commit_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # the connection's one writer
    _conn: sqlite3.Connection | None = field(default=None, repr=False)
    _lock_fd: int | None = field(default=None, repr=False)
    # The chain head and inputs generation as of this connection's last commit, and SQLite's
    # data_version then: while no other connection has committed since (the version is unchanged),
    # the next commit continues from them without reading them again.
    _head: tuple[int, str, str] | None = field(default=None, repr=False)
    _head_version: int | None = field(default=None, repr=False)
    _uncheckpointed: int = 0  # records this process committed since its last checkpoint (under _counting)
    _counting: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _checkpointing: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _checkpoint_conn: sqlite3.Connection | None = field(default=None, repr=False)
    _nonces_purged_at: int = 0
    _known: KnownInputs = field(default_factory=KnownInputs, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._group = GroupCommit(self._write_batch)
        if self.synchronous not in ("full", "normal"):
            raise DecisionLogError(f"synchronous must be full or normal, not {self.synchronous!r}")
        if self.readonly:
            super().__post_init__()  # the reader's checks: the file exists and is a kpb log
            return
        self._conn = open_writer(self.path, self.synchronous, SCHEMA, "decision log")
        self._conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run after commits (module docstring)
        try:
            self._lock_fd = os.open(f"{self.path}-writer", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._conn.close()
            self._conn = None
            raise DecisionLogError(f"{self.path}-writer: cannot open the writers' lock file ({exc.strerror})") from None

    def close(self) -> None:
        with self._commit_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
        with self._checkpointing:
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.close()
                self._checkpoint_conn = None

    # -- writing --------------------------------------------------------------------------

    def writable(self) -> bool:
        """False when appends are bound to fail (``unavailable_reason`` says why)."""
        return self.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        """Why appends are bound to fail: opened read-only or closed, or the file (or its
        directory) not writable by this process; None when they are not. Never the path."""
        if self._conn is None:
            return "it is closed or opened read-only"
        if not os.access(self.path.parent, os.W_OK):
            return "its directory lacks write permission"
        if self.path.exists() and not os.access(self.path, os.W_OK):
            return "its file lacks write permission"
        return None

    def append(self, record: DecisionRecord, nonce: Nonce | None = None) -> str:
        """Append one record durably; return its chain hash.

        With ``nonce``, the signed request's nonce is recorded in the same transaction; if any
        process sharing the log recorded it already, nothing is recorded.

        Raises:
            DecisionLogError: the record was not committed (the decision must not be used).
            AuthenticationError: (``replayed_signature``) the nonce was recorded before: a replay.
        """
        # Serialize outside the lock: while one leader waits on fsync, the other callers prepare
        # their records, and the leader's critical section is only hashing and inserting.
        entry = PendingAppend.prepare(record, self.default_token_ttl, self._known, nonce)
        return self._submit(entry)

    def append_v1_document(self, document: Mapping[str, Any], columns: RecordColumns) -> str:
        """Append a ``kpb-decision/1`` document unchanged, with the columns its row had; return its
        chain hash. For ``kpb decisions upgrade`` only (``upgrade``): the service never writes ``/1``.

        The body is the document's canonical JSON, which is how every ``/1`` body was stored, so
        the row holds the original bytes. ``columns`` are the row's columns as the old log stored
        them (``stored_columns``): the code that wrote the oldest records derived some of them
        differently from today's ``RecordColumns.of`` (``subject_id`` before ``principals`` were
        recorded), and queries must find the record as before. It goes through the same group
        commit and chain as ``append``: a log of mixed rows verifies and reads as one.

        Raises:
            DecisionLogError: ``document`` is not a readable ``/1`` record (the message names the
                missing or malformed field, never a value), ``columns`` are another record's, or
                it was not committed.
        """
        if document.get("schema") != RECORD_SCHEMA_V1:
            raise DecisionLogError(f"not a {RECORD_SCHEMA_V1} document; nothing was recorded")
        try:
            decision_id = from_v1(document).decision_id
            blob = canonical_json(document)
        except RecordFormatError as exc:
            raise DecisionLogError(f"the {RECORD_SCHEMA_V1} document cannot be read ({exc}); nothing was recorded") from None
        except (TypeError, ValueError) as exc:
            raise DecisionLogError(f"the {RECORD_SCHEMA_V1} document is malformed ({type(exc).__name__}); nothing was recorded") from None
        if columns.decision_id != decision_id:
            raise DecisionLogError("the columns given are another record's; nothing was recorded")
        return self._submit(PendingAppend(blob, columns, {}, {}))

    def _submit(self, entry: PendingAppend) -> str:
        """Commit ``entry`` through the group commit (the module docstring); return its hash."""
        if self._group.submit(entry) and self._checkpoint_due():
            with app_slots.released():  # by the leader, once its batch is woken; only its caller waits
                self._checkpoint_wal()
        if entry.error is not None:
            if isinstance(entry.error, sqlite3.IntegrityError) and "nonces" in str(entry.error):
                raise AuthenticationError("signed request was already used", reason=REPLAYED_SIGNATURE) from None
            raise DecisionLogError(f"decision log write failed ({reason(entry.error)}); the decision was not recorded") from None
        assert entry.hash is not None
        return entry.hash

    def _write_batch(self, batch: list[PendingAppend]) -> None:
        """``GroupCommit``'s write: one batch under the connection's lock, counted for checkpoints."""
        with self._commit_lock:
            self._write(batch)
        with self._counting:
            self._uncheckpointed += len(batch)

    def _checkpoint_due(self) -> bool:
        """Whether this process crossed ``CHECKPOINT_EVERY_RECORDS`` since its last checkpoint
        (then the count restarts: one leader runs it)."""
        with self._counting:
            if self._uncheckpointed < CHECKPOINT_EVERY_RECORDS:
                return False
            self._uncheckpointed = 0
            return True

    def _checkpoint_wal(self) -> None:
        """A passive checkpoint of the WAL into the file, on a connection of its own, beside the
        commits (module docstring). A failure is left for the next one: the records are durable
        in the WAL either way, and SQLite replays it when the file is next opened."""
        if not self._checkpointing.acquire(blocking=False):
            return  # one is running in this process
        try:
            if self._conn is None:
                return
            if self._checkpoint_conn is None:
                self._checkpoint_conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            pass
        finally:
            self._checkpointing.release()

    def _write(self, batch: list[PendingAppend]) -> None:
        try:
            self._commit(batch)
        except sqlite3.IntegrityError:
            # One bad record (a duplicate decision id) must not refuse the valid ones that
            # happened to share its transaction: commit them one by one.
            for entry in batch:
                try:
                    self._commit([entry])
                except BaseException as exc:  # noqa: BLE001 - reported to that entry's caller
                    entry.hash, entry.error = None, exc
        except BaseException as exc:  # noqa: BLE001 - every waiter must learn that its record is not durable
            for entry in batch:
                entry.hash, entry.error = None, exc
        for entry in batch:
            entry.done = True

    def _commit(self, batch: list[PendingAppend]) -> None:
        """One transaction for ``batch``; on any error it is rolled back and re-raised."""
        conn = self._conn
        if conn is None:
            raise sqlite3.OperationalError("the log is closed")
        new_inputs: dict[str, bytes] = {}
        assert self._lock_fd is not None  # open while the connection is
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # this host's other writers' leaders commit in turn
        try:
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if self._head is not None and version == self._head_version:
                seq, prev, generation = self._head
            else:  # first commit, or another connection (worker, prune) committed since ours
                seq, prev, generation = _read_head(conn)
            self._head = None  # until this transaction commits
            self._known.sync(generation)  # a prune collected inputs since: send every one again
            nonces = [entry.nonce for entry in batch if entry.nonce is not None]
            if nonces:
                # The primary key makes a replay fail here, atomically with its decision.
                now = max(n.now for n in nonces)
                if now - self._nonces_purged_at >= NONCE_PURGE_SECONDS:
                    conn.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
                    self._nonces_purged_at = now
                conn.executemany("INSERT INTO nonces VALUES (?, ?)", [(n.key, n.expires_at) for n in nonces])
            for entry in batch:
                for ref, document in entry.inputs.items():
                    if ref not in new_inputs and ref not in self._known:
                        new_inputs[ref] = entry.blobs.get(ref) or encode(document)
            if new_inputs:
                conn.executemany("INSERT OR IGNORE INTO inputs VALUES (?, ?)", new_inputs.items())
            rows = []
            for entry in batch:
                seq += 1  # explicit: SQLite would reuse 1 in an emptied table
                columns = entry.columns.values()
                h = chain_link(prev, columns, entry.blob)
                rows.append((seq, *columns, entry.blob, prev, h))
                entry.hash = h
                prev = h
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
            self._head, self._head_version = (seq, prev, generation), version
        except BaseException:
            for entry in batch:
                entry.hash = None
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        self._known.learn(new_inputs, generation)

    @contextmanager
    def _exclusive(self) -> Iterator[sqlite3.Connection]:
        """The writer connection, with no group commit in flight on it."""
        with self._commit_lock:
            if self._conn is None:
                raise DecisionLogError(f"{self.path}: the log is closed or read-only")
            try:
                yield self._conn
            finally:
                self._head = None  # a prune on this connection changes what the next commit continues from

    # -- upgrading (kpb decisions upgrade) -----------------------------------------------------

    def carry_nonces(self, source: SQLiteDecisionLog, now: int) -> int:
        """Record in this log the signed-request nonces of ``source`` that have not expired at
        ``now`` (unix seconds); return how many. A request ``source`` answered is then refused
        as a replay by a bridge on this log too, however soon it starts on it.

        Raises:
            DecisionLogError: this log is read-only or closed, or the write failed.
        """
        with source._reading() as conn:
            rows = (
                conn.execute("SELECT nonce, expires_at FROM nonces WHERE expires_at >= ?", (now,)).fetchall()
                if has_table(conn, "nonces")
                else []
            )
        with self._exclusive() as conn:
            _transaction(conn, "INSERT OR IGNORE INTO nonces VALUES (?, ?)", rows, self.path)
        return len(rows)

    def record_upgrade(self, from_log_id: str, from_head_hash: str, at: datetime) -> None:
        """Note in ``meta`` the log this one was upgraded from (``UPGRADE_META``): its id, its
        head hash when it was copied, and when. Not chained: a signed checkpoint of this log,
        taken after, is what vouches for its content.

        Raises:
            DecisionLogError: this log is read-only or closed, or the write failed.
        """
        values = dict(zip(UPGRADE_META, (from_log_id, from_head_hash, format_rfc3339(at)), strict=True))
        with self._exclusive() as conn:
            _transaction(conn, "INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()), self.path)

    # -- integrity and retention --------------------------------------------------------------

    def checkpoint(self, now: datetime, private_key: Any = None, key_id: str | None = None) -> Checkpoint:
        """Record the current head (and the newest sealed activation) as a checkpoint, signed when
        ``private_key`` (Ed25519) is given."""
        with self._reading() as conn:
            row = conn.execute("SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()
            count = int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
            log_id = meta(conn, "log_id") or ""
            head = activation_head(conn)
        if row is None:
            raise DecisionLogError(f"{self.path}: the log is empty; nothing to checkpoint")
        checkpoint = head_checkpoint(row[0], count, row[1], now, log_id, head, private_key, key_id)
        with self._exclusive() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?,?)",
                (checkpoint.seq, count, checkpoint.head_hash, checkpoint.created_at, key_id, checkpoint.signature),
            )
        return checkpoint

    def prune(self, before: datetime, now: datetime, private_key: Any = None, key_id: str | None = None) -> int:
        """Delete the oldest records evaluated before ``before``, and the inputs no remaining
        record references; return how many records.

        Only a contiguous prefix is removed, and its last hash is kept as the chain's new
        starting point, so ``verify`` still checks every remaining record. The boundary is
        recorded as a prune statement (``prune_boundary``), signed with ``private_key``
        (Ed25519): ``verify`` with the public key refuses a boundary no signed statement vouches
        for, so deleting records and writing a boundary by hand is found.

        The inputs the remaining records reference are read before taking the write lock (the
        long part, on a read snapshot), then those of records appended meanwhile, under it
        (``retention``).

        Raises:
            DecisionLogError: a remaining record cannot be read (nothing is deleted: its inputs
                are unknown).
        """
        try:
            with self._reading() as conn:
                planned = retention.plan(conn, before)
            with self._exclusive() as conn:
                return retention.apply(conn, before, now, planned, private_key, key_id)
        except RecordFormatError as exc:
            raise DecisionLogError(f"{self.path}: cannot prune: a remaining record cannot be read ({exc})") from None


def _read_head(conn: sqlite3.Connection) -> tuple[int, str, str]:
    """(seq, hash) of the chain's last record and the inputs generation, read in the transaction."""
    generation = meta(conn, GENERATION_KEY) or "0"
    row = conn.execute("SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()
    if row:
        return int(row[0]), str(row[1]), generation
    # empty, or everything pruned: continue from the recorded cut
    return int(meta(conn, "pruned_through_seq") or 0), meta(conn, "pruned_head_hash") or GENESIS, generation


def _transaction(conn: sqlite3.Connection, sql: str, rows: list[Any], path: Path) -> None:
    """``executemany`` in one transaction; rolled back and reported as ``DecisionLogError``."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise DecisionLogError(f"{path}: write failed ({reason(exc)})") from None
