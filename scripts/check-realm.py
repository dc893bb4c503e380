#!/usr/bin/env python3
"""Check a running Keycloak against realm-config/acme-realm.json; prints OK/FAIL/INFO per check.

    scripts/keycloak.sh start
    .venv/bin/python scripts/check-realm.py [--server-url http://127.0.0.1:8080] [--realm acme]

Exit status: 0 when every check is OK, 1 otherwise. Uses python-keycloak (7.x) and only the DEMO-ONLY
credentials of realm-config/acme-realm.json (see realm-config/README.md).

These checks are about Keycloak itself (users, clients, grants, standard token exchange, admin API). When the
policy-bridge mapper jar is installed, every governed token (acme-web, billing-bot, legacy-sync, the agents) is
decided by the bridge: run the bridge (KPB_BRIDGE_URL) with the acme policy, or the governed grants fail closed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from keycloak import KeycloakAdmin, KeycloakOpenID, KeycloakOpenIDConnection

ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
ALICE = "a11ce000-0000-4000-8000-000000000001"
CAROL = "ca201000-0000-4000-8000-000000000003"
SA_IDS = {
    "billing-bot": "5b1d0c2e-0000-4000-8000-0000000000aa",
    "legacy-sync": "5b1d0c2e-0000-4000-8000-0000000000bb",
    "research-agent": "9a7e0000-0000-4000-8000-0000000000cc",
    "summarizer-agent": "9a7e0000-0000-4000-8000-0000000000dd",
}
MAPPER_ID = "kpb-policy-bridge-mapper"

results: list[bool] = []


def check(name: str, fn: Callable[[], str | None]) -> Any:
    try:
        detail = fn()
    except Exception as exc:  # noqa: BLE001 - report every failure, keep going
        msg = getattr(exc, "error_message", None) or exc
        print(f"FAIL  {name}: {type(exc).__name__}: {str(msg)[:300]}")
        results.append(False)
        return
    print(f"OK    {name}" + (f": {detail}" if detail else ""))
    results.append(True)


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def aud(claims: dict[str, Any]) -> list[str]:
    a = claims.get("aud", [])
    return [a] if isinstance(a, str) else list(a)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server-url", default=f"http://127.0.0.1:{os.environ.get('KC_PORT', '8080')}")
    p.add_argument("--realm", default="acme")
    args = p.parse_args()
    url, realm = args.server_url.rstrip("/") + "/", args.realm

    def oidc(client_id: str, secret: str | None = None) -> KeycloakOpenID:
        return KeycloakOpenID(server_url=url, realm_name=realm, client_id=client_id, client_secret_key=secret, timeout=20)

    web = oidc("acme-web", "acme-web-demo-secret")
    agents = {c: oidc(c, f"{c}-demo-secret") for c in ("research-agent", "summarizer-agent", "triage-agent")}
    state: dict[str, Any] = {}

    def decode(kc: KeycloakOpenID, token: str) -> dict[str, Any]:
        return kc.decode_token(token, validate=True)  # signature + exp checked against the realm's JWKS

    # ---------------------------------------------------------------- humans
    def alice_password() -> str:
        tok = web.token("alice", "alice-demo-password", scope="openid")
        c = decode(web, tok["access_token"])
        expect(c["sub"] == ALICE, f"sub {c['sub']} != {ALICE}")
        expect(c.get("azp") == "acme-web", f"azp {c.get('azp')}")
        expect("research-agent" in aud(c), f"aud {aud(c)} lacks research-agent")
        expect(c["exp"] - c["iat"] <= 300, f"lifespan {c['exp'] - c['iat']} s > 300")
        state["alice_web"] = tok["access_token"]
        return f"sub={c['sub']} aud={aud(c)} ttl={c['exp'] - c['iat']}s"

    check("password grant alice@acme-web", alice_password)

    def carol_password() -> str:  # terminated in the IGA, still enabled in Keycloak: the bridge must deny her
        c = decode(web, web.token("carol", "carol-demo-password", scope="openid")["access_token"])
        expect(c["sub"] == CAROL, f"sub {c['sub']}")
        return "Keycloak lets her in (the IGA says terminated: denying her is the bridge's job)"

    check("password grant carol@acme-web (IGA-terminated)", carol_password)

    def crm_scope() -> str:
        c = decode(web, web.token("bob", "bob-demo-password", scope="openid crm")["access_token"])
        expect("crm" in c.get("scope", "").split(), f"scope {c.get('scope')}")
        expect("crm-api" in aud(c), f"aud {aud(c)} lacks crm-api")
        return f"scope={c['scope']!r} aud={aud(c)}"

    check("scope crm on acme-web -> aud crm-api (bob)", crm_scope)

    def introspect_by_resource_server() -> str:  # 26.x: the introspecting client must be in the token's aud
        tok = web.token("bob", "bob-demo-password", scope="openid crm")["access_token"]
        res = oidc("crm-api", "crm-api-demo-secret").introspect(tok)
        expect(res.get("active") is True, f"introspection {res}")
        expect(res.get("username") == "bob", f"username {res.get('username')}")
        return "active=true for crm-api (acme-web itself is refused: not in aud)"

    check("introspection of bob's crm token by crm-api", introspect_by_resource_server)

    # ---------------------------------------------------------------- service accounts
    for cid in ("billing-bot", "legacy-sync"):

        def sa(cid: str = cid) -> str:
            kc = oidc(cid, f"{cid}-demo-secret")
            c = decode(kc, kc.token(grant_type="client_credentials", scope="billing")["access_token"])
            expect(c["sub"] == SA_IDS[cid], f"sub {c['sub']} != {SA_IDS[cid]}")
            expect(c.get("azp") == cid, f"azp {c.get('azp')}")
            expect("billing-api" in aud(c), f"aud {aud(c)} lacks billing-api")
            return f"sub={c['sub']} client_id={c.get('client_id')} aud={aud(c)}"

        check(f"client_credentials {cid}", sa)

    def billing_bot_password_refused() -> str:
        kc = oidc("billing-bot", "billing-bot-demo-secret")
        try:
            kc.token("service-account-billing-bot", "x", scope="openid")
        except Exception as exc:  # noqa: BLE001
            return f"refused by Keycloak ({type(exc).__name__})"
        raise AssertionError("password grant unexpectedly allowed for billing-bot")

    check("password grant refused for billing-bot (direct grants off)", billing_bot_password_refused)

    # ---------------------------------------------------------------- standard token exchange (V2), 3 hops
    def exchange(actor: str, subject_token: str, key: str, expect_aud: str | None) -> str:
        kc = agents[actor]
        tok = kc.exchange_token(subject_token, subject_token_type=ACCESS_TOKEN, requested_token_type=ACCESS_TOKEN, scope="openid")
        c = decode(kc, tok["access_token"])
        expect(c["sub"] == ALICE, f"sub {c['sub']} != alice")
        expect(c.get("azp") == actor, f"azp {c.get('azp')} != {actor}")
        if expect_aud:
            expect(expect_aud in aud(c), f"aud {aud(c)} lacks {expect_aud}")
        expect(tok.get("issued_token_type") == ACCESS_TOKEN, f"issued_token_type {tok.get('issued_token_type')}")
        state[key] = tok["access_token"]
        return f"sub=alice azp={c['azp']} aud={aud(c)} act={c.get('act')}"

    check(
        "token exchange: research-agent <- alice@acme-web",
        lambda: exchange("research-agent", state["alice_web"], "hop1", "summarizer-agent"),
    )
    check(
        "token exchange: summarizer-agent <- research-agent's token",
        lambda: exchange("summarizer-agent", state["hop1"], "hop2", "triage-agent"),
    )
    check(
        "token exchange: triage-agent <- summarizer-agent's token (3rd actor)",
        lambda: exchange("triage-agent", state["hop2"], "hop3", None),
    )

    def exchange_with_scope() -> str:
        kc = agents["research-agent"]
        tok = kc.exchange_token(
            state["alice_web"], subject_token_type=ACCESS_TOKEN, requested_token_type=ACCESS_TOKEN, audience="crm-api", scope="openid crm"
        )
        c = decode(kc, tok["access_token"])
        expect(aud(c) == ["crm-api"], f"aud {aud(c)} != ['crm-api']")
        return f"aud={aud(c)} scope={c.get('scope')!r}"

    check("token exchange: research-agent <- alice, audience=crm-api scope=crm", exchange_with_scope)

    def exchange_refused_without_audience() -> str:  # billing-bot is not in the subject token's aud
        try:
            agents["summarizer-agent"].exchange_token(
                state["alice_web"], subject_token_type=ACCESS_TOKEN, requested_token_type=ACCESS_TOKEN, scope="openid"
            )
        except Exception as exc:  # noqa: BLE001
            return f"refused ({getattr(exc, 'response_code', '?')})"
        raise AssertionError("summarizer-agent exchanged a token that was not issued to it")

    check("token exchange refused: summarizer-agent <- alice@acme-web (not in aud)", exchange_refused_without_audience)

    # ---------------------------------------------------------------- admin API + bridge admin token
    def admin_list_users() -> str:
        conn = KeycloakOpenIDConnection(
            server_url=url, realm_name=realm, client_id="kpb-admin-client", client_secret_key="kpb-admin-client-demo-secret", timeout=20
        )
        admin = KeycloakAdmin(connection=conn)
        users = admin.get_users({"briefRepresentation": "false"})
        by_name = {u["username"]: u for u in users}
        expect(by_name.get("alice", {}).get("id") == ALICE, "alice missing or wrong id")
        expect(
            by_name["alice"].get("attributes", {}).get("department") == ["sales"], f"alice attributes {by_name['alice'].get('attributes')}"
        )
        humans = sorted(n for n in by_name if not n.startswith("service-account-"))
        state["admin"] = admin
        return f"{len(users)} users; humans={humans}; alice.department=sales"

    check("admin API as kpb-admin-client: list users", admin_list_users)

    def iam_admin_token() -> str:
        kc = oidc("kpb-admin-cli")
        c = decode(kc, kc.token("iam-admin", "iam-admin-demo-password", scope="openid")["access_token"])
        roles = c.get("realm_access", {}).get("roles", [])
        expect("kpb-admin" in roles, f"realm roles {roles}")
        expect("kpb-bridge" in aud(c), f"aud {aud(c)}")
        return f"aud={aud(c)} realm_roles={sorted(roles)}"

    check("iam-admin@kpb-admin-cli: realm role kpb-admin + aud kpb-bridge", iam_admin_token)

    # kpb-governed + provider: read with the master-realm bootstrap admin (DEMO default admin/admin)
    def master_admin() -> KeycloakAdmin:
        if "master" not in state:
            state["master"] = KeycloakAdmin(
                connection=KeycloakOpenIDConnection(
                    server_url=url,
                    realm_name=realm,
                    user_realm_name="master",
                    client_id="admin-cli",
                    username=os.environ.get("KC_BOOTSTRAP_ADMIN_USERNAME", "admin"),
                    password=os.environ.get("KC_BOOTSTRAP_ADMIN_PASSWORD", "admin"),
                    timeout=20,
                )
            )
        master: KeycloakAdmin = state["master"]
        return master

    def mapper_configured() -> str:
        admin = master_admin()
        # the scope's own representation lists the mapper even without the jar; the .../protocol-mappers/models
        # sub-resource hides mappers whose provider is not installed
        scope = admin.get_client_scope_by_name("kpb-governed")
        expect(scope is not None, "client scope kpb-governed missing")
        mappers = (scope or {}).get("protocolMappers", [])
        expect(any(m.get("protocolMapper") == MAPPER_ID for m in mappers), "policy-bridge mapper missing")
        governed = []
        for client in admin.get_clients():
            names = {s["name"] for s in admin.get_client_default_client_scopes(client["id"])}
            if "kpb-governed" in names:
                governed.append(client["clientId"])
        return f"policy-bridge mapper on kpb-governed; default scope of {sorted(governed)}"

    check("client scope kpb-governed carries the policy-bridge mapper", mapper_configured)

    try:  # informational: is the provider jar installed in this Keycloak?
        info = master_admin().connection.raw_get("admin/serverinfo").json()
        installed = MAPPER_ID in {t["id"] for t in info.get("protocolMapperTypes", {}).get("openid-connect", [])}
        print(f"INFO  provider {MAPPER_ID} installed in Keycloak: {installed}")
    except Exception as exc:  # noqa: BLE001
        print(f"INFO  could not read server info: {exc}")

    ok = sum(results)
    print(f"{ok} passed, {len(results) - ok} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
