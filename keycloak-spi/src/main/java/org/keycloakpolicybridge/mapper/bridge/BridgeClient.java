package org.keycloakpolicybridge.mapper.bridge;

import java.io.IOException;
import java.io.InterruptedIOException;
import java.net.ConnectException;
import java.net.SocketTimeoutException;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.function.LongSupplier;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * One bridge endpoint: signs and sends {@code POST /v1/claims}, enforces the deadlines, feeds the
 * circuit breaker, and validates the answer. Thread-safe; Keycloak worker threads share one
 * instance per endpoint (see {@link BridgeClients}).
 *
 * <p>Deadlines: the connect timeout bounds the TCP connect (and TLS handshake); {@code readTimeout}
 * bounds the wait for the whole answer once the request is sent, and connect + read bounds the
 * whole call, so a bridge that trickles its body cannot hold a token request longer. The call runs
 * in the caller's thread over pooled keep-alive connections ({@link Http1Client}, which also
 * describes the one retry of a request sent on a connection the bridge had closed).
 *
 * <p>The request carries {@code Prefer: return=minimal} (RFC 7240): the bridge may then answer
 * only the fields {@link DecisionParser} reads; it reads the full answer the same way.
 */
public final class BridgeClient {

    /** Bodies larger than this are refused without being read (a decision is a few KiB). */
    static final long MAX_RESPONSE_BYTES = 1 << 20;
    private static final Pattern ERROR_CODE = Pattern.compile("\"error\"\\s*:\\s*\"([a-z_]{1,64})\"");

    private final Http1Client http;
    private final URI endpoint;
    private final String requestTarget;
    private final RequestSigner signer;
    private final CircuitBreaker breaker;
    private final LongSupplier epochSeconds;

    /**
     * @param http the endpoint's connection pool (it holds the connect timeout)
     * @param endpoint the claims endpoint
     * @param signer HMAC signer
     * @param breaker this endpoint's circuit breaker
     * @param epochSeconds wall clock in unix seconds, for {@code X-KPB-Timestamp}
     */
    BridgeClient(Http1Client http, URI endpoint, RequestSigner signer, CircuitBreaker breaker, LongSupplier epochSeconds) {
        this.http = http;
        this.endpoint = endpoint;
        this.requestTarget = BridgeEndpoint.requestTarget(endpoint);
        this.signer = signer;
        this.breaker = breaker;
        this.epochSeconds = epochSeconds;
    }

    /**
     * Asks the bridge for a decision on one claims request.
     *
     * @param body the claims request JSON (UTF-8), sent and signed as is
     * @param readTimeout time allowed for the answer
     * @return the validated decision (permit or deny)
     * @throws BridgeFailure when no valid decision was obtained; the circuit breaker has counted it
     */
    public BridgeDecision decide(byte[] body, Duration readTimeout) throws BridgeFailure {
        return decide(body, readTimeout, Long.MAX_VALUE);
    }

    /**
     * As {@link #decide(byte[], Duration)}, with the call also ending by {@code deadlineNanos} on
     * the clients' monotonic clock ({@link Long#MAX_VALUE}: no extra bound). The request is signed
     * when sent, with the current timestamp.
     */
    BridgeDecision decide(byte[] body, Duration readTimeout, long deadlineNanos) throws BridgeFailure {
        if (!breaker.tryAcquire()) {
            throw new BridgeFailure(BridgeFailure.Kind.CIRCUIT_OPEN, "circuit breaker open: not calling the bridge");
        }
        boolean succeeded = false;
        try {
            BridgeDecision decision = DecisionParser.parse(send(body, readTimeout, deadlineNanos));
            succeeded = true;
            return decision;
        } finally {
            if (succeeded) {
                breaker.onSuccess();
            } else {
                breaker.onFailure();
            }
        }
    }

    private byte[] send(byte[] body, Duration readTimeout, long deadlineNanos) throws BridgeFailure {
        Map<String, String> headers = new LinkedHashMap<>();
        headers.put("Content-Type", "application/json");
        headers.put("Accept", "application/json");
        headers.put("Prefer", "return=minimal");
        headers.putAll(signer.headers("POST", requestTarget, epochSeconds.getAsLong(), body));
        Http1Client.Response response;
        try {
            response = http.send("POST", headers, body, readTimeout.toNanos(), deadlineNanos);
        } catch (IOException e) {
            throw transportFailure(e);
        }
        if (response.status() != 200) {
            throw new BridgeFailure(BridgeFailure.Kind.HTTP_STATUS, response.status(),
                    "bridge answered HTTP " + response.status() + errorCode(response.body()));
        }
        if (response.body() == null) {
            throw new BridgeFailure(BridgeFailure.Kind.INVALID_RESPONSE, "bridge answer exceeds " + MAX_RESPONSE_BYTES + " bytes");
        }
        return response.body();
    }

    /** The failure for a transport error (shared with {@link AuthzenPdp}). */
    static BridgeFailure transportFailure(IOException cause) {
        if (cause instanceof SocketTimeoutException) {
            // Connect, read or overall deadline.
            return new BridgeFailure(BridgeFailure.Kind.TIMEOUT, "bridge did not answer within the deadline");
        }
        if (cause instanceof InterruptedIOException) {
            return new BridgeFailure(BridgeFailure.Kind.INTERRUPTED, "interrupted before calling the bridge");
        }
        if (cause instanceof ConnectException) {
            return new BridgeFailure(BridgeFailure.Kind.UNREACHABLE, "bridge unreachable (connection refused or no route)");
        }
        return new BridgeFailure(BridgeFailure.Kind.UNREACHABLE, "bridge unreachable (" + cause.getClass().getSimpleName() + ")");
    }

    /** The bridge's stable error code (never its message), when the body carries one. */
    static String errorCode(byte[] body) {
        if (body == null || body.length > 4096) {
            return "";
        }
        Matcher code = ERROR_CODE.matcher(new String(body, StandardCharsets.UTF_8));
        return code.find() ? " (" + code.group(1) + ")" : "";
    }

    public URI endpoint() {
        return endpoint;
    }

    CircuitBreaker breaker() {
        return breaker;
    }
}
