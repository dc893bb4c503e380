"""Operations endpoints and hooks (issue 5): ``GET /metrics``, ``GET /openapi.json``, and the
claims route's observation hooks ``observe_decision`` and ``observe_failure``.

Metrics (prometheus-client, text exposition)
--------------------------------------------
- ``kpb_decisions_total{effect}``: answered decisions, permit or deny.
- ``kpb_decision_rules_total{rule}``: decisions in which a rule took part (named in the
  response's reasons or provenance); a rule counts once per decision however many values it
  granted. The label set is bounded by the policies' rule ids.
- ``kpb_decision_seconds``: time to validate, evaluate and durably record one decision (buckets
  from 0.1 ms to 100 ms; the service targets p99 <= 20 ms).
- ``kpb_request_failures_total{code}``: claims requests answered with an error, by stable error
  code (``unauthorized``, ``invalid_json``, ``body_too_large``, ``invalid_request``,
  ``not_ready``, ``decision_log_unavailable``...).
- ``kpb_decision_log_write_failures_total``: decisions refused because the decision log could
  not record them.
- ``kpb_identity_join_mismatch_total{key}``: denials because the subject reached an IGA identity
  pinned to another Keycloak id by ``username`` or ``email`` (``kpb:identity-mismatch``): a
  look-alike principal, or a Keycloak user re-created under a new id. Worth an alert.
- ``kpb_evaluation_budget_exceeded_total``: decisions denied because their evaluation ran past
  the evaluation budget (reason ``kpb:budget``, ``bridge.EVALUATION_BUDGET``). Worth an alert:
  inputs beyond the cost estimate's assumptions, or a starved machine.
- ``kpb_snapshot_age_seconds{snapshot}``, ``kpb_snapshot_records{snapshot}``,
  ``kpb_snapshot_reloads_total{snapshot}``, ``kpb_snapshot_rejections_total{snapshot}``: read
  from ``SnapshotStore.status()`` at scrape time; ``snapshot`` is ``entitlements`` or
  ``feed:<name>``. The age (against the app's clock) is absent while nothing is loaded.
- ``kpb_policy_activation_refused`` (gauge, 1 while the shared log's latest policy activation
  does not verify and this worker keeps its current policy, else 0) and
  ``kpb_policy_activation_refusals_total`` (distinct activations this worker refused): read from
  the ``Bridge`` at scrape time (``Bridge.sync_policy``).
- ``kpb_served_digest_info{kind,digest}`` (always 1): the policy and entitlement snapshot digests
  this process serves (``kind`` ``policy`` or ``entitlements``; absent while none is loaded).
- ``kpb_replicas{state="live"}`` and ``kpb_replica_digests{kind}``: live replicas, and the
  distinct digests of each kind among their live processes (more than 1: they differ), read from
  the replica channel's heartbeats at scrape time (``decision_log.replicas``); absent while the
  shared database cannot be read.

Each app has its own ``CollectorRegistry`` (``app.extensions["kpb_ops"]``), never the
process-global one, so that tests and several apps in one process do not share or collide on
metrics. ``/metrics`` and ``/openapi.json`` are unauthenticated: keep them off public networks.

Several gunicorn workers
------------------------
Each worker is a process with its own registry, and a scrape reaches whichever worker accepts
the connection: the counters it shows are that worker's alone, and successive scrapes may come
from different workers. Prometheus multiprocess mode makes them add up; it is a deployment
option, not implemented here:

1. Start gunicorn with ``PROMETHEUS_MULTIPROC_DIR`` set to an empty directory that is wiped
   before every start, so that every worker inherits it before importing prometheus_client.
2. In the gunicorn configuration::

       def child_exit(server, worker):
           prometheus_client.multiprocess.mark_process_dead(worker.pid)

3. Serve ``/metrics`` from a fresh ``CollectorRegistry()`` holding
   ``prometheus_client.multiprocess.MultiProcessCollector`` and this module's
   ``SnapshotCollector`` (custom collectors are not shared between processes; every worker
   loads the same snapshots, so the answering worker's view is the one to report).

Counters and the histogram are then summed over the live and dead workers; the snapshot figures
are computed at scrape time, so no gauge ``multiprocess_mode`` is involved.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from importlib import resources
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, has_request_context, request
from flask.blueprints import BlueprintSetupState
from flask.sansio.app import App
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from keycloak_policy_bridge.decision import Decision
from keycloak_policy_bridge.decision_log.replicas import summarize
from keycloak_policy_bridge.engine import BUDGET_RULE, JOIN_MISMATCH_RULE
from keycloak_policy_bridge.errors import DecisionLogError
from keycloak_policy_bridge.timeutil import parse_rfc3339

EXTENSION = "kpb_ops"
CLAIMS_ENDPOINT = "v1.claims"
OPENAPI_RESOURCE = ("schemas", "openapi.v1.json")
# Evaluation plus a group-committed SQLite write takes from ~0.1 ms to tens of ms; fine steps
# around the 20 ms p99 target, one bucket past it to see how far a bad tail reaches.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1)
_OBSERVED = "kpb_failure_observed"

ops = Blueprint("ops", __name__)


class _ScrapeCollector(Collector):
    """A collector that reads the app's bridge at each scrape; subclasses give ``_families`` (the
    metric families, empty: what ``describe`` registers) and ``collect``."""

    def __init__(self, app: App) -> None:
        self._app = app

    def describe(self) -> Iterable[Metric]:
        return self._families()

    @staticmethod
    def _families() -> tuple[Metric, ...]:
        raise NotImplementedError


class SnapshotCollector(_ScrapeCollector):
    """The snapshot gauges and counters, read from the bridge's ``SnapshotStore`` at each scrape.

    Args:
        app: the app whose ``extensions["kpb"]`` holds the bridge and the clock.
    """

    def collect(self) -> Iterable[Metric]:
        ext = self._app.extensions["kpb"]
        status = ext["bridge"].store.status()
        now: datetime = ext["clock"]()
        age, records, reloads, rejections = families = self._families()
        slots = [("entitlements", status["entitlements"])] + [(f"feed:{name}", s) for name, s in sorted(status["feeds"].items())]
        for name, slot in slots:
            if slot.get("generated_at"):
                age.add_metric([name], (now - parse_rfc3339(slot["generated_at"])).total_seconds())
            records.add_metric([name], slot["records"])
            reloads.add_metric([name], slot["reloads_total"])
            rejections.add_metric([name], slot["rejections_total"])
        return families

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        labels = ["snapshot"]
        return (
            GaugeMetricFamily("kpb_snapshot_age_seconds", "Age of the active snapshot (now - its generated_at).", labels=labels),
            GaugeMetricFamily("kpb_snapshot_records", "Records in the active snapshot (0 while none is loaded).", labels=labels),
            CounterMetricFamily("kpb_snapshot_reloads", "Snapshots accepted by this process.", labels=labels),
            CounterMetricFamily("kpb_snapshot_rejections", "Snapshots refused by this process (the last good one stays).", labels=labels),
        )


class PolicyIntegrityCollector(_ScrapeCollector):
    """Refused policy activations (forged, rewritten or rolled back in the shared log), read from
    the bridge at each scrape. A refusal keeps the worker serving its current policy, so it is a
    metric to alert on rather than a readiness failure: a readiness failure would let anyone who
    can write the database take every worker out of rotation.

    Args:
        app: the app whose ``extensions["kpb"]`` holds the bridge.
    """

    def collect(self) -> Iterable[Metric]:
        bridge = self._app.extensions["kpb"]["bridge"]
        refused, refusals = families = self._families()
        refused.add_metric([], 1 if bridge.activation_refusal is not None else 0)
        refusals.add_metric([], bridge.activation_refusals)
        return families

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily("kpb_policy_activation_refused", "1 while the latest policy activation does not verify (policy kept)."),
            CounterMetricFamily(
                "kpb_policy_activation_refusals", "Policy activations this process refused (forged, modified, rolled back)."
            ),
        )


class ReplicaCollector(_ScrapeCollector):
    """Which digests this process serves, and how many distinct ones the live replicas serve,
    read at each scrape (the bridge, and its replica channel's heartbeats).

    Args:
        app: the app whose ``extensions["kpb"]`` holds the bridge.
    """

    def collect(self) -> Iterable[Metric]:
        bridge = self._app.extensions["kpb"]["bridge"]
        served_info, replicas, digests = families = self._families()
        served = bridge.served()
        for kind, value in (("policy", served.policy), ("entitlements", served.entitlements)):
            if value is not None:
                served_info.add_metric([kind, value], 1)
        try:
            summary = summarize(bridge.channel.replicas(), bridge.channel.scope)
        except DecisionLogError:
            return families[:1]  # unknown, rather than a count of 0 that would read as "none live"
        replicas.add_metric(["live"], summary.replicas)
        digests.add_metric(["policy"], summary.policy_digests)
        digests.add_metric(["entitlements"], summary.entitlements_digests)
        return families

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("kpb_served_digest_info", "The digests this process serves (always 1).", labels=["kind", "digest"]),
            GaugeMetricFamily("kpb_replicas", "Bridge replicas with a live heartbeat.", labels=["state"]),
            GaugeMetricFamily(
                "kpb_replica_digests",
                "Distinct digests served by the live replicas' processes (more than 1: they differ).",
                labels=["kind"],
            ),
        )


class OpsMetrics:
    """One app's metrics: a private registry, the decision and failure counters, the latency
    histogram and the snapshot collector. Thread-safe (prometheus-client metrics are).

    Args:
        app: the app it observes (for the snapshot collector).
    """

    def __init__(self, app: App) -> None:
        self.registry = registry = CollectorRegistry()
        self.decisions = Counter("kpb_decisions", "Decisions answered, by effect.", ["effect"], registry=registry)
        self.rules = Counter("kpb_decision_rules", "Decisions a rule took part in (reasons or provenance).", ["rule"], registry=registry)
        self.latency = Histogram(
            "kpb_decision_seconds", "Time to decide and record one decision.", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.failures = Counter(
            "kpb_request_failures", "Claims requests answered with an error, by error code.", ["code"], registry=registry
        )
        self.log_write_failures = Counter(
            "kpb_decision_log_write_failures", "Decisions refused: the log could not record them.", registry=registry
        )
        self.join_mismatches = Counter(
            "kpb_identity_join_mismatch",
            "Denials: a pinned IGA identity reached by username or e-mail under another Keycloak id.",
            ["key"],
            registry=registry,
        )
        self.budget_exceeded = Counter(
            "kpb_evaluation_budget_exceeded", "Decisions denied: the evaluation ran past its time budget (kpb:budget).", registry=registry
        )
        self.registry.register(SnapshotCollector(app))
        self.registry.register(PolicyIntegrityCollector(app))
        self.registry.register(ReplicaCollector(app))
        # labels() takes a lock and hashes its arguments; the hot path reuses the children.
        # A race only makes two threads fetch the same child, which labels() returns to both.
        self._by_effect = {effect: self.decisions.labels(effect) for effect in ("permit", "deny")}
        self._by_rule: dict[str, Any] = {}
        # Both series exist from the start (at 0), so that an alert on their rate sees the first one.
        self._mismatch_by_key = {key: self.join_mismatches.labels(key) for key in ("username", "email")}

    def observe_decision(self, decision: Decision, seconds: float) -> None:
        """Count one answered decision and its latency."""
        effect = decision.effect
        child = self._by_effect.get(effect)
        (child if child is not None else self.decisions.labels(effect)).inc()
        rules = decision.rules()
        for rule in rules:
            counter = self._by_rule.get(rule)
            if counter is None:
                counter = self._by_rule[rule] = self.rules.labels(rule)
            counter.inc()
        if JOIN_MISMATCH_RULE in rules:
            # Only the subject joins by username or e-mail (actors join by id), and it comes first.
            key = str(decision.principals[0].matched_by)
            child = self._mismatch_by_key.get(key)
            (child if child is not None else self.join_mismatches.labels(key)).inc()
        if BUDGET_RULE in rules:
            self.budget_exceeded.inc()
        self.latency.observe(seconds)

    def observe_failure(self, code: str) -> None:
        """Count one failed claims request by its error code."""
        self.failures.labels(code).inc()
        if code == DecisionLogError.code:
            self.log_write_failures.inc()

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def _init_app(state: BlueprintSetupState) -> None:
    state.app.extensions[EXTENSION] = OpsMetrics(state.app)


ops.record_once(_init_app)  # one registry per app, made when the app registers the blueprint


def metrics_of(app: Flask) -> OpsMetrics | None:
    """The app's metrics, or None when the ops blueprint is not registered on it."""
    return app.extensions.get(EXTENSION)


def observe_decision(app: Flask, decision: Decision, seconds: float) -> None:
    """Called by the claims route after each recorded decision, with the decision and the seconds
    spent deciding."""
    metrics = metrics_of(app)
    if metrics is not None:
        metrics.observe_decision(decision, seconds)


def observe_failure(app: Flask, code: str) -> None:
    """Called when a claims request fails, with its stable error code.

    The claims route calls it for errors raised while deciding; ``_count_unobserved_failures``
    counts the others (authentication, malformed JSON, oversize bodies) from the error response,
    and skips requests already counted here, so each failed request counts once.
    """
    metrics = metrics_of(app)
    if metrics is None:
        return
    metrics.observe_failure(code)
    if has_request_context():
        setattr(g, _OBSERVED, True)


@ops.after_app_request
def _count_unobserved_failures(response: Response) -> Response:
    if response.status_code >= 400 and request.endpoint == CLAIMS_ENDPOINT and not g.get(_OBSERVED, False):
        body = response.get_json(silent=True) if response.is_json else None
        code = body.get("error") if isinstance(body, dict) else None
        observe_failure(current_app, code if isinstance(code, str) else f"http_{response.status_code}")
    return response


@ops.get("/metrics")
def metrics() -> Response:
    ops_metrics: OpsMetrics = current_app.extensions[EXTENSION]  # set wherever this route is registered
    return Response(ops_metrics.exposition(), content_type=CONTENT_TYPE_LATEST)


@functools.cache
def openapi_bytes() -> bytes:
    """The shipped OpenAPI 3.1 document (``schemas/openapi.v1.json``), read once."""
    return resources.files("keycloak_policy_bridge").joinpath(*OPENAPI_RESOURCE).read_bytes()


@ops.get("/openapi.json")
def openapi() -> Response:
    return Response(openapi_bytes(), content_type="application/json")
