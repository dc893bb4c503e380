"""OAuth clients of the acme realm (realm-config/acme-realm.json), for the demo and the
end-to-end tests: python-keycloak against a real Keycloak. Every secret here is the realm file's
DEMO-ONLY value (see realm-config/README.md)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import jwt
from keycloak import KeycloakAdmin, KeycloakOpenID, KeycloakOpenIDConnection

ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


class Acme:
    """The acme realm at ``keycloak_url`` and the bridge at ``bridge_url``."""

    def __init__(self, keycloak_url: str, bridge_url: str, realm: str = "acme") -> None:
        self.keycloak_url = keycloak_url.rstrip("/") + "/"
        self.bridge_url = bridge_url.rstrip("/")
        self.realm = realm
        self.issuer = f"{keycloak_url.rstrip('/')}/realms/{realm}"
        self._jwks = jwt.PyJWKClient(f"{self.issuer}/protocol/openid-connect/certs", cache_keys=True)

    def client(self, client_id: str, secret: str | None = "") -> KeycloakOpenID:
        """A client of the realm; ``secret`` defaults to the demo secret ``<client_id>-demo-secret``."""
        return KeycloakOpenID(
            server_url=self.keycloak_url,
            realm_name=self.realm,
            client_id=client_id,
            client_secret_key=f"{client_id}-demo-secret" if secret == "" else secret,
            timeout=30,
        )

    def login(self, username: str, client_id: str = "acme-web", scope: str = "openid") -> dict[str, Any]:
        """Password grant (direct access) for a demo user: the token response."""
        response: dict[str, Any] = self.client(client_id).token(username, f"{username}-demo-password", scope=scope)
        return response

    def client_credentials(self, client_id: str, scope: str | None = None) -> dict[str, Any]:
        extra = {"scope": scope} if scope else {}
        response: dict[str, Any] = self.client(client_id).token(grant_type="client_credentials", **extra)
        return response

    def exchange(self, client_id: str, subject_token: str, scope: str = "openid", audience: str | None = None) -> dict[str, Any]:
        """Standard token exchange (RFC 8693, Keycloak V2): ``client_id`` acts for the token's subject."""
        response: dict[str, Any] = self.client(client_id).exchange_token(
            subject_token, subject_token_type=ACCESS_TOKEN, requested_token_type=ACCESS_TOKEN, scope=scope, audience=audience
        )
        return response

    def refresh(self, refresh_token: str, client_id: str = "acme-web") -> dict[str, Any]:
        response: dict[str, Any] = self.client(client_id).refresh_token(refresh_token)
        return response

    def claims(self, token: str) -> dict[str, Any]:
        """The token's claims, its RS256 signature verified against the realm's JWKS."""
        key = self._jwks.get_signing_key_from_jwt(token)
        decoded: dict[str, Any] = jwt.decode(
            token, key.key, algorithms=["RS256"], issuer=self.issuer, options={"verify_aud": False}, leeway=5
        )
        return decoded

    def admin_token(self) -> str:
        """iam-admin's access token (realm role kpb-admin, audience kpb-bridge): the bridge admin API's bearer."""
        token: str = self.client("kpb-admin-cli", None).token("iam-admin", "iam-admin-demo-password", scope="openid")["access_token"]
        return token

    def keycloak_admin(self) -> KeycloakAdmin:
        connection = KeycloakOpenIDConnection(
            server_url=self.keycloak_url,
            realm_name=self.realm,
            client_id="kpb-admin-client",
            client_secret_key="kpb-admin-client-demo-secret",
            timeout=30,
        )
        return KeycloakAdmin(connection=connection)

    def master_admin(self) -> KeycloakAdmin:
        """The bootstrap admin (DEMO-ONLY admin/admin, scripts/keycloak.sh) managing this realm."""
        connection = KeycloakOpenIDConnection(
            server_url=self.keycloak_url,
            username="admin",
            password="admin",
            realm_name=self.realm,
            user_realm_name="master",
            client_id="admin-cli",
            timeout=30,
        )
        return KeycloakAdmin(connection=connection)

    def bridge(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        """Call the bridge's admin API with iam-admin's token (or ``token``)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token or self.admin_token()}", "Content-Type": "application/json"}
        request = urllib.request.Request(self.bridge_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.load(exc)


GOVERNED = ("roles", "tenant", "act", "authz_decision_id", "authz_degraded")


def governed(claims: dict[str, Any]) -> dict[str, Any]:
    """The claims the bridge governs, plus the lifetime the mapper may have shortened."""
    shown = {k: claims[k] for k in GOVERNED if k in claims}
    shown["lifetime_seconds"] = claims["exp"] - claims["iat"]
    shown["realm_access"] = claims.get("realm_access", "(removed by policy)")
    return shown
