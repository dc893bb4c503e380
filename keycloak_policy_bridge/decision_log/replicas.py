"""Replicas in step: which process serves which digests, and the events that keep them current.

Every bridge process (each gunicorn worker of each replica) has a replica channel
(``interfaces.ReplicaChannel``). It does three things:

- **wakes the process's watcher** when a policy was activated or an entitlement reload was
  requested anywhere (``listen``): the watcher then follows the activation and reloads at once
  instead of at its next poll, which stays as the fallback;
- **requests a reload of every replica** (``request_reload``: who and when are recorded);
- **records what this process serves** (``heartbeat``: the policy digest, the entitlement
  snapshot's digest and id, each feed's digest) and **reads what every live process serves**
  (``replicas``), so that replicas serving different digests are visible (``/readyz``,
  ``GET /v1/replicas``, the metrics).

Two implementations: ``postgres_events.PostgresReplicaChannel`` (LISTEN/NOTIFY and a heartbeat
table in the shared database: replicas on several hosts) and ``LocalReplicaChannel`` here, for
the embedded SQLite log on one host. The local channel shares nothing: a reload request reaches
the answering worker only (the others reload when their watcher sees the export change, as
before), activations are followed by each worker's poll of the shared file, and ``replicas``
is this process alone (``scope`` ``"process"``).

The values here cross modules (the watcher, the admin API, the metrics): frozen dataclasses.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keycloak_policy_bridge.timeutil import format_rfc3339

ACTIVATION = "activation"  # a policy activation was recorded (follow it: ``Bridge.sync_policy``)
RELOAD = "reload"  # an entitlement reload was requested (``SnapshotStore.reload_all``)
CONNECTED = "connected"  # the channel (re)connected: events sent meanwhile are lost, so catch up


@dataclass(frozen=True)
class ChannelEvent:
    """What woke the watcher. ``seq``: the activation's or the reload request's number, if any;
    ``local``: this process made the request itself (and has acted on it already)."""

    kind: str
    seq: int | None = None
    local: bool = False


@dataclass(frozen=True)
class ReplicaIdentity:
    """Who a heartbeat comes from: the replica's name (``KPB_REPLICA_NAME``, by default the host
    name, with the port under ``kpb serve``), the host, and the worker's pid."""

    name: str
    host: str
    pid: int

    @classmethod
    def of_this_process(cls, name: str | None) -> ReplicaIdentity:
        host = socket.gethostname()
        return cls(name or host, host, os.getpid())


@dataclass(frozen=True)
class ServedDigests:
    """What one process serves: the digests that decide its answers."""

    policy: str | None
    entitlements: str | None
    entitlements_snapshot_id: str | None = None
    feeds: tuple[tuple[str, str | None], ...] = ()  # (feed name, digest), sorted by name

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy_digest": self.policy,
            "entitlements_digest": self.entitlements,
            "entitlements_snapshot_id": self.entitlements_snapshot_id,
            "feeds": dict(self.feeds),
        }


@dataclass(frozen=True)
class ReplicaState:
    """One live process's latest heartbeat."""

    identity: ReplicaIdentity
    served: ServedDigests
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "replica": self.identity.name,
            "host": self.identity.host,
            "pid": self.identity.pid,
            **self.served.to_dict(),
            "updated_at": format_rfc3339(self.updated_at),
        }


@dataclass(frozen=True)
class ReplicaSummary:
    """What the live processes serve, without naming them (``/readyz`` is public).

    ``replicas``: distinct replica names; ``processes``: live processes (workers); the digest
    counts are distinct values among the processes, a process with nothing loaded counting as
    one value. ``scope``: ``"database"`` (every replica sharing the database) or ``"process"``
    (``LocalReplicaChannel``: this process only).
    """

    replicas: int
    processes: int
    policy_digests: int
    entitlements_digests: int
    scope: str

    @property
    def consistent(self) -> bool:
        return self.policy_digests <= 1 and self.entitlements_digests <= 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "live": self.replicas,
            "processes": self.processes,
            "policy_digests": self.policy_digests,
            "entitlements_digests": self.entitlements_digests,
            "consistent": self.consistent,
            "scope": self.scope,
        }


def summarize(states: Iterable[ReplicaState], scope: str) -> ReplicaSummary:
    """The summary of ``states`` (live processes)."""
    states = list(states)
    return ReplicaSummary(
        replicas=len({(s.identity.name, s.identity.host) for s in states}),
        processes=len(states),
        policy_digests=len({s.served.policy for s in states}),
        entitlements_digests=len({s.served.entitlements for s in states}),
        scope=scope,
    )


@dataclass(frozen=True)
class ReloadRequest:
    """A reload requested of every replica: its number (None when nothing is shared), who, when."""

    seq: int | None
    requested_by: str
    requested_at: datetime

    @property
    def shared(self) -> bool:
        return self.seq is not None


class LocalReplicaChannel:
    """The replica channel of a single host's SQLite log: nothing is shared (module docstring).
    Implements ``interfaces.ReplicaChannel``; thread-safe."""

    scope = "process"

    def __init__(self, identity: ReplicaIdentity) -> None:
        self.identity = identity
        self._lock = threading.Lock()
        self._state: ReplicaState | None = None

    def listen(self, wake: Callable[[ChannelEvent], None]) -> None:
        """Nothing to listen to: the watcher polls."""

    def request_reload(self, by: str, at: datetime) -> ReloadRequest:
        return ReloadRequest(None, by, at)

    def heartbeat(self, served: ServedDigests, at: datetime) -> None:
        with self._lock:
            self._state = ReplicaState(self.identity, served, at)

    def replicas(self) -> list[ReplicaState]:
        with self._lock:
            return [self._state] if self._state is not None else []

    def close(self) -> None:
        pass
