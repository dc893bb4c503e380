package org.keycloakpolicybridge.mapper.bridge;

import java.io.IOException;
import java.net.ConnectException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.net.http.HttpTimeoutException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.LongSupplier;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * One bridge endpoint: signs and sends {@code POST /v1/claims}, enforces the deadlines, feeds the
 * circuit breaker, and validates the answer. Thread-safe; Keycloak worker threads share one
 * instance per endpoint (see {@link BridgeClients}).
 *
 * <p>Deadlines: the TCP connect timeout is the HTTP client's; {@code readTimeout} bounds the wait
 * for the response once the request is sent, and connect + read bounds the whole call, so a
 * bridge that trickles its body cannot hold a token request longer.
 */
public final class BridgeClient {

    /** Bodies larger than this are refused without being read (a decision is a few KiB). */
    static final long MAX_RESPONSE_BYTES = 1 << 20;
    private static final Pattern ERROR_CODE = Pattern.compile("\"error\"\\s*:\\s*\"([a-z_]{1,64})\"");

    private final HttpClient http;
    private final URI endpoint;
    private final String requestTarget;
    private final Duration connectTimeout;
    private final RequestSigner signer;
    private final CircuitBreaker breaker;
    private final LongSupplier epochSeconds;

    /**
     * @param http shared HTTP client (its connect timeout is {@code connectTimeout})
     * @param endpoint the claims endpoint
     * @param signer HMAC signer
     * @param breaker this endpoint's circuit breaker
     * @param epochSeconds wall clock in unix seconds, for {@code X-KPB-Timestamp}
     */
    public BridgeClient(HttpClient http, URI endpoint, Duration connectTimeout, RequestSigner signer,
                        CircuitBreaker breaker, LongSupplier epochSeconds) {
        this.http = http;
        this.endpoint = endpoint;
        this.requestTarget = BridgeEndpoint.requestTarget(endpoint);
        this.connectTimeout = connectTimeout;
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
        if (!breaker.tryAcquire()) {
            throw new BridgeFailure(BridgeFailure.Kind.CIRCUIT_OPEN, "circuit breaker open: not calling the bridge");
        }
        boolean succeeded = false;
        try {
            BridgeDecision decision = DecisionParser.parse(send(body, readTimeout));
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

    private byte[] send(byte[] body, Duration readTimeout) throws BridgeFailure {
        HttpRequest.Builder request = HttpRequest.newBuilder(endpoint)
                .timeout(readTimeout)
                .header("Content-Type", "application/json")
                .header("Accept", "application/json")
                .POST(HttpRequest.BodyPublishers.ofByteArray(body));
        for (Map.Entry<String, String> header : signer.headers("POST", requestTarget, epochSeconds.getAsLong(), body).entrySet()) {
            request.header(header.getKey(), header.getValue());
        }
        CompletableFuture<HttpResponse<byte[]>> call = http.sendAsync(request.build(), BridgeClient::boundedBody);
        HttpResponse<byte[]> response;
        try {
            response = call.get(connectTimeout.plus(readTimeout).toMillis(), TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            call.cancel(true);
            throw new BridgeFailure(BridgeFailure.Kind.TIMEOUT, "bridge did not answer within the deadline");
        } catch (InterruptedException e) {
            call.cancel(true);
            Thread.currentThread().interrupt();
            throw new BridgeFailure(BridgeFailure.Kind.INTERRUPTED, "interrupted while waiting for the bridge");
        } catch (ExecutionException e) {
            throw transportFailure(e.getCause());
        }
        if (response.statusCode() != 200) {
            throw new BridgeFailure(BridgeFailure.Kind.HTTP_STATUS, response.statusCode(),
                    "bridge answered HTTP " + response.statusCode() + errorCode(response.body()));
        }
        if (response.body() == null) {
            throw new BridgeFailure(BridgeFailure.Kind.INVALID_RESPONSE, "bridge answer exceeds " + MAX_RESPONSE_BYTES + " bytes");
        }
        return response.body();
    }

    private static HttpResponse.BodySubscriber<byte[]> boundedBody(HttpResponse.ResponseInfo info) {
        long declared = info.headers().firstValueAsLong("Content-Length").orElse(-1L);
        if (declared > MAX_RESPONSE_BYTES) {
            return HttpResponse.BodySubscribers.replacing(null);
        }
        return HttpResponse.BodySubscribers.ofByteArray();
    }

    private static BridgeFailure transportFailure(Throwable cause) {
        if (cause instanceof HttpTimeoutException) {
            // Includes HttpConnectTimeoutException.
            return new BridgeFailure(BridgeFailure.Kind.TIMEOUT, "bridge timed out (" + cause.getClass().getSimpleName() + ")");
        }
        if (cause instanceof ConnectException) {
            return new BridgeFailure(BridgeFailure.Kind.UNREACHABLE, "bridge unreachable (connection refused or no route)");
        }
        String type = cause == null ? "unknown" : cause.getClass().getSimpleName();
        if (cause instanceof IOException) {
            return new BridgeFailure(BridgeFailure.Kind.UNREACHABLE, "bridge unreachable (" + type + ")");
        }
        return new BridgeFailure(BridgeFailure.Kind.UNREACHABLE, "bridge call failed (" + type + ")");
    }

    /** The bridge's stable error code (never its message), when the body carries one. */
    private static String errorCode(byte[] body) {
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
