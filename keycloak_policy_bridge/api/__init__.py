"""The HTTP adapter: a Flask app factory over ``Bridge``. Thin by design.

Routes (contract v1):
  POST /v1/claims   the mapper's call; HMAC-authenticated (``signature``); a deny is a 200
  GET  /healthz     the process is alive
  GET  /readyz      a policy and a snapshot are loaded and the decision log is writable; what this
                    process serves, and a summary of what every live replica serves (``warnings``
                    says when they differ: visible, never a reason to be unready)
  /access/v1/...    the AuthZEN 1.0 PDP (``api.authzen``), HMAC or bearer authenticated

Errors are ``{"error": "<stable code>", "message": "<what and where>"}`` with the status of the
``BridgeError`` raised, rendered by ``api.responses``; nothing untrusted (the request's values,
secrets, signatures) is echoed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import cast

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from keycloak_policy_bridge.api.admin import admin
from keycloak_policy_bridge.api.authzen import authzen
from keycloak_policy_bridge.api.body import parse_json_body, read_body
from keycloak_policy_bridge.api.ops import observe_decision, observe_failure, ops
from keycloak_policy_bridge.api.responses import error_response, json_response, return_minimal
from keycloak_policy_bridge.bridge import Bridge
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.decision_log import Nonce
from keycloak_policy_bridge.decision_log.replicas import summarize
from keycloak_policy_bridge.errors import BodyTooLargeError, BridgeError, DecisionLogError, InternalError
from keycloak_policy_bridge.signature import TIMESTAMP_HEADER, ReplayCache, check_secrets, signed_request_id, verify

LOG = logging.getLogger("kpb.api")
v1 = Blueprint("v1", __name__)


def create_app(bridge: Bridge, settings: Settings, *, clock: Callable[[], datetime] | None = None) -> Flask:
    """The WSGI application for ``bridge``.

    Args:
        bridge: a ready (or not yet ready) bridge; readiness is reported by /readyz.
        settings: limits and caller secrets.
        clock: the wall clock (tests pass a fixed one).
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["kpb"] = {
        "bridge": bridge,
        "settings": settings,
        "clock": clock or (lambda: datetime.now(UTC)),
        "replay_cache": _replay_cache(settings),
    }
    if settings.insecure_dev:
        LOG.warning("INSECURE DEVELOPMENT MODE: /v1/claims accepts unauthenticated callers. Never run this in production.")
    app.register_blueprint(v1)
    app.register_blueprint(admin)
    app.register_blueprint(authzen)
    app.register_blueprint(ops)
    app.register_error_handler(BridgeError, _bridge_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _replay_cache(settings: Settings) -> ReplayCache | None:
    if settings.insecure_dev:
        return None
    check_secrets(dict(settings.hmac_secrets))  # fail at start-up, naming the key, never the secret
    return ReplayCache(max_skew_seconds=settings.max_clock_skew_seconds)


def _bridge_error(exc: BridgeError) -> Response:
    if exc.http_status >= 500:
        LOG.error("request failed: [%s] %s", exc.code, exc.message)
    return error_response(exc)


def _http_error(exc: HTTPException) -> Response:
    if isinstance(exc, RequestEntityTooLarge):
        limit = current_app.extensions["kpb"]["settings"].max_body_bytes
        return error_response(BodyTooLargeError(f"the request body exceeds {limit} bytes"))
    return error_response(exc)


def _unexpected_error(exc: Exception) -> Response:
    LOG.exception("unexpected error")
    return error_response(InternalError("the bridge failed unexpectedly; see its log"))


def _authenticate(body: bytes) -> Nonce | None:
    """Verify the caller's signature; return the request's nonce for the shared replay check
    (None in insecure mode)."""
    ext = current_app.extensions["kpb"]
    settings: Settings = ext["settings"]
    if settings.insecure_dev:
        return None
    # The request target exactly as sent (still percent-encoded): Flask's request.path is
    # decoded, and the signature covers the raw bytes the mapper sent.
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    path = raw or (request.path + (("?" + request.query_string.decode("latin-1")) if request.query_string else ""))
    now = int(ext["clock"]().timestamp())
    verify(
        cast(Mapping[str, str], request.headers),  # Headers keeps repeated headers, which verify refuses
        request.method,
        path,
        body,
        secrets=dict(settings.hmac_secrets),
        now=now,
        max_skew_seconds=settings.max_clock_skew_seconds,
        replay_cache=ext["replay_cache"],
    )
    # The per-process cache above is the fast check; this nonce, recorded with the decision,
    # makes a replay that reaches another worker fail at append (docs/service.md section 4.2).
    timestamp = int(request.headers[TIMESTAMP_HEADER].strip(" \t"))  # verified well formed
    return Nonce(signed_request_id(request.method, path, timestamp, body), timestamp + settings.max_clock_skew_seconds, now)


@v1.post("/v1/claims")
def claims() -> Response:
    ext = current_app.extensions["kpb"]
    body = read_body(ext["settings"].max_body_bytes)  # 413 over the limit however framed, before the signature
    nonce = _authenticate(body)
    document = parse_json_body(body)
    bridge: Bridge = ext["bridge"]
    started = time.perf_counter()
    try:
        record = bridge.decide_record(document, ext["clock"](), nonce=nonce)
        minimal = return_minimal(request.headers.get("Prefer"))
        response = record.response(minimal=minimal)
    except BridgeError as exc:
        observe_failure(current_app, exc.code)
        raise
    observe_decision(current_app, record.decision, time.perf_counter() - started)
    LOG.info(
        "decision %s effect=%s client=%s",
        record.decision_id,
        record.effect,
        record.client_id,
        extra={"decision_id": record.decision_id},
    )
    answer = json_response(response)
    answer.vary.add("Prefer")
    if minimal:
        answer.headers["Preference-Applied"] = "return=minimal"
    return answer


@v1.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "alive", "pid": os.getpid()})


@v1.get("/readyz")
def readyz() -> Response:
    bridge: Bridge = current_app.extensions["kpb"]["bridge"]
    ready, problems = bridge.ready()
    # Unauthenticated: the public view (no directories, no rejection messages that could quote a file).
    status = {"ready": ready, "problems": problems, "entitlements": bridge.store.status(public=True)}
    if bridge.policy is not None:
        status["policy"] = {"id": bridge.policy.policy_id, "version": bridge.policy.version, "digest": bridge.policy.digest}
    status["served"] = bridge.served().to_dict()
    # Replicas serving different digests are shown, not made unready: taking them out of rotation
    # for it would let a half-finished rollout (or anyone who can write the database) empty the pool.
    warnings = []
    try:
        summary = summarize(bridge.channel.replicas(), bridge.channel.scope)
        status["replicas"] = summary.to_dict()
        if not summary.consistent:
            warnings.append(
                f"the {summary.processes} live bridge processes serve {summary.policy_digests} policy digest(s) and "
                f"{summary.entitlements_digests} entitlement snapshot digest(s) (GET /v1/replicas names them)"
            )
    except DecisionLogError:
        status["replicas"] = None
        warnings.append("what the other replicas serve cannot be read (the shared database is unavailable)")  # no URL: public
    status["warnings"] = warnings
    return json_response(status, 200 if ready else 503)
