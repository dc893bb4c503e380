"""What the storage offers, independent of the backend: the reader, writer and policy-store
interfaces, and the values that cross them.

``Bridge``, replay, drift, explain and the admin API depend on these Protocols, never on a
backend class. ``sqlite`` implements them on one SQLite file (the embedded default); ``memory``
implements them in process, for unit tests. A shared backend (PostgreSQL) implements the same
contracts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.decision_log.activations import Activation
from keycloak_policy_bridge.decision_log.replicas import ChannelEvent, ReloadRequest, ReplicaState, ServedDigests
from keycloak_policy_bridge.record import DecisionRecord


@dataclass(frozen=True)
class Query:
    """Filters of ``DecisionLogReader.query``/``iterate``/``documents``; every given field must match."""

    subject: str | None = None  # IGA subject_id or Keycloak user id
    client: str | None = None
    effect: str | None = None
    rule: str | None = None  # exact rule name, one of ``DecisionRecord.rules``
    since: datetime | None = None  # evaluated at or after
    until: datetime | None = None  # evaluated before
    limit: int | None = 100  # ``query`` only


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
class UnreadableRecord:
    """A stored decision whose body cannot be read back as a record (damaged, an unknown format,
    a recorded input missing). What the row's own columns say, and why; never the body's text.

    ``iterate`` and ``live`` yield it in the record's place: replay and drift report it as an
    error and go on. ``verify`` says whether the row was tampered with.
    """

    decision_id: str
    evaluated_at: str | None  # RFC 3339, from the row's column
    subject_id: str | None
    client_id: str | None
    reason: str

    def describe(self) -> str:
        return f"decision {self.decision_id} cannot be read ({self.reason})"


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
        out = {
            "log_id": self.log_id,
            "seq": self.seq,
            "count": self.count,
            "head_hash": self.head_hash,
            "created_at": self.created_at,
            "key_id": self.key_id,
            "signature": self.signature,
        }
        if self.activation_seq is not None:
            out.update(activation_seq=self.activation_seq, activation_hash=self.activation_hash)
        if self.kind is not None:
            out["kind"] = self.kind
        return out


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
    inputs: int = 0  # stored input documents, each still hashing to its reference


class DecisionLogWriter(Protocol):
    """Where the bridge records every decision before answering it."""

    def append(self, record: DecisionRecord, nonce: Nonce | None = None) -> str:
        """Record ``record`` durably (with ``nonce`` in the same transaction); return its chain hash.

        Raises:
            DecisionLogError: the record was not committed; the decision must not be used.
            AuthenticationError: (``replayed_signature``) ``nonce`` was recorded before: a replay.
        """
        ...

    def writable(self) -> bool:
        """False when an append is bound to fail for lack of write access (for readiness)."""
        ...

    def unavailable_reason(self) -> str | None:
        """None when ``writable``; else why appends are bound to fail, in words for an operator
        reading the unauthenticated ``/readyz`` (a fixed phrase: never a path, URL, user or password)."""
        ...

    def close(self) -> None:
        """Release the writer's resources; later appends fail with ``DecisionLogError``."""
        ...


class DecisionLogReader(Protocol):
    """Reading recorded decisions, of either record version, as ``DecisionRecord``."""

    default_token_ttl: timedelta  # the lifetime assumed for a token whose record has none (``live``)

    def get(self, decision_id: str) -> DecisionRecord:
        """The record of ``decision_id``.

        Raises:
            DecisionNotFoundError: no such decision.
            DecisionLogError: the stored record cannot be read (the message names the decision).
        """
        ...

    def document(self, decision_id: str) -> dict[str, Any]:
        """The stored JSON document of ``decision_id``: a ``/1`` record as stored; a ``/2`` record's
        document with ``"inputs": {ref: input document}`` added (``kpb decisions show``, the admin API).

        Raises:
            DecisionNotFoundError, DecisionLogError: as ``get``.
        """
        ...

    def query(self, query: Query) -> list[DecisionRecord]:
        """Records matching ``query``, newest first, at most ``query.limit``.

        Raises:
            DecisionLogError: a matching record cannot be read (named).
        """
        ...

    def iterate(self, query: Query) -> Iterator[DecisionRecord | UnreadableRecord]:
        """Records matching ``query`` (limit ignored), oldest first, streamed; a record that cannot
        be read comes as ``UnreadableRecord``."""
        ...

    def documents(self, query: Query) -> Iterator[dict[str, Any]]:
        """The stored documents (as ``document``) matching ``query`` (limit ignored), oldest first.

        Raises:
            DecisionLogError: a stored record cannot be read (named).
        """
        ...

    def live(self, now: datetime) -> Iterator[DecisionRecord | UnreadableRecord]:
        """Permits made at or before ``now`` whose token can still be live at ``now``
        (``DecisionRecord.token_expires_at``), oldest first."""
        ...

    def count(self) -> int: ...


class DecisionLog(DecisionLogWriter, DecisionLogReader, Protocol):
    """A log a service both records in and reads from (``Bridge.log``, read by the admin API)."""


class PolicyStore(Protocol):
    """Stored policy documents (content-addressed, for replay) and the sealed activation history
    every bridge process follows (``Bridge.sync_policy``)."""

    def store_policy(self, document: Mapping[str, Any]) -> str:
        """Store a policy document once; return its digest."""
        ...

    def policy(self, policy_digest: str) -> dict[str, Any]:
        """A stored policy document.

        Raises:
            DecisionNotFoundError: the digest is unknown.
        """
        ...

    def record_activation(self, policy_digest: str, version: str, by: str, at: datetime) -> Activation:
        """Record, sealed, that ``policy_digest`` became the active policy.

        Raises:
            DecisionLogError: no activation key, or the row could not be written.
        """
        ...

    def activations(self, limit: int = 20) -> list[Activation]:
        """The latest activations, newest first, as stored (verified or not)."""
        ...

    def latest_activation(self) -> Activation | None:
        """The newest activation, unverified (``activation_problem`` checks it)."""
        ...

    def activation_problem(self, activation: Activation) -> str | None:
        """None when ``activation`` is sealed, unmodified and its MAC verifies; else what is wrong."""
        ...


class ReplicaChannel(Protocol):
    """How the processes of every replica keep in step (``replicas``): events that wake the
    watcher, reload requests, and heartbeats saying which digests each process serves.
    ``replicas.LocalReplicaChannel`` (one host, nothing shared) and
    ``postgres_events.PostgresReplicaChannel`` (the shared database) implement it."""

    scope: str  # ReplicaSummary.scope: "database" or "process"

    def listen(self, wake: Callable[[ChannelEvent], None]) -> None:
        """Call ``wake`` from a daemon thread at each event until ``close``; never raises
        (a lost connection is retried, and ``wake`` gets a ``CONNECTED`` event once it is back)."""
        ...

    def request_reload(self, by: str, at: datetime) -> ReloadRequest:
        """Ask every process of every replica to reload its entitlement snapshot and feeds;
        record who and when.

        Raises:
            DecisionLogError: the request could not be recorded (no process was asked).
        """
        ...

    def heartbeat(self, served: ServedDigests, at: datetime) -> None:
        """Record that this process serves ``served`` (``at``: the app clock's now; a shared
        channel uses its database's clock for liveness).

        Raises:
            DecisionLogError: it could not be recorded.
        """
        ...

    def replicas(self) -> list[ReplicaState]:
        """The live processes' latest heartbeats, by replica name, host and pid.

        Raises:
            DecisionLogError: they could not be read.
        """
        ...

    def close(self) -> None:
        """Stop listening and release the channel's connections (a shared channel also removes
        this process's heartbeat: it is gone at once, not three intervals later)."""
        ...
