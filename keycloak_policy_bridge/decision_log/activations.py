"""Sealed policy activations: the rows, their chain link and MAC, and the keys that seal them.

Policy activations (the ``activations`` table every worker follows) have a chain of their own:
``hash = sha256(prev_hash || seq, digest, version, activated_by, activated_at)``, sealed by
``mac = HMAC-SHA256(activation key, log_id || hash)`` with a server-side secret
(``ActivationKeys``). Whoever can write the file can recompute the hash chain but not the MAC:
a worker follows only an activation whose MAC verifies and never one older than the one it
follows (``Bridge.sync_policy``); ``verify`` names the first forged, rewritten, inserted or
deleted activation. Deleting the newest activations leaves a valid shorter chain: checkpoints
record the activation head too, so a signed checkpoint taken before catches it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.errors import ConfigError
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339

MIN_ACTIVATION_KEY_BYTES = 32


@dataclass(frozen=True)
class ActivationKeys:
    """Server-side secrets that seal policy activations: ``HMAC-SHA256(key, log_id || hash)``.

    ``keys[0]`` seals new activations; every listed key verifies the activations it sealed (each
    row names its key id), so a rotated-out key stays listed while activations it sealed matter.
    ``source`` says where the keys come from (for messages and the start-up log); never a secret.

    Raises:
        ConfigError: no key, or a key shorter than 32 bytes (named by key id, never shown).
    """

    keys: tuple[tuple[str, bytes], ...] = field(repr=False)
    source: str = "KPB_ACTIVATION_KEYS"

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("no activation key")
        for key_id, secret in self.keys:
            if not isinstance(secret, bytes) or len(secret) < MIN_ACTIVATION_KEY_BYTES:
                raise ConfigError(f"activation key {key_id!r} is shorter than {MIN_ACTIVATION_KEY_BYTES} bytes")

    def seal(self, log_id: str, activation_hash: str) -> tuple[str, str]:
        """(key id, MAC) of an activation hash, with the first key."""
        key_id, secret = self.keys[0]
        return key_id, activation_mac(secret, log_id, activation_hash)

    def problem(self, key_id: str | None, mac: str | None, log_id: str, activation_hash: str) -> str | None:
        """None when ``mac`` is key ``key_id``'s MAC of ``activation_hash``; otherwise what is wrong."""
        secret = dict(self.keys).get(key_id or "")
        if secret is None or mac is None:
            return f"its MAC names key {key_id!r}, which is not configured ({self.source})" if key_id else "it has no MAC"
        if not hmac.compare_digest(activation_mac(secret, log_id, activation_hash), mac):
            return "its MAC does not verify: it was forged or rewritten without the activation key"
        return None


def derived_activation_keys(hmac_secrets: tuple[tuple[str, bytes], ...]) -> ActivationKeys:
    """Activation keys derived from the caller HMAC secrets, when no ``KPB_ACTIVATION_KEYS`` is set.

    One-way (``HMAC(secret, label)``), key ids ``hmac:<key id>``. Weaker than dedicated keys: the
    mapper's side (Keycloak) holds the HMAC secrets too, and rotating them retires the key.
    """
    keys = tuple((f"hmac:{key_id}", hmac.new(secret, b"kpb-activation-key/1", hashlib.sha256).digest()) for key_id, secret in hmac_secrets)
    return ActivationKeys(keys, "derived from KPB_HMAC_SECRETS")


def insecure_dev_activation_keys() -> ActivationKeys:
    """A public, fixed key for ``KPB_INSECURE_DEV`` instances: their activations are not protected."""
    return ActivationKeys(
        (("insecure-dev", hashlib.sha256(b"kpb insecure development activation key").digest()),),
        "insecure development mode: a public key, activations are not protected",
    )


@dataclass(frozen=True)
class Activation:
    """One row of ``activations``, as stored. ``hash`` is None for a row that was not sealed (written
    before sealing existed, or inserted by someone without the bridge's code and key)."""

    seq: int
    digest: str
    version: str
    activated_by: str
    activated_at: str  # fixed-width UTC text, as stored and hashed
    prev_hash: str | None = None
    hash: str | None = None
    key_id: str | None = None
    mac: str | None = None

    def describe(self) -> str:
        return f"activation seq {self.seq} (policy {self.digest[:19]} {self.version!r} by {self.activated_by!r})"

    def to_dict(self) -> dict[str, Any]:
        """The activation as the admin API shows it (no integrity columns)."""
        return {
            "digest": self.digest,
            "version": self.version,
            "activated_by": self.activated_by,
            "activated_at": format_rfc3339(parse_rfc3339(self.activated_at)),
        }


def activation_hash(prev: str, seq: int, policy_digest: str, version: str, by: str, at: str) -> str:
    """The activation chain's link: public, so anyone who can write the file can recompute it;
    the MAC over it (``activation_mac``) is what needs the key."""
    link = b"kpb-activation/1\n" + prev.encode("ascii") + b"\n" + canonical_json([seq, policy_digest, version, by, at])
    return hashlib.sha256(link).hexdigest()


def activation_mac(secret: bytes, log_id: str, activation_hash: str) -> str:
    """Bound to the log's id, so a sealed row copied from another log under the same key fails."""
    message = b"kpb-activation-mac/1\n" + log_id.encode("utf-8") + b"\n" + activation_hash.encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def activation_problem(activation: Activation, keys: ActivationKeys | None, log_id: str) -> str | None:
    """None when ``activation`` is sealed, unchanged and its MAC verifies with ``keys``; otherwise
    what is wrong (for a refusal's log line and metric). Backend-independent."""
    if keys is None:
        return "no activation key is configured to check it with"
    if activation.hash is None or activation.prev_hash is None:
        return "it is not sealed (no hash or MAC): it was not recorded by a bridge holding the activation key"
    recomputed = activation_hash(
        activation.prev_hash, activation.seq, activation.digest, activation.version, activation.activated_by, activation.activated_at
    )
    if recomputed != activation.hash:
        return "its content does not match its hash: it was modified"
    return keys.problem(activation.key_id, activation.mac, log_id, activation.hash)
