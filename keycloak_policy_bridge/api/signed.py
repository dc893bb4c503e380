"""What the routes that decide share: the caller's HMAC signature (the mapper's scheme, for
``/v1/claims`` and the AuthZEN endpoints) and a decision made, recorded, counted and logged.

Both read the app's ``extensions["kpb"]`` (bridge, settings, clock, replay cache) and run inside a
request. A decision is answered only after ``Bridge.decide_record`` recorded it; a failure is
counted by its error code and re-raised for ``api.responses`` to render.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, cast

from flask import current_app, request

from keycloak_policy_bridge.api.ops import observe_decision, observe_failure
from keycloak_policy_bridge.bridge import Bridge
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.decision_log import Nonce
from keycloak_policy_bridge.errors import BridgeError
from keycloak_policy_bridge.record import DecisionRecord
from keycloak_policy_bridge.signature import TIMESTAMP_HEADER, signed_request_id, verify

LOG = logging.getLogger("kpb.api")


def authenticate_signed(body: bytes) -> Nonce | None:
    """Verify the caller's HMAC signature (``signature.verify``) over ``body`` and the request
    target as sent; return the request's nonce for the shared replay check (None in insecure mode).

    Raises:
        AuthenticationError: no valid signature, or a replay this process has seen (401).
    """
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


def decide_observed(document: Any, nonce: Nonce | None, *, what: str = "decision") -> DecisionRecord:
    """Decide and record ``document`` (a claims request) through the app's bridge, count it in
    the metrics (a failure by its code) and log one line naming ``what`` was decided.

    Raises:
        BridgeError: as ``Bridge.decide_record`` (nothing was recorded, nothing is to be answered).
    """
    ext = current_app.extensions["kpb"]
    bridge: Bridge = ext["bridge"]
    started = time.perf_counter()
    try:
        record = bridge.decide_record(document, ext["clock"](), nonce=nonce)
    except BridgeError as exc:
        observe_failure(current_app, exc.code)
        raise
    observe_decision(current_app, record.decision, time.perf_counter() - started)
    LOG.info(
        "%s %s effect=%s client=%s",
        what,
        record.decision_id,
        record.effect,
        record.client_id,
        extra={"decision_id": record.decision_id},
    )
    return record
