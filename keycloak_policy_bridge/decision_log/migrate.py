"""Moving a SQLite decision log into an empty PostgreSQL database (``kpb decisions migrate``).

The copy is the same log, moved: every record keeps its seq, stored columns, body, ``prev_hash``
and hash; the inputs, the unexpired signed-request nonces, the checkpoints, the policies, the
activations (seals and MACs as they are) and ``meta`` (the log id, the prune boundary and its
signed statement, an upgrade's notes) are copied as stored. The log id is kept, so the witness's
checkpoints, the prune statement and the activation MACs, all bound to it, hold for the copy.

Order, so that nothing is written for a source that does not hold:

1. the source is read in one SQLite read transaction (one snapshot: a bridge still appending
   to it does not tear the copy) and verified first, with every check of ``kpb decisions
   verify`` (``integrity``); a tampered source raises ``ChainError`` before the target is touched;
2. the target is given the schema if it has none, then, in ONE transaction: the head row is
   locked (a bridge started on it meanwhile waits), the database must hold no decision log data
   (else ``DecisionLogError`` naming it by its location, never the URL), and every table is
   filled with ``COPY`` (streamed from the source in batches: memory does not grow with the
   log). A failure rolls everything back: the target is left empty, and the migration is run
   again from the start (it is not resumable, and needs no clean-up);
3. the target is verified as the source was, and both heads must be equal.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from keycloak_policy_bridge.decision_log.activations import ActivationKeys
from keycloak_policy_bridge.decision_log.chain import GENESIS, RecordColumns
from keycloak_policy_bridge.decision_log.input_store import GENERATION_KEY, as_bytes
from keycloak_policy_bridge.decision_log.integrity import verify_log
from keycloak_policy_bridge.decision_log.interfaces import Checkpoint, VerifyReport
from keycloak_policy_bridge.decision_log.policies import activation_rows
from keycloak_policy_bridge.decision_log.postgres_reader import PostgresDecisionReader
from keycloak_policy_bridge.decision_log.postgres_schema import describe, reason
from keycloak_policy_bridge.decision_log.sqlite_reader import SQLiteRows
from keycloak_policy_bridge.decision_log.sqlitefile import connect_reader, has_table, require_file
from keycloak_policy_bridge.errors import ChainError, DecisionLogError

BATCH = 5_000  # source rows read per fetch while copying
_COLUMNS = ", ".join(RecordColumns.NAMES)
# The tables that hold a log's data: a target with a row in any of them is not empty.
_DATA_TABLES = ("decisions", "inputs", "nonces", "checkpoints", "policies", "activations")


@dataclass(frozen=True)
class Verification:
    """What both logs are verified with: the witness's checkpoints, the key they are signed with
    (Ed25519 public key) and the activation keys (MACs checked when given)."""

    checkpoints: tuple[Checkpoint, ...] = ()
    public_key: Any = None
    activation_keys: ActivationKeys | None = None


@dataclass(frozen=True)
class MigrationReport:
    """What was copied, and both verifications (their heads are equal)."""

    source: str  # the file
    target: str  # the database, as ``postgres_schema.describe`` names it (no password)
    log_id: str
    source_verified: VerifyReport
    target_verified: VerifyReport
    records: int
    inputs: int
    nonces: int
    checkpoints: int
    policies: int
    activations: int


def migrate_log(source: Path, url: str, verification: Verification, now: int) -> MigrationReport:
    """Copy the SQLite log ``source`` into the empty PostgreSQL database ``url`` (module docstring).
    ``now``: unix seconds; the nonces expired by then are left out.

    Raises:
        ChainError: the source does not verify (nothing was written), or the copy does not.
        DecisionLogError: the source cannot be read, the target cannot be reached or is not
            empty (nothing was written), or the copy failed (rolled back: the target is empty),
            or its head differs from the source's.
    """
    where = describe(url)
    require_file(source)
    checks = (list(verification.checkpoints), verification.public_key, verification.activation_keys)
    with closing(connect_reader(source, "SELECT 1 FROM decisions LIMIT 1")) as conn:
        conn.execute("BEGIN")  # one read snapshot for the verification and the copy
        source_verified = _verified(str(source), lambda: verify_log(SQLiteRows(conn), *checks))
        PostgresDecisionReader(url, pool_size=1).close()  # the schema, created if the database has none
        try:
            with psycopg.Connection.connect(url, autocommit=True, application_name="kpb-migrate") as target:
                counts = _copy(conn, target, where, now)
        except psycopg.Error as exc:
            raise DecisionLogError(f"{where}: the copy failed and was rolled back; the database is as it was ({reason(exc)})") from None
    reader = PostgresDecisionReader(url, pool_size=1, create=False)
    try:
        target_verified = _verified(where, lambda: reader.verify(*checks))
        log_id = reader.log_id()
    finally:
        reader.close()
    if (target_verified.head_hash, target_verified.records, target_verified.last_seq) != (
        source_verified.head_hash,
        source_verified.records,
        source_verified.last_seq,
    ):
        raise DecisionLogError(
            f"{where}: the copy verifies but its head (seq {target_verified.last_seq}, {target_verified.head_hash}) differs from "
            f"{source}'s (seq {source_verified.last_seq}, {source_verified.head_hash})"
        )
    return MigrationReport(str(source), where, log_id, source_verified, target_verified, **counts)


def _verified(name: str, verify: Callable[[], VerifyReport]) -> VerifyReport:
    """``verify()``; its ``ChainError`` prefixed with the log it is about (``name``)."""
    try:
        return verify()
    except ChainError as exc:
        raise ChainError(f"{name}: does not verify: {exc.message}", exc.issues) from None


def _copy(conn: sqlite3.Connection, target: psycopg.Connection[Any], where: str, now: int) -> dict[str, int]:
    """Step 2 of the module docstring: one transaction on ``target``; the number of rows of each kind."""
    with target.transaction():
        target.execute("SELECT seq FROM chain_head FOR UPDATE")
        _require_empty(target, where)
        meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        generation = int(meta.pop(GENERATION_KEY, "0") or 0)  # PostgreSQL keeps it in chain_head
        target.execute("DELETE FROM meta")  # the target's own log id: the copy keeps the source's
        counts = {"meta": _put(target, "meta (key, value)", list(meta.items()))}
        counts["records"] = _put(
            target,
            f"decisions (seq, {_COLUMNS}, body, prev_hash, hash)",
            _stream(conn, f"SELECT seq, {_COLUMNS}, CAST(body AS BLOB), prev_hash, hash FROM decisions ORDER BY seq", (), body=10),
        )
        counts["inputs"] = _put(
            target, "inputs (ref, document)", _stream(conn, "SELECT ref, CAST(document AS BLOB) FROM inputs", (), body=1, table="inputs")
        )
        counts["nonces"] = _put(
            target,
            "nonces (nonce, expires_at)",
            _stream(conn, "SELECT nonce, expires_at FROM nonces WHERE expires_at >= ?", (now,), body=0, table="nonces"),
        )
        counts["checkpoints"] = _put(
            target,
            "checkpoints (seq, count, head_hash, created_at, key_id, signature)",
            _stream(conn, "SELECT seq, count, head_hash, created_at, key_id, signature FROM checkpoints", (), table="checkpoints"),
        )
        counts["policies"] = _put(
            target,
            "policies (digest, document)",
            _stream(conn, "SELECT digest, CAST(document AS BLOB) FROM policies", (), body=1, table="policies"),
        )
        counts["activations"] = _put(
            target,
            "activations (seq, digest, version, activated_by, activated_at, prev_hash, hash, key_id, mac)",
            [
                (a.seq, a.digest, a.version, a.activated_by, a.activated_at, a.prev_hash, a.hash, a.key_id, a.mac)
                for a in activation_rows(conn, "ORDER BY seq", ())
            ],
        )
        last = conn.execute("SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()
        head = (int(last[0]), str(last[1])) if last else (int(meta.get("pruned_through_seq") or 0), meta.get("pruned_head_hash") or GENESIS)
        target.execute("UPDATE chain_head SET seq = %s, hash = %s, inputs_generation = %s", (*head, generation))
    del counts["meta"]
    return counts


def _require_empty(target: psycopg.Connection[Any], where: str) -> None:
    """Raises ``DecisionLogError`` unless ``target`` holds no decision log data (its schema, and
    the log id a bridge gave it when it created the schema, are allowed)."""
    held = [t for t in _DATA_TABLES if (row := target.execute(f"SELECT EXISTS (SELECT 1 FROM {t})").fetchone()) and row[0]]
    head = target.execute("SELECT seq FROM chain_head").fetchone()
    if head and int(head[0]) != 0 and "decisions" not in held:
        held.append("decisions (pruned)")
    if held:
        raise DecisionLogError(
            f"{where}: not an empty database (it holds {', '.join(held)}); migrate copies a log into an empty one only, "
            "and nothing was written"
        )


def _stream(
    conn: sqlite3.Connection, sql: str, args: Sequence[Any], body: int | None = None, table: str | None = None
) -> Iterable[tuple[Any, ...]]:
    """``sql``'s rows from the source, fetched in batches; column ``body`` as bytes (a row edited
    by hand can hold TEXT where a BLOB was written). Nothing when the source lacks ``table``
    (a log older than it)."""
    if table is not None and not has_table(conn, table):
        return
    cursor = conn.execute(sql, args)
    while batch := cursor.fetchmany(BATCH):
        for row in batch:
            if body is not None:
                row = (*row[:body], as_bytes(row[body]), *row[body + 1 :])
            yield tuple(row)


def _put(target: psycopg.Connection[Any], table: str, rows: Iterable[Sequence[Any]]) -> int:
    """``COPY`` ``rows`` into ``table`` (``name (columns)``); return how many."""
    count = 0
    with target.cursor() as cursor, cursor.copy(f"COPY {table} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count
