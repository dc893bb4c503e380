package org.keycloakpolicybridge.mapper;

import org.keycloak.models.ClientSessionContext;
import org.keycloak.models.ProtocolMapperModel;

/**
 * One decision per token request: the {@link Outcome} is kept as an attribute of the
 * {@link ClientSessionContext}, which Keycloak creates per token request and shares between the
 * access token, the ID token and the token response. The key holds the event and the mapper
 * model id, so two bridge mappers on one client do not share outcomes. Nothing outlives the
 * request: a later request (a refresh, for instance) asks the bridge again.
 */
public final class DecisionCache {

    private static final String PREFIX = "kpb.outcome:";

    private DecisionCache() {
    }

    /** The attribute key for this event and mapper. */
    public static String key(TokenEvent event, ProtocolMapperModel mapper) {
        String id = mapper.getId() != null ? mapper.getId() : mapper.getName();
        return PREFIX + event.wire() + ":" + id;
    }

    /** The outcome cached for this request, or null. */
    public static Outcome get(ClientSessionContext context, String key) {
        return context.getAttribute(key, Outcome.class);
    }

    public static void put(ClientSessionContext context, String key, Outcome outcome) {
        context.setAttribute(key, outcome);
    }
}
