package org.keycloakpolicybridge.mapper.bridge;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;
import java.util.function.LongSupplier;
import java.util.regex.Pattern;

/**
 * How the mapper authenticates to an AuthZEN PDP ({@link AuthzenPdp}): one of
 * <ul>
 * <li>{@code hmac}: the {@link RequestSigner} headers of {@code /v1/claims} (same scheme and
 *     secret; the signed request target is the AuthZEN path). What the bridge accepts;</li>
 * <li>{@code bearer}: {@code Authorization: Bearer <token>} with a static token from the server
 *     settings (other PDPs behind a gateway, Cerbos or OPA with a shared token);</li>
 * <li>{@code none}: no credential (a PDP on a trusted network, the bridge in insecure dev mode).</li>
 * </ul>
 * Immutable and thread-safe. Neither {@link #toString()} nor any error text contains the secret or
 * the token.
 */
public final class PdpAuth {

    /** The mapper setting's values. */
    public enum Mode {
        HMAC("hmac"), BEARER("bearer"), NONE("none");

        private final String configValue;

        Mode(String configValue) {
            this.configValue = configValue;
        }

        public String configValue() {
            return configValue;
        }
    }

    /** RFC 6750 {@code b64token}: what a bearer token may hold on the wire. */
    public static final Pattern BEARER_TOKEN = Pattern.compile("[A-Za-z0-9\\-._~+/]+=*");

    private final Mode mode;
    private final RequestSigner signer;
    private final String bearerToken;
    private final LongSupplier epochSeconds;

    private PdpAuth(Mode mode, RequestSigner signer, String bearerToken, LongSupplier epochSeconds) {
        this.mode = mode;
        this.signer = signer;
        this.bearerToken = bearerToken;
        this.epochSeconds = epochSeconds;
    }

    /** HMAC-signed requests, timestamps from {@code epochSeconds} (unix seconds). */
    public static PdpAuth hmac(RequestSigner signer, LongSupplier epochSeconds) {
        return new PdpAuth(Mode.HMAC, Objects.requireNonNull(signer), null, Objects.requireNonNull(epochSeconds));
    }

    /**
     * A static bearer token.
     *
     * @throws IllegalArgumentException when the token is not an RFC 6750 {@code b64token} (never echoed)
     */
    public static PdpAuth bearer(String token) {
        if (token == null || !BEARER_TOKEN.matcher(token).matches()) {
            throw new IllegalArgumentException("bearer token must be an RFC 6750 b64token");
        }
        return new PdpAuth(Mode.BEARER, null, token, null);
    }

    /** No credential. */
    public static PdpAuth none() {
        return new PdpAuth(Mode.NONE, null, null, null);
    }

    public Mode mode() {
        return mode;
    }

    /** The credential headers for one {@code POST} of {@code body} to {@code requestTarget}, made at send time. */
    Map<String, String> headers(String requestTarget, byte[] body) {
        Map<String, String> headers = new LinkedHashMap<>();
        switch (mode) {
            case HMAC -> headers.putAll(signer.headers("POST", requestTarget, epochSeconds.getAsLong(), body));
            case BEARER -> headers.put("Authorization", "Bearer " + bearerToken);
            case NONE -> {
                // Nothing to add.
            }
        }
        return headers;
    }

    @Override
    public String toString() {
        return "PdpAuth[" + mode.configValue() + "]";
    }
}
