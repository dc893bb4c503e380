package org.keycloakpolicybridge.mapper.bridge;

import java.net.URI;
import java.util.ArrayList;
import java.util.EnumMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentMap;
import java.util.function.LongSupplier;

/**
 * Shares AuthZEN connection pools and circuit breakers between token requests, as
 * {@link BridgeClients} does for {@code /v1/claims}: one {@link AuthzenPdp} (two pools, one
 * breaker) per base URL, credential mode, connect timeout and breaker settings; one
 * {@link AuthzenFailover} per URL list and settings. Owned by the mapper factory; the key space is
 * bounded by the mapper configurations of the realms.
 */
public final class AuthzenClients {

    private record PdpKey(URI base, PdpAuth.Mode mode, int connectTimeoutMs, int failureThreshold, int openMs) {
    }

    private record FailoverKey(List<URI> bases, PdpAuth.Mode mode, int connectTimeoutMs, int failureThreshold, int openMs) {
    }

    private final Map<PdpAuth.Mode, PdpAuth> credentials;
    private final LongSupplier nanoClock;
    private final ConcurrentMap<PdpKey, AuthzenPdp> pdps = new ConcurrentHashMap<>();
    private final ConcurrentMap<FailoverKey, AuthzenFailover> failovers = new ConcurrentHashMap<>();

    /**
     * @param credentials the credentials the server has (at least {@code none}); a mode without one is refused by {@link #failover}
     * @param nanoClock monotonic clock for breakers, deadlines and idle connections
     */
    public AuthzenClients(List<PdpAuth> credentials, LongSupplier nanoClock) {
        Map<PdpAuth.Mode, PdpAuth> byMode = new EnumMap<>(PdpAuth.Mode.class);
        credentials.forEach(auth -> byMode.put(auth.mode(), auth));
        this.credentials = Map.copyOf(byMode);
        this.nanoClock = nanoClock;
    }

    /** True when the server holds the credential {@code mode} needs. */
    public boolean has(PdpAuth.Mode mode) {
        return credentials.containsKey(mode);
    }

    /**
     * The shared failover client for PDP base URLs in order of preference (at least one, no duplicates).
     *
     * @throws IllegalStateException when the server has no credential for {@code mode} (check {@link #has})
     */
    public AuthzenFailover failover(List<URI> bases, PdpAuth.Mode mode, int connectTimeoutMs, int failureThreshold, int openMs) {
        PdpAuth auth = credentials.get(mode);
        if (auth == null) {
            throw new IllegalStateException("no credential for PDP auth mode " + mode.configValue());
        }
        FailoverKey key = new FailoverKey(List.copyOf(bases), mode, connectTimeoutMs, failureThreshold, openMs);
        AuthzenFailover existing = failovers.get(key);
        if (existing != null) {
            return existing;
        }
        List<AuthzenPdp> list = new ArrayList<>(bases.size());
        for (URI base : key.bases()) {
            list.add(pdps.computeIfAbsent(new PdpKey(base, mode, connectTimeoutMs, failureThreshold, openMs), k -> pdp(k, auth)));
        }
        return failovers.computeIfAbsent(key, k -> new AuthzenFailover(list, connectTimeoutMs, nanoClock));
    }

    private AuthzenPdp pdp(PdpKey key, PdpAuth auth) {
        Map<AuthzenPdp.Call, Http1Client> http = new EnumMap<>(AuthzenPdp.Call.class);
        for (AuthzenPdp.Call call : AuthzenPdp.Call.values()) {
            http.put(call, new Http1Client(AuthzenPdp.endpoint(key.base(), call), key.connectTimeoutMs(),
                    AuthzenPdp.MAX_RESPONSE_BYTES, nanoClock));
        }
        return new AuthzenPdp(key.base(), http, auth, new CircuitBreaker(key.failureThreshold(), key.openMs(), nanoClock));
    }
}
