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
removes a prefix and keeps the chain verifiable from the boundary it records, and signs that
boundary (a ``prune`` statement) so that deleting records and faking a boundary is found.

Policy activations (the ``activations`` table every worker follows) have a chain of their own:
``hash = sha256(prev_hash || seq, digest, version, activated_by, activated_at)``, sealed by
``mac = HMAC-SHA256(activation key, log_id || hash)`` with a server-side secret
(``ActivationKeys``). Whoever can write the file can recompute the hash chain but not the MAC:
a worker follows only an activation whose MAC verifies and never one older than the one it
follows (``Bridge.sync_policy``); ``verify`` names the first forged, rewritten, inserted or
deleted activation. Deleting the newest activations leaves a valid shorter chain: checkpoints
record the activation head too, so a signed checkpoint taken before catches it.

Replay across processes: ``append`` can record a signed request's ``Nonce`` in the same
transaction as its decision, under a primary key, so that processes sharing the log answer one
signed request once (the second append fails, nothing is recorded). Expired nonces are purged
inside a commit at most once a minute per process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from keycloak_policy_bridge.canonical import canonical_json, digest
from keycloak_policy_bridge.errors import AuthenticationError, ChainError, ConfigError, DecisionLogError, DecisionNotFoundError, Issue
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339

GENESIS = "0" * 64
MIN_ACTIVATION_KEY_BYTES = 32
NONCE_PURGE_SECONDS = 60  # expired nonces are deleted inside a commit at most this often (per process)
REPLAYED_SIGNATURE = "replayed_signature"  # signature.REPLAYED_SIGNATURE; not imported, to keep this module below the HTTP layer
# Columns added to ``activations`` by the sealing (absent in logs written before it; see _migrate).
_ACTIVATION_SEALS = ("prev_hash", "hash", "key_id", "mac")
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
    seq INTEGER PRIMARY KEY, digest TEXT NOT NULL, version TEXT NOT NULL, activated_by TEXT NOT NULL, activated_at TEXT NOT NULL,
    prev_hash TEXT, hash TEXT, key_id TEXT, mac TEXT
);
CREATE TABLE IF NOT EXISTS nonces (nonce BLOB PRIMARY KEY, expires_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_at);
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
    """The chain head at one point: how many records, which hash, and the newest sealed
    activation (``activation_seq``, ``activation_hash``). Optionally signed.

    ``kind`` is ``None`` for a checkpoint and ``"prune"`` for the statement ``prune`` signs at its
    boundary ("records through ``seq``, whose head was ``head_hash``, may be removed"); it is
    signed, so an ordinary checkpoint cannot be passed off as a prune. The activation fields and
    ``kind`` are in the signed payload only when set, so witness lines written before them verify.
    """

    seq: int
    count: int
    head_hash: str
    created_at: str
    log_id: str
    key_id: str | None = None
    signature: str | None = None
    activation_seq: int | None = None
    activation_hash: str | None = None
    kind: str | None = None

    def payload(self) -> bytes:
        data: dict[str, Any] = {"log_id": self.log_id, "seq": self.seq, "count": self.count, "head_hash": self.head_hash}
        if self.activation_seq is not None:
            data.update(activation_seq=self.activation_seq, activation_hash=self.activation_hash)
        if self.kind is not None:
            data["kind"] = self.kind
        return canonical_json(data)

    def to_dict(self) -> dict[str, Any]:
        out = {"log_id": self.log_id, "seq": self.seq, "count": self.count, "head_hash": self.head_hash,
               "created_at": self.created_at, "key_id": self.key_id, "signature": self.signature}  # fmt: skip
        if self.activation_seq is not None:
            out.update(activation_seq=self.activation_seq, activation_hash=self.activation_hash)
        if self.kind is not None:
            out["kind"] = self.kind
        return out


@dataclass(frozen=True)
class ActivationKeys:
    """Server-side secrets that seal policy activations: ``HMAC-SHA256(key, log_id || hash)``.

    ``keys[0]`` seals new activations; every listed key verifies the activations it sealed (each
    row names its key id), so a rotated-out key stays listed while activations it sealed matter.
    ``source`` says where the keys come from (for messages and the start-up log); never a secret.

    Raises:
        ConfigError: no key, or a key shorter than 32 bytes (named by key id, never shown).
    """

    keys: tuple[tuple[str, bytes], ...] = field(repr=False)
    source: str = "KPB_ACTIVATION_KEYS"

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("no activation key")
        for key_id, secret in self.keys:
            if not isinstance(secret, bytes) or len(secret) < MIN_ACTIVATION_KEY_BYTES:
                raise ConfigError(f"activation key {key_id!r} is shorter than {MIN_ACTIVATION_KEY_BYTES} bytes")

    def seal(self, log_id: str, activation_hash: str) -> tuple[str, str]:
        """(key id, MAC) of an activation hash, with the first key."""
        key_id, secret = self.keys[0]
        return key_id, _activation_mac(secret, log_id, activation_hash)

    def problem(self, key_id: str | None, mac: str | None, log_id: str, activation_hash: str) -> str | None:
        """None when ``mac`` is key ``key_id``'s MAC of ``activation_hash``; otherwise what is wrong."""
        secret = dict(self.keys).get(key_id or "")
        if secret is None or mac is None:
            return f"its MAC names key {key_id!r}, which is not configured ({self.source})" if key_id else "it has no MAC"
        if not hmac.compare_digest(_activation_mac(secret, log_id, activation_hash), mac):
            return "its MAC does not verify: it was forged or rewritten without the activation key"
        return None


def derived_activation_keys(hmac_secrets: tuple[tuple[str, bytes], ...]) -> ActivationKeys:
    """Activation keys derived from the caller HMAC secrets, when no ``KPB_ACTIVATION_KEYS`` is set.

    One-way (``HMAC(secret, label)``), key ids ``hmac:<key id>``. Weaker than dedicated keys: the
    mapper's side (Keycloak) holds the HMAC secrets too, and rotating them retires the key.
    """
    keys = tuple((f"hmac:{key_id}", hmac.new(secret, b"kpb-activation-key/1", hashlib.sha256).digest()) for key_id, secret in hmac_secrets)
    return ActivationKeys(keys, "derived from KPB_HMAC_SECRETS")


def insecure_dev_activation_keys() -> ActivationKeys:
    """A public, fixed key for ``KPB_INSECURE_DEV`` instances: their activations are not protected."""
    return ActivationKeys((("insecure-dev", hashlib.sha256(b"kpb insecure development activation key").digest()),),
                          "insecure development mode: a public key, activations are not protected")  # fmt: skip


@dataclass(frozen=True)
class Activation:
    """One row of ``activations``, as stored. ``hash`` is None for a row that was not sealed (written
    before sealing existed, or inserted by someone without the bridge's code and key)."""

    seq: int
    digest: str
    version: str
    activated_by: str
    activated_at: str  # fixed-width UTC text, as stored and hashed
    prev_hash: str | None = None
    hash: str | None = None
    key_id: str | None = None
    mac: str | None = None

    def describe(self) -> str:
        return f"activation seq {self.seq} (policy {self.digest[:19]} {self.version!r} by {self.activated_by!r})"


@dataclass(frozen=True)
class Nonce:
    """A signed request's identity, recorded with its decision so that every process sharing the
    log accepts that request once.

    Args:
        key: 32 bytes, the SHA-256 of the canonical signed request (``signature.signed_request_id``).
        expires_at: unix seconds after which the request's timestamp is stale anyway (timestamp
            plus the allowed skew); the nonce may be forgotten then.
        now: the verification instant, unix seconds (the adapter's clock), for purging.
    """

    key: bytes
    expires_at: int
    now: int


@dataclass(frozen=True)
class VerifyReport:
    records: int
    first_seq: int | None
    last_seq: int | None
    head_hash: str
    checkpoints_checked: int = 0
    activations: int = 0  # sealed activations whose chain held (and MACs, when activation_macs_checked)
    unsealed_activations: int = 0  # rows from before sealing, at the start of the table: reported, never followed
    activation_macs_checked: bool = False
    prune_signed: bool | None = None  # None: nothing was pruned, or no public key to check the boundary with


class DecisionLogWriter(Protocol):
    def append(self, body: Mapping[str, Any], nonce: Nonce | None = None) -> str: ...
    def store_policy(self, document: Mapping[str, Any]) -> str: ...


class DecisionLogReader(Protocol):
    def get(self, decision_id: str) -> dict[str, Any]: ...
    def query(self, query: Query) -> list[dict[str, Any]]: ...
    def policy(self, policy_digest: str) -> dict[str, Any]: ...


@dataclass
class _Pending:
    blob: bytes
    columns: tuple[Any, ...]
    nonce: Nonce | None = None
    done: bool = False
    hash: str | None = None
    error: BaseException | None = None


@dataclass
class SQLiteDecisionLog:
    """The SQLite decision log. Thread-safe; one instance per process and file.

    Args:
        path: the database file (created with its directory). A log written before activations
            were sealed is migrated when opened for writing (the seal columns are added; its
            existing activations stay unsealed, are reported by ``verify`` and never followed).
        default_token_ttl: lifetime assumed for a token whose record has no TTL (for drift).
        activation_keys: the keys that seal and check activations; ``record_activation`` needs them.
    """

    path: Path
    default_token_ttl: timedelta = timedelta(hours=1)
    readonly: bool = False  # for query, explain, replay and verify: never creates or alters a file
    synchronous: str = "full"  # "full" (fsync at every commit) or "normal" (see the module docstring)
    activation_keys: ActivationKeys | None = field(default=None, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _pending: list[_Pending] = field(default_factory=list, repr=False)
    _writing: bool = False
    _conn: sqlite3.Connection | None = field(default=None, repr=False)
    _nonces_purged_at: int = 0

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
            _migrate(conn)
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

    def append(self, body: Mapping[str, Any], nonce: Nonce | None = None) -> str:
        """Append one record durably; return its chain hash.

        With ``nonce``, the signed request's nonce is recorded in the same transaction; if any
        process sharing the log recorded it already, nothing is recorded.

        Raises:
            DecisionLogError: the record was not committed (the decision must not be used).
            AuthenticationError: (``replayed_signature``) the nonce was recorded before: a replay.
        """
        # Serialize outside the lock: while one leader waits on fsync, the other callers prepare
        # their records, and the leader's critical section is only hashing and inserting.
        try:
            entry = _Pending(canonical_json(body), _columns(body, self.default_token_ttl), nonce)
        except (KeyError, TypeError, ValueError) as exc:
            # The exception's text can quote the offending value (a request string): name its type only.
            raise DecisionLogError(f"decision record is malformed ({type(exc).__name__}); the decision was not recorded") from None
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
            if isinstance(entry.error, sqlite3.IntegrityError) and "nonces" in str(entry.error):
                raise AuthenticationError("signed request was already used", reason=REPLAYED_SIGNATURE) from None
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
            nonces = [entry.nonce for entry in batch if entry.nonce is not None]
            if nonces:
                # The primary key makes a replay fail here, atomically with its decision.
                now = max(n.now for n in nonces)
                if now - self._nonces_purged_at >= NONCE_PURGE_SECONDS:
                    conn.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
                    self._nonces_purged_at = now
                conn.executemany("INSERT INTO nonces VALUES (?, ?)", [(n.key, n.expires_at) for n in nonces])
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

    @contextmanager
    def _exclusive(self) -> Iterator[sqlite3.Connection]:
        """The writer connection, with no group commit in flight on it (a commit leader runs its
        transaction outside ``_cond``, so holding the lock alone is not enough)."""
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._writing = True
        try:
            if self._conn is None:
                raise DecisionLogError(f"{self.path}: the log is closed or read-only")
            yield self._conn
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def store_policy(self, document: Mapping[str, Any]) -> str:
        """Store a policy document once, content-addressed; return its digest."""
        policy_digest = digest(document)
        try:
            with self._exclusive() as conn:
                conn.execute("INSERT OR IGNORE INTO policies VALUES (?, ?)", (policy_digest, canonical_json(document)))
        except sqlite3.Error as exc:
            raise DecisionLogError(f"{self.path}: cannot store the policy ({_reason(exc)})") from None
        return policy_digest

    def record_activation(self, policy_digest: str, version: str, by: str, at: datetime) -> Activation:
        """Record that ``policy_digest`` became the active policy (who, when), sealed with the
        activation key, and return the row.

        Every bridge process sharing this log follows the latest activation that verifies
        (``Bridge.sync_policy``), which is how a policy change reaches every gunicorn worker.

        Raises:
            DecisionLogError: no activation key, or the row could not be written.
        """
        if self.activation_keys is None:
            raise DecisionLogError(f"{self.path}: cannot record a policy activation without an activation key")
        try:
            with self._exclusive() as conn:
                conn.execute("BEGIN IMMEDIATE")  # across processes: the link to the previous activation must not race
                try:
                    log_id = self._meta(conn, "log_id") or ""
                    last = conn.execute("SELECT MAX(seq) FROM activations").fetchone()[0] or 0
                    # Link to the newest sealed row: an unsealed row after it is a forgery verify reports.
                    head = conn.execute("SELECT hash FROM activations WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1").fetchone()
                    seq, prev, at_text = last + 1, head[0] if head else GENESIS, _sortable(at)
                    h = _activation_hash(prev, seq, policy_digest, version, by, at_text)
                    key_id, mac = self.activation_keys.seal(log_id, h)
                    conn.execute("INSERT INTO activations (seq, digest, version, activated_by, activated_at, prev_hash, hash, key_id, mac) "
                                 "VALUES (?,?,?,?,?,?,?,?,?)", (seq, policy_digest, version, by, at_text, prev, h, key_id, mac))  # fmt: skip
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise DecisionLogError(f"{self.path}: cannot record the policy activation ({_reason(exc)})") from None
        return Activation(seq, policy_digest, version, by, at_text, prev, h, key_id, mac)

    def activations(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest policy activations, newest first, as recorded (verified or not: see ``verify``)."""
        with self._read() as conn:
            rows = _activation_rows(conn, "ORDER BY seq DESC LIMIT ?", (limit,))
        return [{"digest": a.digest, "version": a.version, "activated_by": a.activated_by,
                 "activated_at": format_rfc3339(parse_rfc3339(a.activated_at))} for a in rows]  # fmt: skip

    def latest_activation(self) -> Activation | None:
        """The newest activation row, unverified (``activation_problem`` checks it)."""
        with self._read() as conn:
            rows = _activation_rows(conn, "ORDER BY seq DESC LIMIT 1", ())
        return rows[0] if rows else None

    def activation_problem(self, activation: Activation) -> str | None:
        """None when ``activation`` is sealed, unchanged and its MAC verifies with this log's
        activation keys; otherwise what is wrong (for a refusal's log line and metric)."""
        if self.activation_keys is None:
            return "no activation key is configured to check it with"
        if activation.hash is None or activation.prev_hash is None:
            return "it is not sealed (no hash or MAC): it was not recorded by a bridge holding the activation key"
        recomputed = _activation_hash(activation.prev_hash, activation.seq, activation.digest, activation.version,
                                      activation.activated_by, activation.activated_at)  # fmt: skip
        if recomputed != activation.hash:
            return "its content does not match its hash: it was modified"
        with self._read() as conn:
            log_id = self._meta(conn, "log_id") or ""
        return self.activation_keys.problem(activation.key_id, activation.mac, log_id, activation.hash)

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

    def verify(self, checkpoints: list[Checkpoint] | None = None, public_key: Any = None,
               activation_keys: ActivationKeys | None = None) -> VerifyReport:  # fmt: skip
        """Recompute the decision chain, the activation chain (and the activations' MACs, with
        ``activation_keys``) and compare them with ``checkpoints`` (and their signatures, with
        ``public_key``). With ``public_key``, a pruned log must hold a signed prune statement for
        its boundary (``prune``); ``kind == "prune"`` lines among ``checkpoints`` count too.

        Raises:
            ChainError: naming the first record, activation, checkpoint or boundary that does not hold.
        """
        by_seq = {c.seq: c for c in checkpoints or () if c.kind is None}
        checked = 0
        with self._read() as conn:
            prune_signed = self._verify_prune_boundary(conn, checkpoints or [], public_key)
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
            stored = set()
            for policy_digest, document in conn.execute("SELECT digest, document FROM policies"):
                if digest(json.loads(document)) != policy_digest:
                    raise ChainError(f"stored policy {policy_digest[:19]}: its document no longer matches its digest; it was modified",
                                     [Issue(f"policy {policy_digest[:19]}", "modified", "policy_modified")])  # fmt: skip
                stored.add(policy_digest)
            sealed, unsealed, heads = self._verify_activations(conn, activation_keys, stored)
        for checkpoint in checkpoints or ():
            if checkpoint.activation_seq:  # 0 or None: no activation to compare (none yet, or an older witness line)
                _verify_signature(checkpoint, public_key)
                where = f"checkpoint at seq {checkpoint.seq}"
                if checkpoint.activation_seq not in heads:
                    raise ChainError(f"{where}: activation seq {checkpoint.activation_seq} is not in the log (or not sealed); "
                                     "activations were deleted", [Issue(where, "activation missing", "checkpoint_mismatch")])  # fmt: skip
                if heads[checkpoint.activation_seq] != checkpoint.activation_hash:
                    raise ChainError(f"{where}: activation seq {checkpoint.activation_seq} differs from the log; activations up to it were "
                                     "rewritten", [Issue(where, "activation differs", "checkpoint_mismatch")])  # fmt: skip
        missing = [c.seq for c in checkpoints or () if c.seq >= expected_seq]
        if missing:
            raise ChainError(f"checkpoint at seq {missing[0]}: the log ends at seq {expected_seq - 1}; records were deleted from the end",
                             [Issue(f"checkpoint {missing[0]}", "log shorter than checkpoint", "checkpoint_mismatch")])  # fmt: skip
        return VerifyReport(count, first, last, prev, checked, sealed, unsealed, activation_keys is not None, prune_signed)

    def _verify_activations(self, conn: sqlite3.Connection, keys: ActivationKeys | None,
                            stored: set[str]) -> tuple[int, int, dict[int, str]]:  # fmt: skip
        """Walk the activations in seq order: (sealed rows that hold, unsealed leading rows, hash by seq).

        Unsealed rows are accepted only before the first sealed one (a log from before sealing);
        one after it was inserted without the bridge's code and key.
        """
        log_id = self._meta(conn, "log_id") or ""
        prev, expected, sealed, unsealed, heads = GENESIS, None, 0, 0, {}
        for activation in _activation_rows(conn, "ORDER BY seq", ()):
            where = activation.describe()
            if expected is not None and activation.seq != expected:
                raise ChainError(f"{where}: expected activation seq {expected}; an activation was deleted or inserted",
                                 [Issue(where, "sequence gap", "activation_gap")])  # fmt: skip
            expected = activation.seq + 1
            if activation.hash is None:
                if sealed:
                    raise ChainError(f"{where}: not sealed, after sealed activations; it was inserted without the activation key",
                                     [Issue(where, "unsealed", "activation_forged")])  # fmt: skip
                unsealed += 1
                continue
            if activation.prev_hash != prev:
                raise ChainError(f"{where}: prev_hash does not match the previous activation; an activation was deleted, inserted "
                                 "or reordered", [Issue(where, "broken link", "activation_link")])  # fmt: skip
            if _activation_hash(prev, activation.seq, activation.digest, activation.version, activation.activated_by,
                                activation.activated_at) != activation.hash:  # fmt: skip
                raise ChainError(f"{where}: hash does not match its content; the activation was modified",
                                 [Issue(where, "modified", "activation_modified")])  # fmt: skip
            problem = keys.problem(activation.key_id, activation.mac, log_id, activation.hash) if keys is not None else None
            if problem is not None:
                raise ChainError(f"{where}: {problem}", [Issue(where, "MAC", "activation_forged")])
            if activation.digest not in stored:
                raise ChainError(f"{where}: its policy is not stored; it was deleted", [Issue(where, "policy missing", "policy_missing")])
            sealed += 1
            heads[activation.seq] = prev = activation.hash
        return sealed, unsealed, heads

    def _verify_prune_boundary(self, conn: sqlite3.Connection, checkpoints: list[Checkpoint], public_key: Any) -> bool | None:
        """With ``public_key``, a pruned log's boundary must be vouched for by a signed prune
        statement (the one ``prune`` stored, or a witness line): a boundary in ``meta`` alone is
        what anyone deleting records would write. Returns None when there is nothing to check."""
        through = int(self._meta(conn, "pruned_through_seq") or 0)
        if through == 0 or public_key is None:
            return None
        head, log_id = self._meta(conn, "pruned_head_hash"), self._meta(conn, "log_id") or ""
        candidates = [c for c in checkpoints if c.kind == "prune"]
        stored = self._meta(conn, "pruned_checkpoint")
        if stored:
            try:
                candidates.append(Checkpoint(**json.loads(stored)))
            except (TypeError, ValueError):
                pass  # not a statement prune wrote: it vouches for nothing, and the error below names the boundary
        where = f"prune boundary at seq {through}"
        for statement in candidates:
            if statement.seq == through and statement.head_hash == head and statement.log_id == log_id and statement.signature:
                try:
                    _verify_signature(statement, public_key)
                except ChainError:
                    continue
                return True
        raise ChainError(f"{where}: no signed prune statement vouches for it; records through seq {through} were deleted "
                         "without a prune (or the boundary was moved)", [Issue(where, "unsigned boundary", "prune_unsigned")])  # fmt: skip

    def checkpoint(self, now: datetime, private_key: Any = None, key_id: str | None = None) -> Checkpoint:
        """Record the current head (and the newest sealed activation) as a checkpoint, signed when
        ``private_key`` (Ed25519) is given."""
        with self._read() as conn:
            row = conn.execute("SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()
            count = int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
            log_id = self._meta(conn, "log_id") or ""
            heads = [a for a in _activation_rows(conn, "WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1", ())]
        if row is None:
            raise DecisionLogError(f"{self.path}: the log is empty; nothing to checkpoint")
        head = heads[0] if heads else None
        checkpoint = Checkpoint(row[0], count, row[1], format_rfc3339(now), log_id, key_id,
                                activation_seq=head.seq if head else 0, activation_hash=head.hash if head else GENESIS)  # fmt: skip
        checkpoint = _signed(checkpoint, private_key)
        with self._exclusive() as conn:
            conn.execute("INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?,?)",
                         (checkpoint.seq, count, checkpoint.head_hash, checkpoint.created_at, key_id, checkpoint.signature))  # fmt: skip
        return checkpoint

    def prune(self, before: datetime, now: datetime, private_key: Any = None, key_id: str | None = None) -> int:
        """Delete the oldest records evaluated before ``before``; return how many.

        Only a contiguous prefix is removed, and its last hash is kept as the chain's new
        starting point, so ``verify`` still checks every remaining record. The boundary is
        recorded as a prune statement (``prune_boundary``), signed with ``private_key``
        (Ed25519): ``verify`` with the public key refuses a boundary no signed statement vouches
        for, so deleting records and writing a boundary by hand is found.
        """
        with self._exclusive() as conn:
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
                count = int(conn.execute("SELECT COUNT(*) FROM decisions WHERE seq <= ?", (through,)).fetchone()[0])
                statement = _signed(Checkpoint(through, count, head[0], format_rfc3339(now), self._meta(conn, "log_id") or "", key_id,
                                               kind="prune"), private_key)  # fmt: skip
                removed = conn.execute("DELETE FROM decisions WHERE seq <= ?", (through,)).rowcount
                boundary = json.dumps(statement.to_dict(), sort_keys=True)
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_checkpoint', ?)", (boundary,))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_through_seq', ?)", (str(through),))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_head_hash', ?)", (head[0],))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_at', ?)", (format_rfc3339(now),))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return int(removed)

    def prune_boundary(self) -> Checkpoint | None:
        """The prune statement of the last prune (signed if it was given a key), or None."""
        with self._read() as conn:
            stored = self._meta(conn, "pruned_checkpoint")
        return Checkpoint(**json.loads(stored)) if stored else None

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a log written before sealed activations up to date: add the seal columns.

    Its existing activations stay unsealed: sealing them now would vouch for rows nobody can
    vouch for. ``verify`` counts them, workers never follow them, and new activations are sealed
    after them. Idempotent, and safe when several workers open the log at once.
    """
    if set(_ACTIVATION_SEALS) <= {r[1] for r in conn.execute("PRAGMA table_info(activations)")}:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        present = {r[1] for r in conn.execute("PRAGMA table_info(activations)")}
        for column in _ACTIVATION_SEALS:
            if column not in present:
                conn.execute(f"ALTER TABLE activations ADD COLUMN {column} TEXT")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _activation_rows(conn: sqlite3.Connection, tail: str, args: tuple[Any, ...]) -> list[Activation]:
    """Activation rows (``tail``: WHERE/ORDER/LIMIT); a log opened read-only before its migration
    has no seal columns, and its rows read as unsealed."""
    present = {r[1] for r in conn.execute("PRAGMA table_info(activations)")}
    if not present:  # a log from before activations were recorded at all
        return []
    seals = ", ".join(c if c in present else "NULL" for c in _ACTIVATION_SEALS)
    if "hash" not in present:
        tail = tail.replace("hash IS NOT NULL", "0")
    rows = conn.execute(f"SELECT seq, digest, version, activated_by, activated_at, {seals} FROM activations {tail}", args)
    return [Activation(*row) for row in rows]


def _activation_hash(prev: str, seq: int, policy_digest: str, version: str, by: str, at: str) -> str:
    """The activation chain's link: public, so anyone who can write the file can recompute it;
    the MAC over it (``_activation_mac``) is what needs the key."""
    link = b"kpb-activation/1\n" + prev.encode("ascii") + b"\n" + canonical_json([seq, policy_digest, version, by, at])
    return hashlib.sha256(link).hexdigest()


def _activation_mac(secret: bytes, log_id: str, activation_hash: str) -> str:
    """Bound to the log's id, so a sealed row copied from another log under the same key fails."""
    message = b"kpb-activation-mac/1\n" + log_id.encode("utf-8") + b"\n" + activation_hash.encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _signed(checkpoint: Checkpoint, private_key: Any) -> Checkpoint:
    if private_key is None:
        return checkpoint
    from dataclasses import replace

    return replace(checkpoint, signature=base64.b64encode(private_key.sign(checkpoint.payload())).decode())


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
