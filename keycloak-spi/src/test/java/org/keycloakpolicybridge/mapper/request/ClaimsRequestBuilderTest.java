package org.keycloakpolicybridge.mapper.request;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.Test;
import org.keycloakpolicybridge.mapper.TokenEvent;

class ClaimsRequestBuilderTest {

    static final ObjectMapper JSON = new ObjectMapper();

    static TokenRequestFacts.Subject subject(String saClient, String saKind) {
        return new TokenRequestFacts.Subject("u-1", "user", null, false, saClient, saKind, Map.of(), List.of("r"), List.of(),
                null, List.of(), null, null);
    }

    static TokenRequestFacts facts(TokenEvent event, String grant, TokenRequestFacts.Subject subject, Map<String, String> clientAttributes,
                                   List<TokenRequestFacts.Actor> actors, TokenRequestFacts.Context context) {
        return new TokenRequestFacts(event, "acme", null, grant, List.of("openid"), List.of(),
                new TokenRequestFacts.Client("c-1", clientAttributes), subject, actors, context);
    }

    static JsonNode build(TokenRequestFacts facts) throws Exception {
        return JSON.readTree(ClaimsRequestBuilder.toBytes(facts, "req-1"));
    }

    @Test
    void absentOptionalValuesAreOmittedAndNullablesAreNull() throws Exception {
        JsonNode r = build(facts(TokenEvent.TOKEN, "password", subject(null, null), Map.of(), List.of(), null));
        assertFalse(r.has("issuer") || r.has("audience") || r.has("actors"));
        assertEquals(0, r.get("context").size());
        assertTrue(r.at("/subject/email").isNull() && r.at("/subject/auth/acr").isNull() && r.at("/subject/auth/auth_time").isNull());
        assertFalse(r.get("subject").has("service_account_client_id"));
        assertTrue(r.at("/subject/email_verified").isBoolean() && !r.at("/subject/email_verified").asBoolean(),
                "email_verified is always sent, false unless Keycloak says verified");
        assertEquals("1", r.get("version").asText());
        assertEquals("req-1", r.get("request_id").asText());
    }

    @Test
    void withoutAGrantTypeTheSchemaStillGetsANonEmptyOne() throws Exception {
        assertEquals("none", build(facts(TokenEvent.USERINFO, null, subject(null, null), Map.of(), List.of(), null)).get("grant_type").asText());
        assertEquals("none", build(facts(TokenEvent.INTROSPECTION, "", subject(null, null), Map.of(), List.of(), null)).get("grant_type").asText());
    }

    @Test
    void onlyKpbClientAttributesAreSentSorted() throws Exception {
        Map<String, String> attributes = new LinkedHashMap<>();
        attributes.put("kpb.tier", "web");
        attributes.put("client.secret.creation.time", "1");
        attributes.put("kpb.kind", "agent");
        attributes.put("kpbx", "no");
        JsonNode r = build(facts(TokenEvent.TOKEN, "client_credentials", subject(null, null), attributes, List.of(), null));
        assertEquals("{\"kpb.kind\":\"agent\",\"kpb.tier\":\"web\"}", r.at("/client/attributes").toString());
    }

    @Test
    void kindHintsFollowTheServiceAccountLinkAndKpbKind() throws Exception {
        assertEquals("human", build(facts(TokenEvent.TOKEN, "password", subject(null, null), Map.of(), List.of(), null)).at("/subject/kind_hint").asText());
        JsonNode sa = build(facts(TokenEvent.TOKEN, "client_credentials", subject("billing-bot", null), Map.of(), List.of(), null));
        assertEquals("service_account", sa.at("/subject/kind_hint").asText());
        assertEquals("billing-bot", sa.at("/subject/service_account_client_id").asText());
        assertEquals("agent", build(facts(TokenEvent.TOKEN, "client_credentials", subject("research-agent", "agent"), Map.of(), List.of(), null))
                .at("/subject/kind_hint").asText());
        assertEquals("service_account", build(facts(TokenEvent.TOKEN, "client_credentials", subject("x", "robot"), Map.of(), List.of(), null))
                .at("/subject/kind_hint").asText(), "an unknown kpb.kind is not an agent");
    }

    @Test
    void actorsKeepOrderAndOmitMissingIds() throws Exception {
        JsonNode r = build(facts(TokenEvent.TOKEN, "urn:ietf:params:oauth:grant-type:token-exchange", subject(null, null), Map.of(),
                List.of(new TokenRequestFacts.Actor(null, "public-agent", "agent"), new TokenRequestFacts.Actor("sa-1", "a1", "agent")),
                new TokenRequestFacts.Context("127.0.0.1", null, "acme-eu")));
        assertEquals("[{\"client_id\":\"public-agent\",\"kind_hint\":\"agent\"},{\"sub\":\"sa-1\",\"client_id\":\"a1\",\"kind_hint\":\"agent\"}]",
                r.get("actors").toString());
        assertEquals("{\"ip\":\"127.0.0.1\",\"tenant\":\"acme-eu\"}", r.get("context").toString());
    }

    @Test
    void theBodyIsCompactUtf8() throws Exception {
        TokenRequestFacts.Subject s = new TokenRequestFacts.Subject("u", "zoë", "zoë@例え.jp", true, null, null,
                Map.of("city", List.of("Zürich")), List.of(), List.of(), null, List.of(), null, null);
        String body = new String(ClaimsRequestBuilder.toBytes(facts(TokenEvent.TOKEN, "password", s, Map.of(), List.of(), null), "r"),
                StandardCharsets.UTF_8);
        assertTrue(body.contains("\"username\":\"zoë\"") && body.contains("Zürich"), body);
        assertTrue(body.contains("\"email\":\"zoë@例え.jp\",\"email_verified\":true"), body);
        assertFalse(body.contains("\n"));
    }
}
