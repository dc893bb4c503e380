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
from collections.abc import Callable
from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from keycloak_policy_bridge.api.admin import admin
from keycloak_policy_bridge.api.authzen import authzen
from keycloak_policy_bridge.api.body import parse_json_body, read_body
from keycloak_policy_bridge.api.ops import ops
from keycloak_policy_bridge.api.responses import error_response, json_response, return_minimal
from keycloak_policy_bridge.api.signed import authenticate_signed, decide_observed
from keycloak_policy_bridge.bridge import Bridge
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.decision_log.replicas import summarize
from keycloak_policy_bridge.errors import BodyTooLargeError, BridgeError, DecisionLogError, InternalError
from keycloak_policy_bridge.signature import ReplayCache, check_secrets

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


@v1.post("/v1/claims")
def claims() -> Response:
    ext = current_app.extensions["kpb"]
    body = read_body(ext["settings"].max_body_bytes)  # 413 over the limit however framed, before the signature
    nonce = authenticate_signed(body)
    record = decide_observed(parse_json_body(body), nonce)
    minimal = return_minimal(request.headers.get("Prefer"))
    answer = json_response(record.response(minimal=minimal))
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
