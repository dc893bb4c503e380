"""The SQLite file the decision log and the policy store share: connections, ``meta``, errors.

One file holds both stores (``SQLiteDecisionLog``: decisions, inputs, nonces, checkpoints;
``SQLitePolicyStore``: policies, activations), so that one backup, one witness and one
``verify`` cover them together. Each opens its own connections; SQLite's locking (WAL mode, a
30 s busy timeout) orders writers across threads and processes.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from keycloak_policy_bridge.canonical import digest
from keycloak_policy_bridge.errors import DecisionLogError

BUSY_TIMEOUT_SECONDS = 30
# A new file gets 1 KiB pages instead of SQLite's 4 KiB: an append dirties one leaf page of each
# index at a random place (subject, Keycloak user), and at commit every dirtied page goes whole
# into the write-ahead log and its fsync. Measured on the acme mix, 16 records per commit: 5.9 KB
# of WAL per record against 13.2 KB with 4 KiB pages (bench/RESULTS.md, issue 13). A file's page
# size is fixed when it is created; existing logs keep theirs.
PAGE_SIZE = 1024
# SQLite checkpoints the WAL into the file once it holds 1,000 pages: 4 MB at 4 KiB pages, only
# 1 MB at 1 KiB. The checkpoint runs inside the commit that crosses the mark, so it is kept at
# about 4 MB whatever the page size: as many checkpoints per record as before. (The decision
# log's writer turns it off and checkpoints after its commits instead: ``SQLiteDecisionLog``.)
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024
META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"


def connect_writer(path: Path, synchronous: str) -> sqlite3.Connection:
    """A read-write connection in WAL mode, autocommit (transactions are explicit)."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # no effect unless the file is new (empty)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL" if synchronous == "full" else "PRAGMA synchronous=NORMAL")
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_BYTES // page_size}")
    return conn


def open_writer(
    path: Path, synchronous: str, schema: str, what: str, prepare: Callable[[sqlite3.Connection], None] | None = None
) -> sqlite3.Connection:
    """The writer connection of a store on the shared file: the file (and its directory) created
    if missing, ``meta`` and the store's ``schema`` in place, then ``prepare`` (a migration).

    Raises:
        DecisionLogError: the file cannot be opened or set up (``what`` names the store).
    """
    conn = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect_writer(path, synchronous)
        init_meta(conn, path)
        conn.executescript(schema)
        if prepare is not None:
            prepare(conn)
        return conn
    except (sqlite3.DatabaseError, OSError) as exc:
        if conn is not None:
            conn.close()
        raise DecisionLogError(f"{path}: cannot open the {what} ({reason(exc)})") from None


def require_file(path: Path) -> None:
    """A read-only store needs the file to exist: it never creates one.

    Raises:
        DecisionLogError: no file there.
    """
    if not path.is_file():
        raise DecisionLogError(f"{path}: no decision log there")


def connect_reader(path: Path, probe: str) -> sqlite3.Connection:
    """A read-only connection that never creates or alters the file; ``probe`` (a query) must run.

    Raises:
        DecisionLogError: the file is not a readable kpb log.
    """
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False)
    except sqlite3.Error as exc:
        raise DecisionLogError(f"{path}: cannot read the decision log ({reason(exc)})") from None
    try:
        conn.execute(probe)
        return conn
    except sqlite3.DatabaseError as exc:
        conn.close()
        if "no such table" in str(exc):
            raise DecisionLogError(f"{path}: not a decision log (an empty or foreign database)") from None
        raise DecisionLogError(f"{path}: cannot read the decision log ({reason(exc)})") from None


def init_meta(conn: sqlite3.Connection, path: Path) -> None:
    """Create ``meta`` and the log's id (once per file, whichever store opens it first)."""
    conn.executescript(META_SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('log_id', ?)", (digest([str(path.resolve()), os.urandom(16).hex()])[7:39],))


def meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """True when the file has table ``name`` (a store that never opened it for writing has not)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def reason(exc: BaseException) -> str:
    """An exception's first line (SQLite's messages name no values)."""
    return str(exc).split("\n")[0] or type(exc).__name__


def looks_like_id(text: str) -> bool:
    """True when ``text`` may be echoed in a message (an id, not an arbitrary caller string)."""
    return len(text) <= 64 and text.replace("-", "").isalnum()
