"""Admin API (issue 5): decisions, explain, replay, the active policy, entitlement reloads.

Every route needs ``Authorization: Bearer <JWT>``, an access token from the admin realm. It is
checked by ``token.verify_token``: only asymmetric algorithms are allowed, the signature must verify
with the JWKS key named by ``kid``, ``exp``/``nbf``/``iat`` are judged at the app clock's now, and
``iss`` and ``aud`` must match. The token must also carry the admin role, in ``realm_access.roles``
or in ``resource_access.<audience>.roles``. The actor recorded for a policy activation is the
token's ``preferred_username`` and ``sub``.

Refusals: admin settings missing -> 503 ``admin_disabled`` (``AdminDisabledError``); no token or
a bad token -> 401 ``unauthorized`` (``AuthenticationError``; the message names the check that
failed, never the token); a valid token without the role -> 403 ``forbidden``
(``ForbiddenError``); the realm's keys cannot be fetched -> 503 ``admin_keys_unavailable``.
Every answer is built by ``api.responses``.

The JWKS is fetched on first use and then cached. A token whose ``kid`` is unknown (for example
after a key rotation) triggers a refetch, but at most once per ``JWKS_REFRESH_SECONDS``, so a
stream of forged kids cannot make the bridge hammer Keycloak. The cache and its fetch function are
kept in ``app.extensions[JWKS_EXTENSION]``; tests put their own ``JwksCache`` there.

The routes are thin adapters. They parse parameters, call the core (``decision_log``,
``explain``, ``replay``, ``Bridge.activate``, ``SnapshotStore.reload_all``) and format the answer.
PUT /v1/policy activates the policy in this process only. Getting it to the other gunicorn
workers and replicas is the bridge's job (the replica channel wakes their watchers, which follow
the activation from the shared log), not this module's. POST /v1/entitlements/reload reloads
this process at once and asks every other process of every replica to reload too
(``ReplicaChannel.request_reload``); GET /v1/replicas lists what every live process serves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from flask.blueprints import BlueprintSetupState
from werkzeug.datastructures import MultiDict

from keycloak_policy_bridge.api.body import parse_json_body, read_body
from keycloak_policy_bridge.api.responses import error_response, json_response
from keycloak_policy_bridge.bridge import Bridge, load_policy_document
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.decision_log import DecisionLogReader, Query
from keycloak_policy_bridge.decision_log.replicas import ReloadRequest, summarize
from keycloak_policy_bridge.errors import (
    AdminDisabledError,
    AdminKeysUnavailableError,
    AuthenticationError,
    BridgeError,
    DecisionLogError,
    ForbiddenError,
    NotReadyError,
    ParameterError,
    PolicyError,
    ReplayGateError,
    RequestError,
    SnapshotRejectedError,
    TokenError,
)
from keycloak_policy_bridge.explain import explain
from keycloak_policy_bridge.policy import Policy, compile_policy
from keycloak_policy_bridge.record import DecisionRecord, Masker
from keycloak_policy_bridge.reevaluate import PolicyCache
from keycloak_policy_bridge.replay import ReplayReport, replay
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339
from keycloak_policy_bridge.token import ALLOWED_ALGORITHMS, JWKS_TIMEOUT_SECONDS, Fetch, fetch_jwks, token_header, verify_token

LOG = logging.getLogger("kpb.admin")
admin = Blueprint("admin", __name__)

JWKS_EXTENSION = "kpb_admin_jwks"
JWKS_REFRESH_SECONDS = 60.0  # refetch for an unknown kid at most this often
JWKS_MAX_AGE_SECONDS = 600.0  # refetch held keys this often, so a key the realm removed stops being trusted
JWKS_RETRY_SECONDS = 5.0  # with no keys at all: retry sooner, but still not on every request
TOKEN_LEEWAY_SECONDS = 30  # Keycloak's clock and ours are different hosts' clocks
DECISIONS_DEFAULT_LIMIT = 50
DECISIONS_MAX_LIMIT = 1000
REPLAY_DEFAULT_LIMIT = 10_000
# A replay runs on a request thread of a worker that also answers Keycloak, holding the GIL the
# claims requests need: at ~4,000 replayed decisions/s (bench/RESULTS.md) 20,000 is ~5 s of a
# worker's CPU (and inside the --timeout that kills a busy sync worker). Larger sets belong to
# `kpb replay --log`, which reads the log without touching the service.
REPLAY_MAX_LIMIT = 20_000
_REPLAY_HINT = " (replay larger sets with `kpb replay --log`)"
ACTIVATIONS_SHOWN = 20
_REPLAY_FIELDS = ("policy", "since", "until", "subject", "client", "limit")
_TRUE = ("1", "true", "yes")
_MAX_ACTOR = 200


# -- the JWKS cache ------------------------------------------------------------------------------


class JwksCache:
    """The admin realm's JWKS. It is fetched on first use, again when a token names an unknown
    ``kid`` (not more than once per ``JWKS_REFRESH_SECONDS``), and again when the held keys are
    older than ``JWKS_MAX_AGE_SECONDS``: a key rotated out of the realm stops being trusted
    within that time, without a restart.

    Thread-safe. A failed fetch keeps the keys already held.

    Args:
        fetch: ``fetch(url, timeout)`` returns the JWKS document (``token.fetch_jwks`` does an
            HTTP GET); it raises ``TokenError`` when it cannot.
        monotonic: seconds from a monotonic clock, used only for the rate limit.
    """

    def __init__(self, fetch: Fetch = fetch_jwks, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.fetch = fetch
        self.fetches = 0
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._url: str | None = None
        self._document: Mapping[str, Any] | None = None
        self._attempted_at: float | None = None
        self._fetched_at: float | None = None

    def keys_for(self, url: str, kid: str | None) -> Mapping[str, Any]:
        """The JWKS to verify a token whose header names ``kid``. Pass ``None`` when the token
        gives no kid or cannot be verified anyway; then the cache is never refreshed for it.

        Raises:
            AdminKeysUnavailableError: no JWKS has been fetched yet, and a fetch failed now or
                was tried too recently.
        """
        with self._lock:
            if url != self._url:
                self._url, self._document, self._attempted_at = url, None, None
            now = self._monotonic()
            waited = None if self._attempted_at is None else now - self._attempted_at
            if self._document is None:
                due = waited is None or waited >= JWKS_RETRY_SECONDS
            else:
                stale = self._fetched_at is None or now - self._fetched_at >= JWKS_MAX_AGE_SECONDS
                unknown = kid is not None and kid not in _kids(self._document)
                due = kid is not None and (stale or unknown) and (waited is None or waited >= JWKS_REFRESH_SECONDS)
            if due:
                self._attempted_at = now
                self.fetches += 1
                try:
                    document = self.fetch(url, JWKS_TIMEOUT_SECONDS)
                    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
                        raise TokenError(f"the JWKS at {url} is malformed (no 'keys' list)")
                    self._document, self._fetched_at = document, now
                except TokenError as exc:
                    LOG.warning("admin JWKS fetch failed (keeping %s): %s", "the cached keys" if self._document else "no keys", exc.message)
            if self._document is None:
                raise AdminKeysUnavailableError("the admin realm's signing keys (JWKS) cannot be fetched; try again shortly")
            return self._document


def _kids(document: Mapping[str, Any]) -> set[str]:
    return {k["kid"] for k in document.get("keys", ()) if isinstance(k, Mapping) and isinstance(k.get("kid"), str)}


@admin.record_once
def _install_jwks_cache(state: BlueprintSetupState) -> None:
    state.app.extensions.setdefault(JWKS_EXTENSION, JwksCache())


# -- authorization -------------------------------------------------------------------------------


@admin.before_request
def _authorize() -> Response | None:
    """Refuse the request unless it carries a valid admin token; record its actor in ``g``."""
    ext = current_app.extensions["kpb"]
    settings: Settings = ext["settings"]
    if not settings.admin_enabled:
        return error_response(
            AdminDisabledError("the admin API is not configured (set KPB_ADMIN_JWKS_URL, KPB_ADMIN_ISSUER and KPB_ADMIN_AUDIENCE)")
        )
    header = request.headers.get("Authorization", "")
    if not header.strip():
        return _unauthorized("missing_token", "no bearer token: send Authorization: Bearer <access token>")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return _unauthorized("not_bearer", "the Authorization header is not a Bearer token")
    try:
        claims = verify_bearer(token, settings, ext["clock"]())
    except TokenError as exc:
        return _unauthorized("invalid_token", f"the bearer token was refused: {exc.message}")
    actor = _actor(claims)
    if actor is None:
        return _unauthorized("no_subject", "the bearer token names no subject (sub or preferred_username)")
    if not has_role(claims, settings.admin_role, settings.admin_audience):
        LOG.warning(
            "admin request refused (forbidden): %s lacks the %s role: %s %s", actor, settings.admin_role, request.method, request.path
        )
        response = error_response(
            ForbiddenError(
                f"the token does not carry the {settings.admin_role} role "
                f"(realm_access.roles or resource_access.{settings.admin_audience}.roles)"
            )
        )
        response.headers["WWW-Authenticate"] = 'Bearer error="insufficient_scope"'
        return response
    g.kpb_admin_actor = actor
    return None


def verify_bearer(token: str, settings: Settings, now: datetime) -> dict[str, Any]:
    """The claims of ``token``, a Keycloak access token of the configured realm (``KPB_ADMIN_*``:
    issuer, audience, JWKS) verified at ``now``; shared by the admin API and the AuthZEN callers.

    Raises:
        TokenError: refused (signature, issuer, audience, expiry, algorithm, or not a bearer token).
    """
    header = token_header(token)
    kid = header.get("kid")
    # A token that will be refused for its algorithm must not trigger a JWKS refresh.
    refresh_kid = kid if isinstance(kid, str) and header.get("alg") in ALLOWED_ALGORITHMS else None
    cache: JwksCache = current_app.extensions[JWKS_EXTENSION]
    assert settings.admin_jwks_url is not None  # admin_enabled
    jwks = cache.keys_for(settings.admin_jwks_url, refresh_kid)
    claims = verify_token(
        token, jwks=jwks, issuer=settings.admin_issuer, audience=settings.admin_audience, now=now, leeway=TOKEN_LEEWAY_SECONDS
    )
    # Keycloak marks its tokens: an ID token ("ID") for the same audience is not a bearer credential.
    if claims.get("typ", "Bearer") != "Bearer":
        raise TokenError("the token is not an access token (its typ claim is not Bearer)")
    return claims


def has_role(claims: Mapping[str, Any], role: str, audience: str | None) -> bool:
    """Whether verified ``claims`` carry ``role`` as a realm role or a client role of ``audience``."""
    holders = [claims.get("realm_access")]
    resource_access = claims.get("resource_access")
    if audience is not None and isinstance(resource_access, Mapping):
        holders.append(resource_access.get(audience))
    for holder in holders:
        roles = holder.get("roles") if isinstance(holder, Mapping) else None
        if isinstance(roles, list) and role in roles:
            return True
    return False


def _actor(claims: Mapping[str, Any]) -> str | None:
    """``preferred_username (sub)``, or whichever of the two the token carries."""
    sub, name = (claims.get(k) for k in ("sub", "preferred_username"))
    sub = sub.strip()[:_MAX_ACTOR] if isinstance(sub, str) and sub.strip() else None
    name = name.strip()[:_MAX_ACTOR] if isinstance(name, str) and name.strip() else None
    if sub and name and sub != name:
        return f"{name} ({sub})"
    return name or sub


def _unauthorized(reason: str, message: str) -> Response:
    LOG.warning("admin request refused (%s): %s %s: %s", reason, request.method, request.path, message)
    response = error_response(AuthenticationError(message, reason=reason))
    response.headers["WWW-Authenticate"] = 'Bearer realm="kpb-admin"' if reason == "missing_token" else 'Bearer error="invalid_token"'
    return response


# -- routes -------------------------------------------------------------------------------------


@admin.get("/v1/decisions")
def list_decisions() -> Response:
    """Decision records matching the query parameters, newest first."""
    args = request.args
    effect = _param(args, "effect")
    if effect not in (None, "permit", "deny"):
        raise ParameterError("effect must be permit or deny")
    query = Query(
        subject=_param(args, "subject"),
        client=_param(args, "client"),
        effect=effect,
        rule=_param(args, "rule"),
        since=_instant_param(args, "since"),
        until=_instant_param(args, "until"),
        limit=_limit(args.get("limit"), "limit", DECISIONS_DEFAULT_LIMIT, DECISIONS_MAX_LIMIT),
    )
    log = _log()
    # The stored documents, as `kpb decisions show` prints them.
    return json_response({"decisions": [log.document(record.decision_id) for record in log.query(query)]})


@admin.get("/v1/decisions/<decision_id>")
def get_decision(decision_id: str) -> Response:
    """One decision record, its stored document (404 ``decision_not_found``)."""
    return json_response(_log().document(decision_id))


@admin.get("/v1/decisions/<decision_id>/explain")
def explain_decision(decision_id: str) -> Response:
    """Why the decision came out as it did, and whether the active inputs still grant each value
    (a subject joined by a masked key is joined with the service's masking key)."""
    bridge = _bridge()
    record = _log().get(decision_id)
    policy, snapshot = bridge.policy, bridge.store.snapshot
    current = (policy, snapshot, bridge.store.feeds()) if policy is not None and snapshot is not None else None
    key: bytes = current_app.extensions["kpb"]["settings"].mask_key
    masker = Masker((), key) if key else None
    explanation = explain(record, _recorded_policy(bridge, record), current=current, now=_now(), masker=masker)
    return json_response({"explanation": explanation.to_dict()})


@admin.post("/v1/replay")
def replay_candidate() -> Response:
    """Replay recorded decisions under a candidate policy (recorded entitlements and feeds)."""
    body = _json_body()
    if not isinstance(body, dict):
        raise RequestError('the body is a JSON object: {"policy": {...}, "since"?, "until"?, "subject"?, "client"?, "limit"?}')
    if set(body) - set(_REPLAY_FIELDS):
        raise RequestError(f"the body has fields other than {', '.join(_REPLAY_FIELDS)}")
    document = body.get("policy")
    if not isinstance(document, dict):
        raise RequestError("policy (the candidate policy document, a JSON object) is required")
    candidate = compile_policy(document)  # PolicyError -> 400 with every issue
    query = Query(
        subject=_body_text(body, "subject"),
        client=_body_text(body, "client"),
        since=_body_instant(body, "since"),
        until=_body_instant(body, "until"),
        limit=_limit(body.get("limit"), "limit", REPLAY_DEFAULT_LIMIT, REPLAY_MAX_LIMIT, error=RequestError, hint=_REPLAY_HINT),
    )
    return json_response(_replay(_bridge(), candidate, query).to_dict())


@admin.get("/v1/policy")
def get_policy() -> Response:
    """The policy this process runs (document, identity, digest) and the latest activations
    recorded in the shared log (newest first: who activated which digest, when)."""
    bridge = _bridge()
    policy = bridge.policy
    if policy is None:
        raise NotReadyError("no valid policy is loaded")
    return json_response(
        {
            "policy": policy.document,
            "digest": policy.digest,
            "version": policy.version,
            "id": policy.policy_id,
            "activations": [a.to_dict() for a in bridge.policies.activations(limit=ACTIVATIONS_SHOWN)],
        },
    )


@admin.put("/v1/policy")
def put_policy() -> Response:
    """Validate the body as a policy, optionally gate it on a replay, and activate it.

    Query: ``gate=replay&last=N`` replays the last N decisions under the candidate first; if any
    would change, or could not be replayed, nothing is activated (409 ``replay_gate``) unless
    ``force=true``.
    """
    gate, last, force = _gate_params(request.args)
    body = _read_body()
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PolicyError("the request body is not UTF-8 text") from None
    document = load_policy_document(text, "the request body")
    candidate = compile_policy(document)  # PolicyError -> 400 with every issue; nothing changes
    bridge = _bridge()
    report: ReplayReport | None = None
    if gate:
        report = _replay(bridge, candidate, Query(limit=last))
        if (report.changed or report.errors) and not force:
            return error_response(
                ReplayGateError(
                    f"replaying the last {report.replayed} decision(s): {report.changed} would change and "
                    f"{report.errors} could not be replayed; nothing was activated (force=true activates anyway)"
                ),
                report=report.to_dict(),
            )
    actor: str = g.kpb_admin_actor
    previous = bridge.policy
    now = _now()
    activated = bridge.activate(candidate, by=actor, at=now)  # compiled once, above
    LOG.info(
        "policy %s (%s, version %s) activated by %s, replacing %s%s",
        activated.digest,
        activated.policy_id,
        activated.version,
        actor,
        previous.digest if previous is not None else "none",
        " (replay gate forced)" if gate and force else "",
    )
    return json_response(
        {
            "digest": activated.digest,
            "version": activated.version,
            "id": activated.policy_id,
            "activated_by": actor,
            "activated_at": format_rfc3339(now),
            "previous_digest": previous.digest if previous is not None else None,
            "replay": report.to_dict() if report is not None else None,
        },
    )


@admin.post("/v1/entitlements/reload")
def reload_entitlements() -> Response:
    """Reload the snapshot and every feed here, and ask every replica to do the same (``every_replica``);
    422 ``snapshot_rejected`` when the snapshot was refused here."""
    bridge = _bridge()
    store = bridge.store
    outcomes = store.reload_all()
    reloaded = {
        name: {"accepted": o.accepted, "rejection": o.rejection.to_dict() if o.rejection is not None else None}
        for name, o in outcomes.items()
    }
    now = _now()
    bridge.report(now)
    document: dict[str, Any] = {"reloaded": reloaded, "status": store.status(), "every_replica": _request_reload(bridge, now)}
    summary = ", ".join(f"{name} {'accepted' if o.accepted else 'rejected'}" for name, o in outcomes.items())
    LOG.info("entitlement reload by %s: %s", g.kpb_admin_actor, summary)
    snapshot = outcomes["entitlements"]
    if snapshot.accepted:
        return json_response(document)
    reason = snapshot.rejection.message if snapshot.rejection is not None else "rejected"
    return error_response(
        SnapshotRejectedError(f"the entitlement snapshot was rejected; the previous one stays active ({reason})"), **document
    )


def _request_reload(bridge: Bridge, now: datetime) -> dict[str, Any]:
    """Ask every replica to reload (after this process did): whether the request went out."""
    actor: str = g.kpb_admin_actor
    try:
        request_: ReloadRequest = bridge.channel.request_reload(actor, now)
    except DecisionLogError as exc:
        LOG.error("entitlement reload by %s: the other replicas could not be asked (%s)", actor, exc.message)
        return {"requested": False, "seq": None, "message": f"only this process reloaded: {exc.message}"}
    if not request_.shared:
        message = "only this process reloaded: one host without a shared database; the other workers reload when the export changes"
        return {"requested": False, "seq": None, "message": message}
    return {"requested": True, "seq": request_.seq, "message": "requested of every replica"}


@admin.get("/v1/replicas")
def list_replicas() -> Response:
    """Every live bridge process (replica name, host, pid) and the digests it serves, with the summary."""
    channel = _bridge().channel
    states = channel.replicas()  # DecisionLogError -> 503 decision_log_unavailable
    return json_response({"summary": summarize(states, channel.scope).to_dict(), "replicas": [s.to_dict() for s in states]})


@admin.errorhandler(PolicyError)
def _policy_error(exc: PolicyError) -> Response:
    """A rejected policy lists every issue with its JSON path, not only the first 20 in a message."""
    return error_response(exc, list_issues=True)


# -- helpers ------------------------------------------------------------------------------------


def _bridge() -> Bridge:
    bridge: Bridge = current_app.extensions["kpb"]["bridge"]
    return bridge


def _now() -> datetime:
    now: datetime = current_app.extensions["kpb"]["clock"]()
    return now


def _replay(bridge: Bridge, candidate: Policy, query: Query) -> ReplayReport:
    """The records ``query`` selects (the newest ``limit``), replayed oldest first under ``candidate``."""
    records = _log().query(query)
    return replay(reversed(records), candidate)


def _log() -> DecisionLogReader:
    """The decision log the routes read: the bridge's own (``Bridge.log`` is reader and writer)."""
    return _bridge().log


def _recorded_policy(bridge: Bridge, record: DecisionRecord) -> Policy:
    """The policy ``record`` was evaluated with: the active one when it is that one, else the
    stored one (``PolicyCache``: 404 ``decision_not_found`` when it is not stored; a stored
    document that no longer compiles or was modified is ``decision_log_unavailable``, not the
    caller's ``policy_invalid``)."""
    active = bridge.policy
    return PolicyCache(bridge.policies, known=(active,) if active is not None else ()).get(record.policy_digest)


def _read_body() -> bytes:
    """The body, at most ``admin_max_body_bytes`` however it is framed (413 ``body_too_large``)."""
    return read_body(current_app.extensions["kpb"]["settings"].admin_max_body_bytes)


def _json_body() -> Any:
    return parse_json_body(_read_body())  # strict: 400 invalid_json naming where


def _param(args: MultiDict[str, str], name: str) -> str | None:
    value = args.get(name)
    return value if value else None


def _instant_param(args: MultiDict[str, str], name: str) -> datetime | None:
    text = _param(args, name)
    return _instant(text, name, ParameterError) if text is not None else None


def _instant(text: str, name: str, error: type[BridgeError]) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise error(f"{name} must be an RFC 3339 timestamp with an offset (2026-11-28T08:00:00Z)") from None


def _body_text(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise RequestError(f"{name} must be a string")
    return value or None


def _body_instant(body: Mapping[str, Any], name: str) -> datetime | None:
    text = _body_text(body, name)
    return _instant(text, name, RequestError) if text is not None else None


def _limit(value: Any, name: str, default: int, maximum: int, error: type[BridgeError] = ParameterError, hint: str = "") -> int:
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise error(f"{name} must be a whole number from 1 to {maximum}{hint}")
    return value


def _gate_params(args: MultiDict[str, str]) -> tuple[bool, int, bool]:
    gate = _param(args, "gate")
    if gate not in (None, "replay"):
        raise ParameterError("gate must be replay (with last=N)")
    if gate is None and args.get("last"):
        raise ParameterError("last applies to gate=replay")
    if gate is not None and not args.get("last"):
        raise ParameterError("gate=replay needs last=N, the number of recent decisions to replay")
    last = _limit(args.get("last"), "last", REPLAY_DEFAULT_LIMIT, REPLAY_MAX_LIMIT, hint=_REPLAY_HINT)
    force = (args.get("force") or "").lower() in _TRUE
    return gate is not None, last, force
