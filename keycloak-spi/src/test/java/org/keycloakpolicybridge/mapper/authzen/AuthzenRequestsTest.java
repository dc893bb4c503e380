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
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.junit.jupiter.api.Test;
import org.keycloakpolicybridge.mapper.TokenEvent;
import org.keycloakpolicybridge.mapper.Vectors;
import org.keycloakpolicybridge.mapper.request.ClaimsRequestBuilder;
import org.keycloakpolicybridge.mapper.request.TokenRequestFacts;

/**
 * The AuthZEN request bodies, pinned per grant by the shared vectors under
 * {@code contract/vectors/authzen/} (compared as JSON trees, so key order inside objects is free
 * but every field and value is checked). Each vector also pins the {@code /v1/claims} request the
 * mapper sends for the same facts ({@code claims_request}): the bridge's test
 * ({@code tests/test_contract_authzen_vectors.py}) checks that both get the same decision. The
 * facts are the acme example's (its Keycloak ids), so the bridge permits some of them.
 * {@code -Dkpb.authzen.goldens.update=true} rewrites the vectors from the builders.
 */
class AuthzenRequestsTest {

    static final ObjectMapper JSON = new ObjectMapper();
    /** The acme example's Keycloak ids (examples/acme/entitlements). */
    static final String ALICE = "a11ce000-0000-4000-8000-000000000001";
    static final String BILLING_BOT = "5b1d0c2e-0000-4000-8000-0000000000aa";
    static final String RESEARCH_AGENT = "9a7e0000-0000-4000-8000-0000000000cc";

    static TokenRequestFacts.Subject alice() {
        Map<String, List<String>> attributes = new LinkedHashMap<>();
        attributes.put("department", List.of("finance"));
        return new TokenRequestFacts.Subject(ALICE, "alice", "alice@acme.example", true, null, null, attributes,
                List.of("offline_access", "crm-api/reader"), List.of("/finance"), "1", List.of("pwd"), 1767225600L, "sess-1");
    }

    static TokenRequestFacts.Subject billingBot() {
        return new TokenRequestFacts.Subject(BILLING_BOT, "service-account-billing-bot", null, false, "billing-bot", null,
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

    static void assertGolden(String name, String description, byte[] body, byte[] claimsRequest) throws Exception {
        Path golden = Vectors.root().resolve("contract").resolve("vectors").resolve("authzen").resolve(name);
        JsonNode actual = JSON.readTree(body);
        JsonNode claims = JSON.readTree(claimsRequest);
        if (Boolean.getBoolean("kpb.authzen.goldens.update")) {
            ObjectNode vector = JSON.createObjectNode();
            vector.put("description", description);
            vector.set("authzen_request", actual);
            vector.set("claims_request", claims);
            Files.writeString(golden, JSON.writerWithDefaultPrettyPrinter().writeValueAsString(vector) + "\n", StandardCharsets.UTF_8);
        }
        JsonNode vector = Vectors.read(golden);
        assertEquals(vector.get("authzen_request"), actual, name + ": " + new String(body, StandardCharsets.UTF_8));
        assertEquals(vector.get("claims_request"), claims, name + " (claims_request)");
    }

    @Test
    void authorizationCodeGateForAHuman() throws Exception {
        TokenRequestFacts facts = facts("authorization_code", alice(), "acme-web", List.of(), List.of());
        assertGolden("01-gate-authorization_code.json", "alice signs in to acme-web (authorization code): the gate evaluation",
                AuthzenRequests.evaluation(facts, "req-1", "jti-1", 1), ClaimsRequestBuilder.toBytes(facts, "req-1", 1));
    }

    @Test
    void clientCredentialsGateForAServiceAccountOnARequestedAudience() throws Exception {
        TokenRequestFacts facts = facts("client_credentials", billingBot(), "billing-bot", List.of("crm-api", "ledger"), List.of());
        assertGolden("02-gate-client_credentials.json", "billing-bot's service account (client credentials) asks for crm-api and ledger",
                AuthzenRequests.evaluation(facts, "req-2", null, 1), ClaimsRequestBuilder.toBytes(facts, "req-2", 1));
    }

    @Test
    void tokenExchangeGateCarriesTheActorChainAndTheAttempt() throws Exception {
        List<TokenRequestFacts.Actor> actors = List.of(new TokenRequestFacts.Actor(RESEARCH_AGENT, "research-agent", "agent"),
                new TokenRequestFacts.Actor(null, "acme-web", "service_account"));
        TokenRequestFacts facts = facts("urn:ietf:params:oauth:grant-type:token-exchange", alice(), "research-agent", List.of("crm-api"),
                actors);
        assertGolden("03-gate-token-exchange.json",
                "research-agent exchanges alice's token for crm-api (two actors), second PDP asked (attempt 2)",
                AuthzenRequests.evaluation(facts, "req-3", "jti-3", 2), ClaimsRequestBuilder.toBytes(facts, "req-3", 2));
    }

    @Test
    void resourceSearchPagesCarryTheClaimAsTypeAndTheNextToken() throws Exception {
        TokenRequestFacts facts = facts("refresh_token", alice(), "acme-web", List.of(), List.of());
        assertGolden("04-search-roles-page2.json",
                "alice refreshes at acme-web: the second page of the search for claim roles (page.token is the first answer's next_token)",
                AuthzenRequests.searchResource(facts, "roles", "req-4", "jti-4", 1, "tok-2"), ClaimsRequestBuilder.toBytes(facts, "req-4", 1));
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
