package org.keycloakpolicybridge.mapper.authzen;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.Test;
import org.keycloakpolicybridge.mapper.TokenEvent;
import org.keycloakpolicybridge.mapper.request.TokenRequestFacts;

/**
 * The AuthZEN request bodies, pinned per grant by the JSON goldens under
 * {@code src/test/resources/authzen/} (compared as JSON trees, so key order inside objects is free
 * but every field and value is checked).
 */
class AuthzenRequestsTest {

    static final ObjectMapper JSON = new ObjectMapper();

    static TokenRequestFacts.Subject alice() {
        Map<String, List<String>> attributes = new LinkedHashMap<>();
        attributes.put("department", List.of("finance"));
        return new TokenRequestFacts.Subject("u-alice", "alice", "alice@acme.example", true, null, null, attributes,
                List.of("offline_access", "crm-api/reader"), List.of("/finance"), "1", List.of("pwd"), 1767225600L, "sess-1");
    }

    static TokenRequestFacts.Subject billingBot() {
        return new TokenRequestFacts.Subject("u-sa-billing", "service-account-billing-bot", null, false, "billing-bot", "agent",
                Map.of(), List.of(), List.of(), null, List.of(), null, null);
    }

    static TokenRequestFacts facts(String grant, TokenRequestFacts.Subject subject, String clientId, List<String> audience,
                                   List<TokenRequestFacts.Actor> actors) {
        Map<String, String> clientAttributes = new LinkedHashMap<>();
        clientAttributes.put("kpb.tier", "web");
        clientAttributes.put("client.secret.creation.time", "1");
        return new TokenRequestFacts(TokenEvent.TOKEN, "acme", "https://kc.example/realms/acme", grant, List.of("openid", "crm"),
                audience, new TokenRequestFacts.Client(clientId, clientAttributes), subject, actors,
                new TokenRequestFacts.Context("10.0.0.7", "curl/8", "acme-eu"));
    }

    static void assertGolden(String name, byte[] body) throws Exception {
        Path golden = Path.of("src/test/resources/authzen", name);
        JsonNode actual = JSON.readTree(body);
        if (Boolean.getBoolean("kpb.authzen.goldens.update")) {
            Files.writeString(golden, JSON.writerWithDefaultPrettyPrinter().writeValueAsString(actual) + "\n", StandardCharsets.UTF_8);
        }
        assertEquals(JSON.readTree(golden.toFile()), actual, name + ": " + new String(body, StandardCharsets.UTF_8));
    }

    @Test
    void authorizationCodeGateForAHuman() throws Exception {
        assertGolden("gate-authorization_code.json",
                AuthzenRequests.evaluation(facts("authorization_code", alice(), "acme-web", List.of(), List.of()), "req-1", "jti-1", 1));
    }

    @Test
    void clientCredentialsGateForAServiceAccountOnARequestedAudience() throws Exception {
        assertGolden("gate-client_credentials.json", AuthzenRequests.evaluation(
                facts("client_credentials", billingBot(), "billing-bot", List.of("crm-api", "ledger"), List.of()), "req-2", null, 1));
    }

    @Test
    void tokenExchangeGateCarriesTheActorChainAndTheAttempt() throws Exception {
        List<TokenRequestFacts.Actor> actors = List.of(new TokenRequestFacts.Actor("u-sa-agent", "report-agent", "agent"),
                new TokenRequestFacts.Actor(null, "acme-web", "service_account"));
        assertGolden("gate-token-exchange.json", AuthzenRequests.evaluation(facts("urn:ietf:params:oauth:grant-type:token-exchange",
                alice(), "report-agent", List.of("crm-api"), actors), "req-3", "jti-3", 2));
    }

    @Test
    void resourceSearchPagesCarryTheClaimAsTypeAndTheNextToken() throws Exception {
        TokenRequestFacts facts = facts("refresh_token", alice(), "acme-web", List.of(), List.of());
        assertGolden("search-roles-page2.json", AuthzenRequests.searchResource(facts, "roles", "req-4", "jti-4", 1, "tok-2"));
        JsonNode first = JSON.readTree(AuthzenRequests.searchResource(facts, "roles", "req-4", "jti-4", 1, null));
        assertFalse(first.has("page"), "the first page sends no page object");
        assertEquals("roles", first.at("/resource/type").asText());
        assertFalse(first.get("resource").has("id"));
        assertEquals("issue:access_token:refresh_token", first.at("/action/name").asText());
    }

    @Test
    void withoutAGrantTheActionSaysNoneAndAbsentValuesAreOmitted() throws Exception {
        TokenRequestFacts.Subject bare = new TokenRequestFacts.Subject("u-1", null, null, false, null, null, Map.of(), List.of(),
                List.of(), null, List.of(), null, null);
        TokenRequestFacts facts = new TokenRequestFacts(TokenEvent.USERINFO, "acme", null, null, List.of(), List.of(),
                new TokenRequestFacts.Client("c-1", Map.of()), bare, List.of(), null);
        JsonNode r = JSON.readTree(AuthzenRequests.evaluation(facts, "req-5", null, 1));
        assertEquals("issue:access_token:none", r.at("/action/name").asText());
        assertEquals("userinfo", r.at("/context/event").asText());
        assertEquals("c-1", r.at("/resource/id").asText(), "no requested audience: the client is the audience");
        JsonNode properties = r.at("/subject/properties");
        assertFalse(properties.has("username") || properties.has("email") || properties.get("auth").has("acr"));
        assertFalse(r.get("context").has("jti") || r.get("context").has("issuer") || r.get("context").has("attempt")
                || r.get("context").has("actors"));
        assertTrue(properties.get("email_verified").isBoolean());
    }

    @Test
    void attemptCountsFromOne() {
        TokenRequestFacts facts = facts("password", alice(), "acme-web", List.of(), List.of());
        assertThrows(IllegalArgumentException.class, () -> AuthzenRequests.evaluation(facts, "req-6", null, 0));
    }
}
