package org.keycloakpolicybridge.mapper.bridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

class DecisionParserTest {

    private static BridgeDecision parse(String json) throws BridgeFailure {
        return DecisionParser.parse(json.getBytes(StandardCharsets.UTF_8));
    }

    private static BridgeFailure refused(String json) {
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> parse(json));
        assertEquals(BridgeFailure.Kind.INVALID_RESPONSE, failure.kind());
        return failure;
    }

    @Test
    void keepsJsonTypesOfClaims() throws Exception {
        BridgeDecision d = parse("{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{\"o\":{\"a\":[1,2.5,true,null,\"x\"]},"
                + "\"n\":12345678901,\"big\":123456789012345678901234567890},\"remove_claims\":[\"realm_access\"],"
                + "\"max_ttl_seconds\":300,\"reasons\":[{\"rule\":\"r\",\"message\":\"m\",\"kind\":\"omit\"}],"
                + "\"policy\":{\"id\":\"p\"},\"provenance\":{}}");
        assertEquals(Map.of("a", Arrays.asList(1, 2.5, true, null, "x")), d.claims().get("o"));
        assertEquals(12345678901L, d.claims().get("n"));
        assertEquals(new BigInteger("123456789012345678901234567890"), d.claims().get("big"));
        assertEquals(List.of("realm_access"), d.removeClaims());
        assertEquals(300L, d.maxTtlSeconds().getAsLong());
        assertEquals(new BridgeDecision.Reason("r", "m", "omit"), d.reasons().get(0));
    }

    @Test
    void optionalFieldsMayBeAbsent() throws Exception {
        BridgeDecision d = parse("{\"decision_id\":\"D\",\"effect\":\"deny\",\"claims\":{}}");
        assertEquals(BridgeDecision.Effect.DENY, d.effect());
        assertTrue(d.removeClaims().isEmpty() && d.reasons().isEmpty() && d.maxTtlSeconds().isEmpty());
    }

    @Test
    void userMessageIsOptionalAndKeptAsSent() throws Exception {
        // Sanitizing is the enforcer's job, at the one place the text leaves Keycloak.
        assertEquals("Say \"no\"\n", parse("{\"decision_id\":\"D\",\"effect\":\"deny\",\"claims\":{},"
                + "\"user_message\":\"Say \\\"no\\\"\\n\"}").userMessage());
        assertNull(parse("{\"decision_id\":\"D\",\"effect\":\"deny\",\"claims\":{}}").userMessage());
        assertNull(parse("{\"decision_id\":\"D\",\"effect\":\"deny\",\"claims\":{},\"user_message\":null}").userMessage());
    }

    /** The answer to a {@code Prefer: return=minimal} request: only the fields the mapper reads. */
    static final String MINIMAL = "{\"decision_id\":\"01JDX6Q2M3VEC0000000000005\",\"effect\":\"permit\","
            + "\"claims\":{\"roles\":[\"crm:read\"],\"tenant\":\"acme-eu\"},\"remove_claims\":[\"realm_access\"],"
            + "\"max_ttl_seconds\":300,\"reasons\":[{\"rule\":\"kpb:delegation\",\"message\":\"'crm:write' left out\","
            + "\"kind\":\"omit\",\"claim\":\"roles\"}],\"user_message\":null}";

    /** The same decision in full, as the bridge answers without the preference (provenance and all). */
    static final String FULL = "{\"version\":\"1\",\"request_id\":\"r1\",\"decision_id\":\"01JDX6Q2M3VEC0000000000005\","
            + "\"effect\":\"permit\",\"claims\":{\"roles\":[\"crm:read\"],\"tenant\":\"acme-eu\"},"
            + "\"remove_claims\":[\"realm_access\"],\"max_ttl_seconds\":300,\"reasons\":[{\"rule\":\"kpb:delegation\","
            + "\"message\":\"'crm:write' left out\",\"kind\":\"omit\",\"claim\":\"roles\"}],\"user_message\":null,"
            + "\"policy\":{\"id\":\"acme-token-policy\",\"version\":\"2026-11-28.1\",\"digest\":\"sha256:33\"},"
            + "\"entitlements\":{\"snapshot\":\"sha256:ee\",\"generated_at\":\"2026-11-28T02:00:04Z\",\"age_seconds\":21596,"
            + "\"stale\":false},\"evaluated_at\":\"2026-11-28T08:00:00Z\",\"principals\":[{\"role\":\"subject\","
            + "\"subject_id\":\"E1001\",\"kind\":\"human\",\"status\":\"active\",\"matched_by\":\"keycloak_user_id\"}],"
            + "\"provenance\":{\"roles\":[{\"value\":\"crm:read\",\"sources\":[{\"rule\":\"roles-from-app-roles\"}]}]}}";

    @Test
    void theMinimalAnswerParses() throws Exception {
        BridgeDecision d = parse(MINIMAL);
        assertEquals("01JDX6Q2M3VEC0000000000005", d.decisionId());
        assertEquals(BridgeDecision.Effect.PERMIT, d.effect());
        assertEquals(Map.of("roles", List.of("crm:read"), "tenant", "acme-eu"), d.claims());
        assertEquals(List.of("realm_access"), d.removeClaims());
        assertEquals(300L, d.maxTtlSeconds().getAsLong());
        assertEquals(List.of(new BridgeDecision.Reason("kpb:delegation", "'crm:write' left out", "omit")), d.reasons());
        assertNull(d.userMessage());
    }

    @Test
    void theFullAnswerParsesToTheSameDecision() throws Exception {
        assertEquals(parse(MINIMAL), parse(FULL));
    }

    @Test
    void actIsNotReserved() throws Exception {
        assertTrue(parse("{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{\"act\":{\"sub\":\"x\"}}}").claims().containsKey("act"));
    }

    @ParameterizedTest
    @ValueSource(strings = {
        "",
        "[]",
        "\"permit\"",
        "{\"effect\":\"permit\",\"claims\":{}}",
        "{\"decision_id\":\"\",\"effect\":\"permit\",\"claims\":{}}",
        "{\"decision_id\":7,\"effect\":\"permit\",\"claims\":{}}",
        "{\"decision_id\":\"has space\",\"effect\":\"permit\",\"claims\":{}}",
        "{\"decision_id\":\"D\",\"effect\":\"PERMIT\",\"claims\":{}}",
        "{\"decision_id\":\"D\",\"effect\":\"permit\"}",
        "{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":[]}",
        "{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{},\"remove_claims\":\"realm_access\"}",
        "{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{},\"remove_claims\":[1]}",
        "{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{},\"max_ttl_seconds\":-1}",
        "{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{},\"max_ttl_seconds\":1.5}",
        "{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{},\"max_ttl_seconds\":\"300\"}",
        "{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{},\"reasons\":[\"x\"]}",
        "{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{},\"reasons\":[{\"rule\":1}]}",
        "{\"decision_id\":\"D\",\"effect\":\"deny\",\"claims\":{},\"user_message\":7}",
        "{\"decision_id\":\"D\",\"effect\":\"deny\",\"claims\":{},\"user_message\":[\"x\"]}",
        "{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{\"1bad\":true}}",
        "{\"decision_id\":\"D\",\"effect\":\"deny\",\"effect\":\"permit\",\"claims\":{}}",
        "{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{}} trailing"
    })
    void malformedDecisionsAreInvalid(String body) {
        refused(body);
    }

    @ParameterizedTest
    @ValueSource(strings = {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "typ", "azp", "nonce", "auth_time", "session_state",
        "sid", "scope", "acr", "cnf", "authz_decision_id", "authz_degraded", "at_hash", "c_hash", "s_hash"})
    void settingOrRemovingAReservedClaimIsInvalid(String claim) {
        BridgeFailure set = refused("{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{\"" + claim + "\":\"x\"}}");
        assertTrue(set.getMessage().contains("reserved"));
        refused("{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{},\"remove_claims\":[\"" + claim + "\"]}");
    }

    @ParameterizedTest
    @ValueSource(strings = {"realm_access", "resource_access", "email", "preferred_username", "allowed-origins", "address"})
    void typedClaimsMayBeRemovedButNotSet(String claim) throws Exception {
        refused("{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{\"" + claim + "\":{}}}");
        assertEquals(List.of(claim), parse("{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{},\"remove_claims\":[\""
                + claim + "\"]}").removeClaims());
    }

    @Test
    void messagesNeverEchoValues() {
        BridgeFailure failure = refused("{\"decision_id\":\"D\",\"effect\":\"permit\",\"claims\":{\"x y\":\"secret-value\"}}");
        assertFalse(failure.getMessage().contains("secret-value"));
        assertFalse(failure.getMessage().contains("x y"));
    }
}
