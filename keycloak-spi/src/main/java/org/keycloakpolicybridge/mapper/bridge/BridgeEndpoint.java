package org.keycloakpolicybridge.mapper.bridge;

import java.net.URI;
import java.net.URISyntaxException;
import java.util.Locale;
import java.util.Optional;

/**
 * The bridge's {@code POST /v1/claims} URL, derived from a configured base URL.
 *
 * <p>A base URL is {@code http} or {@code https} with a host, optionally a path prefix
 * ({@code https://kpb.internal/bridge}), and no credentials, query or fragment: credentials in
 * a URL end up in logs, and the signed request target must be exactly what is sent.
 */
public final class BridgeEndpoint {

    /** Path appended to the base URL. */
    public static final String CLAIMS_PATH = "/v1/claims";

    private BridgeEndpoint() {
    }

    /**
     * The claims endpoint for {@code baseUrl}, or empty when it is not an acceptable base URL.
     * Never echoes the value anywhere: callers report the setting's name only.
     */
    public static Optional<URI> claimsEndpoint(String baseUrl) {
        if (baseUrl == null || baseUrl.isBlank()) {
            return Optional.empty();
        }
        URI uri;
        try {
            uri = new URI(baseUrl.trim());
        } catch (URISyntaxException e) {
            return Optional.empty();
        }
        String scheme = uri.getScheme() == null ? "" : uri.getScheme().toLowerCase(Locale.ROOT);
        if (!(scheme.equals("http") || scheme.equals("https")) || uri.getHost() == null
                || uri.getRawUserInfo() != null || uri.getRawQuery() != null || uri.getRawFragment() != null) {
            return Optional.empty();
        }
        String path = uri.getRawPath() == null ? "" : uri.getRawPath();
        while (path.endsWith("/")) {
            path = path.substring(0, path.length() - 1);
        }
        String authority = uri.getRawAuthority();
        return Optional.of(URI.create(scheme + "://" + authority + path + CLAIMS_PATH));
    }

    /** The request target that is signed: raw path plus {@code ?query} when present. */
    public static String requestTarget(URI endpoint) {
        String path = endpoint.getRawPath() == null || endpoint.getRawPath().isEmpty() ? "/" : endpoint.getRawPath();
        return endpoint.getRawQuery() == null ? path : path + "?" + endpoint.getRawQuery();
    }
}
