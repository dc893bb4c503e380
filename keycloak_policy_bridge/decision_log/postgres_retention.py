"""Checkpoints and pruning of the PostgreSQL log, while replicas keep appending.

What a checkpoint and a prune statement say, and their signatures, are ``chain``'s (the SQLite log
uses the same functions); what to keep is ``retention.kept_refs``. This module decides only when
each value is read, so that it is true of the one chain every replica appends to:

* A checkpoint reads ``chain_head`` under ``SELECT ... FOR UPDATE``, the lock every append takes
  (``postgres``): no commit is half done while it is held, so the (seq, hash) it names is a
  committed chain position, and the record count (seq minus the prune boundary: the chain has no
  gap) and the newest sealed activation are read at that same point. The lock is held for a few
  short statements.
* A prune is ``retention``'s two phases. ``plan``, in a repeatable-read snapshot and without any
  lock, reads the refs the remaining records reference and the inputs no one references then
  (the long part). ``apply``, in one transaction, serialised with other prunes by an advisory
  lock: deletes the prefix (appends go on: they only add rows after it), then takes the head
  lock, reads the refs of the records appended since the plan, deletes the inputs still
  unreferenced, moves the inputs generation on (a writer then sends every input again: it cannot
  skip one that was just collected) and records the signed prune statement and the boundary in
  ``meta``. Appends wait only for that last part.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from keycloak_policy_bridge.decision_log.activations import Activation
from keycloak_policy_bridge.decision_log.chain import head_checkpoint, prune_meta, prune_statement, sortable
from keycloak_policy_bridge.decision_log.interfaces import Checkpoint
from keycloak_policy_bridge.decision_log.postgres_schema import log_id
from keycloak_policy_bridge.decision_log.retention import PrunePlan, kept_refs
from keycloak_policy_bridge.errors import DecisionLogError
from keycloak_policy_bridge.record.codec import V2, stored_input_refs

Conn = psycopg.Connection[Any]
PRUNE_LOCK = 0x6B70625F707275  # "kpb_pru": pg_advisory_xact_lock key: one prune at a time
_HEAD_LOCK = "SELECT seq, hash FROM chain_head FOR UPDATE"  # the lock every append takes (postgres._HEAD)
_ACTIVATION_HEAD = (
    "SELECT seq, digest, version, activated_by, activated_at, prev_hash, hash, key_id, mac FROM activations "
    "WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1"
)


@dataclass(frozen=True)
class PostgresPrunePlan:
    """``retention.PrunePlan`` plus the inputs no record after the prefix referenced then."""

    plan: PrunePlan
    unreferenced: frozenset[str]


def checkpoint(conn: Conn, now: datetime, private_key: Any, key_id: str | None, lock_timeout_ms: int, where: str) -> Checkpoint:
    """Record the current head as a checkpoint (module docstring) on ``conn`` (autocommit); return it.

    Raises:
        DecisionLogError: the log is empty (``where`` names it).
        psycopg.Error: the database failed (nothing was recorded).
    """
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        head = conn.execute(_HEAD_LOCK).fetchone()
        assert head is not None  # created with the schema
        seq, head_hash = int(head[0]), str(head[1])
        count = seq - int(_meta(conn, "pruned_through_seq") or 0)
        if count <= 0:
            raise DecisionLogError(f"{where}: the log is empty; nothing to checkpoint")
        row = conn.execute(_ACTIVATION_HEAD).fetchone()
        activation = Activation(*row) if row else None
        made = head_checkpoint(seq, count, head_hash, now, log_id(conn), activation, private_key, key_id)
        conn.execute(
            "INSERT INTO checkpoints VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (seq) DO UPDATE SET count = EXCLUDED.count, "
            "head_hash = EXCLUDED.head_hash, created_at = EXCLUDED.created_at, key_id = EXCLUDED.key_id, signature = EXCLUDED.signature",
            (made.seq, made.count, made.head_hash, made.created_at, made.key_id, made.signature),
        )
    return made


def plan(conn: Conn, before: datetime) -> PostgresPrunePlan:
    """Phase one, in a repeatable-read, read-only transaction of its own on ``conn``, no lock.

    Raises:
        RecordFormatError: a remaining ``/2`` record cannot be read.
        psycopg.Error: the database failed.
    """
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        through = _prune_through(conn, before)
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM decisions").fetchone()
        scanned = int(row[0]) if row else 0
        keep = _referenced_refs(conn, through) if through is not None else set()
        unreferenced = {str(r[0]) for r in conn.execute("SELECT ref FROM inputs")} - keep if through is not None else set()
    return PostgresPrunePlan(PrunePlan(through, scanned, frozenset(keep)), frozenset(unreferenced))


def apply(
    conn: Conn, before: datetime, now: datetime, planned: PostgresPrunePlan, private_key: Any, key_id: str | None, lock_timeout_ms: int
) -> int:
    """Phase two, one transaction on ``conn`` (autocommit); return how many records were removed.

    Raises:
        RecordFormatError: a remaining ``/2`` record cannot be read (nothing is removed).
        psycopg.Error: the database failed (nothing is removed).
    """
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PRUNE_LOCK,))
        through = _prune_through(conn, before)
        head = None
        if through is not None:
            head = conn.execute("SELECT hash FROM decisions WHERE seq <= %s ORDER BY seq DESC LIMIT 1", (through,)).fetchone()
        if through is None or head is None:
            return 0
        removed = conn.execute("DELETE FROM decisions WHERE seq <= %s", (through,)).rowcount
        conn.execute(_HEAD_LOCK)  # from here until COMMIT, appends wait
        keep = kept_refs(planned.plan, through, lambda after: _referenced_refs(conn, after))
        # Inputs stored after the plan are not candidates: a record appended since references
        # them (or nothing does, and the next prune collects them).
        stale = sorted(planned.unreferenced - keep)
        if stale:
            conn.execute("DELETE FROM inputs WHERE ref = ANY(%s)", (stale,))
            conn.execute("UPDATE chain_head SET inputs_generation = inputs_generation + 1")
        statement = prune_statement(through, removed, str(head[0]), now, log_id(conn), private_key, key_id)
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", prune_meta(statement, now)
            )
    return int(removed)


def _prune_through(conn: Conn, before: datetime) -> int | None:
    """The last seq a prune before ``before`` removes (a contiguous prefix), or None for none
    (``retention.prune_through``, in this dialect)."""
    row = conn.execute(
        "SELECT (SELECT min(seq) FROM decisions WHERE evaluated_at >= %s), (SELECT max(seq) FROM decisions)", (sortable(before),)
    ).fetchone()
    first_newer, last = (row[0], row[1]) if row else (None, None)
    through = (int(first_newer) - 1) if first_newer is not None else last
    return int(through) if through is not None and through >= 1 else None


def _referenced_refs(conn: Conn, after_seq: int) -> set[str]:
    """The input refs of the ``/2`` records after ``after_seq`` (``input_store.referenced_refs``),
    read through a server-side cursor."""
    refs: set[str] = set()
    with conn.cursor(name="kpb_prune_refs") as cursor:
        cursor.itersize = 1_000
        cursor.execute("SELECT body FROM decisions WHERE seq > %s AND substr(body, 1, 1) = %s", (after_seq, V2))
        for (blob,) in cursor:
            refs.update(stored_input_refs(bytes(blob)))
    return refs


def _meta(conn: Conn, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
    return str(row[0]) if row else None
