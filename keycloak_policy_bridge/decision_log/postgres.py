"""The PostgreSQL decision log: one hash chain, appended to by every replica of the bridge.

``PostgresDecisionLog`` implements ``DecisionLogWriter`` and ``DecisionLogReader`` (the reader
is ``postgres_reader``'s) on a database shared by bridges on several hosts; the schema is
``postgres_schema``'s. Stored forms and hashes are the SQLite log's (``chain``, the record codec):
the same record gets the same body, columns and chain hash in both backends.

One chain, many writers: an append's transaction first locks the one row of ``chain_head``
(``SELECT ... FOR UPDATE``), which holds the last record's seq and hash. Writers on every host
take turns on that row lock; each continues the chain from the head it read under it (seq + 1,
prev_hash = head hash), writes its rows, inputs (``ON CONFLICT DO NOTHING``) and nonces, moves
the head and commits, which releases the lock. The chain has no gap and no fork whatever the
number of writers, and a failed transaction leaves nothing (the head did not move).

Group commit per process (``group_commit``, as ``sqlite``'s): concurrent ``append`` calls share
transactions, one leader committing everything queued so far while the others wait. A commit is
two round trips (pipelined): BEGIN, the head lock and the duplicate/replay checks; then the
inserts, the head update and COMMIT.

Refusals: under the head lock no other writer can add a decision or a nonce, so the checks read
in the same transaction are exact: a decision id already stored, or a nonce already recorded
(a replay: ``AuthenticationError`` ``replayed_signature``), fails that append only, with nothing
recorded for it, while the rest of its batch commits. The tables' unique keys stay the backstop:
a batch that still violates one (or holds a value PostgreSQL rejects) is committed again one
append at a time.

Failure: a database that cannot be reached, times out or fails the transaction makes ``append``
raise ``DecisionLogError`` (the decision must not be used); nothing is retried, because a
transaction whose COMMIT was sent may have committed. The writer has one connection of its own
(the group commit has one committer at a time), made on demand: while the database is down an
append fails at once (connection refused) instead of waiting for a pool's reconnection backoff,
and the first append after it is back succeeds. Readers and the policy store use
``psycopg_pool`` pools (``postgres_schema.open_pool``). ``writable`` asks the database.

Durability is PostgreSQL's (``synchronous_commit``; on by default: COMMIT returns after the WAL
flush, and on a synchronous standby too when one is configured).
"""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from keycloak_policy_bridge.decision_log import postgres_retention
from keycloak_policy_bridge.decision_log.chain import RecordColumns, chain_link
from keycloak_policy_bridge.decision_log.group_commit import GroupCommit
from keycloak_policy_bridge.decision_log.input_store import KnownInputs
from keycloak_policy_bridge.decision_log.interfaces import Checkpoint, Nonce
from keycloak_policy_bridge.decision_log.postgres_reader import PostgresDecisionReader
from keycloak_policy_bridge.decision_log.postgres_schema import CONNECTION_OPTIONS, reason
from keycloak_policy_bridge.decision_log.rows import PendingAppend
from keycloak_policy_bridge.errors import AuthenticationError, DecisionLogError
from keycloak_policy_bridge.record import DecisionRecord, RecordFormatError, encode

NONCE_PURGE_SECONDS = 60  # expired nonces are deleted inside a commit at most this often (per process)
REPLAYED_SIGNATURE = "replayed_signature"  # signature.REPLAYED_SIGNATURE; not imported, to keep this module below the HTTP layer
STATEMENT_TIMEOUT_MS = 10_000  # a commit's statements, the wait for the head lock included
# The writer's connect timeout, seconds: libpq's minimum. A database host that does not answer
# fails the append (503) in about this long instead of the readers' 5 s: the mapper's whole budget
# is about a second, after which it moves on to another replica anyway.
WRITER_CONNECT_TIMEOUT = 2
_INSERT = f"INSERT INTO decisions (seq, {', '.join(RecordColumns.NAMES)}, body, prev_hash, hash) VALUES ({', '.join(['%s'] * 13)})"
_HEAD = "SELECT seq, hash, inputs_generation FROM chain_head FOR UPDATE"
MAINTENANCE_CONNECT_TIMEOUT = 5  # seconds: checkpoint and prune (commands, not the token path)


class _RefusedError(Exception):
    """An append refused by the checks under the head lock (``duplicate`` or ``replay``)."""


class PostgresDecisionLog(PostgresDecisionReader):
    """The decision log in a PostgreSQL database: ``postgres_reader``'s reader and the writer.
    Thread-safe; one instance per process and database.

    Args:
        url, default_token_ttl, pool_size, timeout: as ``PostgresDecisionReader`` (``pool_size``
            is the readers'; the writer has a connection of its own, so that long reads never
            hold up an append).
        statement_timeout_ms: the longest a commit's statement may run, waiting for the head
            lock included, before the append fails.

    Raises:
        DecisionLogError: the database cannot be reached, migrated, or is newer than this code.
    """

    def __init__(
        self,
        url: str,
        *,
        default_token_ttl: timedelta = timedelta(hours=1),
        pool_size: int = 4,
        timeout: float = 5.0,
        statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
    ) -> None:
        super().__init__(url, default_token_ttl=default_token_ttl, pool_size=pool_size, timeout=timeout)
        self._statement_timeout_ms = int(statement_timeout_ms)
        # The writer's own connection, not a pool's: the group commit has one committer at a time,
        # and a pool reconnects with a backoff of seconds, while a connection made on demand
        # fails at once while the database is down and succeeds the moment it is back.
        self._commit_lock = threading.Lock()  # guards _conn: one commit (or writable's probe) at a time
        self._conn: psycopg.Connection[Any] | None = None
        self._group = GroupCommit(self._write)
        self._known = KnownInputs()
        self._nonces_purged_at = 0

    def close(self) -> None:
        self._group.close()
        with self._commit_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        super().close()

    def writable(self) -> bool:
        """False when appends are bound to fail (``unavailable_reason`` says why)."""
        return self.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        """Why appends are bound to fail, asking the database (a round trip, or a connection
        attempt of at most ``WRITER_CONNECT_TIMEOUT``): closed, the database unreachable, in
        recovery (a standby) or refusing this role's inserts; None when they are not. A fixed
        phrase: PostgreSQL's own message names the host and port."""
        if self._group.closed:
            return "it is closed"
        with self._commit_lock:
            try:
                row = self._connection().execute("SELECT pg_is_in_recovery(), has_table_privilege('decisions', 'INSERT')").fetchone()
            except psycopg.OperationalError as exc:
                self._drop_broken()
                if (exc.sqlstate or "").startswith("28"):  # invalid authorization: reachable, but not for this role
                    return "its PostgreSQL database refused the bridge's credentials"
                return "its PostgreSQL database is unreachable"
            except psycopg.Error:
                self._drop_broken()
                return "its PostgreSQL database failed the write check"
            except DecisionLogError:  # closed meanwhile
                return "it is closed"
        if row is None or row[0]:
            return "its PostgreSQL database is a read-only standby (in recovery)"
        if not row[1]:
            return "its PostgreSQL role may not insert decisions"
        return None

    def _connection(self) -> psycopg.Connection[Any]:
        """The writer connection (under ``_commit_lock``), made if there is none.

        Raises:
            psycopg.OperationalError: the database cannot be reached.
        """
        if self._group.closed:
            raise DecisionLogError("the log is closed")
        if self._conn is not None and _told_to_go(self._conn):
            self._conn.close()
            self._conn = None
        if self._conn is None:
            self._conn = psycopg.Connection.connect(
                make_conninfo(
                    self.url, connect_timeout=WRITER_CONNECT_TIMEOUT, application_name="keycloak-policy-bridge", **CONNECTION_OPTIONS
                ),
                autocommit=True,
            )
        return self._conn

    def _drop_broken(self) -> None:
        """After a failure: forget the connection unless it is intact and idle (under ``_commit_lock``)."""
        conn = self._conn
        if conn is not None and (conn.broken or conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE):
            conn.close()
            self._conn = None

    def append(self, record: DecisionRecord, nonce: Nonce | None = None) -> str:
        """Append one record durably; return its chain hash (``DecisionLogWriter.append``).

        Raises:
            DecisionLogError: the record was not committed (the decision must not be used).
            AuthenticationError: (``replayed_signature``) the nonce was recorded before: a replay.
        """
        entry = PendingAppend.prepare(record, self.default_token_ttl, self._known, nonce)
        self._group.submit(entry)
        if _is_replay(entry.error):
            raise AuthenticationError("signed request was already used", reason=REPLAYED_SIGNATURE)
        if entry.error is not None:
            raise DecisionLogError(f"decision log write failed ({reason(entry.error)}); the decision was not recorded")
        assert entry.hash is not None
        return entry.hash

    def _write(self, batch: list[PendingAppend]) -> None:
        try:
            self._commit(batch)
        except (psycopg.IntegrityError, psycopg.DataError) as exc:
            if len(batch) == 1:
                _fail(batch, exc)
            else:
                # A value the checks could not foresee must not refuse the valid appends that
                # shared its transaction: commit them one by one.
                for entry in batch:
                    try:
                        self._commit([entry])
                    except BaseException as one:  # noqa: BLE001 - reported to that entry's caller
                        _fail([entry], one)
        except BaseException as exc:  # noqa: BLE001 - every waiter must learn that its record is not durable
            _fail(batch, exc)
        for entry in batch:
            entry.done = True

    def _commit(self, batch: list[PendingAppend]) -> None:
        """One transaction for ``batch`` (module docstring); on any error nothing is committed,
        the entries' hashes are cleared and the error is re-raised. A refused entry gets its
        ``_RefusedError`` error and is left out."""
        for entry in batch:
            entry.hash = entry.error = None
        ids = [entry.columns.decision_id for entry in batch]
        keys = [entry.nonce.key for entry in batch if entry.nonce is not None]
        now = max((entry.nonce.now for entry in batch if entry.nonce is not None), default=0)
        purge = bool(keys) and now - self._nonces_purged_at >= NONCE_PURGE_SECONDS
        with self._commit_lock:
            try:
                conn = self._connection()
                with conn.pipeline(), conn.transaction():
                    conn.execute(f"SET LOCAL statement_timeout = {self._statement_timeout_ms}")
                    head = conn.execute(_HEAD)
                    if purge:
                        conn.execute("DELETE FROM nonces WHERE expires_at < %s", (now,))
                    # Separate statements after the lock: each reads a snapshot taken once it is held.
                    stored_ids = conn.execute("SELECT decision_id FROM decisions WHERE decision_id = ANY(%s)", (ids,))
                    stored_keys = conn.execute("SELECT nonce FROM nonces WHERE nonce = ANY(%s)", (keys,)) if keys else None
                    row = head.fetchone()
                    assert row is not None  # created with the schema
                    seq, prev, generation = int(row[0]), str(row[1]), str(row[2])
                    taken_ids = {r[0] for r in stored_ids.fetchall()}
                    taken_keys = {bytes(r[0]) for r in stored_keys.fetchall()} if stored_keys is not None else set()
                    accepted = self._accept(batch, taken_ids, taken_keys)
                    self._known.sync(generation)  # a prune collected inputs since: send every one again
                    inputs: dict[str, bytes] = {}
                    for entry in accepted:
                        for ref, document in entry.inputs.items():
                            if ref not in inputs and ref not in self._known:
                                inputs[ref] = entry.blobs.get(ref) or encode(document)
                    nonces = [(e.nonce.key, e.nonce.expires_at) for e in accepted if e.nonce is not None]
                    rows = []
                    for entry in accepted:
                        seq += 1
                        columns = entry.columns.values()
                        h = chain_link(prev, columns, entry.blob)
                        rows.append((seq, *columns, entry.blob, prev, h))
                        entry.hash = prev = h
                    with conn.cursor() as cursor:
                        if nonces:
                            cursor.executemany("INSERT INTO nonces VALUES (%s, %s)", nonces)
                        if inputs:
                            cursor.executemany("INSERT INTO inputs VALUES (%s, %s) ON CONFLICT DO NOTHING", list(inputs.items()))
                        if rows:
                            cursor.executemany(_INSERT, rows)
                    conn.execute("UPDATE chain_head SET seq = %s, hash = %s", (seq, prev))
            except BaseException:
                for entry in batch:
                    entry.hash = None
                self._drop_broken()
                raise
        if purge:
            self._nonces_purged_at = now
        self._known.learn(inputs, generation)

    # -- integrity and retention (postgres_retention) -------------------------------------------

    def checkpoint(self, now: datetime, private_key: Any = None, key_id: str | None = None) -> Checkpoint:
        """Record the current head (and the newest sealed activation) as a checkpoint, signed when
        ``private_key`` (Ed25519) is given (``SQLiteDecisionLog.checkpoint``). The head is read
        under the appends' own lock, so it is a committed position of the one chain.

        Raises:
            DecisionLogError: the log is empty, or the database failed (nothing was recorded).
        """
        with self._maintenance("checkpoint") as conn:
            return postgres_retention.checkpoint(conn, now, private_key, key_id, self._statement_timeout_ms, self.where)

    def prune(self, before: datetime, now: datetime, private_key: Any = None, key_id: str | None = None) -> int:
        """Delete the oldest records evaluated before ``before``, and the inputs no remaining
        record references; return how many records (``SQLiteDecisionLog.prune``: a contiguous
        prefix, its last hash kept as the chain's new start, the boundary recorded as a prune
        statement signed with ``private_key``). Replicas keep appending meanwhile; they wait only
        while the inputs are collected (``postgres_retention``).

        Raises:
            DecisionLogError: a remaining record cannot be read (nothing is deleted: its inputs
                are unknown), or the database failed (nothing is deleted).
        """
        try:
            with self._maintenance("prune") as conn:
                planned = postgres_retention.plan(conn, before)
                return postgres_retention.apply(conn, before, now, planned, private_key, key_id, self._statement_timeout_ms)
        except RecordFormatError as exc:
            raise DecisionLogError(f"{self.where}: cannot prune: a remaining record cannot be read ({exc})") from None

    @contextmanager
    def _maintenance(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection of its own for checkpoint and prune (this process's appends keep theirs),
        closed after; a database failure becomes ``DecisionLogError`` naming ``what``."""
        try:
            with psycopg.Connection.connect(
                self.url, autocommit=True, connect_timeout=MAINTENANCE_CONNECT_TIMEOUT, application_name="keycloak-policy-bridge"
            ) as conn:
                yield conn
        except psycopg.Error as exc:
            raise DecisionLogError(f"{self.where}: cannot {what} ({reason(exc)})") from None

    @staticmethod
    def _accept(batch: list[PendingAppend], taken_ids: set[str], taken_keys: set[bytes]) -> list[PendingAppend]:
        """The entries of ``batch`` that may be recorded; the others get their ``_RefusedError`` error
        (a duplicate within the batch is refused like one already stored)."""
        accepted = []
        for entry in batch:
            key = entry.nonce.key if entry.nonce is not None else None
            if entry.columns.decision_id in taken_ids:
                entry.error = _RefusedError("duplicate decision id")
            elif key is not None and key in taken_keys:
                entry.error = _RefusedError("replay")
            else:
                accepted.append(entry)
                taken_ids.add(entry.columns.decision_id)
                if key is not None:
                    taken_keys.add(key)
        return accepted


def _told_to_go(conn: psycopg.Connection[Any]) -> bool:
    """Whether the idle writer connection has input waiting: between transactions the server sends
    nothing unless it is ending the session (a restart or a terminated backend sends a FATAL
    notice, then closes). Checked without blocking before each commit, so that the first batch
    after a database restart reconnects instead of failing its decisions with a 503."""
    if conn.closed or conn.broken:
        return True
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _fail(batch: list[PendingAppend], exc: BaseException) -> None:
    """Report ``exc`` to the entries of ``batch`` not refused already (their refusal stands)."""
    for entry in batch:
        entry.hash = None
        if entry.error is None:
            entry.error = exc


def _is_replay(error: BaseException | None) -> bool:
    """True for a nonce found recorded: by the checks, or (the backstop) by its primary key."""
    if isinstance(error, _RefusedError):
        return str(error) == "replay"
    return isinstance(error, psycopg.errors.UniqueViolation) and error.diag.table_name == "nonces"
