package org.keycloakpolicybridge.mapper;

import java.net.URI;
import java.time.Duration;
import java.util.Optional;
import java.util.function.Supplier;

import org.jboss.logging.Logger;
import org.keycloakpolicybridge.mapper.bridge.BridgeClient;
import org.keycloakpolicybridge.mapper.bridge.BridgeClients;
import org.keycloakpolicybridge.mapper.bridge.BridgeDecision;
import org.keycloakpolicybridge.mapper.bridge.BridgeFailure;
import org.keycloakpolicybridge.mapper.request.ClaimsRequestBuilder;
import org.keycloakpolicybridge.mapper.request.TokenRequestFacts;

/**
 * Asks the bridge once for a token request and turns every way of not getting a decision into a
 * {@link BridgeFailure}, logged once at WARN. Log lines name the realm, client, event, request id
 * and failure kind; never the subject, claim values, bodies or secrets.
 */
public final class DecisionService {

    private static final Logger LOG = Logger.getLogger(DecisionService.class);

    private final Optional<URI> serverEndpoint;
    private final BridgeClients clients;
    private final String configurationProblem;
    private final Supplier<String> requestIds;

    /**
     * @param serverEndpoint the server-level claims endpoint, if configured
     * @param clients shared bridge clients; null when the server has no usable HMAC secret
     * @param configurationProblem why {@code clients} is null (secret-free), else null
     * @param requestIds source of {@code request_id}s
     */
    public DecisionService(Optional<URI> serverEndpoint, BridgeClients clients, String configurationProblem,
                           Supplier<String> requestIds) {
        this.serverEndpoint = serverEndpoint;
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
        Optional<URI> endpoint = settings.bridgeEndpoint().or(() -> serverEndpoint);
        if (endpoint.isEmpty()) {
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
            body = ClaimsRequestBuilder.toBytes(request, requestId);
        } catch (RuntimeException e) {
            // An unexpected model state must not become Keycloak's generic 500: the failure mode decides.
            return failed(requestId, null, new BridgeFailure(BridgeFailure.Kind.MAPPER_ERROR,
                    "could not read the token request (" + e.getClass().getSimpleName() + ")"));
        }
        BridgeClient client = clients.get(endpoint.get(), settings.connectTimeoutMs(),
                settings.circuitFailureThreshold(), settings.circuitOpenMs());
        try {
            BridgeDecision decision = client.decide(body, Duration.ofMillis(settings.readTimeoutMs()));
            LOG.debugf("kpb: decision %s (%s) for request %s", decision.decisionId(), decision.effect(), requestId);
            return Outcome.decided(requestId, decision);
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
