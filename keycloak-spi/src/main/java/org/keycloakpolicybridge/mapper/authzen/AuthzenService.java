package org.keycloakpolicybridge.mapper.authzen;

import java.net.URI;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.OptionalLong;
import java.util.Set;
import java.util.function.Supplier;

import org.jboss.logging.Logger;
import org.keycloakpolicybridge.mapper.MapperSettings;
import org.keycloakpolicybridge.mapper.Outcome;
import org.keycloakpolicybridge.mapper.bridge.AuthzenClients;
import org.keycloakpolicybridge.mapper.bridge.AuthzenFailover;
import org.keycloakpolicybridge.mapper.bridge.AuthzenPdp;
import org.keycloakpolicybridge.mapper.bridge.BridgeDecision;
import org.keycloakpolicybridge.mapper.bridge.BridgeEndpoint;
import org.keycloakpolicybridge.mapper.bridge.BridgeFailure;
import org.keycloakpolicybridge.mapper.bridge.FailoverClient;
import org.keycloakpolicybridge.mapper.request.TokenRequestFacts;

/**
 * The mapper as an AuthZEN 1.0 policy enforcement point ({@code kpb.pdp.protocol=authzen}): for
 * one token request, one gate evaluation and then one resource search per claim of
 * {@code kpb.authzen.claims}, turned into the same {@link Outcome} a {@code /v1/claims} call
 * gives, so {@code DecisionEnforcer} applies it unchanged.
 *
 * <ul>
 * <li>Gate {@code false}: a deny (403 {@code access_denied}, the PDP's {@code reason_user} as the
 *     end user's text); no search is made. A permit whose {@code context.issuance} carries a
 *     member the mapper cannot apply, or a {@code token_lifetime} of 0, is a deny too (the
 *     token-issuance profile's rule), logged at WARN with the member names.</li>
 * <li>Gate {@code true}: a permit whose claims are {@code context.issuance.claims} and, for each
 *     configured claim, the ids the search returned, in order, without duplicates, always a list
 *     (empty when none; a search result replaces an {@code issuance} claim of the same name);
 *     {@code token_lifetime} caps the lifetime like {@code max_ttl_seconds}; the decision id is
 *     {@code context.decision_id}, when sent. Nothing is withdrawn (AuthZEN has no
 *     {@code remove_claims}).</li>
 * <li>Anything else (unreachable, timeout, non-200, malformed answer, more than
 *     {@link #MAX_PAGES} pages or {@link #MAX_VALUES} ids for a claim, a repeated page token) is a
 *     failure: the mapper's failure mode applies. All calls share one budget, connect + read
 *     timeout, and fail over across URLs as {@link AuthzenFailover} describes.</li>
 * </ul>
 * Logs as {@code DecisionService} does: one WARN per failure, never the subject, claim values,
 * bodies or credentials.
 */
public final class AuthzenService {

    /** Most pages read for one claim. */
    public static final int MAX_PAGES = 16;
    /** Most ids one claim may receive. */
    public static final int MAX_VALUES = 1000;

    private static final Logger LOG = Logger.getLogger(AuthzenService.class);

    private final List<URI> serverBases;
    private final AuthzenClients clients;
    private final Supplier<String> requestIds;

    /**
     * @param serverClaimsEndpoints the server-level claims endpoints (their base URLs are the PDP URLs)
     * @param clients shared AuthZEN clients with the server's credentials
     * @param requestIds source of request ids ({@code context.request_id}, {@code X-Request-ID})
     */
    public AuthzenService(List<URI> serverClaimsEndpoints, AuthzenClients clients, Supplier<String> requestIds) {
        this.serverBases = serverClaimsEndpoints.stream().map(BridgeEndpoint::baseOf).toList();
        this.clients = clients;
        this.requestIds = requestIds;
    }

    /**
     * Asks the PDP for one token request.
     *
     * @param facts read lazily: a mapper that cannot call does not read the models
     * @param jti the token's id, sent as {@code context.jti} (nullable)
     */
    public Outcome decide(MapperSettings settings, Supplier<TokenRequestFacts> facts, String jti) {
        String requestId = requestIds.get();
        List<URI> bases = settings.bridgeEndpoints().isEmpty() ? serverBases
                : settings.bridgeEndpoints().stream().map(BridgeEndpoint::baseOf).toList();
        if (bases.isEmpty()) {
            return failed(requestId, null, new BridgeFailure(BridgeFailure.Kind.NOT_CONFIGURED,
                    "no PDP URL configured (server option bridge-url, KPB_BRIDGE_URL or mapper setting " + MapperSettings.BRIDGE_URL + ")"));
        }
        if (!clients.has(settings.authzenAuth())) {
            return failed(requestId, null, new BridgeFailure(BridgeFailure.Kind.NOT_CONFIGURED, "no server credential for "
                    + MapperSettings.AUTHZEN_AUTH + "=" + settings.authzenAuth().configValue()));
        }
        TokenRequestFacts request;
        try {
            request = facts.get();
        } catch (RuntimeException e) {
            return failed(requestId, null, new BridgeFailure(BridgeFailure.Kind.MAPPER_ERROR,
                    "could not read the token request (" + e.getClass().getSimpleName() + ")"));
        }
        AuthzenFailover failover = clients.failover(bases, settings.authzenAuth(), settings.connectTimeoutMs(),
                settings.circuitFailureThreshold(), settings.circuitOpenMs());
        try {
            AuthzenFailover.Answer<BridgeDecision> answer = failover.run(
                    (exchange, attempt) -> converse(exchange, attempt, request, settings.authzenClaims(), requestId, jti),
                    requestId, Duration.ofMillis(settings.readTimeoutMs()));
            if (answer.failedBefore().stream().anyMatch(a -> a.failure().kind() != BridgeFailure.Kind.CIRCUIT_OPEN)) {
                LOG.warnf("kpb: request %s (realm %s, client %s, event %s) decided by AuthZEN PDP #%d %s after failover: %s",
                        requestId, request.realm(), request.client().clientId(), request.event().wire(), answer.position(),
                        answer.base(), FailoverClient.describe(answer.failedBefore()));
            }
            LOG.debugf("kpb: AuthZEN decision %s (%s) for request %s from PDP #%d %s", answer.result().decisionId(),
                    answer.result().effect(), requestId, answer.position(), answer.base());
            return Outcome.decided(requestId, answer.result());
        } catch (BridgeFailure failure) {
            return failed(requestId, request, failure);
        }
    }

    private static BridgeDecision converse(AuthzenFailover.Exchange exchange, int attempt, TokenRequestFacts request,
                                           List<String> searched, String requestId, String jti) throws BridgeFailure {
        AuthzenResponses.Evaluation gate = AuthzenResponses.evaluation(
                exchange.post(AuthzenPdp.Call.EVALUATION, AuthzenRequests.evaluation(request, requestId, jti, attempt)));
        if (!gate.decision()) {
            return deny(gate);
        }
        if (!gate.unsupported().isEmpty()) {
            LOG.warnf("kpb: request %s: the AuthZEN PDP permitted with context.issuance members the mapper cannot apply %s; "
                    + "denied, as the token-issuance profile requires", requestId, gate.unsupported());
            return deny(gate);
        }
        if (gate.tokenLifetime().isPresent() && gate.tokenLifetime().getAsLong() == 0) {
            return deny(gate);
        }
        Map<String, Object> claims = new LinkedHashMap<>(gate.claims());
        for (String claim : searched) {
            claims.put(claim, search(exchange, attempt, request, claim, requestId, jti));
        }
        return new BridgeDecision(gate.decisionId(), BridgeDecision.Effect.PERMIT, claims, List.of(), gate.tokenLifetime(),
                List.of(), null);
    }

    private static List<String> search(AuthzenFailover.Exchange exchange, int attempt, TokenRequestFacts request, String claim,
                                       String requestId, String jti) throws BridgeFailure {
        Set<String> values = new LinkedHashSet<>();
        Set<String> tokens = new HashSet<>();
        String next = null;
        for (int page = 1; ; page++) {
            AuthzenResponses.Page answer = AuthzenResponses.searchPage(exchange.post(AuthzenPdp.Call.SEARCH_RESOURCE,
                    AuthzenRequests.searchResource(request, claim, requestId, jti, attempt, next)), claim);
            values.addAll(answer.ids());
            if (values.size() > MAX_VALUES) {
                throw invalid("a resource search returned more than " + MAX_VALUES + " ids for one claim");
            }
            next = answer.nextToken();
            if (next == null) {
                return new ArrayList<>(values);
            }
            if (page == MAX_PAGES) {
                throw invalid("a resource search has more than " + MAX_PAGES + " pages");
            }
            if (!tokens.add(next)) {
                throw invalid("a resource search repeated a page.next_token");
            }
        }
    }

    private static BridgeDecision deny(AuthzenResponses.Evaluation gate) {
        return new BridgeDecision(gate.decisionId(), BridgeDecision.Effect.DENY, Map.of(), List.of(), OptionalLong.empty(),
                List.of(), gate.userText());
    }

    private static BridgeFailure invalid(String message) {
        return new BridgeFailure(BridgeFailure.Kind.INVALID_RESPONSE, "invalid AuthZEN answer: " + message);
    }

    private static Outcome failed(String requestId, TokenRequestFacts request, BridgeFailure failure) {
        if (request == null) {
            LOG.warnf("kpb: no AuthZEN decision for request %s: %s: %s", requestId, failure.kind(), failure.getMessage());
        } else {
            LOG.warnf("kpb: no AuthZEN decision for request %s (realm %s, client %s, event %s): %s: %s", requestId,
                    request.realm(), request.client().clientId(), request.event().wire(), failure.kind(), failure.getMessage());
        }
        return Outcome.failed(requestId, failure);
    }
}
