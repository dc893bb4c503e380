package org.keycloakpolicybridge.mapper;

import java.text.Normalizer;

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
 * <li>deny: OAuth error {@code access_denied}, HTTP 403, described for the end user by the
 *     bridge's {@code user_message} (else {@link #DEFAULT_DENY_TEXT}) and the decision id as a
 *     reference for support ({@link #denyDescription}). Never the reasons: rule ids, conditions
 *     and export rows are for the decision log and admins;</li>
 * <li>failure, {@code fail_closed}: OAuth error {@code temporarily_unavailable}, HTTP 503, with a
 *     fixed description (never the failure's kind or message);</li>
 * <li>failure, {@code degraded}: the token is minted without governed claims, marked and
 *     short-lived ({@link ClaimWriter#applyDegraded}).</li>
 * </ul>
 *
 * Errors are {@link ErrorResponseException}s, which Keycloak answers with their own status, so
 * the client never sees a 500. (At the introspection endpoint Keycloak 26 wraps any mapper error
 * into its own {@code 400 invalid_request} "Failed to introspect token.", so neither description
 * reaches the introspecting client there; the userinfo endpoint passes both through.)
 */
public final class DecisionEnforcer {

    public static final String ACCESS_DENIED = "access_denied";
    public static final String TEMPORARILY_UNAVAILABLE = "temporarily_unavailable";
    static final String UNAVAILABLE_DESCRIPTION = "Authorization policy service unavailable; try again later.";
    /** The end user's text when the bridge sends none (a bridge older than {@code user_message}). */
    static final String DEFAULT_DENY_TEXT = "Access was denied by your organisation's access policy.";
    /** At most this many characters of the user's text (the bridge's policy validation allows 200). */
    static final int MAX_USER_TEXT = 200;
    private static final int MAX_INPUT = 4 * MAX_USER_TEXT;

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
            throw new ErrorResponseException(ACCESS_DENIED, denyDescription(decision, outcome.requestId()), Response.Status.FORBIDDEN);
        }
        ClaimWriter.applyPermit(token, decision, nowSeconds);
    }

    /**
     * "{@code <user text> (reference <decision id>)}": the user text is the decision's
     * {@code user_message} made {@link #descriptionText error_description text} and capped at
     * {@link #MAX_USER_TEXT} characters, or {@link #DEFAULT_DENY_TEXT} when none is sent or nothing
     * of it is left. The reasons are never read here: they name rules, conditions and export rows.
     * At most 200 + 12 + 128 + 1 characters (the parser caps the decision id at 128).
     */
    static String denyDescription(BridgeDecision decision) {
        return denyDescription(decision, null);
    }

    /**
     * As {@link #denyDescription(BridgeDecision)}; when the decision has no id (an AuthZEN PDP that
     * sends no {@code decision_id}), the reference is {@code fallbackReference}, the mapper's request
     * id, which the PDP received as {@code context.request_id} and {@code X-Request-ID}.
     */
    static String denyDescription(BridgeDecision decision, String fallbackReference) {
        String reference = decision.decisionId() != null ? decision.decisionId() : fallbackReference;
        String text = decision.userMessage() == null ? "" : descriptionText(decision.userMessage());
        if (text.isEmpty()) {
            text = DEFAULT_DENY_TEXT;
        }
        if (text.length() > MAX_USER_TEXT) {
            text = text.substring(0, MAX_USER_TEXT - 3).stripTrailing() + "...";
        }
        return text + " (reference " + descriptionText(reference == null ? "none" : reference) + ")";
    }

    /**
     * {@code text} reduced to what RFC 6749 section 5.2 allows in {@code error_description},
     * {@code %x20-21 / %x23-5B / %x5D-7E}, which Keycloak does not enforce (it serializes the
     * description as given): accents folded (NFKD, combining marks dropped), {@code "} as
     * {@code '}, {@code \} as {@code /}, white space and control characters as one space, any other
     * character dropped; runs of spaces collapsed and the ends trimmed.
     */
    static String descriptionText(String text) {
        // A hostile or broken answer may send megabytes; what is shown is at most MAX_USER_TEXT anyway.
        String bounded = text.length() <= MAX_INPUT ? text : text.substring(0, MAX_INPUT);
        StringBuilder out = new StringBuilder(bounded.length());
        Normalizer.normalize(bounded, Normalizer.Form.NFKD).codePoints().forEach(c -> {
            if (c == '"') {
                out.append('\'');
            } else if (c == '\\') {
                out.append('/');
            } else if (Character.isWhitespace(c) || Character.isSpaceChar(c) || Character.getType(c) == Character.CONTROL) {
                out.append(' ');
            } else if (c >= 0x20 && c <= 0x7e) {
                out.append((char) c);
            }
            // else: combining marks (the accents NFKD split off), format characters, other scripts: dropped
        });
        return out.toString().trim().replaceAll(" {2,}", " ");
    }
}
