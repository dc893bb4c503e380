package org.keycloakpolicybridge.mapper.bridge;

import java.io.IOException;
import java.net.URI;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * One AuthZEN 1.0 PDP (one base URL of {@code kpb.bridge.url}): posts to its evaluation and
 * resource-search endpoints over pooled keep-alive connections ({@link Http1Client}, one pool
 * per endpoint) and maps every way of not getting a {@code 200} body to a {@link BridgeFailure},
 * exactly as {@link BridgeClient} does for {@code /v1/claims}. It does not parse bodies (the
 * caller does) and does not feed the circuit breaker ({@link AuthzenFailover} counts one
 * conversation, gate plus searches, as one success or failure). Thread-safe.
 *
 * <p>Endpoints are the specification's default paths below the base URL, which may carry a path
 * prefix ({@code https://pdp.internal/authz} posts to {@code /authz/access/v1/evaluation});
 * {@code /.well-known/authzen-configuration} is not read.
 */
public final class AuthzenPdp {

    /** The two AuthZEN calls the mapper makes. */
    public enum Call {
        EVALUATION("/access/v1/evaluation"),
        SEARCH_RESOURCE("/access/v1/search/resource");

        private final String path;

        Call(String path) {
            this.path = path;
        }

        /** The path below the base URL. */
        public String path() {
            return path;
        }
    }

    /** Answers larger than this are refused without being read (a search page of ids is a few KiB). */
    static final long MAX_RESPONSE_BYTES = 1 << 20;
    /** Header carrying the mapper's request id (the specification echoes it). */
    public static final String REQUEST_ID_HEADER = "X-Request-ID";

    private final URI base;
    private final Map<Call, Http1Client> http;
    private final Map<Call, String> targets;
    private final PdpAuth auth;
    private final CircuitBreaker breaker;

    /**
     * @param base the PDP's base URL (validated as {@link BridgeEndpoint} validates bridge URLs, no trailing slash)
     * @param http one client per call's endpoint
     * @param auth the credential
     * @param breaker this PDP's circuit breaker
     */
    AuthzenPdp(URI base, Map<Call, Http1Client> http, PdpAuth auth, CircuitBreaker breaker) {
        this.base = base;
        this.http = Map.copyOf(http);
        Map<Call, String> paths = new LinkedHashMap<>();
        for (Call call : Call.values()) {
            paths.put(call, BridgeEndpoint.requestTarget(endpoint(base, call)));
        }
        this.targets = Map.copyOf(paths);
        this.auth = auth;
        this.breaker = breaker;
    }

    /** The URL a call posts to. */
    public static URI endpoint(URI base, Call call) {
        return URI.create(base + call.path());
    }

    public URI base() {
        return base;
    }

    CircuitBreaker breaker() {
        return breaker;
    }

    /**
     * Posts {@code body} (UTF-8 JSON) and returns the {@code 200} body.
     *
     * @param requestId sent as {@code X-Request-ID}
     * @param readTimeoutNanos time allowed for the answer once sent
     * @param deadlineNanos the conversation's deadline on the clients' monotonic clock
     * @throws BridgeFailure of kind {@code TIMEOUT}, {@code UNREACHABLE}, {@code INTERRUPTED},
     *     {@code HTTP_STATUS} (any status but 200) or {@code INVALID_RESPONSE} (body too large)
     */
    byte[] post(Call call, byte[] body, String requestId, long readTimeoutNanos, long deadlineNanos) throws BridgeFailure {
        Map<String, String> headers = new LinkedHashMap<>();
        headers.put("Content-Type", "application/json");
        headers.put("Accept", "application/json");
        headers.put(REQUEST_ID_HEADER, requestId);
        headers.putAll(auth.headers(targets.get(call), body));
        Http1Client.Response response;
        try {
            response = http.get(call).send("POST", headers, body, readTimeoutNanos, deadlineNanos);
        } catch (IOException e) {
            throw BridgeClient.transportFailure(e);
        }
        if (response.status() != 200) {
            throw new BridgeFailure(BridgeFailure.Kind.HTTP_STATUS, response.status(),
                    "PDP answered HTTP " + response.status() + " at " + call.path() + BridgeClient.errorCode(response.body()));
        }
        if (response.body() == null) {
            throw new BridgeFailure(BridgeFailure.Kind.INVALID_RESPONSE, "PDP answer at " + call.path() + " exceeds "
                    + MAX_RESPONSE_BYTES + " bytes");
        }
        return response.body();
    }
}
