"""The decision log: an append-only, hash-chained, queryable store of decision records.

Storage is SQLite in WAL mode (the embedded default; ``DecisionLogWriter`` and
``DecisionLogReader`` are the interfaces a shared backend would implement).

Durability: ``append`` returns only after the record's transaction has committed with
``synchronous=FULL`` (WAL fsync at commit). If the write fails, ``append`` raises
``DecisionLogError`` and the caller must not return the decision as a permit. An operator may
choose ``synchronous="normal"`` instead (``KPB_DECISION_LOG_SYNC=normal``): the commit is then in
the WAL in the operating system's cache when ``append`` returns, which survives a crash of the
bridge but not of the machine (power loss may drop the last records). On this project's VM
that removes ~3 ms of fsync wait per decision (bench/RESULTS.md); the default stays FULL.

Group commit: concurrent ``append`` calls share transactions. The first caller to find no
write in progress becomes the leader and commits everything queued so far in one transaction
(one fsync); callers that arrive meanwhile wait and are committed by the next leader. There is
no background thread, so a process that never appends has nothing running.

Tamper evidence: each record stores ``prev_hash`` and ``hash = sha256(prev_hash || columns ||
body)`` over its indexed columns and its canonical JSON body, which is stored byte for byte.
``verify`` recomputes the chain (no JSON parsing) and names the first record that was
modified, deleted, inserted or reordered. Checkpoints (record count + head hash) can
be signed with an Ed25519 key and exported to an off-box witness: a rewritten tail that is
internally consistent still disagrees with a checkpoint taken before the rewrite. ``prune``
removes a prefix and keeps the chain verifiable from the boundary it records.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from keycloak_policy_bridge.canonical import canonical_json, digest
from keycloak_policy_bridge.errors import ChainError, DecisionLogError, DecisionNotFoundError, Issue
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339

GENESIS = "0" * 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
CREATE INDEX IF NOT EXISTS decisions_subject ON decisions (subject_id, evaluated_at);
CREATE INDEX IF NOT EXISTS decisions_kc_user ON decisions (keycloak_user_id, evaluated_at);
CREATE INDEX IF NOT EXISTS decisions_client ON decisions (client_id, evaluated_at);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (evaluated_at);
CREATE INDEX IF NOT EXISTS decisions_expiry ON decisions (token_expires_at);
CREATE TABLE IF NOT EXISTS policies (digest TEXT PRIMARY KEY, document BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS activations (
    seq INTEGER PRIMARY KEY, digest TEXT NOT NULL, version TEXT NOT NULL, activated_by TEXT NOT NULL, activated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY, count INTEGER NOT NULL, head_hash TEXT NOT NULL, created_at TEXT NOT NULL,
    key_id TEXT, signature TEXT
);
"""


@dataclass(frozen=True)
class Query:
    """Filters of ``DecisionLogReader.query``; every given field must match."""

    subject: str | None = None  # IGA subject_id or Keycloak user id
    client: str | None = None
    effect: str | None = None
    rule: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = 100


@dataclass(frozen=True)
class Checkpoint:
    """The chain head at one point: how many records, which hash. Optionally signed."""

    seq: int
    count: int
    head_hash: str
    created_at: str
    log_id: str
    key_id: str | None = None
    signature: str | None = None

    def payload(self) -> bytes:
        return canonical_json({"log_id": self.log_id, "seq": self.seq, "count": self.count, "head_hash": self.head_hash})

    def to_dict(self) -> dict[str, Any]:
        return {"log_id": self.log_id, "seq": self.seq, "count": self.count, "head_hash": self.head_hash,
                "created_at": self.created_at, "key_id": self.key_id, "signature": self.signature}  # fmt: skip


@dataclass(frozen=True)
class VerifyReport:
    records: int
    first_seq: int | None
    last_seq: int | None
    head_hash: str
    checkpoints_checked: int = 0


class DecisionLogWriter(Protocol):
    def append(self, body: Mapping[str, Any]) -> str: ...
    def store_policy(self, document: Mapping[str, Any]) -> str: ...


class DecisionLogReader(Protocol):
    def get(self, decision_id: str) -> dict[str, Any]: ...
    def query(self, query: Query) -> list[dict[str, Any]]: ...
    def policy(self, policy_digest: str) -> dict[str, Any]: ...


@dataclass
class _Pending:
    blob: bytes
    columns: tuple[Any, ...]
    done: bool = False
    hash: str | None = None
    error: BaseException | None = None


@dataclass
class SQLiteDecisionLog:
    """The SQLite decision log. Thread-safe; one instance per process and file.

    Args:
        path: the database file (created with its directory).
        default_token_ttl: lifetime assumed for a token whose record has no TTL (for drift).
    """

    path: Path
    default_token_ttl: timedelta = timedelta(hours=1)
    readonly: bool = False  # for query, explain, replay and verify: never creates or alters a file
    synchronous: str = "full"  # "full" (fsync at every commit) or "normal" (see the module docstring)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _pending: list[_Pending] = field(default_factory=list, repr=False)
    _writing: bool = False
    _conn: sqlite3.Connection | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.synchronous not in ("full", "normal"):
            raise DecisionLogError(f"synchronous must be full or normal, not {self.synchronous!r}")
        if self.readonly:
            if not self.path.is_file():
                raise DecisionLogError(f"{self.path}: no decision log there")
            self._read().close()  # raises DecisionLogError unless it is a readable kpb log
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('log_id', ?)", (digest([str(self.path.resolve()), _random_hex()])[7:39],))
            conn.commit()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise DecisionLogError(f"{self.path}: cannot open the decision log ({_reason(exc)})") from None
        self._conn = conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL" if self.synchronous == "full" else "PRAGMA synchronous=NORMAL")
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- writing --------------------------------------------------------------------------

    def append(self, body: Mapping[str, Any]) -> str:
        """Append one record durably; return its chain hash.

        Raises:
            DecisionLogError: the record was not committed (the decision must not be used).
        """
        # Serialize outside the lock: while one leader waits on fsync, the other callers prepare
        # their records, and the leader's critical section is only hashing and inserting.
        try:
            entry = _Pending(canonical_json(body), _columns(body, self.default_token_ttl))
        except (KeyError, TypeError, ValueError) as exc:
            raise DecisionLogError(f"decision record is malformed ({_reason(exc)}); the decision was not recorded") from None
        with self._cond:
            self._pending.append(entry)
            while not entry.done:
                if self._writing:
                    self._cond.wait()
                    continue
                self._writing = True
                batch, self._pending = self._pending, []
                self._cond.release()
                try:
                    self._write(batch)
                finally:
                    self._cond.acquire()
                    self._writing = False
                    self._cond.notify_all()
        if entry.error is not None:
            raise DecisionLogError(f"decision log write failed ({_reason(entry.error)}); the decision was not recorded") from None
        assert entry.hash is not None
        return entry.hash

    def _write(self, batch: list[_Pending]) -> None:
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

    def _commit(self, batch: list[_Pending]) -> None:
        """One transaction for ``batch``; on any error it is rolled back and re-raised."""
        conn = self._conn
        if conn is None:
            raise sqlite3.OperationalError("the log is closed")
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()
            if row:
                seq, prev = row
            else:  # empty, or everything pruned: continue from the recorded cut
                seq = int(self._meta(conn, "pruned_through_seq") or 0)
                prev = self._meta(conn, "pruned_head_hash") or GENESIS
            rows = []
            for entry in batch:
                seq += 1  # explicit: SQLite would reuse 1 in an emptied table
                h = _chain(prev, entry.columns, entry.blob)
                rows.append((seq, *entry.columns, entry.blob, prev, h))
                entry.hash = h
                prev = h
            conn.executemany(
                "INSERT INTO decisions (seq, decision_id, evaluated_at, subject_id, keycloak_user_id, client_id, effect, rules, "
                "policy_digest, token_expires_at, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            conn.execute("COMMIT")
        except BaseException:
            for entry in batch:
                entry.hash = None
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    def store_policy(self, document: Mapping[str, Any]) -> str:
        """Store a policy document once, content-addressed; return its digest."""
        policy_digest = digest(document)
        with self._cond:
            try:
                assert self._conn is not None
                self._conn.execute("INSERT OR IGNORE INTO policies VALUES (?, ?)", (policy_digest, canonical_json(document)))
            except (sqlite3.Error, AssertionError) as exc:
                raise DecisionLogError(f"{self.path}: cannot store the policy ({_reason(exc)})") from None
        return policy_digest

    def record_activation(self, policy_digest: str, version: str, by: str, at: datetime) -> None:
        """Record that ``policy_digest`` became the active policy (who, when).

        Every bridge process sharing this log follows the latest activation
        (``Bridge.sync_policy``), which is how a policy change reaches every gunicorn worker.
        """
        with self._cond:
            try:
                assert self._conn is not None
                self._conn.execute("INSERT INTO activations (digest, version, activated_by, activated_at) VALUES (?,?,?,?)",
                                   (policy_digest, version, by, _sortable(at)))  # fmt: skip
            except (sqlite3.Error, AssertionError) as exc:
                raise DecisionLogError(f"{self.path}: cannot record the policy activation ({_reason(exc)})") from None

    def activations(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest policy activations, newest first."""
        with self._read() as conn:
            rows = conn.execute("SELECT digest, version, activated_by, activated_at FROM activations ORDER BY seq DESC LIMIT ?", (limit,))
            return [{"digest": r[0], "version": r[1], "activated_by": r[2], "activated_at": format_rfc3339(parse_rfc3339(r[3]))} for r in rows]

    # -- reading ----------------------------------------------------------------------------

    def _read(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
            conn.execute("SELECT 1 FROM decisions LIMIT 1")
            return conn
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc):
                raise DecisionLogError(f"{self.path}: not a decision log (an empty or foreign database)") from None
            raise DecisionLogError(f"{self.path}: cannot read the decision log ({_reason(exc)})") from None

    def get(self, decision_id: str) -> dict[str, Any]:
        """The record of ``decision_id``.

        Raises:
            DecisionNotFoundError: no such decision.
        """
        with self._read() as conn:
            row = conn.execute("SELECT body FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone()
        if row is None:
            raise DecisionNotFoundError(f"no decision {decision_id!r} in {self.path}" if _looks_like_id(decision_id) else "no such decision")
        record: dict[str, Any] = json.loads(row[0])
        return record

    def query(self, query: Query) -> list[dict[str, Any]]:
        """Records matching ``query``, newest first."""
        where, args = _where(query)
        sql = f"SELECT body FROM decisions {where} ORDER BY seq DESC"
        if query.limit is not None:
            sql += f" LIMIT {int(query.limit)}"
        with self._read() as conn:
            return [json.loads(r[0]) for r in conn.execute(sql, args)]

    def iterate(self, query: Query) -> Iterator[dict[str, Any]]:
        """Records matching ``query`` (limit ignored), oldest first, streamed."""
        where, args = _where(query)
        conn = self._read()
        try:
            for (blob,) in conn.execute(f"SELECT body FROM decisions {where} ORDER BY seq", args):
                yield json.loads(blob)
        finally:
            conn.close()

    def live(self, now: datetime) -> Iterator[dict[str, Any]]:
        """Records of permitted decisions whose tokens can still be live at ``now``."""
        conn = self._read()
        try:
            rows = conn.execute(
                "SELECT body FROM decisions WHERE effect = 'permit' AND evaluated_at <= ? AND token_expires_at > ? ORDER BY seq",
                (_sortable(now), _sortable(now)),
            )
            for (blob,) in rows:
                yield json.loads(blob)
        finally:
            conn.close()

    def policy(self, policy_digest: str) -> dict[str, Any]:
        """A stored policy document.

        Raises:
            DecisionNotFoundError: the digest is unknown.
        """
        with self._read() as conn:
            row = conn.execute("SELECT document FROM policies WHERE digest = ?", (policy_digest,)).fetchone()
        if row is None:
            raise DecisionNotFoundError(f"policy {policy_digest[:19]} is not stored in {self.path}")
        document: dict[str, Any] = json.loads(row[0])
        return document

    def count(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    # -- integrity --------------------------------------------------------------------------

    def verify(self, checkpoints: list[Checkpoint] | None = None, public_key: Any = None) -> VerifyReport:
        """Recompute the chain and compare it with ``checkpoints`` (and their signatures).

        Raises:
            ChainError: naming the first record or checkpoint that does not hold.
        """
        by_seq = {c.seq: c for c in checkpoints or ()}
        checked = 0
        with self._read() as conn:
            prev = self._meta(conn, "pruned_head_hash") or GENESIS
            expected_seq = int(self._meta(conn, "pruned_through_seq") or 0) + 1
            first = last = None
            count = 0
            rows = conn.execute(
                "SELECT seq, decision_id, evaluated_at, subject_id, keycloak_user_id, client_id, effect, rules, policy_digest, "
                "token_expires_at, body, prev_hash, hash FROM decisions ORDER BY seq"
            )
            for row in rows:
                seq, decision_id, blob, prev_hash, h = row[0], row[1], row[10], row[11], row[12]
                where = f"record seq {seq} (decision {decision_id})"
                if seq != expected_seq:
                    raise ChainError(f"{where}: expected seq {expected_seq}; a record was deleted or inserted",
                                     [Issue(where, "sequence gap", "chain_gap")])  # fmt: skip
                if prev_hash != prev:
                    raise ChainError(f"{where}: prev_hash does not match the previous record; a record was deleted, inserted or reordered",
                                     [Issue(where, "broken link", "chain_link")])  # fmt: skip
                data = blob.encode("utf-8") if isinstance(blob, str) else bytes(blob)  # a text edit turns the BLOB into TEXT
                if _chain(prev, tuple(row[1:10]), data) != h:
                    raise ChainError(f"{where}: hash does not match its content; the record was modified", [Issue(where, "modified", "chain_hash")])
                count += 1
                first = first if first is not None else seq
                last = seq
                checkpoint = by_seq.get(seq)
                if checkpoint is not None:
                    if checkpoint.head_hash != h:
                        raise ChainError(f"checkpoint at seq {seq}: head hash differs from the log; records up to seq {seq} were rewritten",
                                         [Issue(f"checkpoint {seq}", "head differs", "checkpoint_mismatch")])  # fmt: skip
                    _verify_signature(checkpoint, public_key)
                    checked += 1
                prev = h
                expected_seq = seq + 1
            # Stored policies are content-addressed: a rewritten one no longer hashes to its key.
            for policy_digest, document in conn.execute("SELECT digest, document FROM policies"):
                if digest(json.loads(document)) != policy_digest:
                    raise ChainError(f"stored policy {policy_digest[:19]}: its document no longer matches its digest; it was modified",
                                     [Issue(f"policy {policy_digest[:19]}", "modified", "policy_modified")])  # fmt: skip
        missing = [c.seq for c in checkpoints or () if c.seq >= expected_seq]
        if missing:
            raise ChainError(f"checkpoint at seq {missing[0]}: the log ends at seq {expected_seq - 1}; records were deleted from the end",
                             [Issue(f"checkpoint {missing[0]}", "log shorter than checkpoint", "checkpoint_mismatch")])  # fmt: skip
        return VerifyReport(count, first, last, prev, checked)

    def checkpoint(self, now: datetime, private_key: Any = None, key_id: str | None = None) -> Checkpoint:
        """Record the current head as a checkpoint, signed when ``private_key`` (Ed25519) is given."""
        with self._read() as conn:
            row = conn.execute("SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()
            count = int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
            log_id = self._meta(conn, "log_id") or ""
        if row is None:
            raise DecisionLogError(f"{self.path}: the log is empty; nothing to checkpoint")
        checkpoint = Checkpoint(row[0], count, row[1], format_rfc3339(now), log_id, key_id)
        if private_key is not None:
            signature = base64.b64encode(private_key.sign(checkpoint.payload())).decode()
            checkpoint = Checkpoint(checkpoint.seq, count, checkpoint.head_hash, checkpoint.created_at, log_id, key_id, signature)
        with self._cond:
            assert self._conn is not None
            self._conn.execute("INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?,?)",
                               (checkpoint.seq, count, checkpoint.head_hash, checkpoint.created_at, key_id, checkpoint.signature))  # fmt: skip
        return checkpoint

    def prune(self, before: datetime, now: datetime) -> int:
        """Delete the oldest records evaluated before ``before``; return how many.

        Only a contiguous prefix is removed, and its last hash is kept as the chain's new
        starting point, so ``verify`` still checks every remaining record.
        """
        with self._cond:
            conn = self._conn
            assert conn is not None
            conn.execute("BEGIN IMMEDIATE")
            try:
                first_newer = conn.execute("SELECT MIN(seq) FROM decisions WHERE evaluated_at >= ?", (_sortable(before),)).fetchone()[0]
                last = conn.execute("SELECT MAX(seq) FROM decisions").fetchone()[0]
                through = (first_newer - 1) if first_newer is not None else last
                if through is None or through < 1:
                    conn.execute("ROLLBACK")
                    return 0
                head = conn.execute("SELECT hash FROM decisions WHERE seq <= ? ORDER BY seq DESC LIMIT 1", (through,)).fetchone()
                if head is None:
                    conn.execute("ROLLBACK")
                    return 0
                removed = conn.execute("DELETE FROM decisions WHERE seq <= ?", (through,)).rowcount
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_through_seq', ?)", (str(through),))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_head_hash', ?)", (head[0],))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_at', ?)", (format_rfc3339(now),))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return int(removed)

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None


def _chain(prev: str, columns: tuple[Any, ...], blob: bytes) -> str:
    """The link: covers the previous hash, the indexed columns and the body, so that a changed
    column (what queries see) breaks the chain as surely as a changed body, and verify needs
    no JSON parsing."""
    return hashlib.sha256(prev.encode("ascii") + b"\n" + canonical_json(list(columns)) + b"\n" + blob).hexdigest()


def _columns(body: Mapping[str, Any], default_ttl: timedelta) -> tuple[Any, ...]:
    """The indexed columns, derived from the body (verify checks they still agree)."""
    evaluated_at = parse_rfc3339(body["evaluated_at"])
    ttl = body.get("token_ttl_seconds")
    lifetime = timedelta(seconds=ttl) if isinstance(ttl, int) else default_ttl
    return (body["decision_id"], _sortable(evaluated_at), body.get("subject_id"), body.get("keycloak_user_id"), body.get("client_id"),
            body["effect"], json.dumps(body.get("rules", [])), body["policy"]["digest"], _sortable(evaluated_at + lifetime))  # fmt: skip


def _sortable(moment: datetime) -> str:
    """Fixed-width UTC text, so that SQLite's string order is time order."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _where(query: Query) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if query.subject:
        clauses.append("(subject_id = ? OR keycloak_user_id = ?)")
        args += [query.subject, query.subject]
    if query.client:
        clauses.append("client_id = ?")
        args.append(query.client)
    if query.effect:
        clauses.append("effect = ?")
        args.append(query.effect)
    if query.rule:
        clauses.append("instr(rules, ?) > 0")  # exact and case-sensitive, unlike LIKE
        args.append(json.dumps(query.rule))
    if query.since:
        clauses.append("evaluated_at >= ?")
        args.append(_sortable(query.since))
    if query.until:
        clauses.append("evaluated_at < ?")
        args.append(_sortable(query.until))
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


def _verify_signature(checkpoint: Checkpoint, public_key: Any) -> None:
    if public_key is None:
        return
    if checkpoint.signature is None:
        # With a key given, an unsigned witness line proves nothing: anyone could have written it.
        raise ChainError(f"checkpoint at seq {checkpoint.seq}: not signed, but a public key was given",
                         [Issue(f"checkpoint {checkpoint.seq}", "unsigned", "checkpoint_signature")])  # fmt: skip
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(base64.b64decode(checkpoint.signature), checkpoint.payload())
    except (InvalidSignature, ValueError):
        raise ChainError(f"checkpoint at seq {checkpoint.seq}: the signature does not verify",
                         [Issue(f"checkpoint {checkpoint.seq}", "bad signature", "checkpoint_signature")]) from None  # fmt: skip


def _reason(exc: BaseException) -> str:
    return str(exc).split("\n")[0] or type(exc).__name__


def _looks_like_id(text: str) -> bool:
    return len(text) <= 64 and text.replace("-", "").isalnum()


def _random_hex() -> str:
    import os

    return os.urandom(16).hex()
