package org.keycloakpolicybridge.mapper.bridge;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.OptionalLong;

/**
 * A validated bridge decision (contract v1 section 1, response). Only {@link DecisionParser}
 * builds these from the wire, so every instance has passed its checks.
 *
 * @param decisionId the decision's id, written into the token as {@code authz_decision_id}; null only for an
 *     AuthZEN answer without {@code context.decision_id} (a {@code /v1/claims} decision always has one)
 * @param effect permit or deny
 * @param claims governed claims as plain JSON values (Map, List, String, Number, Boolean, null)
 * @param removeClaims claims to withdraw
 * @param maxTtlSeconds lifetime cap, if any
 * @param reasons why (rule ids and messages): for the decision log and admins, never shown to the end user
 * @param userMessage the end user's text of a deny, as sent (unsanitized); null when absent (an older
 *     bridge, or a permit)
 */
public record BridgeDecision(
        String decisionId,
        Effect effect,
        Map<String, Object> claims,
        List<String> removeClaims,
        OptionalLong maxTtlSeconds,
        List<Reason> reasons,
        String userMessage) {

    /** The decision's effect. */
    public enum Effect { PERMIT, DENY }

    /**
     * One reason of the decision.
     *
     * @param rule the rule id
     * @param message the rule's message
     * @param kind the reason kind ({@code deny}, {@code omit}, ...), null if absent
     */
    public record Reason(String rule, String message, String kind) {
    }

    public BridgeDecision {
        claims = Collections.unmodifiableMap(new LinkedHashMap<>(claims));
        removeClaims = List.copyOf(removeClaims);
        reasons = List.copyOf(reasons);
    }

    /** A decision without a {@code user_message}, as a bridge older than the field answers. */
    public BridgeDecision(String decisionId, Effect effect, Map<String, Object> claims, List<String> removeClaims,
                          OptionalLong maxTtlSeconds, List<Reason> reasons) {
        this(decisionId, effect, claims, removeClaims, maxTtlSeconds, reasons, null);
    }
}
