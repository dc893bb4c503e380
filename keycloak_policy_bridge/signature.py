"""HMAC-SHA256 request signing for the mapper -> bridge call (``POST /v1/claims``).

The Java mapper signs, the bridge verifies; both must build exactly the same bytes. The shared
vectors in ``contract/vectors/hmac/`` pin this down for both sides.

Canonical request (version ``v1``)
----------------------------------
Five lines joined by a single LF (``0x0A``), no trailing LF, encoded as ASCII::

    v1
    <METHOD>
    <PATH>
    <TIMESTAMP>
    <BODY-SHA256>

- ``METHOD``: the HTTP method in upper case (``POST``). It must be an RFC 9110 token of ASCII
  characters, so upper-casing is plain ASCII upper-casing (Java: ``toUpperCase(Locale.ROOT)``).
- ``PATH``: the request target exactly as sent on the wire (origin form): the raw,
  still percent-encoded path, then ``?`` and the raw query string if the URL has one. No
  decoding, no re-encoding, no sorting of query parameters, no dropping of an empty ``?``.
  Java: ``uri.getRawPath()`` plus ``"?" + uri.getRawQuery()`` when ``getRawQuery() != null``.
  Flask/WSGI: ``environ["RAW_URI"]`` (gunicorn) or ``environ["REQUEST_URI"]``, never the
  decoded ``request.path``/``request.full_path``. Must be ASCII with no CR or LF.
- ``TIMESTAMP``: unix time in whole seconds, decimal, no sign, no leading zeros (``0`` itself
  is allowed); the same text as the ``X-KPB-Timestamp`` header.
- ``BODY-SHA256``: lowercase hex SHA-256 of the raw body bytes as sent (the empty body hashes
  to ``e3b0c442...b855``). The body is hashed, never parsed, so JSON formatting is irrelevant.

Headers
-------
- ``X-KPB-Timestamp``: the ``TIMESTAMP`` above.
- ``X-KPB-Signature``: ``v1=<lowercase hex HMAC-SHA256(secret, canonical request)>``. Several
  comma-separated values (optional white space around commas) let a sender sign with the old
  and the new secret during rotation; a request verifies if any ``v1`` value matches. Values with
  another scheme (``v2=...``) are ignored so that a future scheme can be sent alongside ``v1``;
  at least one ``v1`` value is required and at most four values in all.
- ``X-KPB-Key-Id`` (optional): names the configured secret to check. When it is absent, every
  configured secret is tried.

Verification order: credentials present, well formed, timestamp within ``max_skew_seconds`` of
``now`` (both ways, for clock skew), key id known, signature matches (``hmac.compare_digest``),
not a replay. Only a request that verified is recorded in the replay cache, so forged requests
cannot fill it.

Nothing here reads the clock or the environment: ``now`` and the secrets are arguments.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import threading
from collections.abc import Mapping

from keycloak_policy_bridge.errors import AuthenticationError, ConfigError

SCHEME = "v1"
TIMESTAMP_HEADER = "X-KPB-Timestamp"
SIGNATURE_HEADER = "X-KPB-Signature"
KEY_ID_HEADER = "X-KPB-Key-Id"
MIN_SECRET_BYTES = 32
DEFAULT_MAX_SKEW_SECONDS = 300
DEFAULT_REPLAY_CACHE_ENTRIES = 100_000
MAX_SIGNATURE_VALUES = 4

MISSING_SIGNATURE = "missing_signature"
MALFORMED_SIGNATURE = "malformed_signature"
STALE_TIMESTAMP = "stale_timestamp"
BAD_SIGNATURE = "bad_signature"
UNKNOWN_KEY = "unknown_key"
REPLAYED_SIGNATURE = "replayed_signature"

# RFC 9110 token characters; anything else could not have been sent as a method.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PATH = re.compile(r"/[\x21-\x7e]*")
# Strict so that the header text and str(int(...)) are always the same canonical bytes.
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,17}")
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
KEY_ID_RULE = "1 to 64 of A-Z a-z 0-9 . _ : -, starting with a letter or digit"
_V1_VALUE = re.compile(r"v1=([0-9a-f]{64})")
_OTHER_VALUE = re.compile(r"[a-z][a-z0-9]*=[^\s,]+")
_OWS = " \t"


def canonical_request(method: str, path: str, timestamp: int, body: bytes) -> bytes:
    """Return the ``v1`` canonical request (see the module docstring) for signing.

    Raises:
        ValueError: ``method`` is not an HTTP token, ``path`` is not an ASCII origin-form
            request target without CR/LF, or ``timestamp`` is not a non-negative int.
    """
    if not _valid_method(method):
        raise ValueError("method must be an HTTP token (ASCII letters, digits, !#$%&'*+-.^_`|~)")
    if not _valid_path(path):
        raise ValueError("path must be the raw request target: '/' then printable ASCII, no spaces or CR/LF")
    if not _valid_timestamp(timestamp):
        raise ValueError("timestamp must be a non-negative int (unix seconds)")
    return _canonical(method, path, timestamp, body)


def sign(secret: bytes, method: str, path: str, timestamp: int, body: bytes) -> str:
    """Return the ``X-KPB-Signature`` value (``v1=<hex>``) for one secret.

    To sign with two secrets during rotation, join the values: ``",".join([sign(new, ...),
    sign(old, ...)])`` and send no ``X-KPB-Key-Id``.

    Raises:
        ConfigError: ``secret`` is not bytes or is shorter than 32 bytes.
        ValueError: see ``canonical_request``.
    """
    _check_secret(secret, key_id=None)
    return f"{SCHEME}={_hmac_hex(secret, canonical_request(method, path, timestamp, body))}"


def signing_headers(secret: bytes, key_id: str | None, method: str, path: str, body: bytes, now: int) -> dict[str, str]:
    """Return the headers a client sends: timestamp ``now``, the signature and, if ``key_id`` is
    given, ``X-KPB-Key-Id``.

    Raises:
        ConfigError: the secret is too short or ``key_id`` is not a valid key id (the message
            names the key id, never the secret).
        ValueError: see ``canonical_request``.
    """
    if key_id is not None and not valid_key_id(key_id):
        raise ConfigError(f"an HMAC key id is not valid ({KEY_ID_RULE}); it is not shown, since a malformed entry may hold the secret")
    _check_secret(secret, key_id=key_id)
    headers = {
        TIMESTAMP_HEADER: str(now),
        SIGNATURE_HEADER: sign(secret, method, path, now, body),
    }
    if key_id is not None:
        headers[KEY_ID_HEADER] = key_id
    return headers


def check_secrets(secrets: Mapping[str, bytes]) -> None:
    """Check a verifier's secrets once, at start-up: at least one, each key id valid, each
    secret bytes of at least 32 bytes.

    Raises:
        ConfigError: naming the offending key id, never the secret.
    """
    if not secrets:
        raise ConfigError("no HMAC secret configured")
    for key_id, secret in secrets.items():
        if not isinstance(key_id, str) or not valid_key_id(key_id):
            raise ConfigError(f"an HMAC key id is not valid ({KEY_ID_RULE}); it is not shown, since a malformed entry may hold the secret")
        _check_secret(secret, key_id=key_id)


def verify(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    *,
    secrets: Mapping[str, bytes],
    now: int,
    max_skew_seconds: int = DEFAULT_MAX_SKEW_SECONDS,
    replay_cache: ReplayCache | None = None,
) -> str:
    """Verify a signed request and return the id of the secret that verified it.

    ``headers`` is looked up case-insensitively (a plain dict works, as do Werkzeug headers);
    a repeated ``X-KPB-Signature`` is treated as its comma-joined values, a repeated timestamp or
    key id is malformed. ``method``, ``path`` (raw request target) and ``body`` (raw bytes) are
    what the server received. ``secrets`` maps key id -> secret; when several secrets verify, the
    first in ``secrets`` order is returned. With ``replay_cache``, a request that verified once
    is refused the second time within the window (a sender must re-sign each attempt).

    Raises:
        AuthenticationError: with ``reason`` one of ``missing_signature`` (signature or
            timestamp header absent or empty), ``malformed_signature``, ``stale_timestamp``, ``unknown_key``,
            ``bad_signature`` (also for a method or path that no sender could have signed),
            ``replayed_signature``. The message names the header, never its value.
        ConfigError: ``secrets`` fails ``check_secrets``, ``max_skew_seconds`` is not positive,
            or ``replay_cache`` forgets entries sooner than ``max_skew_seconds``.
    """
    check_secrets(secrets)
    _check_positive("max_skew_seconds", max_skew_seconds)
    if replay_cache is not None and replay_cache.max_skew_seconds < max_skew_seconds:
        raise ConfigError("replay cache max_skew_seconds is shorter than the verifier's max_skew_seconds; replays would pass in between")

    found = _find_headers(headers)
    signature_text = found.get(SIGNATURE_HEADER.lower())
    timestamp_text = found.get(TIMESTAMP_HEADER.lower())
    key_id = found.get(KEY_ID_HEADER.lower())
    if signature_text is None or not signature_text.strip(_OWS):
        raise AuthenticationError(f"missing {SIGNATURE_HEADER} header", reason=MISSING_SIGNATURE)
    if timestamp_text is None or not timestamp_text.strip(_OWS):
        raise AuthenticationError(f"missing {TIMESTAMP_HEADER} header", reason=MISSING_SIGNATURE)

    provided = _parse_signatures(signature_text)
    timestamp_text = timestamp_text.strip(_OWS)
    if _TIMESTAMP.fullmatch(timestamp_text) is None:
        raise AuthenticationError(f"{TIMESTAMP_HEADER} must be unix seconds in decimal", reason=MALFORMED_SIGNATURE)
    if key_id is not None:
        key_id = key_id.strip(_OWS)
        if not valid_key_id(key_id):
            raise AuthenticationError(f"{KEY_ID_HEADER} is not a valid key id", reason=MALFORMED_SIGNATURE)

    timestamp = int(timestamp_text)
    if abs(now - timestamp) > max_skew_seconds:
        raise AuthenticationError(
            f"{TIMESTAMP_HEADER} is more than {max_skew_seconds} s from the server clock",
            reason=STALE_TIMESTAMP,
        )

    if key_id is None:
        candidates = list(secrets.items())
    elif key_id in secrets:
        candidates = [(key_id, secrets[key_id])]
    else:
        raise AuthenticationError(f"{KEY_ID_HEADER} names no configured secret", reason=UNKNOWN_KEY)

    if not (_valid_method(method) and _valid_path(path)):
        raise AuthenticationError("signature does not match the request", reason=BAD_SIGNATURE)
    canonical = _canonical(method, path, timestamp, body)

    verified: str | None = None
    for candidate_id, secret in candidates:
        expected = _hmac_hex(secret, canonical).encode("ascii")
        # No early exit: every provided value is compared, so timing does not reveal which
        # value or how many matched.
        for value in provided:
            if hmac.compare_digest(expected, value) and verified is None:
                verified = candidate_id
    if verified is None:
        raise AuthenticationError("signature does not match the request", reason=BAD_SIGNATURE)

    # Keyed by the signed request, not by one signature value: otherwise a request signed
    # with two rotation secrets could be replayed once more with only the other value.
    if replay_cache is not None and replay_cache.seen(hashlib.sha256(canonical).hexdigest(), timestamp, now):
        raise AuthenticationError("signed request was already used", reason=REPLAYED_SIGNATURE)
    return verified


class ReplayCache:
    """Remembers verified requests until their timestamp falls out of the skew window.

    ``seen`` atomically checks and records (thread-safe: a gunicorn worker's threads share one
    cache). An entry lives while ``timestamp >= now - max_skew_seconds``; after that ``verify``
    rejects the timestamp as stale anyway, so forgetting it opens nothing.

    The cache holds at most ``max_entries``. When it is full, the entry with the oldest timestamp
    is forgotten early (counted in ``evictions``), so the process keeps answering under load; for
    that entry only the timestamp window still bounds replays. Size it at least peak requests per
    second times ``max_skew_seconds``.

    Each process has its own cache: it is the fast first check. A replay sent to a different
    worker is caught by the shared store behind it: the service records each verified request's
    ``signed_request_id`` as a nonce in the decision log, in the transaction that records its
    decision (``decision_log.Nonce``), so the processes sharing a log answer a request once.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_REPLAY_CACHE_ENTRIES,
        max_skew_seconds: int = DEFAULT_MAX_SKEW_SECONDS,
    ) -> None:
        """Raises ``ConfigError`` if ``max_entries`` or ``max_skew_seconds`` is not a positive int."""
        _check_positive("max_entries", max_entries)
        _check_positive("max_skew_seconds", max_skew_seconds)
        self.max_entries = max_entries
        self.max_skew_seconds = max_skew_seconds
        self.evictions = 0
        self._lock = threading.Lock()
        self._timestamps: dict[str, int] = {}
        # A heap ordered by timestamp finds expired and oldest entries without a scan; it holds
        # exactly the keys of ``_timestamps`` because a key is pushed only when it is absent.
        self._heap: list[tuple[int, str]] = []

    def seen(self, signature: str, timestamp: int, now: int) -> bool:
        """Return True if ``signature`` was recorded and has not expired; otherwise record it
        (unless its timestamp has already expired) and return False.
        """
        with self._lock:
            self._expire(now)
            if signature in self._timestamps:
                return True
            if timestamp < now - self.max_skew_seconds:
                return False
            if len(self._timestamps) >= self.max_entries:
                _, oldest = heapq.heappop(self._heap)
                del self._timestamps[oldest]
                self.evictions += 1
            self._timestamps[signature] = timestamp
            heapq.heappush(self._heap, (timestamp, signature))
            return False

    def __len__(self) -> int:
        with self._lock:
            return len(self._timestamps)

    def _expire(self, now: int) -> None:
        horizon = now - self.max_skew_seconds
        while self._heap and self._heap[0][0] < horizon:
            _, key = heapq.heappop(self._heap)
            del self._timestamps[key]


def signed_request_id(method: str, path: str, timestamp: int, body: bytes) -> bytes:
    """The identity of a signed request: SHA-256 of its canonical request (32 bytes).

    The key of the replay caches, per process (``ReplayCache``, as hex) and shared (the decision
    log's nonces). It is the signed request, not one signature value: a request signed with two
    rotation secrets is one request. Call it only for a request that ``verify`` accepted.
    """
    return hashlib.sha256(_canonical(method, path, timestamp, body)).digest()


def _canonical(method: str, path: str, timestamp: int, body: bytes) -> bytes:
    body_hash = hashlib.sha256(body).hexdigest()
    return f"{SCHEME}\n{method.upper()}\n{path}\n{timestamp}\n{body_hash}".encode("ascii")


def _hmac_hex(secret: bytes, canonical: bytes) -> str:
    return hmac.new(secret, canonical, hashlib.sha256).hexdigest()


def _parse_signatures(text: str) -> list[bytes]:
    entries = [entry.strip(_OWS) for entry in text.split(",")]
    if len(entries) > MAX_SIGNATURE_VALUES:
        raise AuthenticationError(f"{SIGNATURE_HEADER} has more than {MAX_SIGNATURE_VALUES} values", reason=MALFORMED_SIGNATURE)
    values: list[bytes] = []
    for entry in entries:
        match = _V1_VALUE.fullmatch(entry)
        if match is not None:
            values.append(match.group(1).encode("ascii"))
        elif entry.startswith(f"{SCHEME}=") or _OTHER_VALUE.fullmatch(entry) is None:
            raise AuthenticationError(
                f"{SIGNATURE_HEADER} must be {SCHEME}=<64 lowercase hex digits>[, ...]",
                reason=MALFORMED_SIGNATURE,
            )
    if not values:
        raise AuthenticationError(f"{SIGNATURE_HEADER} has no {SCHEME} value", reason=MALFORMED_SIGNATURE)
    return values


def _find_headers(headers: Mapping[str, str]) -> dict[str, str]:
    wanted = {SIGNATURE_HEADER.lower(), TIMESTAMP_HEADER.lower(), KEY_ID_HEADER.lower()}
    found: dict[str, list[str]] = {}
    # items() rather than get(): a plain dict is case-sensitive, and multi-valued header
    # objects yield each repeated header separately.
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in wanted:
            found.setdefault(lowered, []).append(value)
    result: dict[str, str] = {}
    for name, values in found.items():
        if name == SIGNATURE_HEADER.lower():
            result[name] = ",".join(values)
        elif len(values) > 1:
            header = TIMESTAMP_HEADER if name == TIMESTAMP_HEADER.lower() else KEY_ID_HEADER
            raise AuthenticationError(f"{header} header is repeated", reason=MALFORMED_SIGNATURE)
        else:
            result[name] = values[0]
    return result


def _check_secret(secret: bytes, *, key_id: str | None) -> None:
    where = "HMAC secret" if key_id is None else f"HMAC secret {key_id!r}"
    if not isinstance(secret, bytes):
        raise ConfigError(f"{where} must be bytes")
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"{where} is shorter than {MIN_SECRET_BYTES} bytes")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer")


def _valid_method(method: str) -> bool:
    return isinstance(method, str) and _METHOD.fullmatch(method) is not None


def _valid_path(path: str) -> bool:
    return isinstance(path, str) and _PATH.fullmatch(path) is not None


def _valid_timestamp(timestamp: int) -> bool:
    return isinstance(timestamp, int) and not isinstance(timestamp, bool) and 0 <= timestamp < 10**18


def valid_key_id(key_id: str) -> bool:
    """True when ``key_id`` is a well-formed key id (``KEY_ID_RULE``)."""
    return _KEY_ID.fullmatch(key_id) is not None
