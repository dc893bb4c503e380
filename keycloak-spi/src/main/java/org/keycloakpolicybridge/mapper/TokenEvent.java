package org.keycloakpolicybridge.mapper;

/**
 * The minting event a claims request reports (contract v1 section 1, field {@code event}).
 *
 * <p>{@link #TOKEN} covers every artifact of one token-endpoint request (access token, ID token),
 * which share one decision; userinfo and introspection are separate HTTP requests and each
 * get their own decision.
 */
public enum TokenEvent {
    TOKEN("token"),
    USERINFO("userinfo"),
    INTROSPECTION("introspection");

    private final String wire;

    TokenEvent(String wire) {
        this.wire = wire;
    }

    /** The value sent as {@code event}. */
    public String wire() {
        return wire;
    }
}
