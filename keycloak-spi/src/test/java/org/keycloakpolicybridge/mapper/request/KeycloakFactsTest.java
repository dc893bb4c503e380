package org.keycloakpolicybridge.mapper.request;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;

import org.junit.jupiter.api.Test;
import org.keycloak.models.ClientModel;
import org.keycloak.models.GroupModel;
import org.keycloak.models.UserModel;
import org.keycloak.models.UserSessionModel;
import org.keycloak.representations.AccessToken;
import org.keycloakpolicybridge.mapper.KeycloakStubs;
import org.keycloakpolicybridge.mapper.MapperSettings;
import org.keycloakpolicybridge.mapper.TokenEvent;

/** The adapter from Keycloak models, against {@link KeycloakStubs}. */
class KeycloakFactsTest {

    static final String TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";

    private final KeycloakStubs kc = new KeycloakStubs();

    private static MapperSettings settings(String attributes) throws Exception {
        return MapperSettings.parse(Map.of("kpb.user.attributes", attributes));
    }

    private static AccessToken token(String issuer, String acr) {
        AccessToken token = new AccessToken();
        token.issuer(issuer);
        token.setAcr(acr);
        return token;
    }

    @Test
    void humanAuthorizationCodeLogin() throws Exception {
        ClientModel web = kc.client("id-web", "acme-web", Map.of("kpb.tier", "web", "pkce", "S256"), false);
        GroupModel sales = KeycloakStubs.group("sales", null);
        UserModel alice = kc.user("u-alice", "alice", "alice@acme.example", true, null,
                Map.of("department", List.of("sales"), "mobile", List.of("+49")), List.of(KeycloakStubs.group("emea", sales), sales));
        kc.roles.addAll(List.of(KeycloakStubs.realmRole("offline_access"), KeycloakStubs.clientRole(web, "viewer"),
                KeycloakStubs.realmRole("default-roles-acme"), KeycloakStubs.realmRole("offline_access")));
        kc.contextAttributes.put("grant_type", "authorization_code");
        kc.clientSessionNotes.put("scope", "openid crm");
        kc.userSessionNotes.put("AUTH_TIME", "1795852790");
        kc.form.putSingle("tenant", "acme-eu");
        kc.headers.put("User-Agent", "acme-web/2.3");
        kc.headers.put("X-KPB-Tenant", "ignored-when-param-present");
        kc.remoteAddr = "10.0.0.7";

        TokenRequestFacts facts = KeycloakFacts.from(TokenEvent.TOKEN, settings("department,cost_center"),
                token("http://localhost:8080/realms/acme", "1"), kc.session(web), kc.userSession(alice, "sess-1"), kc.clientSessionContext(web));

        assertEquals("acme", facts.realm());
        assertEquals("http://localhost:8080/realms/acme", facts.issuer());
        assertEquals("authorization_code", facts.grantType());
        assertEquals(List.of("openid", "crm"), facts.requestedScopes());
        assertEquals(List.of(), facts.audience());
        assertEquals("acme-web", facts.client().clientId());
        TokenRequestFacts.Subject s = facts.subject();
        assertEquals("u-alice", s.id());
        assertTrue(s.emailVerified(), "UserModel.isEmailVerified()");
        assertNull(s.serviceAccountClientId());
        assertEquals(Map.of("department", List.of("sales")), s.attributes(), "only configured attributes are read");
        assertEquals(List.of("acme-web/viewer", "default-roles-acme", "offline_access"), s.directoryRoles());
        assertEquals(List.of("/sales", "/sales/emea"), s.groups());
        assertEquals("1", s.acr());
        assertEquals(List.of(), s.amr());
        assertEquals(1795852790L, s.authTime());
        assertEquals("sess-1", s.sessionId());
        assertEquals(new TokenRequestFacts.Context("10.0.0.7", "acme-web/2.3", "acme-eu"), facts.context());
        assertEquals(List.of(), facts.actors());
    }

    @Test
    void clientCredentialsWithATransientSession() throws Exception {
        ClientModel bot = kc.client("id-bot", "billing-bot", Map.of(), true);
        UserModel sa = kc.user("u-sa", "service-account-billing-bot", null, "id-bot", Map.of(), List.of());
        kc.contextAttributes.put("grant_type", "client_credentials");
        kc.form.putSingle("scope", "billing");
        kc.persistence = UserSessionModel.SessionPersistenceState.TRANSIENT;
        kc.query.putSingle("tenant", "acme-eu");

        TokenRequestFacts facts = KeycloakFacts.from(TokenEvent.TOKEN, settings(""), token(null, "1"),
                kc.session(bot), kc.userSession(sa, "transient-id"), kc.clientSessionContext(bot));

        assertEquals("billing-bot", facts.subject().serviceAccountClientId());
        assertFalse(facts.subject().emailVerified(), "a service account's user has no verified e-mail");
        assertNull(facts.subject().sessionId(), "transient sessions have no id worth sending");
        assertNull(facts.subject().authTime());
        assertNull(facts.issuer());
        assertEquals(List.of("billing"), facts.requestedScopes());
        assertEquals("acme-eu", facts.context().tenant(), "query parameter when no form parameter");
    }

    @Test
    void tokenExchangeMakesTheRequesterTheCurrentActor() throws Exception {
        kc.client("id-research", "research-agent", Map.of("kpb.kind", "agent"), true);
        kc.client("id-summarizer", "summarizer-agent", Map.of("kpb.kind", "agent"), true);
        ClientModel crmApi = kc.client("id-crm", "crm-api", Map.of(), false);
        kc.serviceAccounts.put("summarizer-agent", kc.user("sa-sum", "service-account-summarizer-agent", null, "id-summarizer", Map.of(), List.of()));
        UserModel alice = kc.user("u-alice", "alice", "alice@acme.example", null, Map.of(), List.of());
        kc.contextAttributes.put("grant_type", TOKEN_EXCHANGE);
        kc.contextAttributes.put("req-aud-clients", new ClientModel[] {crmApi});
        kc.form.put("audience", List.of("ignored-when-resolved"));
        kc.form.putSingle("subject_token", ActorChainTest.jws("{\"sub\":\"u-alice\",\"act\":{\"sub\":\"sa-res\",\"client_id\":\"research-agent\"}}"));
        kc.headers.put("X-KPB-Tenant", "acme-eu");
        ClientModel summarizer = kc.clientsByClientId.get("summarizer-agent");

        TokenRequestFacts facts = KeycloakFacts.from(TokenEvent.TOKEN, settings(""), token(null, null),
                kc.session(summarizer), kc.userSession(alice, "sess-a"), kc.clientSessionContext(summarizer));

        assertEquals(List.of(new TokenRequestFacts.Actor("sa-sum", "summarizer-agent", "agent"),
                new TokenRequestFacts.Actor("sa-res", "research-agent", "agent")), facts.actors());
        assertEquals(List.of("crm-api"), facts.audience());
        assertEquals("u-alice", facts.subject().id());
        assertEquals("acme-eu", facts.context().tenant(), "header when no parameter");
    }

    @Test
    void userinfoHasNoGrantAndUsesTheTokensScope() throws Exception {
        ClientModel web = kc.client("id-web", "acme-web", Map.of(), false);
        UserModel alice = kc.user("u-alice", "alice", null, null, Map.of(), List.of());
        kc.contextAttributes.put("grant_type", "authorization_code");
        kc.form.putSingle("scope", "ignored");
        kc.scopeString = "openid email profile";
        kc.clientSessionNotes.put("iss", "http://localhost:8080/realms/acme");

        TokenRequestFacts facts = KeycloakFacts.from(TokenEvent.USERINFO, settings(""), new AccessToken(),
                kc.session(web), kc.userSession(alice, "s"), kc.clientSessionContext(web));

        assertNull(facts.grantType());
        assertEquals(List.of("openid", "email", "profile"), facts.requestedScopes());
        assertEquals("http://localhost:8080/realms/acme", facts.issuer(), "issuer from the client session when the token has none");
        assertEquals(List.of(), facts.actors());
    }
}
