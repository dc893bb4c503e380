package org.keycloakpolicybridge.mapper.bridge;

import java.net.URI;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentMap;
import java.util.function.LongSupplier;

/**
 * Shares connection pools and circuit breakers between token requests. One {@link Http1Client}
 * (HTTP/1.1, pooled keep-alive connections) per bridge URL and connect timeout; one
 * {@link BridgeClient} with its circuit breaker per URL, connect timeout and breaker settings; one
 * {@link FailoverClient} per URL list and settings, made of those per-URL clients (so a URL keeps
 * one breaker whichever lists name it).
 * Owned by the mapper factory, which Keycloak keeps for the server's lifetime; the key space is
 * bounded by the mapper configurations of the realms.
 */
public final class BridgeClients {

    private record HttpKey(URI endpoint, int connectTimeoutMs) {
    }

    private record ClientKey(URI endpoint, int connectTimeoutMs, int failureThreshold, int openMs) {
    }

    private record FailoverKey(List<URI> endpoints, int connectTimeoutMs, int failureThreshold, int openMs) {
    }

    private final RequestSigner signer;
    private final LongSupplier nanoClock;
    private final LongSupplier epochSeconds;
    private final ConcurrentMap<HttpKey, Http1Client> httpClients = new ConcurrentHashMap<>();
    private final ConcurrentMap<ClientKey, BridgeClient> clients = new ConcurrentHashMap<>();
    private final ConcurrentMap<FailoverKey, FailoverClient> failovers = new ConcurrentHashMap<>();

    /**
     * @param signer the server's HMAC signer
     * @param nanoClock monotonic clock for the circuit breakers, deadlines and idle connections
     * @param epochSeconds wall clock for request timestamps
     */
    public BridgeClients(RequestSigner signer, LongSupplier nanoClock, LongSupplier epochSeconds) {
        this.signer = signer;
        this.nanoClock = nanoClock;
        this.epochSeconds = epochSeconds;
    }

    /** The shared client for an endpoint and a mapper's connection and breaker settings. */
    public BridgeClient get(URI endpoint, int connectTimeoutMs, int failureThreshold, int openMs) {
        ClientKey key = new ClientKey(endpoint, connectTimeoutMs, failureThreshold, openMs);
        return clients.computeIfAbsent(key, k -> new BridgeClient(
                httpClients.computeIfAbsent(new HttpKey(endpoint, connectTimeoutMs),
                        h -> new Http1Client(h.endpoint(), h.connectTimeoutMs(), BridgeClient.MAX_RESPONSE_BYTES, nanoClock)),
                endpoint, signer, new CircuitBreaker(failureThreshold, openMs, nanoClock), epochSeconds));
    }

    /**
     * The shared failover client for claims endpoints in order of preference (at least one, no
     * duplicates) and a mapper's connection and breaker settings.
     */
    public FailoverClient failover(List<URI> endpoints, int connectTimeoutMs, int failureThreshold, int openMs) {
        FailoverKey key = new FailoverKey(List.copyOf(endpoints), connectTimeoutMs, failureThreshold, openMs);
        FailoverClient existing = failovers.get(key);
        if (existing != null) {
            return existing;
        }
        List<BridgeClient> replicas = new ArrayList<>(endpoints.size());
        for (URI endpoint : key.endpoints()) {
            replicas.add(get(endpoint, connectTimeoutMs, failureThreshold, openMs));
        }
        return failovers.computeIfAbsent(key, k -> new FailoverClient(replicas, connectTimeoutMs, nanoClock));
    }
}
