"""The bridge: one decision per claims request, evaluated, recorded, then answered.

``Bridge`` ties the core together for the service (and any other adapter): the active policy
(swapped atomically), the entitlement snapshot and context feeds (``SnapshotStore``), and the
decision log. ``decide`` is the whole contract-v1 call:

1. validate the request (``RequestError`` -> 400);
2. take the active policy, snapshot and feeds once, so that a reload in the middle of a request
   cannot mix two of them;
3. evaluate at the given ``now`` (the adapter owns the clock);
4. append the decision record durably; if that fails, raise ``DecisionLogError`` (-> 503): a
   decision that was not recorded is never returned, permit or deny;
5. return the response document.

No policy or no snapshot loaded raises ``NotReadyError`` (-> 503).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from keycloak_policy_bridge.decision_log import SQLiteDecisionLog
from keycloak_policy_bridge.decision_record import Masker, build_record
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.errors import BridgeError, PolicyError
from keycloak_policy_bridge.policy import Policy, compile_policy
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_store import DirectoryWatcher, SnapshotStore
from keycloak_policy_bridge.timeutil import parse_rfc3339
from keycloak_policy_bridge.ulid import make_ulid

LOG = logging.getLogger("kpb.bridge")


class NotReadyError(BridgeError):
    """Raised when the bridge cannot decide: no valid policy or snapshot is loaded."""

    code = "not_ready"
    http_status = 503


@dataclass(frozen=True)
class PolicyActivation:
    """Who activated which policy, when: kept for the audit trail of policy changes."""

    digest: str
    version: str
    activated_by: str
    activated_at: datetime


class Bridge:
    """Decides claims requests. Thread-safe; one per process.

    Args:
        store: the entitlement snapshot and feeds.
        log: the decision log every decision is recorded in before it is returned.
        entropy: bytes for decision ids (``os.urandom`` in production).
        masker: request paths to store as keyed hashes, if any.
        token_ttl_seconds: the realm's access token lifetime, recorded for drift.
    """

    def __init__(
        self,
        store: SnapshotStore,
        log: SQLiteDecisionLog,
        *,
        entropy: Callable[[int], bytes],
        masker: Masker | None = None,
        token_ttl_seconds: int | None = None,
    ) -> None:
        self.store = store
        self.log = log
        self._entropy = entropy
        self._masker = masker
        self._token_ttl = token_ttl_seconds
        self._policy: Policy | None = None
        self._lock = threading.Lock()
        self.activations: list[PolicyActivation] = []

    @property
    def policy(self) -> Policy | None:
        return self._policy

    def activate(self, document: Mapping[str, Any] | Policy, *, by: str, at: datetime) -> Policy:
        """Make ``document`` (a policy document, or one already compiled) the active policy;
        the old one stays on any error.

        Raises:
            PolicyError: with every problem; nothing changes.
        """
        compiled = document if isinstance(document, Policy) else compile_policy(document)  # raises before any swap
        self.log.store_policy(compiled.document)  # replay must find every policy ever active
        self.log.record_activation(compiled.digest, compiled.version, by, at)
        self._install(compiled, by, at)
        return compiled

    def _install(self, compiled: Policy, by: str, at: datetime) -> None:
        with self._lock:
            self._policy = compiled
            self.activations.append(PolicyActivation(compiled.digest, compiled.version, by, at))

    def sync_policy(self, at: datetime) -> bool:
        """Follow the latest activation recorded in the shared log (another worker's PUT).

        Returns True when the active policy changed. A stored document that no longer compiles
        (a newer engine refusing an old policy) keeps the current one and is logged.
        """
        latest = self.log.activations(limit=1)
        if not latest or (self._policy is not None and latest[0]["digest"] == self._policy.digest):
            return False
        try:
            compiled = compile_policy(self.log.policy(latest[0]["digest"]))
        except BridgeError as exc:
            LOG.error("activated policy %s cannot be installed (%s); keeping the current one", latest[0]["digest"][:19], exc.message)
            return False
        self._install(compiled, latest[0]["activated_by"], at)
        LOG.info("policy %s %s activated by %s (from the shared log)", compiled.policy_id, compiled.version, latest[0]["activated_by"])
        return True

    def ready(self) -> tuple[bool, list[str]]:
        """(ready, problems): a policy and a snapshot are loaded."""
        problems = []
        if self._policy is None:
            problems.append("no valid policy is loaded")
        if self.store.snapshot is None:
            problems.append("no valid entitlement snapshot is loaded")
        if not os.access(self.log.path.parent, os.W_OK) or (self.log.path.exists() and not os.access(self.log.path, os.W_OK)):
            problems.append("the decision log is not writable")
        return not problems, problems

    def decide(self, document: Any, now: datetime) -> dict[str, Any]:
        """Evaluate, record and answer one claims request (contract v1, section 1).

        Raises:
            RequestError: the request is invalid (nothing is recorded).
            NotReadyError: no policy or snapshot.
            DecisionLogError: the decision could not be recorded; it must not be used.
        """
        request = parse_request(document)
        policy, snapshot = self._policy, self.store.snapshot
        if policy is None or snapshot is None:
            raise NotReadyError("the bridge cannot decide: " + "; ".join(self.ready()[1]))
        feeds = self.store.feeds()
        decision = evaluate(policy, snapshot, request, now, feeds)
        decision_id = make_ulid(now, self._entropy(10))
        record = build_record(decision_id, decision, request, snapshot, feeds, masker=self._masker, token_ttl_seconds=self._token_ttl)
        self.log.append(record)
        response: dict[str, Any] = record["result"]  # the response document, built once for the record and the caller
        return response


def load_policy_document(text: str, location: str) -> dict[str, Any]:
    """Parse a policy file's text for ``Bridge.activate``.

    Raises:
        PolicyError: not JSON or not an object.
    """
    from keycloak_policy_bridge.policy import parse_policy_text

    document = parse_policy_text(text, location)
    if not isinstance(document, dict):
        raise PolicyError(f"{location}: a policy is a JSON object")
    return document


def bridge_from_settings(settings: Any, clock: Callable[[], datetime]) -> Bridge:
    """Build a bridge from ``config.Settings``: open the log, load snapshot, feeds and policy.

    A snapshot or policy that fails to load leaves the bridge not ready (``/readyz`` says why)
    rather than refusing to start, so that a fixed file is picked up by the next reload.

    Raises:
        DecisionLogError: the decision log cannot be opened (nothing could be recorded).
    """
    store = SnapshotStore(settings.entitlements, feeds={n: p for n, p in settings.feeds}, clock=clock)
    store.reload_all()
    log = SQLiteDecisionLog(settings.decision_log, default_token_ttl=timedelta(seconds=settings.token_ttl_seconds or 3600),
                            synchronous=settings.decision_log_sync)
    masker = Masker(settings.mask_paths, settings.mask_key) if settings.mask_paths else None
    bridge = Bridge(store, log, entropy=os.urandom, masker=masker, token_ttl_seconds=settings.token_ttl_seconds)
    # The newer wins: the policy file when it changed after the last activation recorded in the
    # shared log (an operator edited it and restarted), else that activation (an admin's PUT,
    # which a restarting worker must not revert).
    latest = log.activations(limit=1)
    try:
        file_time = datetime.fromtimestamp(settings.policy.stat().st_mtime, timezone.utc)
    except OSError:
        file_time = None
    if latest and (file_time is None or parse_rfc3339(latest[0]["activated_at"]) >= file_time):
        bridge.sync_policy(clock())
        if bridge.policy is not None:
            return bridge
    try:
        text = settings.policy.read_text(encoding="utf-8-sig")
        document = load_policy_document(text, str(settings.policy))
        if latest and compile_policy(document).digest == latest[0]["digest"]:
            bridge.sync_policy(clock())  # same policy: no new activation record per worker start
        else:
            bridge.activate(document, by=f"file:{settings.policy}", at=clock())
    except OSError as exc:
        LOG.error("policy %s cannot be read (%s); the bridge is not ready", settings.policy, exc.strerror)
    except PolicyError as exc:
        LOG.error("policy %s rejected; the bridge is not ready: %s", settings.policy, "; ".join(str(i) for i in exc.issues[:20]))
    return bridge


class BridgeWatcher(DirectoryWatcher):
    """Keeps one process current, off the request path: reloads changed snapshots and feeds
    (``SnapshotStore.reload_changed``) and follows policy activations made by other workers
    (``Bridge.sync_policy``). A daemon thread; ``stop`` ends it."""

    thread_name = "kpb-bridge-watcher"

    def __init__(self, bridge: Bridge, interval: float, clock: Callable[[], datetime]) -> None:
        super().__init__(bridge.store, interval)
        self.bridge = bridge
        self.clock = clock

    def tick(self) -> None:
        super().tick()
        self.bridge.sync_policy(self.clock())
