package org.keycloakpolicybridge.mapper;

import java.util.Objects;

import org.keycloakpolicybridge.mapper.bridge.BridgeDecision;
import org.keycloakpolicybridge.mapper.bridge.BridgeFailure;

/**
 * The result of asking the bridge once for a token request: a decision or a failure, never both.
 * Cached for the request so that every artifact (access token, ID token) gets the same result.
 *
 * @param requestId the claims request's {@code request_id} (correlates mapper and bridge logs)
 * @param decision the decision, or null on failure
 * @param failure the failure, or null when decided
 */
public record Outcome(String requestId, BridgeDecision decision, BridgeFailure failure) {

    public Outcome {
        if ((decision == null) == (failure == null)) {
            throw new IllegalArgumentException("exactly one of decision and failure");
        }
    }

    public static Outcome decided(String requestId, BridgeDecision decision) {
        return new Outcome(requestId, Objects.requireNonNull(decision), null);
    }

    public static Outcome failed(String requestId, BridgeFailure failure) {
        return new Outcome(requestId, null, Objects.requireNonNull(failure));
    }
}
