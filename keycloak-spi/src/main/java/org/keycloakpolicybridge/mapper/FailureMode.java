package org.keycloakpolicybridge.mapper;

import java.util.Optional;

/**
 * What the mapper does when the bridge cannot decide (unreachable, timeout, non-200, invalid
 * answer, missing server configuration). A bridge {@code deny} is a decision, never a failure.
 */
public enum FailureMode {
    /** Refuse the token: OAuth error {@code temporarily_unavailable}, HTTP 503. The default. */
    FAIL_CLOSED("fail_closed"),
    /**
     * Mint the token without governed claims, marked {@code authz_degraded: true}, with its
     * lifetime cut to the mapper's degraded TTL. Earlier decisions are never reused.
     */
    DEGRADED("degraded");

    private final String configValue;

    FailureMode(String configValue) {
        this.configValue = configValue;
    }

    /** The value of the {@code kpb.failure.mode} mapper setting. */
    public String configValue() {
        return configValue;
    }

    /** The mode for a {@code kpb.failure.mode} value, exact match only. */
    public static Optional<FailureMode> fromConfig(String value) {
        for (FailureMode mode : values()) {
            if (mode.configValue.equals(value)) {
                return Optional.of(mode);
            }
        }
        return Optional.empty();
    }
}
