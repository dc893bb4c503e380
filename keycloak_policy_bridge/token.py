"""Tokens as evidence: verify a JWT, and find the claims its recorded decision does not account for.

``verify_token`` checks a Keycloak-issued JWT with pyjwt against an explicit algorithm
allowlist (asymmetric only). ``alg: none`` and every HMAC algorithm are refused before any key
is touched: an HS256 token "verified" with a public key as the HMAC secret is the classic
algorithm-confusion forgery, since the public key is public. Expiry and not-before are judged
against the caller's ``now``, never the wall clock, so an old token can be checked as of the
moment it was used.

``explain_token`` compares a token's claims with its decision record (``authz_decision_id``)
and reports every claim the decision does not account for: governed claims whose values
differ, claims the decision removed but the token still carries, and claims that are neither
governed nor standard JWT/OIDC/Keycloak claims.

Error messages never repeat the token or its claim values (the algorithm name is the one
exception, and only when it is a short plain identifier).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.errors import TokenError
from keycloak_policy_bridge.policy import KEYCLOAK_TYPED_CLAIMS, RESERVED_CLAIMS
from keycloak_policy_bridge.record import DecisionRecord

ALLOWED_ALGORITHMS: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
JWKS_TIMEOUT_SECONDS = 5.0
DECISION_CLAIM = "authz_decision_id"
# Claims a token carries whatever the decision said: the ones a policy may not set (the JWT/OIDC
# envelope, act/may_act, the mapper's own), Keycloak's typed claims, and the few Keycloak adds
# that neither list names (client-credentials tokens' client fields, amr). One source: policy.py.
STANDARD_CLAIMS: frozenset[str] = RESERVED_CLAIMS | KEYCLOAK_TYPED_CLAIMS | {"amr", "client_id", "clientId", "clientHost", "clientAddress"}
_RSA = ("RS256", "RS384", "RS512", "PS256")
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1"}
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9+_-]{1,20}$")

Fetch = Callable[[str, float], Any]


def fetch_jwks(url: str, timeout: float) -> Any:
    """GET ``url`` with ``requests`` and return its JSON body (the default JWKS fetcher).

    Raises:
        TokenError: the request failed, timed out, was not 200, or the body is not JSON.
    """
    import requests  # only the JWKS path needs it

    try:
        response = requests.get(url, timeout=timeout, headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise TokenError(f"cannot fetch the JWKS from {url} ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise TokenError(f"cannot fetch the JWKS from {url} (HTTP {response.status_code})")
    try:
        return response.json()
    except ValueError:
        raise TokenError(f"the JWKS at {url} is not JSON") from None


def token_header(token: str) -> dict[str, Any]:
    """The token's JOSE header, unverified.

    Raises:
        TokenError: the text is not a compact JWS.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("the token is not a JWT (its header cannot be decoded)") from None
    return dict(header)


def decode_unverified(token: str) -> dict[str, Any]:
    """The token's claims WITHOUT checking signature, algorithm, expiry, issuer or audience.

    For looking at a token whose key is not at hand; anything derived from it must be labelled
    unverified.

    Raises:
        TokenError: the text is not a JWT or its payload is not a JSON object.
    """
    token_header(token)
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenError("the token is not a JWT (its payload cannot be decoded)") from None
    return dict(claims)


def verify_token(
    token: str,
    *,
    jwks: Mapping[str, Any] | None = None,
    jwks_url: str | None = None,
    public_key_pem: bytes | None = None,
    issuer: str | None,
    audience: str | None,
    now: datetime,
    leeway: int = 0,
    fetch: Fetch = fetch_jwks,
) -> dict[str, Any]:
    """Verify ``token`` and return its claims.

    Exactly one key source is used: ``jwks`` (a JWKS document), ``jwks_url`` (fetched with
    ``fetch(url, 5.0)``) or ``public_key_pem``. From a JWKS the key is chosen by the header's
    ``kid`` (a token without ``kid`` is accepted only when the set holds exactly one usable key).

    Checks, in order: the header parses; ``alg`` is in ``ALLOWED_ALGORITHMS`` (``none`` and HS*
    are refused by name); the key suits the algorithm (type, curve, JWK ``alg``/``use``); the
    signature; ``exp`` (required), ``nbf`` and ``iat`` against ``now`` with ``leeway`` seconds;
    ``iss`` when ``issuer`` is given; ``aud`` (string or list) when ``audience`` is given.

    Raises:
        TokenError: naming the check that failed, never the token or its claim values.
        ValueError: no key source or several were given, ``now`` is naive, or leeway < 0.
    """
    if sum(x is not None for x in (jwks, jwks_url, public_key_pem)) != 1:
        raise ValueError("give exactly one of jwks, jwks_url or public_key_pem")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if leeway < 0:
        raise ValueError("leeway must be >= 0")
    header = token_header(token)
    alg = _check_algorithm(header.get("alg"))
    if public_key_pem is not None:
        key: Any = _pem_key(public_key_pem, alg)
    else:
        document = jwks if jwks is not None else fetch(jwks_url or "", JWKS_TIMEOUT_SECONDS)
        key = _jwks_key(document, header.get("kid"), alg)
    try:
        # pyjwt checks the signature only; every claim is judged below against `now`, because
        # pyjwt reads the wall clock for exp/nbf/iat.
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
                "require": [],
                "enforce_minimum_key_length": True,
            },
        )
    except jwt.InvalidSignatureError:
        raise TokenError(f"the token's {alg} signature does not verify with the given key") from None
    except jwt.InvalidKeyError:
        raise TokenError(f"the key cannot verify {alg} signatures (wrong type, or too short)") from None
    except jwt.PyJWTError:
        raise TokenError("the token is not a valid JWS (its payload or signature cannot be decoded)") from None
    _check_claims(claims, issuer, audience, now.timestamp(), leeway)
    return dict(claims)


def _check_algorithm(alg: Any) -> str:
    if not isinstance(alg, str) or not alg:
        raise TokenError("the token's header has no algorithm (alg)")
    name = alg if _PLAIN_NAME.match(alg) else "an unrecognised algorithm"
    if alg.lower() == "none":
        raise TokenError("the token is unsigned (alg: none); unsigned tokens are never accepted")
    if alg.upper().startswith("HS"):
        raise TokenError(
            f"the token uses {name}, a shared-secret HMAC algorithm; only asymmetric algorithms are accepted "
            f"(an HMAC token checked against a public key is the algorithm-confusion forgery)"
        )
    if alg not in ALLOWED_ALGORITHMS:
        raise TokenError(f"the token uses {name}, which is not allowed (allowed: {', '.join(ALLOWED_ALGORITHMS)})")
    return alg


def _pem_key(pem: bytes, alg: str) -> Any:
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise TokenError("the public key is not a PEM-encoded public key") from None
    _check_key_type(key, alg)
    return key


def _jwks_key(document: Any, kid: Any, alg: str) -> Any:
    keys = document.get("keys") if isinstance(document, Mapping) else None
    if not isinstance(keys, list):
        raise TokenError("the JWKS is malformed (no 'keys' list)")
    candidates = [k for k in keys if isinstance(k, Mapping) and k.get("use", "sig") == "sig"]
    if kid is None:
        usable = [k for k in candidates if k.get("alg") in (None, alg)]
        if len(usable) != 1:
            raise TokenError(f"the token has no key id (kid) and the JWKS holds {len(usable)} candidate keys")
        chosen = usable[0]
    else:
        matching = [k for k in candidates if k.get("kid") == kid]
        if not matching:
            raise TokenError(f"the token's key id (kid) is not in the JWKS ({len(keys)} key(s))")
        chosen = matching[0]
    if chosen.get("alg") not in (None, alg):
        raise TokenError(f"the JWKS key for the token's kid is for another algorithm than {alg}")
    try:
        key = jwt.PyJWK(dict(chosen), algorithm=alg).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise TokenError(f"the JWKS key for the token's kid is not a usable {alg} key") from None
    _check_key_type(key, alg)
    return key


def _check_key_type(key: Any, alg: str) -> None:
    if alg in _RSA:
        ok = isinstance(key, rsa.RSAPublicKey)
    elif alg in _EC_CURVES:
        ok = isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVES[alg]
    else:  # EdDSA
        ok = isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    if not ok:
        raise TokenError(f"the key is not a public key for {alg}")


def _check_claims(claims: Mapping[str, Any], issuer: str | None, audience: str | None, now: float, leeway: int) -> None:
    def number(name: str) -> float | None:
        value = claims.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TokenError(f"the token's {name} claim is not a number")
        return float(value)

    exp, nbf, iat = number("exp"), number("nbf"), number("iat")
    if exp is None:
        raise TokenError("the token has no exp claim")
    if now >= exp + leeway:
        raise TokenError(f"the token expired {int(now - exp)}s before the time it is checked at")
    if nbf is not None and now < nbf - leeway:
        raise TokenError("the token is not valid yet (nbf is after the time it is checked at)")
    if iat is not None and now < iat - leeway:
        raise TokenError("the token was issued after the time it is checked at (iat)")
    if issuer is not None and claims.get("iss") != issuer:
        raise TokenError(f"the token's issuer (iss) is not {issuer}")
    if audience is not None:
        aud = claims.get("aud")
        values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience not in values:
            raise TokenError(f"the token's audience (aud) does not include {audience}")


# -- findings ---------------------------------------------------------------------------------


def decision_id_of(claims: Mapping[str, Any]) -> str:
    """The token's ``authz_decision_id``.

    Raises:
        TokenError: the claim is missing or not a short string.
    """
    value = claims.get(DECISION_CLAIM)
    if not isinstance(value, str) or not value or len(value) > 64:
        raise TokenError(f"the token carries no usable {DECISION_CLAIM} claim")
    return value


@dataclass(frozen=True)
class Finding:
    """One claim of a token its recorded decision does not account for.

    ``kind``: ``extra_values`` / ``missing_values`` (a governed list claim differs),
    ``value_differs`` (a governed single value or object differs), ``missing_claim`` (a
    governed claim is absent), ``removed_claim_present`` (the decision removed it),
    ``unaccounted`` (neither governed nor standard), ``denied_decision`` (the decision denied).
    """

    claim: str
    kind: str
    message: str
    extra: tuple[Any, ...] = ()
    missing: tuple[Any, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "kind": self.kind, "message": self.message, "extra": list(self.extra), "missing": list(self.missing)}


@dataclass(frozen=True)
class TokenFindings:
    """The comparison of a token with its decision record; ``clean`` when nothing is unaccounted."""

    decision_id: str
    governed: tuple[str, ...]
    findings: tuple[Finding, ...]

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "governed": list(self.governed),
            "clean": self.clean,
            "findings": [f.to_dict() for f in self.findings],
        }


_ABSENT = object()


def explain_token(claims: Mapping[str, Any], record: DecisionRecord) -> TokenFindings:
    """Compare a token's ``claims`` with the decision ``record`` its ``authz_decision_id`` names.

    Governed claims are the claims of the recorded decision. A claim name with dots that is not a
    top-level claim of the token is looked up as a nested path (Keycloak's mapper convention).
    A list claim carried as a single scalar is compared as a one-element list.

    Raises:
        TokenError: the token has no ``authz_decision_id`` or names another decision.
    """
    decision_id = decision_id_of(claims)
    if decision_id != record.decision_id:
        raise TokenError("the token's authz_decision_id is not the decision of this record")
    decision = record.decision
    governed: dict[str, Any] = dict(decision.claims)
    removed = [c for c in decision.remove_claims if c not in governed]
    findings: list[Finding] = []
    if not decision.permitted:
        findings.append(Finding(DECISION_CLAIM, "denied_decision", "the recorded decision is a deny; no token should carry it"))
    for claim, recorded in governed.items():
        findings.extend(_compare(claim, recorded, _lookup(claims, claim)))
    for claim in removed:
        if _lookup(claims, claim) is not _ABSENT:
            findings.append(Finding(claim, "removed_claim_present", "the decision removed this claim, but the token carries it"))
    roots = {c.split(".", 1)[0] for c in governed}
    for claim in sorted(claims):
        if claim in governed or claim in roots or claim in removed or claim in STANDARD_CLAIMS:
            continue
        findings.append(Finding(claim, "unaccounted", "neither governed by the decision nor a standard JWT/OIDC/Keycloak claim"))
    return TokenFindings(decision_id, tuple(sorted(governed)), tuple(findings))


def _lookup(claims: Mapping[str, Any], name: str) -> Any:
    if name in claims:
        return claims[name]
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _compare(claim: str, recorded: Any, carried: Any) -> list[Finding]:
    if carried is _ABSENT:
        if recorded == []:
            return []  # an empty list claim may be left out of the token
        return [
            Finding(
                claim,
                "missing_claim",
                "the decision granted this claim, but the token does not carry it",
                missing=tuple(recorded) if isinstance(recorded, list) else (recorded,),
            )
        ]
    if isinstance(recorded, list):
        carried_list = carried if isinstance(carried, list) else [carried]
        want = {_key(v): v for v in recorded}
        have = {_key(v): v for v in carried_list}
        out = []
        extra = tuple(v for k, v in have.items() if k not in want)
        missing = tuple(v for k, v in want.items() if k not in have)
        if extra:
            out.append(Finding(claim, "extra_values", f"the token carries {len(extra)} value(s) the decision did not grant", extra=extra))
        if missing:
            out.append(Finding(claim, "missing_values", f"the token lacks {len(missing)} value(s) the decision granted", missing=missing))
        return out
    if _key(recorded) != _key(carried):
        return [Finding(claim, "value_differs", "the token's value differs from the decision's", extra=(carried,), missing=(recorded,))]
    return []


def _key(value: Any) -> bytes:
    """A comparison key for a claim value (json.loads accepts NaN, which canonical JSON refuses)."""
    try:
        return canonical_json(value)
    except (TypeError, ValueError):
        return repr(value).encode("utf-8")
