"""Pruning the SQLite log: remove the oldest records, keep the chain verifiable, collect inputs.

A prune removes a contiguous prefix of the chain (the records evaluated before a cut-off), keeps
the prefix's last hash as the chain's new start (``meta.pruned_through_seq``,
``meta.pruned_head_hash``) and records a prune statement (a ``Checkpoint`` of kind ``"prune"``,
signed when a key is given) that ``verify`` requires for the boundary. It also deletes the
recorded inputs no remaining record references: a pruned decision's identities and feed rows
leave the file with it, as they did when they were inline.

Collecting inputs needs the refs of every remaining record, which means reading their bodies.
That is done in two phases so that appends are not held up: ``plan`` reads the remaining records
on a read snapshot, without any lock; ``apply``, in the write transaction, reads only the records
appended meanwhile, deletes, and moves the inputs generation on (``input_store.KnownInputs``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keycloak_policy_bridge.decision_log.chain import prune_meta, prune_statement, sortable
from keycloak_policy_bridge.decision_log.input_store import GENERATION_KEY, referenced_refs
from keycloak_policy_bridge.decision_log.sqlitefile import meta


@dataclass(frozen=True)
class PrunePlan:
    """What ``plan`` read: the prefix it would remove, the last seq it read, the refs it keeps."""

    through: int | None
    scanned: int
    keep: frozenset[str]


def plan(conn: sqlite3.Connection, before: datetime) -> PrunePlan:
    """Phase one, on a read connection: the refs the records after the prefix reference.

    Raises:
        RecordFormatError: a remaining ``/2`` record cannot be read.
    """
    through = prune_through(conn, before)
    scanned = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM decisions").fetchone()[0])
    keep = referenced_refs(conn, through, scanned) if through is not None else set()
    return PrunePlan(through, scanned, frozenset(keep))


def apply(conn: sqlite3.Connection, before: datetime, now: datetime, planned: PrunePlan, private_key: Any, key_id: str | None) -> int:
    """Phase two, on the writer connection: remove the prefix in one transaction; return how many
    records were removed.

    Raises:
        RecordFormatError: a remaining ``/2`` record cannot be read (nothing is removed).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        through = prune_through(conn, before)
        head = None
        if through is not None:
            head = conn.execute("SELECT hash FROM decisions WHERE seq <= ? ORDER BY seq DESC LIMIT 1", (through,)).fetchone()
        if through is None or head is None:
            conn.execute("ROLLBACK")
            return 0
        keep = kept_refs(planned, through, lambda after: referenced_refs(conn, after))
        count = int(conn.execute("SELECT COUNT(*) FROM decisions WHERE seq <= ?", (through,)).fetchone()[0])
        statement = prune_statement(through, count, head[0], now, meta(conn, "log_id") or "", private_key, key_id)
        removed = int(conn.execute("DELETE FROM decisions WHERE seq <= ?", (through,)).rowcount)
        collect_inputs(conn, keep)
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", prune_meta(statement, now))
        conn.execute("COMMIT")
        return removed
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def kept_refs(planned: PrunePlan, through: int, referenced_after: Callable[[int], set[str]]) -> set[str]:
    """The input refs a prune through ``through`` keeps, under the write lock, given what ``plan``
    read: those the plan found plus those of the records appended since (``referenced_after(seq)``:
    the refs of the records after ``seq``); everything after ``through`` when the plan does not
    cover what stays. Backend-neutral (``postgres`` uses it too)."""
    if planned.through is None or through < planned.through:
        return referenced_after(through)
    return referenced_after(planned.scanned) | planned.keep


def prune_through(conn: sqlite3.Connection, before: datetime) -> int | None:
    """The last seq a prune before ``before`` removes (a contiguous prefix), or None for none."""
    first_newer = conn.execute("SELECT MIN(seq) FROM decisions WHERE evaluated_at >= ?", (sortable(before),)).fetchone()[0]
    last = conn.execute("SELECT MAX(seq) FROM decisions").fetchone()[0]
    through = (first_newer - 1) if first_newer is not None else last
    return through if through is not None and through >= 1 else None


def collect_inputs(conn: sqlite3.Connection, keep: frozenset[str] | set[str]) -> None:
    """Delete the inputs not in ``keep`` and, when any was deleted, move the inputs generation on
    (in the caller's transaction), so that no process skips sending a collected input again."""
    stale = [(ref,) for (ref,) in conn.execute("SELECT ref FROM inputs") if ref not in keep]
    if not stale:
        return
    conn.executemany("DELETE FROM inputs WHERE ref = ?", stale)
    generation = int(meta(conn, GENERATION_KEY) or 0) + 1
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (GENERATION_KEY, str(generation)))
