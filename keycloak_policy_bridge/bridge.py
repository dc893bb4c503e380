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

Policy activations reach every process through the shared log (``sync_policy``). A process
follows only an activation whose seal verifies with the activation key and that is not older
than the one it follows; any other is refused: the current policy stays, an ERROR is logged
once per refused activation, and ``activation_refusal`` (metrics) says so until a valid
activation is the latest again.

Replicas keep in step through the bridge's replica channel (``decision_log.replicas``), which
``bridge_watcher.BridgeWatcher`` waits on: an activation or a reload requested anywhere is acted
on at once, the watcher's poll staying as the fallback. Each process reports what it serves
(``report``: a heartbeat) at every watcher tick and right after a change.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from keycloak_policy_bridge.decision_log import (
    Activation,
    ActivationKeys,
    DecisionLog,
    Nonce,
    PolicyStore,
    SQLiteDecisionLog,
    SQLitePolicyStore,
    derived_activation_keys,
    insecure_dev_activation_keys,
)
from keycloak_policy_bridge.decision_log.interfaces import ReplicaChannel
from keycloak_policy_bridge.decision_log.replicas import LocalReplicaChannel, ReplicaIdentity, ServedDigests
from keycloak_policy_bridge.engine import JOIN_MISMATCH_RULE, EvaluationBudget, evaluate
from keycloak_policy_bridge.errors import BridgeError, DecisionLogError, NotReadyError, PolicyError
from keycloak_policy_bridge.policy import Policy, compile_policy
from keycloak_policy_bridge.record import DecisionRecord, Masker, build_record
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_store import SnapshotStore
from keycloak_policy_bridge.timeutil import parse_rfc3339
from keycloak_policy_bridge.ulid import make_ulid

LOG = logging.getLogger("kpb.bridge")
# Wall-clock limit of one evaluation (security defect 3; docs/service.md section 6.3). Decisions
# take well under 1 ms; the static cost limit keeps a valid policy's CEL under about a second
# per pass in the worst case, so an overrun means inputs past the estimate's assumptions (or a
# starved machine): the request is denied, `kpb:budget`, rather than answered late.
EVALUATION_BUDGET = EvaluationBudget(seconds=0.5, clock=time.perf_counter)


@dataclass(frozen=True)
class PolicyActivation:
    """Who activated which policy, when: kept for the audit trail of policy changes."""

    digest: str
    version: str
    activated_by: str
    activated_at: datetime


@dataclass(frozen=True)
class ActivationRefusal:
    """The latest activation in the shared log, refused: which one, why, when it was first refused."""

    seq: int
    digest: str
    reason: str
    at: datetime


class Bridge:
    """Decides claims requests. Thread-safe; one per process.

    Args:
        store: the entitlement snapshot and feeds.
        log: the decision log every decision is recorded in before it is returned.
        policies: the policy store: every activated policy and the sealed activation history
            the processes sharing it follow (``sync_policy``).
        entropy: bytes for decision ids (``os.urandom`` in production).
        masker: request paths to store as keyed hashes, if any.
        token_ttl_seconds: the realm's access token lifetime, recorded for drift.
        channel: how this process keeps in step with the others (``decision_log.replicas``);
            None: a ``LocalReplicaChannel`` (nothing shared).
    """

    def __init__(
        self,
        store: SnapshotStore,
        log: DecisionLog,
        policies: PolicyStore,
        *,
        entropy: Callable[[int], bytes],
        masker: Masker | None = None,
        token_ttl_seconds: int | None = None,
        channel: ReplicaChannel | None = None,
    ) -> None:
        self.store = store
        self.channel: ReplicaChannel = channel if channel is not None else LocalReplicaChannel(ReplicaIdentity.of_this_process(None))
        self.log = log
        self.policies = policies
        self._entropy = entropy
        self._masker = masker
        self._token_ttl = token_ttl_seconds
        self._policy: Policy | None = None
        self._lock = threading.Lock()
        self.activations: list[PolicyActivation] = []
        self._followed: Activation | None = None  # the newest verified activation this process installed or recorded
        self.activation_refusal: ActivationRefusal | None = None  # set while the log's latest activation is refused
        self.activation_refusals = 0  # distinct refused activations, for the metric
        self._report_failing = False  # the last heartbeat failed (logged once until one succeeds)

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
        self.policies.store_policy(compiled.document)  # replay must find every policy ever active
        recorded = self.policies.record_activation(compiled.digest, compiled.version, by, at)
        self._install(compiled, by, at)
        self._followed, self.activation_refusal = recorded, None
        self.report(at)
        return compiled

    def _install(self, compiled: Policy, by: str, at: datetime) -> None:
        with self._lock:
            self._policy = compiled
            self.activations.append(PolicyActivation(compiled.digest, compiled.version, by, at))

    def sync_policy(self, at: datetime) -> bool:
        """Follow the latest activation recorded in the shared log (another worker's PUT).

        Returns True when the active policy changed. The activation must verify
        (``PolicyStore.activation_problem``: sealed, unmodified, its MAC made with the
        activation key) and must not be older than the one this process follows (deleting the
        newest activations would otherwise roll every worker back); otherwise it is refused (see
        the module docstring). A stored document that no longer compiles (a newer engine refusing
        an old policy) keeps the current one and is logged.
        """
        latest = self.policies.latest_activation()
        followed = self._followed
        if latest is None:
            if followed is not None:
                self._refuse(followed, "the log holds no activation any more: the activation history was deleted", at)
            return False
        if followed is not None and latest == followed:
            self.activation_refusal = None  # e.g. a deleted newest row was put back
            return False
        problem = self.policies.activation_problem(latest)
        if problem is None and followed is not None and latest.seq <= followed.seq:
            problem = f"this process follows activation seq {followed.seq}; the newest activations were deleted or replaced"
        if problem is not None:
            self._refuse(latest, problem, at)
            return False
        self.activation_refusal = None
        if self._policy is not None and latest.digest == self._policy.digest:
            self._followed = latest
            return False
        try:
            compiled = compile_policy(self.policies.policy(latest.digest))
            if compiled.digest != latest.digest:
                raise BridgeError(f"the stored document hashes to {compiled.digest[:19]}, not to its key")
        except BridgeError as exc:
            LOG.error("activated policy %s cannot be installed (%s); keeping the current one", latest.digest[:19], exc.message)
            return False
        self._install(compiled, latest.activated_by, at)
        self._followed = latest
        LOG.info("policy %s %s activated by %s (from the shared log)", compiled.policy_id, compiled.version, latest.activated_by)
        return True

    def _refuse(self, activation: Activation, reason: str, at: datetime) -> None:
        """Keep the current policy; log an ERROR and count once per refused activation (not per poll)."""
        refusal = self.activation_refusal
        if refusal is not None and (refusal.seq, refusal.digest, refusal.reason) == (activation.seq, activation.digest, reason):
            return
        self.activation_refusal = ActivationRefusal(activation.seq, activation.digest, reason, at)
        self.activation_refusals += 1
        current = self._policy
        LOG.error(
            "%s refused: %s; keeping policy %s",
            activation.describe(),
            reason,
            f"{current.version!r} ({current.digest[:19]})" if current is not None else "none (not ready)",
        )

    def served(self) -> ServedDigests:
        """The digests this process answers with now (policy, entitlement snapshot, feeds)."""
        policy, snapshot = self._policy, self.store.snapshot
        return ServedDigests(
            policy.digest if policy is not None else None,
            snapshot.digest if snapshot is not None else None,
            snapshot.snapshot_id if snapshot is not None else None,
            tuple(sorted((name, feed.digest) for name, feed in self.store.feeds().items())),
        )

    def report(self, at: datetime) -> bool:
        """Record what this process serves (``ReplicaChannel.heartbeat``); False when it could not
        be recorded. Never raises: a failure is logged once, until a heartbeat succeeds again."""
        try:
            self.channel.heartbeat(self.served(), at)
        except DecisionLogError as exc:
            if not self._report_failing:
                LOG.warning("this replica's heartbeat cannot be recorded (%s); retrying at every watcher tick", exc.message)
            self._report_failing = True
            return False
        if self._report_failing:
            LOG.info("this replica's heartbeat is recorded again")
        self._report_failing = False
        return True

    def ready(self) -> tuple[bool, list[str]]:
        """(ready, problems): a policy and a snapshot are loaded and the decision log is writable
        (a problem says why not, in the log's own fixed words: ``unavailable_reason``)."""
        problems = []
        if self._policy is None:
            problems.append("no valid policy is loaded")
        if self.store.snapshot is None:
            problems.append("no valid entitlement snapshot is loaded")
        unavailable = self.log.unavailable_reason()
        if unavailable is not None:  # a fixed phrase (no path or URL): /readyz is unauthenticated
            problems.append(f"the decision log is not writable: {unavailable}")
        return not problems, problems

    def decide(self, document: Any, now: datetime, *, nonce: Nonce | None = None) -> dict[str, Any]:
        """Evaluate, record and answer one claims request (contract v1, section 1): the response
        document of ``decide_record``'s record. Raises as ``decide_record``."""
        return self.decide_record(document, now, nonce=nonce).response()

    def decide_record(self, document: Any, now: datetime, *, nonce: Nonce | None = None) -> DecisionRecord:
        """Evaluate and record one claims request; return the record (its ``response()`` is the
        answer, its ``decision`` what adapters observe, e.g. the metrics).

        ``nonce``: the verified signed request's nonce, recorded with the decision so that every
        process sharing the log answers that request once.

        Raises:
            RequestError: the request is invalid (nothing is recorded).
            NotReadyError: no policy or snapshot.
            DecisionLogError: the decision could not be recorded; it must not be used.
            AuthenticationError: (``replayed_signature``) another process answered this signed
                request already; nothing is recorded.
        """
        request = parse_request(document)
        policy, snapshot = self._policy, self.store.snapshot
        if policy is None or snapshot is None:
            raise NotReadyError("the bridge cannot decide: " + "; ".join(self.ready()[1]))
        feeds = self.store.feeds()
        decision = evaluate(policy, snapshot, request, now, feeds, EVALUATION_BUDGET)
        decision_id = make_ulid(now, self._entropy(10))
        record = build_record(decision_id, decision, request, snapshot, feeds, masker=self._masker, token_ttl_seconds=self._token_ttl)
        self.log.append(record, nonce)
        for reason in decision.reasons:
            if reason.rule == JOIN_MISMATCH_RULE:
                # The engine's message names the IGA identity and the join key only; the username or
                # e-mail sent is the untrusted value and stays out of the log (the record has it).
                LOG.warning(
                    "identity join mismatch: decision %s, Keycloak subject %r: %s",
                    decision_id,
                    request.subject["id"],
                    reason.message,
                    extra={"decision_id": decision_id},
                )
        return record


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


def _storage(settings: Any) -> tuple[DecisionLog, PolicyStore, ReplicaChannel]:
    """The decision log, policy store and replica channel the settings name: PostgreSQL when
    ``database_url`` is set (every replica shares it), else the SQLite file ``decision_log``
    with a ``LocalReplicaChannel`` (one host)."""
    ttl = timedelta(seconds=settings.token_ttl_seconds or 3600)
    identity = ReplicaIdentity.of_this_process(settings.replica_name)
    if settings.database_url:
        # Imported here: a single-host bridge never loads the PostgreSQL driver.
        from keycloak_policy_bridge.decision_log.postgres import PostgresDecisionLog
        from keycloak_policy_bridge.decision_log.postgres_events import PostgresReplicaChannel
        from keycloak_policy_bridge.decision_log.postgres_policies import PostgresPolicyStore

        url = settings.database_url
        return (
            PostgresDecisionLog(url, default_token_ttl=ttl),
            PostgresPolicyStore(url, activation_keys=activation_keys_of(settings)),
            PostgresReplicaChannel(url, identity, settings.watch_interval_seconds),
        )
    log = SQLiteDecisionLog(settings.decision_log, default_token_ttl=ttl, synchronous=settings.decision_log_sync)
    return log, SQLitePolicyStore(settings.decision_log, activation_keys=activation_keys_of(settings)), LocalReplicaChannel(identity)


def bridge_from_settings(settings: Any, clock: Callable[[], datetime]) -> Bridge:
    """Build a bridge from ``config.Settings``: open the log, load snapshot, feeds and policy.

    A snapshot or policy that fails to load leaves the bridge not ready (``/readyz`` says why)
    rather than refusing to start, so that a fixed file is picked up by the next reload.

    Raises:
        DecisionLogError: the decision log cannot be opened (nothing could be recorded).
    """
    store = SnapshotStore(
        settings.entitlements, feeds={n: p for n, p in settings.feeds}, clock=clock, compile_to=settings.snapshot_directory
    )
    store.reload_all()
    log, policies, channel = _storage(settings)
    masker = Masker(settings.mask_paths, settings.mask_key) if settings.mask_paths else None
    bridge = Bridge(store, log, policies, entropy=os.urandom, masker=masker, token_ttl_seconds=settings.token_ttl_seconds, channel=channel)
    _follow_newer_policy(bridge, settings, clock)
    bridge.report(clock())
    return bridge


def _follow_newer_policy(bridge: Bridge, settings: Any, clock: Callable[[], datetime]) -> None:
    """Install the newer of the policy file and the last activation (``bridge_from_settings``)."""
    policies = bridge.policies
    # The newer wins: the policy file when it changed after the last activation recorded in the
    # shared log (an operator edited it and restarted), else that activation (an admin's PUT,
    # which a restarting worker must not revert). An activation that does not verify is refused
    # (logged, counted) and the file is used instead: it is the operator's, outside the database.
    latest = policies.latest_activation()
    problem = policies.activation_problem(latest) if latest is not None else None
    if latest is not None and problem is not None:
        bridge._refuse(latest, problem, clock())
        latest = None
    try:
        file_time = datetime.fromtimestamp(settings.policy.stat().st_mtime, UTC)
    except OSError:
        file_time = None
    if latest and (file_time is None or parse_rfc3339(latest.activated_at) >= file_time):
        bridge.sync_policy(clock())
        if bridge.policy is not None:
            return
    try:
        text = settings.policy.read_text(encoding="utf-8-sig")
        document = load_policy_document(text, str(settings.policy))
        if latest and compile_policy(document).digest == latest.digest:
            bridge.sync_policy(clock())  # same policy: no new activation record per worker start
        else:
            bridge.activate(document, by=f"file:{settings.policy}", at=clock())
    except OSError as exc:
        LOG.error("policy %s cannot be read (%s); the bridge is not ready", settings.policy, exc.strerror)
    except PolicyError as exc:
        LOG.error("policy %s rejected; the bridge is not ready: %s", settings.policy, "; ".join(str(i) for i in exc.issues[:20]))


def activation_keys_of(settings: Any) -> ActivationKeys:
    """The keys that seal activations: ``KPB_ACTIVATION_KEYS``; else derived from the HMAC
    secrets; else (``KPB_INSECURE_DEV``, no secret at all) a public development key."""
    if settings.activation_keys:
        return ActivationKeys(tuple(settings.activation_keys))
    if settings.hmac_secrets:
        return derived_activation_keys(tuple(settings.hmac_secrets))
    return insecure_dev_activation_keys()
