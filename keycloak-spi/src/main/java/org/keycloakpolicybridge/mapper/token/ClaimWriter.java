package org.keycloakpolicybridge.mapper.token;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.keycloak.representations.IDToken;
import org.keycloakpolicybridge.mapper.bridge.BridgeDecision;

/**
 * Applies a decision to one token artifact (access token, ID token, userinfo or introspection
 * token; {@code AccessToken extends IDToken}).
 *
 * <p>Permit, in this order: {@code remove_claims} are withdrawn (typed fields cleared, e.g.
 * {@code realm_access} through the AccessToken setter); each governed claim is set in
 * other-claims with its JSON type kept (objects, arrays, numbers, booleans, null), so a claim the
 * decision both removes and sets ends up set; {@code authz_decision_id} is set; and
 * {@code max_ttl_seconds} can only shorten {@code exp}. Degraded: no governed claims, and
 * Keycloak's directory role maps ({@code realm_access}, {@code resource_access}) withdrawn too,
 * since they are the ungoverned authority the bridge exists to replace; {@code authz_degraded:
 * true}; lifetime capped. A token without {@code exp} (userinfo) keeps none.
 */
public final class ClaimWriter {

    public static final String DECISION_ID_CLAIM = "authz_decision_id";
    public static final String DEGRADED_CLAIM = "authz_degraded";

    private ClaimWriter() {
    }

    /**
     * Writes a permit onto {@code token}.
     *
     * @throws IllegalArgumentException if the decision is not a permit or touches a reserved or
     *     (for setting) typed claim; {@code DecisionParser} never yields such a decision
     */
    public static void applyPermit(IDToken token, BridgeDecision decision, long nowSeconds) {
        if (decision.effect() != BridgeDecision.Effect.PERMIT) {
            throw new IllegalArgumentException("only a permit is written to a token");
        }
        for (String claim : decision.claims().keySet()) {
            if (ReservedClaims.isReserved(claim) || ReservedClaims.isTyped(claim)) {
                throw new IllegalArgumentException("decision sets a reserved or typed claim");
            }
        }
        for (String claim : decision.removeClaims()) {
            ReservedClaims.remove(token, claim);
        }
        Map<String, Object> otherClaims = token.getOtherClaims();
        for (Map.Entry<String, Object> claim : decision.claims().entrySet()) {
            // Each artifact gets its own copy: a later mapper editing one token's list must
            // not change the other token's.
            otherClaims.put(claim.getKey(), deepCopy(claim.getValue()));
        }
        if (decision.decisionId() != null) {
            otherClaims.put(DECISION_ID_CLAIM, decision.decisionId());
        } else {
            // An AuthZEN PDP that sends no decision_id: no claim rather than a made-up id.
            otherClaims.remove(DECISION_ID_CLAIM);
        }
        if (decision.maxTtlSeconds().isPresent()) {
            capLifetime(token, nowSeconds + decision.maxTtlSeconds().getAsLong());
        }
    }

    /** Directory claims a degraded token never carries: authority without a decision. */
    public static final List<String> DEGRADED_WITHDRAWN = List.of("realm_access", "resource_access");

    /**
     * Marks a token minted without a decision, withdraws {@link #DEGRADED_WITHDRAWN} and caps
     * its lifetime at {@code now + ttl}.
     */
    public static void applyDegraded(IDToken token, long nowSeconds, long ttlSeconds) {
        token.getOtherClaims().remove(DECISION_ID_CLAIM);
        for (String claim : DEGRADED_WITHDRAWN) {
            ReservedClaims.remove(token, claim);
        }
        token.getOtherClaims().put(DEGRADED_CLAIM, Boolean.TRUE);
        capLifetime(token, nowSeconds + ttlSeconds);
    }

    /**
     * Sets {@code exp} to {@code min(exp, latest)}; never lengthens. A token without {@code exp}
     * (userinfo) keeps none; {@code exp == 0}, which Keycloak treats as "does not expire", is
     * capped.
     */
    public static void capLifetime(IDToken token, long latest) {
        Long exp = token.getExp();
        if (exp != null && (exp == 0L || latest < exp)) {
            token.exp(latest);
        }
    }

    @SuppressWarnings("unchecked")
    private static Object deepCopy(Object value) {
        if (value instanceof Map) {
            Map<String, Object> copy = new LinkedHashMap<>();
            ((Map<String, Object>) value).forEach((k, v) -> copy.put(k, deepCopy(v)));
            return copy;
        }
        if (value instanceof List) {
            List<Object> copy = new ArrayList<>();
            ((List<Object>) value).forEach(v -> copy.add(deepCopy(v)));
            return copy;
        }
        return value;
    }
}
