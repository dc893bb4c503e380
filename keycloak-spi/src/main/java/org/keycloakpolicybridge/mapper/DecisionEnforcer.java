package org.keycloakpolicybridge.mapper;

import java.util.List;
import java.util.StringJoiner;
import java.util.stream.Collectors;

import jakarta.ws.rs.core.Response;
import org.keycloak.representations.IDToken;
import org.keycloak.services.ErrorResponseException;
import org.keycloakpolicybridge.mapper.bridge.BridgeDecision;
import org.keycloakpolicybridge.mapper.token.ClaimWriter;

/**
 * Turns an {@link Outcome} into its effect on one token artifact.
 *
 * <ul>
 * <li>permit: the claims are written ({@link ClaimWriter#applyPermit});</li>
 * <li>deny: OAuth error {@code access_denied}, HTTP 403, described by the deny reasons' rule ids
 *     and messages and the decision id (no subject data);</li>
 * <li>failure, {@code fail_closed}: OAuth error {@code temporarily_unavailable}, HTTP 503;</li>
 * <li>failure, {@code degraded}: the token is minted without governed claims, marked and
 *     short-lived ({@link ClaimWriter#applyDegraded}).</li>
 * </ul>
 *
 * Errors are {@link ErrorResponseException}s, which Keycloak answers with their own status, so
 * the client never sees a 500. (At the introspection endpoint Keycloak 26 wraps any mapper error
 * into its own {@code 400 invalid_request}; the token is still not reported with claims.)
 */
public final class DecisionEnforcer {

    public static final String ACCESS_DENIED = "access_denied";
    public static final String TEMPORARILY_UNAVAILABLE = "temporarily_unavailable";
    static final String UNAVAILABLE_DESCRIPTION = "Authorization policy service unavailable; try again later.";
    private static final int MAX_DESCRIPTION = 400;
    private static final int MAX_REASONS = 3;

    private DecisionEnforcer() {
    }

    /**
     * Applies the outcome.
     *
     * @param mode the failure mode (use {@code FAIL_CLOSED} when the mapper settings are invalid)
     * @param degradedTtlSeconds lifetime cap in degraded mode
     * @param nowSeconds Keycloak's current time (the base of {@code exp})
     * @throws ErrorResponseException for a deny (403) or a fail-closed failure (503)
     */
    public static void enforce(Outcome outcome, IDToken token, FailureMode mode, long degradedTtlSeconds, long nowSeconds) {
        BridgeDecision decision = outcome.decision();
        if (decision == null) {
            if (mode == FailureMode.DEGRADED) {
                ClaimWriter.applyDegraded(token, nowSeconds, degradedTtlSeconds);
                return;
            }
            throw new ErrorResponseException(TEMPORARILY_UNAVAILABLE, UNAVAILABLE_DESCRIPTION, Response.Status.SERVICE_UNAVAILABLE);
        }
        if (decision.effect() == BridgeDecision.Effect.DENY) {
            throw new ErrorResponseException(ACCESS_DENIED, denyDescription(decision), Response.Status.FORBIDDEN);
        }
        ClaimWriter.applyPermit(token, decision, nowSeconds);
    }

    /** "Denied by policy (decision ID): rule: message; ..." from the deny reasons (else all reasons). */
    static String denyDescription(BridgeDecision decision) {
        List<BridgeDecision.Reason> denying = decision.reasons().stream()
                .filter(r -> "deny".equals(r.kind())).collect(Collectors.toList());
        List<BridgeDecision.Reason> shown = denying.isEmpty() ? decision.reasons() : denying;
        StringJoiner reasons = new StringJoiner("; ");
        shown.stream().limit(MAX_REASONS).forEach(r -> reasons.add(
                (r.rule() == null ? "policy" : r.rule()) + (r.message() == null ? "" : ": " + r.message())));
        String text = "Denied by policy (decision " + decision.decisionId() + ")"
                + (reasons.length() == 0 ? "" : ": " + reasons);
        text = text.replaceAll("[\\p{Cntrl}]", " ");
        return text.length() <= MAX_DESCRIPTION ? text : text.substring(0, MAX_DESCRIPTION - 3) + "...";
    }
}
