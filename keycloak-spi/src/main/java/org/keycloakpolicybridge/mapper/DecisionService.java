package org.keycloakpolicybridge.mapper;

import java.net.URI;
import java.time.Duration;
import java.util.List;
import java.util.function.Supplier;

import org.jboss.logging.Logger;
import org.keycloakpolicybridge.mapper.bridge.BridgeClients;
import org.keycloakpolicybridge.mapper.bridge.BridgeFailure;
import org.keycloakpolicybridge.mapper.bridge.FailoverClient;
import org.keycloakpolicybridge.mapper.request.ClaimsRequestBuilder;
import org.keycloakpolicybridge.mapper.request.TokenRequestFacts;

/**
 * Asks the bridge once for a token request and turns every way of not getting a decision into a
 * {@link BridgeFailure}, logged once at WARN. With several bridge URLs the question goes to the
 * first that can answer ({@link FailoverClient}); a decision reached only after an earlier URL
 * failed is logged once at WARN too, naming the URLs. Log lines name the
 * realm, client, event, request id, bridge URLs (which hold no credentials) and failure kinds;
 * never the subject, claim values, bodies or secrets.
 */
public final class DecisionService {

    private static final Logger LOG = Logger.getLogger(DecisionService.class);

    private final List<URI> serverEndpoints;
    private final BridgeClients clients;
    private final String configurationProblem;
    private final Supplier<String> requestIds;

    /**
     * @param serverEndpoints the server-level claims endpoints in order of preference; empty when not configured
     * @param clients shared bridge clients; null when the server has no usable HMAC secret
     * @param configurationProblem why {@code clients} is null (secret-free), else null
     * @param requestIds source of {@code request_id}s
     */
    public DecisionService(List<URI> serverEndpoints, BridgeClients clients, String configurationProblem,
                           Supplier<String> requestIds) {
        this.serverEndpoints = List.copyOf(serverEndpoints);
        this.clients = clients;
        this.configurationProblem = configurationProblem;
        this.requestIds = requestIds;
    }

    /**
     * Builds the claims request from {@code facts} and asks the bridge.
     *
     * @param settings the mapper's settings
     * @param facts read lazily: a misconfigured mapper does not read the models
     */
    public Outcome decide(MapperSettings settings, Supplier<TokenRequestFacts> facts) {
        String requestId = requestIds.get();
        List<URI> endpoints = settings.bridgeEndpoints().isEmpty() ? serverEndpoints : settings.bridgeEndpoints();
        if (endpoints.isEmpty()) {
            return failed(requestId, null, new BridgeFailure(BridgeFailure.Kind.NOT_CONFIGURED,
                    "no bridge URL configured (server option bridge-url, KPB_BRIDGE_URL or mapper setting "
                            + MapperSettings.BRIDGE_URL + ")"));
        }
        if (clients == null) {
            return failed(requestId, null, new BridgeFailure(BridgeFailure.Kind.NOT_CONFIGURED, configurationProblem));
        }
        TokenRequestFacts request;
        byte[] body;
        try {
            request = facts.get();
            body = ClaimsRequestBuilder.toBytes(request, requestId, 1);
        } catch (RuntimeException e) {
            // An unexpected model state must not become Keycloak's generic 500: the failure mode decides.
            return failed(requestId, null, new BridgeFailure(BridgeFailure.Kind.MAPPER_ERROR,
                    "could not read the token request (" + e.getClass().getSimpleName() + ")"));
        }
        FailoverClient client = clients.failover(endpoints, settings.connectTimeoutMs(),
                settings.circuitFailureThreshold(), settings.circuitOpenMs());
        // The facts were read once; a later attempt only re-serializes them with its number.
        FailoverClient.Bodies bodies = attempt -> attempt == 1 ? body : ClaimsRequestBuilder.toBytes(request, requestId, attempt);
        try {
            FailoverClient.Answer answer = client.decide(bodies, Duration.ofMillis(settings.readTimeoutMs()));
            if (answer.failedBefore().stream().anyMatch(a -> a.failure().kind() != BridgeFailure.Kind.CIRCUIT_OPEN)) {
                LOG.warnf("kpb: request %s (realm %s, client %s, event %s) decided by bridge #%d %s after failover: %s",
                        requestId, request.realm(), request.client().clientId(), request.event().wire(), answer.position(),
                        answer.endpoint(), FailoverClient.describe(answer.failedBefore()));
            }
            LOG.debugf("kpb: decision %s (%s) for request %s from bridge #%d %s", answer.decision().decisionId(),
                    answer.decision().effect(), requestId, answer.position(), answer.endpoint());
            return Outcome.decided(requestId, answer.decision());
        } catch (BridgeFailure failure) {
            return failed(requestId, request, failure);
        }
    }

    /** An outcome for a mapper whose own settings are invalid (rejected at token time). */
    public Outcome misconfigured(String problem) {
        return failed(requestIds.get(), null, new BridgeFailure(BridgeFailure.Kind.NOT_CONFIGURED,
                "invalid mapper settings: " + problem));
    }

    private static Outcome failed(String requestId, TokenRequestFacts request, BridgeFailure failure) {
        if (request == null) {
            LOG.warnf("kpb: no decision for request %s: %s: %s", requestId, failure.kind(), failure.getMessage());
        } else {
            LOG.warnf("kpb: no decision for request %s (realm %s, client %s, event %s): %s: %s", requestId,
                    request.realm(), request.client().clientId(), request.event().wire(), failure.kind(), failure.getMessage());
        }
        return Outcome.failed(requestId, failure);
    }
}
