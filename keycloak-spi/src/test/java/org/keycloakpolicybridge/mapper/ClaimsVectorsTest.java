package org.keycloakpolicybridge.mapper;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.stream.Stream;

import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.DynamicContainer;
import org.junit.jupiter.api.DynamicNode;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;
import org.keycloak.representations.AccessToken;
import org.keycloak.services.ErrorResponseException;
import org.keycloak.util.JsonSerialization;
import org.keycloakpolicybridge.mapper.bridge.BridgeDecision;
import org.keycloakpolicybridge.mapper.bridge.BridgeFailure;
import org.keycloakpolicybridge.mapper.bridge.DecisionParser;
import org.keycloakpolicybridge.mapper.request.ActorChain;
import org.keycloakpolicybridge.mapper.request.ClaimsRequestBuilder;
import org.keycloakpolicybridge.mapper.request.KeycloakFacts;
import org.keycloakpolicybridge.mapper.request.KindHints;
import org.keycloakpolicybridge.mapper.request.TokenRequestFacts;
import org.keycloakpolicybridge.mapper.token.ReservedClaims;

/**
 * The shared claims vectors ({@code contract/vectors/claims}): the request the builder makes from
 * each described Keycloak situation, and the token effect of each bridge response.
 */
class ClaimsVectorsTest {

    private static final ObjectMapper JSON = new ObjectMapper();

    @Test
    void theMapperAppliesTheClaimRulesOfTheContract() {
        JsonNode rules = Vectors.read("claims", "claim-rules.json");
        assertEquals(strings(rules.get("reserved_claims")), ReservedClaims.RESERVED);
        assertEquals(strings(rules.get("typed_claims")), ReservedClaims.TYPED);
        assertEquals(rules.get("no_grant_type").asText(), ClaimsRequestBuilder.NO_GRANT);
    }

    @Test
    void everySituationAndResponseKindIsCovered() {
        Set<String> events = new HashSet<>();
        Set<String> grants = new HashSet<>();
        Set<String> outcomes = new HashSet<>();
        for (Path file : Vectors.files("claims")) {
            JsonNode v = Vectors.read(file);
            events.add(v.at("/request/event").asText());
            grants.add(v.at("/request/grant_type").asText() + "/" + v.at("/request/actors").size());
            v.get("responses").forEach(r -> outcomes.add(r.at("/expect/outcome").asText()));
        }
        assertEquals(Set.of("token", "userinfo", "introspection"), events);
        assertEquals(Set.of("authorization_code/0", "refresh_token/0", "client_credentials/0",
                "urn:ietf:params:oauth:grant-type:token-exchange/1", "urn:ietf:params:oauth:grant-type:token-exchange/2",
                "none/0"), grants);
        assertEquals(Set.of("permit", "deny", "invalid"), outcomes);
    }

    @TestFactory
    Stream<DynamicNode> vectors() {
        return Vectors.files("claims").stream().map(file -> {
            JsonNode v = Vectors.read(file);
            List<DynamicNode> tests = new ArrayList<>();
            tests.add(DynamicTest.dynamicTest("request", () -> checkRequest(v)));
            for (JsonNode response : v.get("responses")) {
                tests.add(DynamicTest.dynamicTest("response " + response.get("name").asText(), () -> checkResponse(v, response)));
            }
            return DynamicContainer.dynamicContainer(file.getFileName().toString(), tests);
        });
    }

    private static void checkRequest(JsonNode v) throws Exception {
        MapperSettings settings = MapperSettings.parse(JSON.convertValue(v.get("mapper_config"), new TypeReference<Map<String, String>>() { }));
        TokenRequestFacts facts = facts(v.get("keycloak"), settings);
        JsonNode expected = v.get("request");
        JsonNode built = JSON.readTree(ClaimsRequestBuilder.toBytes(facts, expected.get("request_id").asText()));
        assertEquals(expected, built);
    }

    private static void checkResponse(JsonNode v, JsonNode response) throws Exception {
        long now = v.get("now").asLong();
        byte[] body = response.has("body_text")
                ? response.get("body_text").asText().getBytes(StandardCharsets.UTF_8)
                : JSON.writeValueAsBytes(response.get("body"));
        JsonNode expect = response.get("expect");
        JsonNode before = expect.get("token_before");
        assertEquals(before, keycloakJson(token(before)), "token_before is in Keycloak's own serialization");
        switch (expect.get("outcome").asText()) {
            case "permit": {
                BridgeDecision decision = DecisionParser.parse(body);
                AccessToken token = token(before);
                DecisionEnforcer.enforce(Outcome.decided("r", decision), token, FailureMode.FAIL_CLOSED, 60, now);
                assertEquals(expect.get("token_after"), keycloakJson(token));
                break;
            }
            case "deny": {
                BridgeDecision decision = DecisionParser.parse(body);
                AccessToken token = token(before);
                ErrorResponseException error = assertThrows(ErrorResponseException.class, () ->
                        DecisionEnforcer.enforce(Outcome.decided("r", decision), token, FailureMode.DEGRADED, 60, now));
                assertEquals(expect.get("error").asText(), error.getError());
                assertEquals(expect.get("error_description").asText(), error.getErrorDescription());
                assertEquals(expect.get("http_status").asInt(), error.getResponse().getStatus());
                assertEquals(before, keycloakJson(token), "a denied token is not touched");
                break;
            }
            case "invalid": {
                BridgeFailure failure = assertThrows(BridgeFailure.class, () -> DecisionParser.parse(body));
                assertEquals(BridgeFailure.Kind.INVALID_RESPONSE, failure.kind());
                Outcome outcome = Outcome.failed("r", failure);
                ErrorResponseException error = assertThrows(ErrorResponseException.class, () ->
                        DecisionEnforcer.enforce(outcome, token(before), FailureMode.FAIL_CLOSED, 60, now));
                assertEquals(expect.at("/fail_closed/error").asText(), error.getError());
                assertEquals(expect.at("/fail_closed/http_status").asInt(), error.getResponse().getStatus());
                AccessToken degraded = token(before);
                DecisionEnforcer.enforce(outcome, degraded, FailureMode.DEGRADED, expect.at("/degraded/ttl_seconds").asInt(), now);
                assertEquals(expect.at("/degraded/token_after"), keycloakJson(degraded));
                break;
            }
            default:
                throw new AssertionError("unknown outcome");
        }
    }

    /** Facts from a vector's {@code keycloak} section, as {@link KeycloakFacts} reads them from the models. */
    static TokenRequestFacts facts(JsonNode kc, MapperSettings settings) {
        JsonNode user = kc.get("user");
        Map<String, List<String>> userAttributes = JSON.convertValue(user.get("attributes"), new TypeReference<Map<String, List<String>>>() { });
        JsonNode auth = user.get("auth");
        TokenRequestFacts.Subject subject = new TokenRequestFacts.Subject(
                user.get("id").asText(), text(user, "username"), text(user, "email"), user.get("email_verified").asBoolean(),
                text(user, "service_account_client_id"), text(user, "service_account_client_kind"),
                KeycloakFacts.selectAttributes(settings.userAttributes(), userAttributes::get),
                list(user.get("directory_roles")), list(user.get("groups")),
                text(auth, "acr"), list(auth.get("amr")),
                auth.get("auth_time").isNull() ? null : auth.get("auth_time").asLong(), text(auth, "session_id"));
        List<TokenRequestFacts.Actor> actors = List.of();
        if (kc.has("current_actor")) {
            JsonNode current = kc.get("current_actor");
            Map<String, Map<String, String>> realmClients = JSON.convertValue(kc.get("realm_clients"),
                    new TypeReference<Map<String, Map<String, String>>>() { });
            actors = ActorChain.build(new TokenRequestFacts.Actor(text(current, "sub"), text(current, "client_id"),
                            KindHints.actor(text(current, "kind"))), text(kc, "subject_token"),
                    clientId -> realmClients.getOrDefault(clientId, Map.of()).get(KindHints.KIND_ATTRIBUTE));
        }
        JsonNode context = kc.get("context");
        return new TokenRequestFacts(TokenEvent.valueOf(kc.get("event").asText().toUpperCase()), kc.get("realm").asText(),
                text(kc, "issuer"), text(kc, "grant_type"), list(kc.get("requested_scopes")), list(kc.get("audience")),
                new TokenRequestFacts.Client(kc.at("/client/client_id").asText(),
                        JSON.convertValue(kc.at("/client/attributes"), new TypeReference<LinkedHashMap<String, String>>() { })),
                subject, actors,
                new TokenRequestFacts.Context(text(context, "ip"), text(context, "user_agent"), text(context, "tenant")));
    }

    private static AccessToken token(JsonNode json) throws Exception {
        return JsonSerialization.readValue(JSON.writeValueAsBytes(json), AccessToken.class);
    }

    /** The token as Keycloak serializes it into a JWT. */
    private static JsonNode keycloakJson(AccessToken token) throws Exception {
        return JSON.readTree(JsonSerialization.writeValueAsBytes(token));
    }

    private static String text(JsonNode node, String field) {
        JsonNode value = node.get(field);
        return value == null || value.isNull() ? null : value.asText();
    }

    private static List<String> list(JsonNode array) {
        List<String> values = new ArrayList<>();
        if (array != null) {
            array.forEach(item -> values.add(item.asText()));
        }
        return values;
    }

    private static Set<String> strings(JsonNode array) {
        return new HashSet<>(list(array));
    }
}
