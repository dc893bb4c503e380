"""The PostgreSQL database the decision log and the policy store share: schema, migrations, pools.

The tables mirror the SQLite file's (``sqlite``, ``policies``) column for column, with the same
stored values (text columns as the chain hashes them, bodies and documents as the same bytes),
so a record's chain hash is the same in both backends and a SQLite log can be copied row for row.
Two tables are PostgreSQL's own: ``kpb_schema`` (the schema version this database is at) and
``chain_head`` (one row: the last record's seq and hash and the inputs generation, which every
append locks with ``SELECT ... FOR UPDATE``: the one hash chain's writers take turns on it).

Migrations (``MIGRATIONS``, ordered) are applied by the bridge when it opens the database, in one
transaction under ``pg_advisory_xact_lock(SCHEMA_LOCK)``: replicas starting together apply each
once. A database at a version newer than this code's is refused, naming both versions: an older
bridge must not write into a schema it does not know.

Version 2 adds ``replicas`` and ``reload_requests`` (``postgres_events``: replicas in step).

Every text column of ``decisions`` is ``COLLATE "C"``: the time columns are compared as text
(``chain.sortable``), which only byte order gets right whatever the database's locale.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from keycloak_policy_bridge.canonical import digest
from keycloak_policy_bridge.decision_log.chain import GENESIS
from keycloak_policy_bridge.errors import DecisionLogError

SCHEMA_LOCK = 0x6B70625F736368  # "kpb_sch": pg_advisory_xact_lock key of the migrations
ACTIVATION_LOCK = 0x6B70625F616374  # "kpb_act": record_activation's turn (the activation chain)
ACTIVATION_CHANNEL = "kpb_activation"  # NOTIFY channel of a recorded activation (payload: its seq)
RELOAD_CHANNEL = "kpb_reload"  # NOTIFY channel of an entitlement reload request (payload: its seq)

_V1 = f"""
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE decisions (
    seq bigint PRIMARY KEY,
    decision_id text COLLATE "C" NOT NULL UNIQUE,
    evaluated_at text COLLATE "C" NOT NULL,
    subject_id text COLLATE "C",
    keycloak_user_id text COLLATE "C",
    client_id text COLLATE "C",
    effect text COLLATE "C" NOT NULL,
    rules text COLLATE "C" NOT NULL,
    policy_digest text COLLATE "C" NOT NULL,
    token_expires_at text COLLATE "C",
    body bytea NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
);
CREATE INDEX decisions_subject ON decisions (subject_id, seq);
CREATE INDEX decisions_kc_user ON decisions (keycloak_user_id, seq);
CREATE INDEX decisions_client ON decisions (client_id, seq);
CREATE INDEX decisions_time ON decisions (evaluated_at);
CREATE INDEX decisions_expiry ON decisions (token_expires_at) WHERE effect = 'permit';
CREATE TABLE chain_head (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq bigint NOT NULL,
    hash text NOT NULL,
    inputs_generation bigint NOT NULL
);
INSERT INTO chain_head VALUES (true, 0, '{GENESIS}', 0);
CREATE TABLE inputs (ref text PRIMARY KEY, document bytea NOT NULL);
CREATE TABLE nonces (nonce bytea PRIMARY KEY, expires_at bigint NOT NULL);
CREATE INDEX nonces_expiry ON nonces (expires_at);
CREATE TABLE checkpoints (
    seq bigint PRIMARY KEY, count bigint NOT NULL, head_hash text NOT NULL, created_at text NOT NULL,
    key_id text, signature text
);
CREATE TABLE policies (digest text PRIMARY KEY, document bytea NOT NULL);
CREATE TABLE activations (
    seq bigint PRIMARY KEY, digest text NOT NULL, version text NOT NULL, activated_by text NOT NULL,
    activated_at text COLLATE "C" NOT NULL, prev_hash text, hash text, key_id text, mac text
);
"""
# Version 2: replicas in step (postgres_events). ``replicas``: one heartbeat row per bridge
# process, stamped with the database's clock (hosts' clocks may differ), live while younger than
# three of its own watch intervals. ``reload_requests``: who asked every replica to reload, when
# (the newest rows only: the audit of what was loaded is in each decision record).
_V2 = """
CREATE TABLE replicas (
    replica text NOT NULL, host text NOT NULL, pid integer NOT NULL,
    policy_digest text, entitlements_digest text, entitlements_snapshot_id text, feeds text NOT NULL,
    interval_seconds double precision NOT NULL, updated_at timestamptz NOT NULL,
    PRIMARY KEY (replica, host, pid)
);
CREATE TABLE reload_requests (seq bigserial PRIMARY KEY, requested_by text NOT NULL, requested_at text NOT NULL);
"""
# (version, SQL), oldest first; a database at version n has had every migration up to n applied.
MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _V1), (2, _V2))
SCHEMA_VERSION = MIGRATIONS[-1][0]


def describe(url: str) -> str:
    """``url`` for messages: host, port and database, never a password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql (an unparsable URL)"
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"postgresql://{host}:{port}/{params.get('dbname') or ''}"


def reason(exc: BaseException) -> str:
    """An exception's first line (PostgreSQL's messages name no row values on the paths used here)."""
    return str(exc).strip().split("\n")[0] or type(exc).__name__


# libpq options of every connection the bridge keeps open: a database host that dies or a network
# path that goes silent is noticed by TCP (keepalives on an idle connection, tcp_user_timeout when
# sent data stays unacknowledged for 10 s) instead of hanging a worker's thread until the kernel's
# default of many minutes. A frozen server on a live host is bounded by statement_timeout only.
CONNECTION_OPTIONS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def open_pool(url: str, min_size: int, max_size: int, timeout: float, name: str) -> ConnectionPool[psycopg.Connection[Any]]:
    """A pool of autocommit connections (transactions are explicit), opened without waiting: a
    connection is made when first needed, and ``timeout`` bounds how long a caller waits for one."""
    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={
            "autocommit": True,
            "connect_timeout": max(1, int(timeout)),
            "application_name": "keycloak-policy-bridge",
            **CONNECTION_OPTIONS,
        },
        timeout=timeout,
        check=_check,
        name=name,
        open=False,
        # A lost connection is retried with a backoff (1, 2, 4 s...) for this long, then given up
        # and made again on demand: after an outage, a caller waits seconds at most, not minutes.
        reconnect_timeout=5.0,
    )
    pool.open(wait=False)
    return pool


def _check(conn: psycopg.Connection[Any]) -> None:
    """The pool's check before handing a connection out (a round trip): a connection lost in an
    outage is replaced rather than failed on. Closed here, because the pool drops a broken
    connection without closing it."""
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        conn.close()
        raise


@contextmanager
def pooled(pool: ConnectionPool[psycopg.Connection[Any]]) -> Iterator[psycopg.Connection[Any]]:
    """A connection of ``pool``; one that breaks while in use is closed before it goes back
    (the pool would drop it unclosed)."""
    with pool.connection() as conn:
        try:
            yield conn
        except psycopg.Error:
            if conn.broken:
                conn.close()
            raise


def ensure_schema(pool: ConnectionPool[psycopg.Connection[Any]], url: str) -> None:
    """Create or migrate the schema to ``SCHEMA_VERSION`` (module docstring).

    Raises:
        DecisionLogError: the database cannot be reached or migrated, or it is at a newer
            version than this code (both named).
    """
    where = describe(url)
    try:
        with pooled(pool) as conn:
            found = _version(conn)
            _refuse_newer(found, where)
            if found == SCHEMA_VERSION:
                return  # the usual case: nothing to lock
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS kpb_schema (id boolean PRIMARY KEY DEFAULT true CHECK (id), version integer NOT NULL)"
                )
                current = _version(conn)
                _refuse_newer(current, where)
                for version, sql in MIGRATIONS:
                    if version > current:
                        conn.execute(sql.encode())
                if current == 0:
                    log_id = digest([where, os.urandom(16).hex()])[7:39]
                    conn.execute("INSERT INTO meta VALUES ('log_id', %s)", (log_id,))
                conn.execute(
                    "INSERT INTO kpb_schema (id, version) VALUES (true, %s) ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
                    (SCHEMA_VERSION,),
                )
    except psycopg.Error as exc:
        raise DecisionLogError(f"{where}: cannot open the decision log ({reason(exc)})") from None


def _version(conn: psycopg.Connection[Any]) -> int:
    """The schema version of the database (0: none yet)."""
    if conn.execute("SELECT to_regclass('kpb_schema')").fetchone() == (None,):
        return 0
    row = conn.execute("SELECT version FROM kpb_schema").fetchone()
    return int(row[0]) if row else 0


def _refuse_newer(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise DecisionLogError(
            f"{where}: the database's decision log schema is version {version}, newer than this bridge's version "
            f"{SCHEMA_VERSION}: upgrade the bridge (an older bridge must not write into it)"
        )


def log_id(conn: psycopg.Connection[Any]) -> str:
    """The log's id (``meta``), which checkpoints and activation MACs are bound to."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
    return str(row[0]) if row else ""
