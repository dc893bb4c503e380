"""One error tree for the whole bridge.

Every error carries a stable snake_case ``code`` (part of the API: the HTTP service and the CLI
print it) and a message that says what went wrong and where. Messages never echo untrusted
values (request fields, secrets); they name the path instead.

The adapters invent no codes of their own: every ``"error"`` the HTTP API answers is the ``code``
of a class here (``api/responses.py`` renders them) or, for routing errors such as ``not_found``,
Werkzeug's; ``docs/service.md`` section 6 lists them all (``tests/test_docs_service.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Issue:
    """One problem found while validating an input, located by a JSON path (``$.rules[2].claims``)."""

    path: str
    message: str
    code: str = "invalid"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message, "code": self.code}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Issue:
        """An issue written by ``to_dict`` (a compiled snapshot's warnings, a remembered rejection)."""
        return cls(str(document["path"]), str(document["message"]), str(document["code"]))


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""

    code: ClassVar[str] = "bridge_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, issues: tuple[Issue, ...] | list[Issue] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.issues: tuple[Issue, ...] = tuple(issues)

    def __str__(self) -> str:
        if not self.issues:
            return self.message
        lines = [self.message] + [f"  {issue}" for issue in self.issues]
        return "\n".join(lines)


class PolicyError(BridgeError):
    """Raised when a policy document is not valid JSON, fails the schema, or fails compilation.

    ``issues`` lists every problem found, not only the first.
    """

    code = "policy_invalid"
    http_status = 400


class RequestError(BridgeError):
    """Raised when a claims request does not match the request schema (contract v1, section 1)."""

    code = "invalid_request"
    http_status = 400


class EntitlementSourceError(BridgeError):
    """Raised when an entitlement snapshot cannot be read or fails its guards."""

    code = "entitlements_invalid"
    http_status = 503


class PolicyTestFileError(BridgeError):
    """Raised when a policy test file is malformed (as opposed to a test that fails)."""

    code = "policy_test_invalid"
    http_status = 400


class ConfigError(BridgeError):
    """Raised at start-up when configuration is missing or invalid; names the setting."""

    code = "config_invalid"
    http_status = 500


class DecisionLogError(BridgeError):
    """Raised when the decision log cannot be opened, written or read (a corrupt file, a full
    disk). A decision that was not recorded is never returned as a permit."""

    code = "decision_log_unavailable"
    http_status = 503


class NotReadyError(BridgeError):
    """Raised when the bridge cannot decide or answer: no valid policy or no entitlement snapshot
    is loaded (``Bridge.decide``, ``GET /v1/policy``)."""

    code = "not_ready"
    http_status = 503


class DecisionNotFoundError(BridgeError):
    """Raised when a decision id is not in the log."""

    code = "decision_not_found"
    http_status = 404


class ChainError(BridgeError):
    """Raised by verification when the hash chain or a checkpoint does not hold; names the first
    bad record."""

    code = "decision_log_tampered"
    http_status = 500


class TokenError(BridgeError):
    """Raised when a token to explain cannot be verified (signature, algorithm, issuer, expiry)
    or carries no decision id."""

    code = "token_invalid"
    http_status = 400


class UnresolvableRecordError(BridgeError):
    """Raised when a record's subject cannot be joined as it was, because it was joined by a
    masked key and the masking key is missing or is not the one the record was masked with."""

    code = "record_unresolvable"


class AuthenticationError(BridgeError):
    """Raised when a caller's credentials are missing or do not verify (for ``/v1/claims``: the
    mapper's HMAC signature, see ``signature.verify``).

    ``reason`` is a stable snake_case detail (``missing_signature``, ``malformed_signature``,
    ``stale_timestamp``, ``bad_signature``, ``unknown_key``, ``replayed_signature``) for logs and
    metrics; the message never contains a secret, a signature or the request body.
    """

    code = "unauthorized"
    http_status = 401

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class AdminKeysUnavailableError(BridgeError):
    """Raised when the admin realm's JWKS has never been fetched successfully."""

    code = "admin_keys_unavailable"
    http_status = 503


class AdminDisabledError(BridgeError):
    """Raised for every admin API request while the admin settings (``KPB_ADMIN_JWKS_URL``,
    ``KPB_ADMIN_ISSUER``, ``KPB_ADMIN_AUDIENCE``) are not all set."""

    code = "admin_disabled"
    http_status = 503


class ForbiddenError(BridgeError):
    """Raised when a verified admin token does not carry the admin role (``Settings.admin_role``)."""

    code = "forbidden"
    http_status = 403


class ReplayGateError(BridgeError):
    """Raised by ``PUT /v1/policy?gate=replay`` when replaying the last decisions under the
    candidate changed some, or could not replay some: nothing was activated."""

    code = "replay_gate"
    http_status = 409


class SnapshotRejectedError(BridgeError):
    """Raised by ``POST /v1/entitlements/reload`` when the reloaded entitlement snapshot failed
    its guards; the previous snapshot stays active."""

    code = "snapshot_rejected"
    http_status = 422


class ParameterError(BridgeError):
    """Raised when a query parameter of an admin route is malformed or out of range."""

    code = "invalid_parameter"
    http_status = 400


class InvalidJsonError(BridgeError):
    """Raised when an admin request body that must be JSON is not."""

    code = "invalid_json"
    http_status = 400


class BodyTooLargeError(BridgeError):
    """Raised when an admin request body exceeds ``Settings.admin_max_body_bytes``."""

    code = "body_too_large"
    http_status = 413


class DuplicateFeedError(BridgeError):
    """Raised when two context feed directories given to one command (``--feed``, ``KPB_FEEDS``)
    carry the same feed name: the name would silently select one of them. Raised by
    ``context_feed.unique_feed_names``; the message names the feed and both directories."""

    code = "duplicate_feed"
    http_status = 500


class KeycloakRevocationError(BridgeError):
    """Raised when the Keycloak admin API cannot be reached or refuses the bridge's client
    (``kpb drift --revoke``)."""

    code = "keycloak_admin_unavailable"
    http_status = 502


class HttpProtocolError(BridgeError):
    """Raised (by ``workers``, for gunicorn) when a request is not valid HTTP/1.1: its request
    line, a header or its chunked framing is malformed. Answered before the application runs."""

    code = "bad_request"
    http_status = 400


class RequestTimeoutError(BridgeError):
    """Raised when a request did not arrive whole within the server's read deadline
    (``workers.REQUEST_READ_TIMEOUT_SECONDS``); its connection is closed."""

    code = "request_timeout"
    http_status = 408


class RequestLineTooLongError(BridgeError):
    """Raised when a request line exceeds gunicorn's ``limit_request_line``."""

    code = "request_line_too_long"
    http_status = 414


class HeadersTooLargeError(BridgeError):
    """Raised when a request has more headers, or a larger header, than gunicorn accepts."""

    code = "headers_too_large"
    http_status = 431


class UnsupportedTransferCodingError(BridgeError):
    """Raised when a request's ``Transfer-Encoding`` is not ``chunked``."""

    code = "unsupported_transfer_coding"
    http_status = 501


class InternalError(BridgeError):
    """The answer to an exception the bridge did not raise on purpose (a bug, or a failure of the
    server underneath): logged with its traceback, answered as ``internal_error`` with a message
    that says nothing of the exception. Never raised; only rendered by the adapters (``api``,
    ``workers``)."""

    code = "internal_error"
    http_status = 500
