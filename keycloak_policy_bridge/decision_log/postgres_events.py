"""The replica channel on the shared PostgreSQL database: LISTEN/NOTIFY and a heartbeat table.

``PostgresReplicaChannel`` implements ``interfaces.ReplicaChannel`` (``replicas`` explains the
concept) for replicas on several hosts:

- ``listen``: a daemon thread holds its own autocommit connection, ``LISTEN``s on
  ``kpb_activation`` (sent by ``PostgresPolicyStore.record_activation`` in the activating
  transaction) and ``kpb_reload`` (``request_reload``), and calls ``wake`` at each notification:
  the watcher acts within milliseconds of the commit instead of at its next poll. When the
  database goes away the thread logs once, retries with a capped backoff (``BACKOFF``), logs
  again once it is back, and then wakes the watcher with ``CONNECTED``: notifications sent while
  it was away are lost, so the watcher follows the latest activation, and a reload requested
  meanwhile (a newer ``reload_requests`` row) is delivered as a ``RELOAD`` event. It never
  raises into the worker. TCP keepalives notice a connection that died silently.
- ``request_reload``: one row in ``reload_requests`` (who, when) and ``NOTIFY kpb_reload`` in
  the same transaction; the requesting process marks the request as its own before the commit,
  so its own notification comes back ``local`` (it has reloaded already).
- ``heartbeat`` and ``replicas``: one row per process in ``replicas`` (upserted; liveness judged
  by the database's clock against each row's own interval, rows past three intervals deleted
  on the way); ``close`` deletes this process's row.

Reads and writes other than the listener's go through a small pool whose wait is short
(``timeout``, one second by default): ``/readyz`` and ``/metrics`` read ``replicas`` at request
time and must answer promptly while the database is away.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from keycloak_policy_bridge.decision_log.postgres_schema import (
    ACTIVATION_CHANNEL,
    CONNECTION_OPTIONS,
    RELOAD_CHANNEL,
    describe,
    ensure_schema,
    open_pool,
    pooled,
    reason,
)
from keycloak_policy_bridge.decision_log.replicas import (
    ACTIVATION,
    CONNECTED,
    RELOAD,
    ChannelEvent,
    ReloadRequest,
    ReplicaIdentity,
    ReplicaState,
    ServedDigests,
)
from keycloak_policy_bridge.errors import DecisionLogError
from keycloak_policy_bridge.timeutil import format_rfc3339

LOG = logging.getLogger("kpb.replicas")
BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0)  # seconds between reconnection attempts; the last repeats
LISTENER_NAME = "keycloak-policy-bridge/listener"  # application_name of the listener's connection
LIVE_INTERVALS = 3  # a heartbeat older than this many of its process's intervals is gone
RELOADS_KEPT = 1000  # reload_requests rows kept (the newest)
POLL_SECONDS = 1.0  # the listener's wait for a notification before checking whether to stop
# TCP keepalives (libpq parameters): a connection that died silently is noticed in about 25 s.
_LIVE = f"updated_at >= clock_timestamp() - make_interval(secs => {LIVE_INTERVALS} * interval_seconds)"
_COLUMNS = "replica, host, pid, policy_digest, entitlements_digest, entitlements_snapshot_id, feeds, updated_at"


class PostgresReplicaChannel:
    """The replica channel of replicas sharing the PostgreSQL database at ``url`` (module
    docstring). Thread-safe.

    Args:
        url: the decision log's database (the schema is created or migrated, ``postgres_schema``).
        identity: this process's replica name, host and pid, for its heartbeat.
        interval: this process's watch interval in seconds (it heartbeats at least this often).
        timeout: seconds to wait for a connection before a read or write fails.

    Raises:
        DecisionLogError: the database cannot be reached, migrated, or is newer than this code.
    """

    scope = "database"

    def __init__(self, url: str, identity: ReplicaIdentity, interval: float, *, timeout: float = 1.0) -> None:
        self.where = describe(url)
        self.identity = identity
        self.interval = interval
        self._url = url
        self._timeout = timeout
        self._pool = open_pool(url, 1, 2, timeout, "kpb-replica-channel")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._own: set[int] = set()  # reload requests made by this process
        self.connected = False  # the listener holds a connection that LISTENs
        self.outages = 0  # connections lost (or never made) by the listener, for tests and logs
        try:
            ensure_schema(self._pool, url)
            with pooled(self._pool) as conn:
                self._reload_seen = _newest_reload(conn)
        except psycopg.Error as exc:
            self._pool.close()
            raise DecisionLogError(f"{self.where}: cannot open the replica channel ({reason(exc)})") from None
        except BaseException:
            self._pool.close()
            raise

    # -- listening ---------------------------------------------------------------------------

    def listen(self, wake: Callable[[ChannelEvent], None]) -> None:
        """Start the listener thread (module docstring); a second call does nothing."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._listen, args=(wake,), name="kpb-replica-listener", daemon=True)
        self._thread.start()

    def _listen(self, wake: Callable[[ChannelEvent], None]) -> None:
        attempt, lost_at = 0, None
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {ACTIVATION_CHANNEL}")
                    conn.execute(f"LISTEN {RELOAD_CHANNEL}")
                    missed = self._missed_reload(conn)
                    self.connected, attempt = True, 0
                    if lost_at is not None:
                        LOG.warning("replica channel to %s is back; following what changed meanwhile", self.where)
                        lost_at = None
                    wake(ChannelEvent(CONNECTED))
                    if missed is not None:
                        wake(ChannelEvent(RELOAD, missed))
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=POLL_SECONDS):
                            event = self._event(notify.channel, notify.payload)
                            if event is not None:
                                wake(event)
            except psycopg.Error as exc:
                self.connected = False
                if self._stop.is_set():
                    break
                if lost_at is None:
                    self.outages += 1
                    lost_at = exc
                    LOG.warning("replica channel to %s lost (%s); reconnecting (the watcher polls meanwhile)", self.where, reason(exc))
                self._stop.wait(BACKOFF[min(attempt, len(BACKOFF) - 1)])
                attempt += 1
            except Exception:  # a listener that dies silently would leave every event to the poll
                self.connected = False
                LOG.exception("replica channel: unexpected error; reconnecting")
                self._stop.wait(BACKOFF[-1])
        self.connected = False

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            make_conninfo(self._url, connect_timeout=max(1, int(self._timeout)), application_name=LISTENER_NAME, **CONNECTION_OPTIONS),
            autocommit=True,
        )

    def _missed_reload(self, conn: psycopg.Connection[Any]) -> int | None:
        """The newest reload request when it is newer than any this process saw, else None."""
        newest = _newest_reload(conn)
        with self._lock:
            seen, self._reload_seen = self._reload_seen, max(self._reload_seen, newest)
            own = newest in self._own
        return newest if newest > seen and not own else None

    def _event(self, channel: str, payload: str) -> ChannelEvent | None:
        try:
            seq = int(payload)
        except ValueError:
            seq = None
        if channel == ACTIVATION_CHANNEL:
            return ChannelEvent(ACTIVATION, seq)
        if channel == RELOAD_CHANNEL:
            with self._lock:
                local = seq in self._own
                if seq is not None:
                    self._reload_seen = max(self._reload_seen, seq)
            return ChannelEvent(RELOAD, seq, local)
        return None

    # -- requests and heartbeats -------------------------------------------------------------

    def request_reload(self, by: str, at: datetime) -> ReloadRequest:
        """Record the request (who, when) and notify every process, in one transaction."""
        try:
            with pooled(self._pool) as conn, conn.transaction():
                row = conn.execute(
                    "INSERT INTO reload_requests (requested_by, requested_at) VALUES (%s, %s) RETURNING seq", (by, format_rfc3339(at))
                ).fetchone()
                seq = int(row[0]) if row else 0
                with self._lock:
                    self._own.add(seq)  # before the commit: our own notification must come back local
                conn.execute("DELETE FROM reload_requests WHERE seq <= %s", (seq - RELOADS_KEPT,))
                conn.execute("SELECT pg_notify(%s, %s)", (RELOAD_CHANNEL, str(seq)))
        except psycopg.Error as exc:
            raise DecisionLogError(f"{self.where}: cannot request the reload of every replica ({reason(exc)})") from None
        return ReloadRequest(seq, by, at)

    def heartbeat(self, served: ServedDigests, at: datetime) -> None:
        """Upsert this process's row (stamped with the database's clock; ``at`` is not used) and
        delete the rows of processes gone for three of their intervals."""
        me = self.identity
        values = (
            me.name,
            me.host,
            me.pid,
            served.policy,
            served.entitlements,
            served.entitlements_snapshot_id,
            json.dumps(dict(served.feeds), sort_keys=True),
            self.interval,
        )
        try:
            with pooled(self._pool) as conn, conn.transaction():
                conn.execute(
                    f"INSERT INTO replicas ({_COLUMNS.replace('updated_at', 'interval_seconds')}, updated_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, clock_timestamp()) ON CONFLICT (replica, host, pid) DO UPDATE SET "
                    "policy_digest = EXCLUDED.policy_digest, entitlements_digest = EXCLUDED.entitlements_digest, "
                    "entitlements_snapshot_id = EXCLUDED.entitlements_snapshot_id, feeds = EXCLUDED.feeds, "
                    "interval_seconds = EXCLUDED.interval_seconds, updated_at = EXCLUDED.updated_at",
                    values,
                )
                conn.execute(f"DELETE FROM replicas WHERE NOT ({_LIVE})")
        except psycopg.Error as exc:
            raise DecisionLogError(f"{self.where}: cannot record this replica's heartbeat ({reason(exc)})") from None

    def replicas(self) -> list[ReplicaState]:
        """The live processes' heartbeats, by replica name, host and pid."""
        try:
            with pooled(self._pool) as conn:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM replicas WHERE {_LIVE} ORDER BY replica, host, pid").fetchall()
        except psycopg.Error as exc:
            raise DecisionLogError(f"{self.where}: cannot read the replicas' heartbeats ({reason(exc)})") from None
        return [
            ReplicaState(
                ReplicaIdentity(name, host, pid),
                ServedDigests(policy, entitlements, snapshot_id, tuple(sorted(json.loads(feeds).items()))),
                updated_at,
            )
            for name, host, pid, policy, entitlements, snapshot_id, feeds, updated_at in rows
        ]

    def close(self) -> None:
        """Stop the listener, delete this process's heartbeat (best effort), close the pool."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(POLL_SECONDS + self._timeout + 1)
        me = self.identity
        try:
            with pooled(self._pool) as conn:
                conn.execute("DELETE FROM replicas WHERE replica = %s AND host = %s AND pid = %s", (me.name, me.host, me.pid))
        except psycopg.Error:
            pass  # the row expires after three intervals anyway
        self._pool.close()


def _newest_reload(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(seq), 0) FROM reload_requests").fetchone()
    return int(row[0]) if row else 0
