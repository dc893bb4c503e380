"""AuthZEN 1.0 HTTP adapter (issue 16): the bridge as a policy decision point. Thin by design:
``authzen`` (the core) maps requests and answers, ``Bridge.decide_record`` decides and records.

Routes (docs/authzen.md):
  GET  /.well-known/authzen-configuration   PDP metadata (unauthenticated)
  POST /access/v1/evaluation                one evaluation, one recorded decision
  POST /access/v1/evaluations               a batch: one recorded decision per item evaluated
  POST /access/v1/search/resource           a claim's values, one recorded decision per page

Callers authenticate with the HMAC v1 scheme of /v1/claims (the same check, ``api.signed.authenticate_signed``)
or with ``Authorization: Bearer <JWT>`` from the admin API's realm (issuer, audience and keys as
the admin API; the token must carry ``KPB_AUTHZEN_ROLE`` or the admin role, and only the admin
role gets ``reason_admin``). ``KPB_INSECURE_DEV`` turns caller authentication off, as for
/v1/claims. Order: body read (413 past ``KPB_AUTHZEN_MAX_BODY_BYTES``), caller (401/403), JSON
(400), request (400), decision (503 when it cannot be recorded). An ``X-Request-ID`` is echoed on
every answer of these routes, errors included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState

from keycloak_policy_bridge import authzen as core
from keycloak_policy_bridge.api.admin import has_role, verify_bearer
from keycloak_policy_bridge.api.body import parse_json_body, read_body
from keycloak_policy_bridge.api.responses import json_response
from keycloak_policy_bridge.api.signed import authenticate_signed, decide_observed
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.decision_log import Nonce
from keycloak_policy_bridge.errors import AuthenticationError, ForbiddenError, TokenError
from keycloak_policy_bridge.record import DecisionRecord

LOG = logging.getLogger("kpb.api")
authzen = Blueprint("authzen", __name__)

PAGE_TOKENS_EXTENSION = "kpb_authzen_page_tokens"
REQUEST_ID_HEADER = "X-Request-ID"
PATHS = {
    "access_evaluation_endpoint": "/access/v1/evaluation",
    "access_evaluations_endpoint": "/access/v1/evaluations",
    "search_resource_endpoint": "/access/v1/search/resource",
}


@dataclass(frozen=True)
class Caller:
    """Who called: the signed request's nonce (HMAC), whether an administrator (bearer with the
    admin role), and the client a bearer token was issued to (``azp``)."""

    nonce: Nonce | None
    admin: bool
    client_id: str | None


@authzen.record_once
def _install_page_tokens(state: BlueprintSetupState) -> None:
    settings: Settings = state.app.extensions["kpb"]["settings"]
    secrets = [secret for _, secret in (settings.activation_keys or settings.hmac_secrets)]
    state.app.extensions.setdefault(PAGE_TOKENS_EXTENSION, core.PageTokens(core.page_key(secrets)))


@authzen.after_request
def _echo_request_id(response: Response) -> Response:
    request_id = request.headers.get(REQUEST_ID_HEADER)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _caller(body: bytes) -> Caller:
    """Authenticate the caller (see the module docstring).

    Raises:
        AuthenticationError: no valid signature or token (401).
        ForbiddenError: a valid token without the role (403).
        AdminKeysUnavailableError: the realm's keys cannot be fetched (503).
    """
    ext = current_app.extensions["kpb"]
    settings: Settings = ext["settings"]
    if settings.insecure_dev:
        return Caller(None, False, None)
    header = request.headers.get("Authorization", "").strip()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return Caller(authenticate_signed(body), False, None)
    if not settings.admin_enabled:
        raise AuthenticationError(
            "bearer tokens are not accepted: KPB_ADMIN_JWKS_URL, KPB_ADMIN_ISSUER and KPB_ADMIN_AUDIENCE are not set",
            reason="bearer_disabled",
        )
    try:
        claims = verify_bearer(token.strip(), settings, ext["clock"]())
    except TokenError as exc:
        raise AuthenticationError(f"the bearer token was refused: {exc.message}", reason="invalid_token") from None
    admin = has_role(claims, settings.admin_role, settings.admin_audience)
    if not admin and not has_role(claims, settings.authzen_role, settings.admin_audience):
        raise ForbiddenError(f"the token does not carry the {settings.authzen_role} role (or {settings.admin_role})")
    azp = claims.get("azp")
    return Caller(None, admin, azp if isinstance(azp, str) and azp else None)


def _start() -> tuple[Caller, Any]:
    """Read the body, authenticate the caller, parse the JSON: in that order."""
    settings: Settings = current_app.extensions["kpb"]["settings"]
    body = read_body(settings.authzen_max_body_bytes)
    caller = _caller(body)
    return caller, parse_json_body(body)


def _request_id(index: int | None = None) -> str:
    given = (request.headers.get(REQUEST_ID_HEADER) or "").strip()[:120] or "authzen"
    return given if index is None else f"{given}#{index}"


def _decide(evaluation: core.Evaluation, caller: Caller, nonce: Nonce | None, request_id: str) -> DecisionRecord:
    """Decide and record one claims request mapped from ``evaluation``."""
    document = core.claims_request(evaluation, request_id=request_id, caller_client_id=caller.client_id)
    return decide_observed(document, nonce, what="authzen decision")


def _answer(evaluation: core.Evaluation, caller: Caller, nonce: Nonce | None, request_id: str) -> dict[str, Any]:
    record = _decide(evaluation, caller, nonce, request_id)
    return core.evaluation_response(evaluation, record.decision, record.decision_id, admin=caller.admin)


@authzen.get("/.well-known/authzen-configuration")
def configuration() -> Response:
    settings: Settings = current_app.extensions["kpb"]["settings"]
    base = settings.authzen_pdp_url or request.host_url.rstrip("/")
    return json_response({"policy_decision_point": base, **{key: base + path for key, path in PATHS.items()}})


@authzen.post("/access/v1/evaluation")
def evaluation() -> Response:
    caller, document = _start()
    parsed = core.parse_evaluation(document)
    return json_response(_answer(parsed, caller, caller.nonce, _request_id()))


@authzen.post("/access/v1/evaluations")
def evaluations() -> Response:
    caller, document = _start()
    settings: Settings = current_app.extensions["kpb"]["settings"]
    batch = core.parse_evaluations(document, max_items=settings.authzen_max_evaluations)
    if batch.single is not None:
        return json_response(_answer(batch.single, caller, caller.nonce, _request_id()))
    # The signed request's nonce goes with the first decision: one nonce, recorded once.
    answers = core.run_batch(batch, lambda i, item: _answer(item, caller, caller.nonce if i == 0 else None, _request_id(i)))
    return json_response({"evaluations": answers})


@authzen.post("/access/v1/search/resource")
def search_resource() -> Response:
    caller, document = _start()
    search = core.parse_search(document)
    tokens: core.PageTokens = current_app.extensions[PAGE_TOKENS_EXTENSION]
    offset = tokens.offset(search.token, search.binding) if search.token else 0  # before anything is recorded
    record = _decide(search.query, caller, caller.nonce, _request_id())
    return json_response(core.search_response(search, record.decision, record.decision_id, offset, tokens, admin=caller.admin))
