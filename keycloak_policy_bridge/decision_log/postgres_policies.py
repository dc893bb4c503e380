"""The PostgreSQL policy store: stored policies and sealed activations, in the decision log's database.

``PostgresPolicyStore`` implements ``PolicyStore`` with the SQLite store's tables and rules
(``policies``): policies content-addressed (``digest`` -> canonical JSON), activations chained
and sealed by ``activations`` (the same hash, the same MAC bound to the log's id). Replicas
record activations in turn: ``record_activation``'s transaction takes
``pg_advisory_xact_lock(ACTIVATION_LOCK)`` before reading the chain's head, so two activations
never link to the same predecessor. The same transaction sends ``NOTIFY kpb_activation`` (the
new seq), for replicas that listen for activations rather than poll.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import psycopg

from keycloak_policy_bridge.canonical import canonical_json, digest
from keycloak_policy_bridge.decision_log.activations import Activation, ActivationKeys, activation_hash, activation_problem
from keycloak_policy_bridge.decision_log.chain import GENESIS, sortable
from keycloak_policy_bridge.decision_log.postgres_schema import (
    ACTIVATION_CHANNEL,
    ACTIVATION_LOCK,
    describe,
    ensure_schema,
    log_id,
    open_pool,
    pooled,
    reason,
)
from keycloak_policy_bridge.errors import DecisionLogError, DecisionNotFoundError

_ACTIVATION = "SELECT seq, digest, version, activated_by, activated_at, prev_hash, hash, key_id, mac FROM activations"


class PostgresPolicyStore:
    """The policy store of a PostgreSQL decision log. Thread-safe (a pooled connection per call).

    Args:
        url: the decision log's database (the schema is created or migrated, ``postgres_schema``).
        activation_keys: the keys that seal and check activations; ``record_activation`` and
            ``activation_problem`` need them.
        timeout: seconds to wait for a connection before an operation fails.

    Raises:
        DecisionLogError: the database cannot be reached, migrated, or is newer than this code.
    """

    def __init__(self, url: str, activation_keys: ActivationKeys | None = None, *, timeout: float = 5.0) -> None:
        self.where = describe(url)
        self.activation_keys = activation_keys
        self._pool = open_pool(url, 1, 2, timeout, "kpb-policy-store")
        self._log_id: str | None = None  # fixed when the database was created: read once
        try:
            ensure_schema(self._pool, url)
        except BaseException:
            self._pool.close()
            raise

    def close(self) -> None:
        self._pool.close()

    def _failed(self, what: str, exc: psycopg.Error) -> DecisionLogError:
        return DecisionLogError(f"{self.where}: cannot {what} ({reason(exc)})")

    # -- policies ----------------------------------------------------------------------------

    def store_policy(self, document: Mapping[str, Any]) -> str:
        """Store a policy document once, content-addressed; return its digest."""
        policy_digest = digest(document)
        try:
            with pooled(self._pool) as conn:
                conn.execute("INSERT INTO policies VALUES (%s, %s) ON CONFLICT DO NOTHING", (policy_digest, canonical_json(document)))
        except psycopg.Error as exc:
            raise self._failed("store the policy", exc) from None
        return policy_digest

    def policy(self, policy_digest: str) -> dict[str, Any]:
        """A stored policy document.

        Raises:
            DecisionNotFoundError: the digest is unknown.
            DecisionLogError: the database failed.
        """
        try:
            with pooled(self._pool) as conn:
                row = conn.execute("SELECT document FROM policies WHERE digest = %s", (policy_digest,)).fetchone()
        except psycopg.Error as exc:
            raise self._failed("read the policy", exc) from None
        if row is None:
            raise DecisionNotFoundError(f"policy {policy_digest[:19]} is not stored in {self.where}")
        document: dict[str, Any] = json.loads(bytes(row[0]))
        return document

    def policy_digests(self) -> list[str]:
        """The digest of every stored policy, sorted."""
        try:
            with pooled(self._pool) as conn:
                return [str(row[0]) for row in conn.execute("SELECT digest FROM policies ORDER BY digest")]
        except psycopg.Error as exc:
            raise self._failed("read the policies", exc) from None

    # -- activations -------------------------------------------------------------------------

    def record_activation(self, policy_digest: str, version: str, by: str, at: datetime) -> Activation:
        """Record that ``policy_digest`` became the active policy (who, when), sealed with the
        activation key, and return the row (``SQLitePolicyStore.record_activation``).

        Raises:
            DecisionLogError: no activation key, or the row could not be written.
        """
        if self.activation_keys is None:
            raise DecisionLogError(f"{self.where}: cannot record a policy activation without an activation key")
        try:
            with pooled(self._pool) as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (ACTIVATION_LOCK,))
                last = conn.execute("SELECT coalesce(max(seq), 0) FROM activations").fetchone()
                # Link to the newest sealed row: an unsealed row after it is a forgery verify reports.
                head = conn.execute("SELECT hash FROM activations WHERE hash IS NOT NULL ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev, at_text = int(last[0] if last else 0) + 1, str(head[0]) if head else GENESIS, sortable(at)
                h = activation_hash(prev, seq, policy_digest, version, by, at_text)
                key_id, mac = self.activation_keys.seal(self._the_log_id(conn), h)
                conn.execute(
                    "INSERT INTO activations (seq, digest, version, activated_by, activated_at, prev_hash, hash, key_id, mac) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (seq, policy_digest, version, by, at_text, prev, h, key_id, mac),
                )
                conn.execute("SELECT pg_notify(%s, %s)", (ACTIVATION_CHANNEL, str(seq)))
        except psycopg.Error as exc:
            raise self._failed("record the policy activation", exc) from None
        return Activation(seq, policy_digest, version, by, at_text, prev, h, key_id, mac)

    def activations(self, limit: int = 20) -> list[Activation]:
        """The latest policy activations, newest first, as recorded (verified or not)."""
        return self._activations(f"{_ACTIVATION} ORDER BY seq DESC LIMIT %s", (limit,))

    def activation_history(self) -> list[Activation]:
        """Every activation, oldest first, as recorded (verified or not)."""
        return self._activations(f"{_ACTIVATION} ORDER BY seq", ())

    def _activations(self, sql: str, args: tuple[Any, ...]) -> list[Activation]:
        try:
            with pooled(self._pool) as conn:
                return [Activation(*row) for row in conn.execute(sql, args)]
        except psycopg.Error as exc:
            raise self._failed("read the policy activations", exc) from None

    def latest_activation(self) -> Activation | None:
        """The newest activation row, unverified (``activation_problem`` checks it)."""
        rows = self.activations(limit=1)
        return rows[0] if rows else None

    def activation_problem(self, activation: Activation) -> str | None:
        """None when ``activation`` is sealed, unchanged and its MAC verifies with this store's
        activation keys; otherwise what is wrong."""
        if self._log_id is None:
            try:
                with pooled(self._pool) as conn:
                    self._the_log_id(conn)
            except psycopg.Error as exc:
                raise self._failed("read the log id", exc) from None
        return activation_problem(activation, self.activation_keys, self._log_id or "")

    def _the_log_id(self, conn: psycopg.Connection[Any]) -> str:
        if self._log_id is None:
            self._log_id = log_id(conn)
        return self._log_id
