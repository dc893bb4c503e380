"""Acting on drift: end the Keycloak sessions of subjects whose live tokens carry claims their
current entitlements no longer justify.

``drift`` finds them; this adapter asks Keycloak to log each one out (``POST
/admin/realms/{realm}/users/{id}/logout``). That sets the user's not-before to now and ends
their online sessions, so every refresh token issued before it fails with ``invalid_grant``
and the next token comes from a new login, through the mapper, under the current entitlements.
Access tokens already issued stay valid until ``exp``: no Keycloak call can recall a JWT that
resource servers validate offline, which is why the acme policy keeps them short.

Only subjects with a Keycloak user id are acted on; service accounts are included (their user
is the service-account user: logging it out ends refreshable sessions, and client-credentials
tokens are re-decided at every grant anyway). Each logout is independent: one failure is
reported and the others still happen. The client secret comes from the environment, never a
flag, and never appears in a result or a message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from keycloak_policy_bridge.drift import DriftedSubject
from keycloak_policy_bridge.errors import KeycloakRevocationError


class UserLogout(Protocol):
    """The one Keycloak admin call revocation needs (``keycloak.KeycloakAdmin`` has it)."""

    def user_logout(self, user_id: str) -> Any: ...


@dataclass(frozen=True)
class Revocation:
    """What happened to one drifted subject: ``revoked``, ``skipped`` (no Keycloak user id) or
    ``failed`` (``error`` says why, without secrets)."""

    subject_id: str | None
    keycloak_user_id: str | None
    outcome: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"subject_id": self.subject_id, "keycloak_user_id": self.keycloak_user_id, "outcome": self.outcome, "error": self.error}


def revoke(subjects: Iterable[DriftedSubject], admin: UserLogout) -> tuple[Revocation, ...]:
    """Log out every subject in ``subjects`` that has a Keycloak user id, once each."""
    results: list[Revocation] = []
    seen: set[str] = set()
    for subject in subjects:
        user_id = subject.keycloak_user_id
        if not user_id:
            results.append(Revocation(subject.subject_id, None, "skipped", "no Keycloak user id was recorded for this subject"))
            continue
        if user_id in seen:
            continue
        seen.add(user_id)
        try:
            admin.user_logout(user_id)
        except Exception as exc:  # noqa: BLE001 - one subject's failure must not stop the others
            results.append(Revocation(subject.subject_id, user_id, "failed", _describe(exc)))
        else:
            results.append(Revocation(subject.subject_id, user_id, "revoked"))
    return tuple(results)


def _describe(exc: Exception) -> str:
    # python-keycloak errors carry the HTTP status and Keycloak's error body, never our secret.
    code = getattr(exc, "response_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {code})" if code else "")


def keycloak_admin(
    server_url: str, realm: str, client_id: str, client_secret: str, connect: Callable[..., Any] | None = None
) -> UserLogout:
    """A python-keycloak admin client for ``realm``, authenticated by client credentials of
    ``client_id`` (a confidential client whose service account holds realm-management's
    ``manage-users``).

    Raises:
        KeycloakRevocationError: Keycloak cannot be reached or refuses the client.
    """
    from keycloak import KeycloakAdmin, KeycloakOpenIDConnection
    from keycloak.exceptions import KeycloakConnectionError, KeycloakError

    try:
        connection = (connect or KeycloakOpenIDConnection)(
            server_url=server_url, realm_name=realm, client_id=client_id, client_secret_key=client_secret, timeout=10
        )
        connection.get_token()  # fail here, once, rather than once per subject
    except KeycloakConnectionError:
        raise KeycloakRevocationError(f"{server_url}: Keycloak cannot be reached") from None
    except KeycloakError as exc:
        raise KeycloakRevocationError(
            f"{server_url} realm {realm}: client {client_id} cannot get an admin token ({_describe(exc)})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - requests' connection errors and the like
        raise KeycloakRevocationError(f"{server_url}: Keycloak cannot be reached ({type(exc).__name__})") from None
    admin: UserLogout = KeycloakAdmin(connection=connection)
    return admin
