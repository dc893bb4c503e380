package org.keycloakpolicybridge.mapper.bridge;

import java.net.URI;
import java.net.URISyntaxException;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Optional;

/**
 * The bridge's {@code POST /v1/claims} URL, derived from a configured base URL.
 *
 * <p>A base URL is {@code http} or {@code https} with a host, optionally a path prefix
 * ({@code https://kpb.internal/bridge}), and no credentials, query or fragment: credentials in
 * a URL end up in logs, and the signed request target must be exactly what is sent.
 *
 * <p>A setting may list several base URLs, comma-separated, in order of preference (bridge
 * replicas; {@link #claimsEndpoints}). The mapper fails over between them (see {@link FailoverClient}).
 */
public final class BridgeEndpoint {

    /** Path appended to the base URL. */
    public static final String CLAIMS_PATH = "/v1/claims";
    /** Most base URLs one setting may list: each is a replica the deadline is shared with. */
    public static final int MAX_URLS = 16;
    /** The rule a rejected base URL broke, as reported (never with the value). */
    public static final String URL_RULE = "must be an http(s) URL without credentials, query or fragment";

    /**
     * The claims endpoints of a comma-separated list of base URLs.
     *
     * @param endpoints the endpoints in the listed order; empty when any entry was rejected
     * @param problems one text per rejected entry, naming its position ({@code entry 2 of 3 is empty}),
     *     never its value; empty when every entry is valid
     */
    public record Endpoints(List<URI> endpoints, List<String> problems) {
        public Endpoints {
            endpoints = List.copyOf(endpoints);
            problems = List.copyOf(problems);
        }
    }

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

    /**
     * Parses a comma-separated list of base URLs (surrounding white space ignored). Every entry
     * is checked like {@link #claimsEndpoint}; an empty entry, an entry naming the same endpoint
     * as an earlier one, or more than {@link #MAX_URLS} entries are problems too. All problems
     * are reported, each naming the entry's position. A single URL yields {@link #URL_RULE}
     * without a position, as before lists existed.
     */
    public static Endpoints claimsEndpoints(String baseUrls) {
        String[] entries = (baseUrls == null ? "" : baseUrls).split(",", -1);
        List<URI> endpoints = new ArrayList<>(entries.length);
        List<String> problems = new ArrayList<>();
        if (entries.length > MAX_URLS) {
            problems.add("lists " + entries.length + " URLs; at most " + MAX_URLS + " are allowed");
        }
        for (int i = 0; i < entries.length; i++) {
            String position = entries.length == 1 ? "" : "entry " + (i + 1) + " of " + entries.length + " ";
            if (entries[i].isBlank()) {
                problems.add(position + "is empty");
                continue;
            }
            Optional<URI> endpoint = claimsEndpoint(entries[i]);
            if (endpoint.isEmpty()) {
                problems.add(position + URL_RULE);
            } else if (endpoints.contains(endpoint.get())) {
                problems.add(position + "duplicates entry " + (endpoints.indexOf(endpoint.get()) + 1));
            } else {
                endpoints.add(endpoint.get());
                continue;
            }
            // Keep positions aligned for the duplicate check's "entry N".
            endpoints.add(null);
        }
        return problems.isEmpty() ? new Endpoints(endpoints, problems) : new Endpoints(List.of(), problems);
    }

    /**
     * The base URL a claims endpoint was derived from ({@link #claimsEndpoint} appends
     * {@link #CLAIMS_PATH}): what an AuthZEN PDP's endpoints are resolved against.
     *
     * @throws IllegalArgumentException for a URL that does not end with {@link #CLAIMS_PATH}
     */
    public static URI baseOf(URI claimsEndpoint) {
        String text = claimsEndpoint.toString();
        if (!text.endsWith(CLAIMS_PATH)) {
            throw new IllegalArgumentException("not a claims endpoint");
        }
        return URI.create(text.substring(0, text.length() - CLAIMS_PATH.length()));
    }

    /** The request target that is signed: raw path plus {@code ?query} when present. */
    public static String requestTarget(URI endpoint) {
        String path = endpoint.getRawPath() == null || endpoint.getRawPath().isEmpty() ? "/" : endpoint.getRawPath();
        return endpoint.getRawQuery() == null ? path : path + "?" + endpoint.getRawQuery();
    }
}
