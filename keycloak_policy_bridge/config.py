"""Service settings, read once at start-up from the environment (``KPB_*``) and validated.

Every problem names its variable; secrets are never printed. The bridge refuses to start
without a caller-authentication secret unless ``KPB_INSECURE_DEV=1`` says, loudly, that this is
a development instance, and without the policy and the entitlement snapshot it serves
(``KPB_POLICY``, ``KPB_ENTITLEMENTS``: no default, so that a service never runs on the examples by
accident). The admin API is off unless ``KPB_ADMIN_JWKS_URL``, ``KPB_ADMIN_ISSUER`` and
``KPB_ADMIN_AUDIENCE`` are all set (``KPB_ADMIN_ROLE`` defaults to ``kpb-admin``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from keycloak_policy_bridge.context_feed import unique_feed_names
from keycloak_policy_bridge.errors import ConfigError, DuplicateFeedError, Issue
from keycloak_policy_bridge.signature import KEY_ID_RULE, valid_key_id

MIN_SECRET_BYTES = 32
DEFAULT_ADMIN_ROLE = "kpb-admin"
DEFAULT_ADMIN_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_AUTHZEN_ROLE = "kpb-authzen"
DEFAULT_AUTHZEN_MAX_BODY_BYTES = 256 * 1024
DEFAULT_AUTHZEN_MAX_EVALUATIONS = 100
DATABASE_URL_PREFIXES = ("postgresql://", "postgres://")  # what KPB_DATABASE_URL may be (kpb serve and every kpb command)
_SWITCH = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class Settings:
    """Everything ``kpb serve`` and ``create_app`` need. ``policy`` and ``entitlements`` have no
    default: a deployment names its own (``KPB_POLICY``, ``KPB_ENTITLEMENTS``)."""

    policy: Path
    entitlements: Path
    feeds: tuple[tuple[str, Path], ...] = ()
    decision_log: Path = Path("var/decisions.db")
    # A shared PostgreSQL decision log and policy store (replicas on several hosts); None: the
    # SQLite file ``decision_log``. Never shown: a URL may carry a password.
    database_url: str | None = field(default=None, repr=False)
    decision_log_sync: str = "full"  # "normal": no fsync per commit (survives a bridge crash, not a power loss)
    hmac_secrets: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    # Seal policy activations in the shared decision log (decision_log.ActivationKeys); the first
    # seals, all verify. Unset: derived from hmac_secrets (weaker: the mapper's side holds those).
    activation_keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    insecure_dev: bool = False
    max_body_bytes: int = 64 * 1024
    max_clock_skew_seconds: int = 300
    mask_paths: tuple[str, ...] = ()
    mask_key: bytes = field(default=b"", repr=False)
    token_ttl_seconds: int | None = None
    watch_interval_seconds: float = 5.0
    # The name this replica's heartbeats carry (decision_log.replicas); None: the host name
    # (``kpb serve`` sets host:port, so that two replicas on one host stay apart).
    replica_name: str | None = None
    # Admin API (bearer JWTs from Keycloak). All three of URL, issuer and audience, or none:
    # without them the admin routes answer 503 admin_disabled.
    admin_jwks_url: str | None = None
    admin_issuer: str | None = None
    admin_audience: str | None = None
    admin_role: str = DEFAULT_ADMIN_ROLE
    admin_max_body_bytes: int = DEFAULT_ADMIN_MAX_BODY_BYTES  # policy documents outgrow the claims limit
    # AuthZEN PDP (issue 16; api/authzen.py): bearer callers need this role (the admin API's realm,
    # issuer and audience); batches and bodies are bounded; the PDP identifier, None: the request's host URL.
    authzen_role: str = DEFAULT_AUTHZEN_ROLE
    authzen_max_body_bytes: int = DEFAULT_AUTHZEN_MAX_BODY_BYTES
    authzen_max_evaluations: int = DEFAULT_AUTHZEN_MAX_EVALUATIONS
    authzen_pdp_url: str | None = None
    # Run the simple CEL shapes natively (cel_native.ENABLED, set by the adapter); off, CEL runs
    # every expression: the same decisions, slower.
    cel_native: bool = True
    # Where compiled entitlement snapshots go (snapshot_compiler; shared by the workers of this
    # host); None: "snapshots" beside the decision log. snapshot_in_memory: each worker loads
    # the export into its own heap instead (KPB_SNAPSHOT_CACHE=memory).
    snapshot_cache: Path | None = None
    snapshot_in_memory: bool = False

    @property
    def snapshot_directory(self) -> Path | None:
        """Where the entitlement export is compiled, or None when it is loaded into each worker."""
        if self.snapshot_in_memory:
            return None
        return self.snapshot_cache if self.snapshot_cache is not None else self.decision_log.parent / "snapshots"

    @property
    def admin_enabled(self) -> bool:
        """True when the admin API can verify tokens: JWKS URL, issuer and audience are all set."""
        return bool(self.admin_jwks_url and self.admin_issuer and self.admin_audience)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], prefix: str = "KPB_") -> Settings:
        """Build and validate settings from ``environ``.

        Raises:
            ConfigError: every problem, each naming its variable.
        """
        issues: list[Issue] = []

        def get(name: str) -> str | None:
            value = environ.get(prefix + name)
            return value if value not in (None, "") else None

        def number(name: str, default: int, minimum: int = 1) -> int:
            text = get(name)
            if text is None:
                return default
            try:
                value = int(text)
            except ValueError:
                issues.append(Issue(prefix + name, "must be a whole number"))
                return default
            if value < minimum:
                issues.append(Issue(prefix + name, f"must be at least {minimum}"))
            return value

        known_issues = len(issues)
        secrets = _hmac_secrets(get("HMAC_SECRETS"), issues, prefix)
        insecure = (get("INSECURE_DEV") or "").lower() in ("1", "true", "yes")
        if not secrets and not insecure and len(issues) == known_issues:  # unset, or nothing but separators
            issues.append(
                Issue(
                    prefix + "HMAC_SECRETS",
                    f"is required: the bridge authenticates its callers (or set {prefix}INSECURE_DEV=1 for a development instance)",
                )
            )
        if insecure and get("HMAC_SECRETS") is not None:
            # Both set means a production secret on an instance told to accept anyone: refuse rather than guess.
            issues.append(
                Issue(
                    prefix + "INSECURE_DEV",
                    f"cannot be combined with {prefix}HMAC_SECRETS: unset one (a development instance has no caller secret)",
                )
            )
        required = {"POLICY": "the policy file to serve", "ENTITLEMENTS": "the entitlement snapshot directory to serve"}
        for name, what in required.items():
            if get(name) is None:
                issues.append(Issue(prefix + name, f"is required: {what} (there is no default)"))
        feeds = []
        for item in (get("FEEDS") or "").split(","):
            if item.strip():
                name, sep, path = item.strip().partition("=")
                if not sep or not name or not path:
                    issues.append(Issue(prefix + "FEEDS", f"entries are name=directory; {item.strip()!r} is not"))
                else:
                    feeds.append((name, Path(path)))
        try:
            unique_feed_names(feeds)
        except DuplicateFeedError as exc:
            issues.append(Issue(prefix + "FEEDS", exc.message))
        mask_paths = tuple(p.strip() for p in (get("MASK_PATHS") or "").split(",") if p.strip())
        mask_key = (get("MASK_KEY") or "").encode()
        if mask_paths and len(mask_key) < 16:
            issues.append(Issue(prefix + "MASK_KEY", f"is required (at least 16 characters) when {prefix}MASK_PATHS is set"))
        ttl_text = get("TOKEN_TTL_SECONDS")
        cel_native_text = (get("CEL_NATIVE") or "1").lower()
        if cel_native_text not in _SWITCH:
            issues.append(Issue(prefix + "CEL_NATIVE", "must be 1, true, yes or on (the default), or 0, false, no or off"))
        log_sync = (get("DECISION_LOG_SYNC") or "full").lower()
        if log_sync not in ("full", "normal"):
            issues.append(Issue(prefix + "DECISION_LOG_SYNC", "must be full (fsync at every decision, the default) or normal"))
        cache = (get("SNAPSHOT_CACHE") or "").strip()  # a directory, "memory", or unset
        database_url = (get("DATABASE_URL") or "").strip() or None
        if database_url is not None and not database_url.startswith(DATABASE_URL_PREFIXES):
            issues.append(Issue(prefix + "DATABASE_URL", "must be a postgresql:// URL (its value is not shown: it may hold a password)"))
        settings = cls(
            policy=Path(get("POLICY") or ""),  # unset: an issue above, raised below
            entitlements=Path(get("ENTITLEMENTS") or ""),
            feeds=tuple(feeds),
            decision_log=Path(get("DECISION_LOG") or cls.decision_log),
            database_url=database_url,
            decision_log_sync=log_sync,
            hmac_secrets=tuple(secrets),
            activation_keys=tuple(_hmac_secrets(get("ACTIVATION_KEYS"), issues, prefix, "ACTIVATION_KEYS")),
            insecure_dev=insecure,
            max_body_bytes=number("MAX_BODY_BYTES", cls.max_body_bytes, 1024),
            max_clock_skew_seconds=number("MAX_CLOCK_SKEW_SECONDS", cls.max_clock_skew_seconds),
            mask_paths=mask_paths,
            mask_key=mask_key,
            token_ttl_seconds=number("TOKEN_TTL_SECONDS", 0) if ttl_text else None,
            watch_interval_seconds=float(number("WATCH_INTERVAL_SECONDS", 5)),
            replica_name=(get("REPLICA_NAME") or "").strip()[:200] or None,
            cel_native=_SWITCH.get(cel_native_text, True),
            snapshot_cache=Path(cache) if cache and cache.lower() != "memory" else None,
            snapshot_in_memory=cache.lower() == "memory",
        )
        settings = _admin_from_env(settings, get, number, issues, prefix)
        if issues:
            raise ConfigError(f"configuration is invalid: {len(issues)} problem(s)", issues)
        return settings


def _hmac_secrets(text: str | None, issues: list[Issue], prefix: str, variable: str = "HMAC_SECRETS") -> list[tuple[str, bytes]]:
    """Parse ``KPB_HMAC_SECRETS`` (``key_id=<hex>[,key_id=<hex>...]``); problems go to ``issues``.

    A malformed entry is named by its position, and by its key id only once that key id is known
    to be a well-formed id: whatever the mistake (a missing ``=``, ``:`` or a blank instead of
    ``=``, a secret pasted alone), no part of an entry that may be the secret reaches a message.
    """
    name = prefix + variable
    out: list[tuple[str, bytes]] = []
    entries = [item.strip() for item in (text or "").split(",") if item.strip()]
    for position, item in enumerate(entries, start=1):
        key_id, sep, hex_secret = item.partition("=")
        where = f"entry {position} of {len(entries)}"
        if not sep or not key_id:
            issues.append(Issue(name, f"{where} is not key_id=<hex secret> (no key id before '=')"))
            continue
        if not valid_key_id(key_id):
            issues.append(Issue(name, f"{where}: the key id is not valid ({KEY_ID_RULE})"))
            continue
        try:
            secret = bytes.fromhex(hex_secret)
        except ValueError:
            issues.append(Issue(name, f"{where} (key id {key_id!r}): the secret is not hexadecimal"))
            continue
        if len(secret) < MIN_SECRET_BYTES:
            issues.append(
                Issue(name, f"{where} (key id {key_id!r}): the secret has {len(secret)} bytes; at least {MIN_SECRET_BYTES} are required")
            )
            continue
        if any(known == key_id for known, _ in out):
            issues.append(Issue(name, f"{where}: key id {key_id!r} is given twice (each key id names one secret)"))
            continue
        out.append((key_id, secret))
    return out


def _admin_from_env(
    settings: Settings, get: Callable[[str], str | None], number: Callable[[str, int, int], int], issues: list[Issue], prefix: str
) -> Settings:
    """``settings`` with the admin API variables applied; problems are appended to ``issues``."""
    jwks_url, issuer, audience = get("ADMIN_JWKS_URL"), get("ADMIN_ISSUER"), get("ADMIN_AUDIENCE")
    given = {"ADMIN_JWKS_URL": jwks_url, "ADMIN_ISSUER": issuer, "ADMIN_AUDIENCE": audience}
    if any(given.values()):
        # A partial configuration would verify tokens without an issuer or audience check.
        for name, value in given.items():
            if value is None:
                issues.append(Issue(prefix + name, "is required when any of " + ", ".join(prefix + n for n in given) + " is set"))
    if jwks_url is not None and not jwks_url.startswith(("https://", "http://")):
        issues.append(Issue(prefix + "ADMIN_JWKS_URL", "must be an http(s) URL (the realm's .../protocol/openid-connect/certs)"))
    role = (get("ADMIN_ROLE") or DEFAULT_ADMIN_ROLE).strip()
    if not role:
        issues.append(Issue(prefix + "ADMIN_ROLE", "must not be blank"))
    authzen_role = (get("AUTHZEN_ROLE") or DEFAULT_AUTHZEN_ROLE).strip()
    if not authzen_role:
        issues.append(Issue(prefix + "AUTHZEN_ROLE", "must not be blank"))
    pdp_url = (get("AUTHZEN_PDP_URL") or "").strip().rstrip("/") or None
    if pdp_url is not None and (not pdp_url.startswith(("https://", "http://")) or "?" in pdp_url or "#" in pdp_url):
        issues.append(Issue(prefix + "AUTHZEN_PDP_URL", "must be an http(s) URL without query or fragment (the external base URL)"))
    return replace(
        settings,
        admin_jwks_url=jwks_url,
        admin_issuer=issuer,
        admin_audience=audience,
        admin_role=role or DEFAULT_ADMIN_ROLE,
        admin_max_body_bytes=number("ADMIN_MAX_BODY_BYTES", DEFAULT_ADMIN_MAX_BODY_BYTES, 1024),
        authzen_role=authzen_role or DEFAULT_AUTHZEN_ROLE,
        authzen_max_body_bytes=number("AUTHZEN_MAX_BODY_BYTES", DEFAULT_AUTHZEN_MAX_BODY_BYTES, 1024),
        authzen_max_evaluations=number("AUTHZEN_MAX_EVALUATIONS", DEFAULT_AUTHZEN_MAX_EVALUATIONS, 1),
        authzen_pdp_url=pdp_url,
    )


def secrets_from_env(environ: Mapping[str, str], variable: str, prefix: str = "KPB_") -> tuple[tuple[str, bytes], ...]:
    """``key_id=<hex>[,...]`` secrets from one variable (``HMAC_SECRETS``, ``ACTIVATION_KEYS``), for
    commands that need them without the whole service configuration (``kpb decisions verify``).

    Raises:
        ConfigError: naming the variable and the entry, never the secret.
    """
    issues: list[Issue] = []
    secrets = _hmac_secrets(environ.get(prefix + variable) or None, issues, prefix, variable)
    if issues:
        raise ConfigError(f"{prefix}{variable} is invalid", issues)
    return tuple(secrets)
