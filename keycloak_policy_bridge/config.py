"""Service settings, read once at start-up from the environment (``KPB_*``) and validated.

Every problem names its variable; secrets are never printed. The bridge refuses to start
without a caller-authentication secret unless ``KPB_INSECURE_DEV=1`` says, loudly, that this is
a development instance. The admin API is off unless ``KPB_ADMIN_JWKS_URL``, ``KPB_ADMIN_ISSUER``
and ``KPB_ADMIN_AUDIENCE`` are all set (``KPB_ADMIN_ROLE`` defaults to ``kpb-admin``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from keycloak_policy_bridge.errors import ConfigError, Issue

MIN_SECRET_BYTES = 32
DEFAULT_ADMIN_ROLE = "kpb-admin"
DEFAULT_ADMIN_MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything ``kpb serve`` and ``create_app`` need."""

    policy: Path = Path("examples/acme/policy.json")
    entitlements: Path = Path("examples/acme/entitlements")
    feeds: tuple[tuple[str, Path], ...] = ()
    decision_log: Path = Path("var/decisions.db")
    decision_log_sync: str = "full"  # "normal": no fsync per commit (survives a bridge crash, not a power loss)
    hmac_secrets: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    insecure_dev: bool = False
    max_body_bytes: int = 64 * 1024
    max_clock_skew_seconds: int = 300
    mask_paths: tuple[str, ...] = ()
    mask_key: bytes = field(default=b"", repr=False)
    token_ttl_seconds: int | None = None
    watch_interval_seconds: float = 5.0
    # Admin API (bearer JWTs from Keycloak). All three of URL, issuer and audience, or none:
    # without them the admin routes answer 503 admin_disabled.
    admin_jwks_url: str | None = None
    admin_issuer: str | None = None
    admin_audience: str | None = None
    admin_role: str = DEFAULT_ADMIN_ROLE
    admin_max_body_bytes: int = DEFAULT_ADMIN_MAX_BODY_BYTES  # policy documents outgrow the claims limit

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

        secrets = []
        for item in (get("HMAC_SECRETS") or "").split(","):
            if not item.strip():
                continue
            key_id, sep, hex_secret = item.strip().partition("=")
            try:
                secret = bytes.fromhex(hex_secret) if sep else b""
            except ValueError:
                secret = b""
            if not sep or not key_id or len(secret) < MIN_SECRET_BYTES:
                issues.append(Issue(prefix + "HMAC_SECRETS", f"entries are key_id=<hex of at least {MIN_SECRET_BYTES} bytes>; "
                                                            f"entry {key_id or '?'!r} is not"))  # fmt: skip
                continue
            secrets.append((key_id, secret))
        insecure = (get("INSECURE_DEV") or "").lower() in ("1", "true", "yes")
        if not secrets and not insecure:
            issues.append(Issue(prefix + "HMAC_SECRETS", "is required: the bridge authenticates its callers "
                                                        f"(or set {prefix}INSECURE_DEV=1 for a development instance)"))  # fmt: skip
        feeds = []
        for item in (get("FEEDS") or "").split(","):
            if item.strip():
                name, sep, path = item.strip().partition("=")
                if not sep or not name or not path:
                    issues.append(Issue(prefix + "FEEDS", f"entries are name=directory; {item.strip()!r} is not"))
                else:
                    feeds.append((name, Path(path)))
        mask_paths = tuple(p.strip() for p in (get("MASK_PATHS") or "").split(",") if p.strip())
        mask_key = (get("MASK_KEY") or "").encode()
        if mask_paths and len(mask_key) < 16:
            issues.append(Issue(prefix + "MASK_KEY", f"is required (at least 16 characters) when {prefix}MASK_PATHS is set"))
        ttl_text = get("TOKEN_TTL_SECONDS")
        log_sync = (get("DECISION_LOG_SYNC") or "full").lower()
        if log_sync not in ("full", "normal"):
            issues.append(Issue(prefix + "DECISION_LOG_SYNC", "must be full (fsync at every decision, the default) or normal"))
        settings = cls(
            policy=Path(get("POLICY") or cls.policy),
            entitlements=Path(get("ENTITLEMENTS") or cls.entitlements),
            feeds=tuple(feeds),
            decision_log=Path(get("DECISION_LOG") or cls.decision_log),
            decision_log_sync=log_sync,
            hmac_secrets=tuple(secrets),
            insecure_dev=insecure,
            max_body_bytes=number("MAX_BODY_BYTES", cls.max_body_bytes, 1024),
            max_clock_skew_seconds=number("MAX_CLOCK_SKEW_SECONDS", cls.max_clock_skew_seconds),
            mask_paths=mask_paths,
            mask_key=mask_key,
            token_ttl_seconds=number("TOKEN_TTL_SECONDS", 0) if ttl_text else None,
            watch_interval_seconds=float(number("WATCH_INTERVAL_SECONDS", 5)),
        )
        settings = _admin_from_env(settings, get, number, issues, prefix)
        if issues:
            raise ConfigError(f"configuration is invalid: {len(issues)} problem(s)", issues)
        return settings


def _admin_from_env(settings: Settings, get: Callable[[str], str | None], number: Callable[[str, int, int], int],
                    issues: list[Issue], prefix: str) -> Settings:  # fmt: skip
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
    return replace(
        settings,
        admin_jwks_url=jwks_url,
        admin_issuer=issuer,
        admin_audience=audience,
        admin_role=role or DEFAULT_ADMIN_ROLE,
        admin_max_body_bytes=number("ADMIN_MAX_BODY_BYTES", DEFAULT_ADMIN_MAX_BODY_BYTES, 1024),
    )
