package org.keycloakpolicybridge.mapper;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.OptionalLong;
import java.util.regex.Pattern;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import org.keycloak.representations.AccessToken;
import org.keycloak.services.ErrorResponseException;
import org.keycloakpolicybridge.mapper.bridge.BridgeDecision;
import org.keycloakpolicybridge.mapper.bridge.BridgeFailure;

/**
 * What the end user reads when a token is refused: the bridge's {@code user_message} (else a
 * neutral default) and the decision id as a reference; never the reasons, which are for admins.
 */
class DecisionEnforcerTest {

    private static final long NOW = 1_795_852_800L;
    // RFC 6749 section 5.2: error_description is %x20-21 / %x23-5B / %x5D-7E.
    private static final Pattern RFC6749_DESCRIPTION = Pattern.compile("[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e]+");
    private static final List<BridgeDecision.Reason> REASONS = List.of(
            new BridgeDecision.Reason("deny-inactive-principal", "IGA status is not active", "deny"),
            new BridgeDecision.Reason("roles-from-app-roles", "'crm:read' left out: subject is not active", "omit"));

    private static BridgeDecision deny(String decisionId, String userMessage) {
        return new BridgeDecision(decisionId, BridgeDecision.Effect.DENY, Map.of(), List.of(), OptionalLong.empty(), REASONS, userMessage);
    }

    private static ErrorResponseException refuse(Outcome outcome, FailureMode mode) {
        return assertThrows(ErrorResponseException.class, () -> DecisionEnforcer.enforce(outcome, new AccessToken(), mode, 60, NOW));
    }

    private static void assertNoReasons(String description) {
        for (BridgeDecision.Reason reason : REASONS) {
            assertFalse(description.contains(reason.rule()) || description.contains(reason.message()), description);
        }
        assertTrue(RFC6749_DESCRIPTION.matcher(description).matches(), description);
    }

    @Test
    void aDenyIsDescribedByTheUserMessageAndTheDecisionIdNeverTheReasons() {
        ErrorResponseException e = refuse(Outcome.decided("r", deny("01JDX6Q2M3VEC0000000000004",
                "Your account is not active. Contact the service desk.")), FailureMode.FAIL_CLOSED);
        assertEquals("access_denied", e.getError());
        assertEquals(403, e.getResponse().getStatus());
        assertEquals("Your account is not active. Contact the service desk. (reference 01JDX6Q2M3VEC0000000000004)",
                e.getErrorDescription());
        assertNoReasons(e.getErrorDescription());
    }

    @Test
    void withoutAUsableUserMessageTheMapperSaysItsNeutralDefault() {
        // An older bridge sends no user_message; the reasons are there, and must still not be shown.
        for (String userMessage : Arrays.asList(null, "", "   ", "\u2706\u200b", "\n\t")) {
            String description = DecisionEnforcer.denyDescription(deny("D-1", userMessage));
            assertEquals("Access was denied by your organisation's access policy. (reference D-1)", description);
            assertEquals(DecisionEnforcer.DEFAULT_DENY_TEXT + " (reference D-1)", description);
            assertNoReasons(description);
        }
    }

    @Test
    void theUserTextIsMadeRfc6749ErrorDescriptionText() {
        Map<String, String> shown = new LinkedHashMap<>();
        shown.put("Say \"no\"", "Say 'no'");
        shown.put("C:\\Hilfe", "C:/Hilfe");
        shown.put("line one\nline two\r\n\tend", "line one line two end");
        shown.put("Zugang verweigert f\u00fcr Sie", "Zugang verweigert fur Sie");
        shown.put("Acc\u00e8s refus\u00e9\u00a0!", "Acces refuse !");
        shown.put("\u202edenied\u200b here \ud83d\ude00", "denied here");
        shown.put("  spaced   out  ", "spaced out");
        shown.put("<b>{x}</b> ok", "<b>{x}</b> ok");  // allowed characters; the bridge's policy validation refuses these
        shown.forEach((userMessage, text) ->
                assertEquals(text + " (reference D-2)", DecisionEnforcer.denyDescription(deny("D-2", userMessage)), userMessage));
    }

    @Test
    void theUserTextIsCappedAndTheReferenceIsAlwaysKept() {
        String description = DecisionEnforcer.denyDescription(deny("01JDX6Q2M3VEC0000000000009", "word ".repeat(100)));
        String text = description.substring(0, description.indexOf(" (reference "));
        assertEquals(DecisionEnforcer.MAX_USER_TEXT, text.length());
        assertTrue(text.endsWith("..."), text);
        assertTrue(description.endsWith(" (reference 01JDX6Q2M3VEC0000000000009)"), description);
        assertTrue(RFC6749_DESCRIPTION.matcher(description).matches());
    }

    @Test
    void aDecisionIdOutsideTheDescriptionCharactersIsSanitizedToo() {
        // DecisionParser admits any printable ASCII id; '"' and '\' are not error_description characters.
        assertEquals("Denied. (reference a'b/c)", DecisionEnforcer.denyDescription(deny("a\"b\\c", "Denied.")));
    }

    @ParameterizedTest
    @EnumSource(BridgeFailure.Kind.class)
    void failingClosedNamesNoInternals(BridgeFailure.Kind kind) {
        BridgeFailure failure = new BridgeFailure(kind, 401, "bridge http://10.0.0.7:8787/v1/claims said 401 for key kpb-1");
        ErrorResponseException e = refuse(Outcome.failed("req-1", failure), FailureMode.FAIL_CLOSED);
        assertEquals("temporarily_unavailable", e.getError());
        assertEquals(503, e.getResponse().getStatus());
        assertEquals(DecisionEnforcer.UNAVAILABLE_DESCRIPTION, e.getErrorDescription());
        assertFalse(e.getErrorDescription().contains("8787") || e.getErrorDescription().contains("kpb")
                || e.getErrorDescription().toLowerCase().contains(kind.name().toLowerCase().replace('_', ' ')), e.getErrorDescription());
        assertTrue(RFC6749_DESCRIPTION.matcher(e.getErrorDescription()).matches());
    }
}
