package org.keycloakpolicybridge.mapper.request;

import java.util.Set;

/**
 * How the mapper labels principals ({@code kind_hint}): from Keycloak's view plus the client
 * attribute {@code kpb.kind}. A hint only; the bridge decides kinds from the IGA record.
 */
public final class KindHints {

    /** The client attribute naming a client's kind ({@code agent}, ...). */
    public static final String KIND_ATTRIBUTE = "kpb.kind";
    public static final String HUMAN = "human";
    public static final String SERVICE_ACCOUNT = "service_account";
    public static final String AGENT = "agent";
    private static final Set<String> KINDS = Set.of(HUMAN, SERVICE_ACCOUNT, AGENT);

    private KindHints() {
    }

    /**
     * The subject's hint: {@code human} unless the user is a client's service account; then
     * {@code agent} if that client's {@code kpb.kind} is {@code agent}, else {@code service_account}.
     */
    public static String subject(String serviceAccountClientId, String serviceAccountClientKind) {
        if (serviceAccountClientId == null) {
            return HUMAN;
        }
        return AGENT.equals(serviceAccountClientKind) ? AGENT : SERVICE_ACCOUNT;
    }

    /** An actor's hint: the client's {@code kpb.kind} when it is a known kind, else {@code agent}. */
    public static String actor(String clientKind) {
        return clientKind != null && KINDS.contains(clientKind) ? clientKind : AGENT;
    }
}
