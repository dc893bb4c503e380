package org.keycloakpolicybridge.mapper.bridge;

/**
 * The bridge gave no usable decision. The message is safe to log: it never contains request or
 * response bodies, claim values, headers or secrets.
 */
public final class BridgeFailure extends Exception {

    private static final long serialVersionUID = 1L;

    /** Why no decision was obtained. */
    public enum Kind {
        /** The mapper has no usable bridge URL or HMAC secret, or invalid mapper settings. */
        NOT_CONFIGURED,
        /** The circuit breaker is open: failing fast without a network call. */
        CIRCUIT_OPEN,
        /** Connection refused, reset, DNS or TLS failure. */
        UNREACHABLE,
        /** Connect or read timeout. */
        TIMEOUT,
        /** The bridge answered with a status other than 200 (its 4xx mean misconfiguration). */
        HTTP_STATUS,
        /** A 200 whose body is not a valid decision (malformed JSON, missing field, reserved claim, ...). */
        INVALID_RESPONSE,
        /** The Keycloak worker thread was interrupted while waiting. */
        INTERRUPTED,
        /** The mapper could not read the token request from Keycloak's models (an unexpected state). */
        MAPPER_ERROR
    }

    private final Kind kind;
    private final int status;

    public BridgeFailure(Kind kind, String message) {
        this(kind, 0, message);
    }

    public BridgeFailure(Kind kind, int status, String message) {
        super(message, null, false, false);
        this.kind = kind;
        this.status = status;
    }

    public Kind kind() {
        return kind;
    }

    /** HTTP status for {@link Kind#HTTP_STATUS}, else 0. */
    public int status() {
        return status;
    }
}
