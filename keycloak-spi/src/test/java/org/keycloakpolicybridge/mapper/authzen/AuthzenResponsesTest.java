package org.keycloakpolicybridge.mapper.authzen;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.keycloakpolicybridge.mapper.bridge.BridgeFailure;

class AuthzenResponsesTest {

    static byte[] b(String json) {
        return json.getBytes(StandardCharsets.UTF_8);
    }

    @Test
    void aPermitWithIssuanceShapingIsRead() throws Exception {
        AuthzenResponses.Evaluation e = AuthzenResponses.evaluation(b("{\"decision\":true,\"context\":{\"decision_id\":\"D-1\","
                + "\"reason_admin\":{\"200\":\"rule x\"},\"issuance\":{\"token_lifetime\":120,\"claims\":{\"tenant\":\"acme-eu\","
                + "\"limits\":{\"eur\":500}},\"crit\":[\"limits\"]}}}"));
        assertTrue(e.decision());
        assertEquals("D-1", e.decisionId());
        assertEquals(Map.of("tenant", "acme-eu", "limits", Map.of("eur", 500)), e.claims());
        assertEquals(120, e.tokenLifetime().getAsLong());
        assertTrue(e.unsupported().isEmpty());
    }

    @Test
    void aBareDecisionIsEnough() throws Exception {
        AuthzenResponses.Evaluation e = AuthzenResponses.evaluation(b("{\"decision\":false}"));
        assertFalse(e.decision());
        assertNull(e.decisionId());
        assertNull(e.userText());
        assertTrue(e.claims().isEmpty() && e.tokenLifetime().isEmpty());
    }

    @Test
    void aDenysShapingIsIgnoredAndItsUserReasonKept() throws Exception {
        AuthzenResponses.Evaluation e = AuthzenResponses.evaluation(b("{\"decision\":false,\"context\":{\"reason_user\":"
                + "{\"en\":\"Your account is not active.\"},\"issuance\":{\"claims\":{\"sub\":\"x\"},\"granted_scope\":\"a\"}}}"));
        assertEquals("Your account is not active.", e.userText());
        assertTrue(e.claims().isEmpty() && e.unsupported().isEmpty());
        assertEquals("plain", AuthzenResponses.evaluation(b("{\"decision\":false,\"context\":{\"reason_user\":\"plain\"}}")).userText());
        assertNull(AuthzenResponses.evaluation(b("{\"decision\":false,\"context\":{\"reason_user\":42}}")).userText(),
                "an advisory field of another shape is ignored, not an error");
    }

    @Test
    void issuanceMembersTheMapperCannotApplyAreReported() throws Exception {
        AuthzenResponses.Evaluation e = AuthzenResponses.evaluation(b("{\"decision\":true,\"context\":{\"issuance\":"
                + "{\"granted_scope\":\"openid\",\"audience\":[],\"x-vendor\":1,\"claims\":{}}}}"));
        assertEquals(List.of("granted_scope", "audience", "x-vendor"), e.unsupported());
    }

    @ParameterizedTest
    @ValueSource(strings = {
        "not json",
        "[]",
        "{}",
        "{\"decision\":\"true\"}",
        "{\"decision\":1}",
        "{\"decision\":true,\"context\":[]}",
        "{\"decision\":true,\"context\":{\"decision_id\":\"\"}}",
        "{\"decision\":true,\"context\":{\"decision_id\":\"has space\"}}",
        "{\"decision\":true,\"context\":{\"decision_id\":7}}",
        "{\"decision\":true,\"context\":{\"issuance\":\"x\"}}",
        "{\"decision\":true,\"context\":{\"issuance\":{\"token_lifetime\":-1}}}",
        "{\"decision\":true,\"context\":{\"issuance\":{\"token_lifetime\":1.5}}}",
        "{\"decision\":true,\"context\":{\"issuance\":{\"claims\":[]}}}",
        "{\"decision\":true,\"context\":{\"issuance\":{\"claims\":{\"sub\":\"bob\"}}}}",
        "{\"decision\":true,\"context\":{\"issuance\":{\"claims\":{\"SUB\":\"bob\"}}}}",
        "{\"decision\":true,\"context\":{\"issuance\":{\"claims\":{\"may_act\":{}}}}}",
        "{\"decision\":true,\"context\":{\"issuance\":{\"claims\":{\"client_id\":\"x\"}}}}",
        "{\"decision\":true,\"context\":{\"issuance\":{\"claims\":{\"realm_access\":{}}}}}",
        "{\"decision\":true,\"context\":{\"issuance\":{\"claims\":{\"1bad\":1}}}}",
        "{\"decision\":true,\"context\":{\"issuance\":{\"claims\":{\"a\":1},\"crit\":[\"b\"]}}}",
        "{\"decision\":true,\"context\":{\"issuance\":{\"crit\":\"a\"}}}",
        "{\"decision\":true,\"decision\":false}",
        "{\"decision\":true} trailing"
    })
    void malformedEvaluationsAreRefusedWithoutEchoingValues(String body) {
        BridgeFailure f = assertThrows(BridgeFailure.class, () -> AuthzenResponses.evaluation(b(body)));
        assertEquals(BridgeFailure.Kind.INVALID_RESPONSE, f.kind());
        assertFalse(f.getMessage().contains("bob"), f.getMessage());
    }

    @Test
    void searchPagesAreRead() throws Exception {
        AuthzenResponses.Page p = AuthzenResponses.searchPage(b("{\"results\":[{\"type\":\"roles\",\"id\":\"crm:read\"},"
                + "{\"type\":\"roles\",\"id\":\"crm:write\",\"properties\":{}}],\"page\":{\"next_token\":\"t2\",\"count\":2}}"), "roles");
        assertEquals(List.of("crm:read", "crm:write"), p.ids());
        assertEquals("t2", p.nextToken());
        assertNull(AuthzenResponses.searchPage(b("{\"results\":[],\"page\":{\"next_token\":\"\"}}"), "roles").nextToken(),
                "an empty token ends the search");
        assertNull(AuthzenResponses.searchPage(b("{\"results\":[]}"), "roles").nextToken());
    }

    @ParameterizedTest
    @ValueSource(strings = {
        "{}",
        "{\"results\":{}}",
        "{\"results\":[\"crm:read\"]}",
        "{\"results\":[{\"type\":\"groups\",\"id\":\"x\"}]}",
        "{\"results\":[{\"id\":\"x\"}]}",
        "{\"results\":[{\"type\":\"roles\",\"id\":5}]}",
        "{\"results\":[],\"page\":[]}",
        "{\"results\":[],\"page\":{\"next_token\":3}}"
    })
    void malformedSearchPagesAreRefused(String body) {
        assertEquals(BridgeFailure.Kind.INVALID_RESPONSE,
                assertThrows(BridgeFailure.class, () -> AuthzenResponses.searchPage(b(body), "roles")).kind());
    }

    @Test
    void claimNamesAreCheckedLikeTheBridgesDecisions() {
        assertNull(AuthzenClaims.problem("roles"));
        assertNull(AuthzenClaims.problem("crm:entitlements"));
        for (String refused : List.of("sub", "Scope", "act", "act.sub", "may_act", "client_id", "authorization_details", "jti",
                "authz_decision_id", "realm_access", "email", "resource_access.x", "", "1x")) {
            assertTrue(AuthzenClaims.problem(refused) != null, refused);
        }
    }
}
