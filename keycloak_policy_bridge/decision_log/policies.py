"""The SQLite policy store: stored policies and sealed activations, in the decision log's file.

``policies`` holds every policy document ever activated, content-addressed (replay looks the
recorded policy up by digest); ``activations`` is the sealed activation history every bridge
process follows (``activations``: the chain and MAC). They live in the decision log's file so
that one backup and one ``verify`` cover decisions and policies together; ``verify_policies``
and ``verify_activations`` are the checks ``integrity.verify_log`` runs on the rows a backend
reads (SQLite's or PostgreSQL's: they take rows, not a connection).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from keycloak_policy_bridge.canonical import canonical_json, digest
from keycloak_policy_bridge.decision_log.activations import Activation, ActivationKeys, activation_hash, activation_problem
from keycloak_policy_bridge.decision_log.chain import GENESIS, sortable
from keycloak_policy_bridge.decision_log.sqlitefile import (
    connect_reader,
    has_table,
    meta,
    open_writer,
    reason,
    require_file,
)
from keycloak_policy_bridge.errors import ChainError, DecisionLogError, DecisionNotFoundError, Issue

# Columns added to ``activations`` by the sealing (absent in logs written before it; see migrate).
ACTIVATION_SEALS = ("prev_hash", "hash", "key_id", "mac")
SCHEMA = """
CREATE TABLE IF NOT EXISTS policies (digest TEXT PRIMARY KEY, document BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS activations (
    seq INTEGER PRIMARY KEY, digest TEXT NOT NULL, version TEXT NOT NULL, activated_by TEXT NOT NULL, activated_at TEXT NOT NULL,
    prev_hash TEXT, hash TEXT, key_id TEXT, mac TEXT
);
"""


@dataclass
class SQLitePolicyStore:
    """The policy store of a decision log file. Thread-safe; one instance per process and file.

    Args:
        path: the decision log's file (created with its directory unless ``readonly``). A log
            written before activations were sealed is migrated when opened for writing (the seal
            columns are added; its existing activations stay unsealed, are reported by
            ``verify`` and never followed).
        activation_keys: the keys that seal and check activations; ``record_activation`` and
            ``activation_problem`` need them.
        readonly: for replay, explain and verify: never creates or alters a file.
    """

    path: Path
    activation_keys: ActivationKeys | None = field(default=None, repr=False)
    readonly: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _conn: sqlite3.Connection | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.readonly:
            require_file(self.path)
            self._read().close()  # raises DecisionLogError unless it is a readable kpb log
            return
        self._conn = open_writer(self.path, "full", SCHEMA, "policy store", migrate)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _read(self) -> sqlite3.Connection:
        return connect_reader(self.path, "SELECT 1 FROM meta LIMIT 1")

    def _writer(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DecisionLogError(f"{self.path}: the policy store is closed or read-only")
        return self._conn

    # -- policies ----------------------------------------------------------------------------

    def store_policy(self, document: Mapping[str, Any]) -> str:
        """Store a policy document once, content-addressed; return its digest."""
        policy_digest = digest(document)
        try:
            with self._lock:
                self._writer().execute("INSERT OR IGNORE INTO policies VALUES (?, ?)", (policy_digest, canonical_json(document)))
        except sqlite3.Error as exc:
            raise DecisionLogError(f"{self.path}: cannot store the policy ({reason(exc)})") from None
        return policy_digest

    def policy(self, policy_digest: str) -> dict[str, Any]:
        """A stored policy document.

        Raises:
            DecisionNotFoundError: the digest is unknown.
        """
        with closing(self._read()) as conn:
            row = (
                conn.execute("SELECT document FROM policies WHERE digest = ?", (policy_digest,)).fetchone()
                if has_table(conn, "policies")
                else None
            )
        if row is None:
            raise DecisionNotFoundError(f"policy {policy_digest[:19]} is not stored in {self.path}")
        document: dict[str, Any] = json.loads(row[0])
        return document

    def policy_digests(self) -> list[str]:
        """The digest of every stored policy, sorted (``kpb decisions upgrade`` copies them all)."""
        with closing(self._read()) as conn:
            if not has_table(conn, "policies"):
                return []
            return [row[0] for row in conn.execute("SELECT digest FROM policies ORDER BY digest")]

    # -- activations -------------------------------------------------------------------------

    def record_activation(self, policy_digest: str, version: str, by: str, at: datetime) -> Activation:
        """Record that ``policy_digest`` became the active policy (who, when), sealed with the
        activation key, and return the row.

        Every bridge process sharing this file follows the latest activation that verifies
        (``Bridge.sync_policy``), which is how a policy change reaches every gunicorn worker.

        Raises:
            DecisionLogError: no activation key, or the row could not be written.
        """
        if self.activation_keys is None:
            raise DecisionLogError(f"{self.path}: cannot record a policy activation without an activation key")
        try:
            with self._lock:
                conn = self._writer()
                conn.execute("BEGIN IMMEDIATE")  # across processes: the link to the previous activation must not race
                try:
                    log_id = meta(conn, "log_id") or ""
                    last = conn.execute("SELECT MAX(seq) FROM activations").fetchone()[0] or 0
                    # Link to the newest sealed row: an unsealed row after it is a forgery verify reports.
                    head = conn.execute("SELECT hash FROM activations WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1").fetchone()
                    seq, prev, at_text = last + 1, head[0] if head else GENESIS, sortable(at)
                    h = activation_hash(prev, seq, policy_digest, version, by, at_text)
                    key_id, mac = self.activation_keys.seal(log_id, h)
                    conn.execute(
                        "INSERT INTO activations (seq, digest, version, activated_by, activated_at, prev_hash, hash, key_id, mac) "
                        "VALUES (?,?,?,?,?,?,?,?,?)",
                        (seq, policy_digest, version, by, at_text, prev, h, key_id, mac),
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise DecisionLogError(f"{self.path}: cannot record the policy activation ({reason(exc)})") from None
        return Activation(seq, policy_digest, version, by, at_text, prev, h, key_id, mac)

    def activations(self, limit: int = 20) -> list[Activation]:
        """The latest policy activations, newest first, as recorded (verified or not: see ``verify``)."""
        with closing(self._read()) as conn:
            return activation_rows(conn, "ORDER BY seq DESC LIMIT ?", (limit,))

    def activation_history(self) -> list[Activation]:
        """Every activation, oldest first, as recorded (verified or not: see ``verify``)."""
        with closing(self._read()) as conn:
            return activation_rows(conn, "ORDER BY seq", ())

    def latest_activation(self) -> Activation | None:
        """The newest activation row, unverified (``activation_problem`` checks it)."""
        rows = self.activations(limit=1)
        return rows[0] if rows else None

    def activation_problem(self, activation: Activation) -> str | None:
        """None when ``activation`` is sealed, unchanged and its MAC verifies with this store's
        activation keys; otherwise what is wrong (for a refusal's log line and metric)."""
        with closing(self._read()) as conn:
            log_id = meta(conn, "log_id") or ""
        return activation_problem(activation, self.activation_keys, log_id)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a log written before sealed activations up to date: add the seal columns.

    Its existing activations stay unsealed: sealing them now would vouch for rows nobody can
    vouch for. ``verify`` counts them, workers never follow them, and new activations are sealed
    after them. Idempotent, and safe when several workers open the log at once.
    """
    if set(ACTIVATION_SEALS) <= {r[1] for r in conn.execute("PRAGMA table_info(activations)")}:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        present = {r[1] for r in conn.execute("PRAGMA table_info(activations)")}
        for column in ACTIVATION_SEALS:
            if column not in present:
                conn.execute(f"ALTER TABLE activations ADD COLUMN {column} TEXT")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def activation_rows(conn: sqlite3.Connection, tail: str, args: tuple[Any, ...]) -> list[Activation]:
    """Activation rows (``tail``: WHERE/ORDER/LIMIT); a log opened read-only before its migration
    has no seal columns, and its rows read as unsealed."""
    present = {r[1] for r in conn.execute("PRAGMA table_info(activations)")}
    if not present:  # a log from before activations were recorded at all, or without a policy store
        return []
    seals = ", ".join(c if c in present else "NULL" for c in ACTIVATION_SEALS)
    if "hash" not in present:
        tail = tail.replace("hash IS NOT NULL", "0")
    rows = conn.execute(f"SELECT seq, digest, version, activated_by, activated_at, {seals} FROM activations {tail}", args)
    return [Activation(*row) for row in rows]


def activation_head(conn: sqlite3.Connection) -> Activation | None:
    """The newest sealed activation (what a checkpoint records), or None."""
    heads = activation_rows(conn, "WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1", ())
    return heads[0] if heads else None


# -- integrity (run by ``integrity.verify_log``, whatever the backend) ----------------------------


def verify_policies(policies: Iterable[tuple[str, Any]]) -> set[str]:
    """The digests of the stored ``policies`` (``(digest, canonical JSON document)``), each
    checked: a stored policy is content-addressed, so a rewritten one no longer hashes to its key.

    Raises:
        ChainError: (``policy_modified``) naming the first modified policy.
    """
    stored: set[str] = set()
    for policy_digest, document in policies:
        try:
            intact = digest(json.loads(document)) == policy_digest
        except (TypeError, ValueError):  # not JSON any more (ValueError covers a bad encoding too)
            intact = False
        if not intact:
            raise ChainError(
                f"stored policy {policy_digest[:19]}: its document no longer matches its digest; it was modified",
                [Issue(f"policy {policy_digest[:19]}", "modified", "policy_modified")],
            )
        stored.add(policy_digest)
    return stored


def verify_activations(
    activations: Iterable[Activation], log_id: str, keys: ActivationKeys | None, stored: set[str]
) -> tuple[int, int, dict[int, str]]:
    """Walk ``activations`` in seq order: (sealed rows that hold, unsealed leading rows, hash by seq).
    ``log_id``: the log's id, which the MACs are bound to.

    Unsealed rows are accepted only before the first sealed one (a log from before sealing);
    one after it was inserted without the bridge's code and key.

    Raises:
        ChainError: naming the first activation that does not hold (``activation_gap``,
            ``activation_forged``, ``activation_link``, ``activation_modified``, ``policy_missing``).
    """
    prev, expected, sealed, unsealed = GENESIS, None, 0, 0
    heads: dict[int, str] = {}
    for activation in activations:
        where = activation.describe()
        if expected is not None and activation.seq != expected:
            raise ChainError(
                f"{where}: expected activation seq {expected}; an activation was deleted or inserted",
                [Issue(where, "sequence gap", "activation_gap")],
            )
        expected = activation.seq + 1
        if activation.hash is None:
            if sealed:
                raise ChainError(
                    f"{where}: not sealed, after sealed activations; it was inserted without the activation key",
                    [Issue(where, "unsealed", "activation_forged")],
                )
            unsealed += 1
            continue
        if activation.prev_hash != prev:
            raise ChainError(
                f"{where}: prev_hash does not match the previous activation; an activation was deleted, inserted or reordered",
                [Issue(where, "broken link", "activation_link")],
            )
        recomputed = activation_hash(
            prev, activation.seq, activation.digest, activation.version, activation.activated_by, activation.activated_at
        )
        if recomputed != activation.hash:
            raise ChainError(
                f"{where}: hash does not match its content; the activation was modified",
                [Issue(where, "modified", "activation_modified")],
            )
        problem = keys.problem(activation.key_id, activation.mac, log_id, activation.hash) if keys is not None else None
        if problem is not None:
            raise ChainError(f"{where}: {problem}", [Issue(where, "MAC", "activation_forged")])
        if activation.digest not in stored:
            raise ChainError(f"{where}: its policy is not stored; it was deleted", [Issue(where, "policy missing", "policy_missing")])
        sealed += 1
        heads[activation.seq] = prev = activation.hash
    return sealed, unsealed, heads
