package org.keycloakpolicybridge.mapper.request;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

import org.keycloakpolicybridge.mapper.TokenEvent;

/**
 * What Keycloak knows about one token request, reduced to plain values: the narrow input of
 * {@link ClaimsRequestBuilder}. {@link KeycloakFacts} fills it from Keycloak's models; tests and
 * the contract vectors build it directly. Nullable fields are marked; lists and maps are never
 * null.
 *
 * @param event the minting event
 * @param realm realm name
 * @param issuer the realm's issuer URL (nullable)
 * @param grantType OAuth grant type; null when Keycloak has none (userinfo, introspection)
 * @param requestedScopes scopes the client asked for
 * @param audience requested audience (empty when none)
 * @param client the client the token is issued to (at token exchange: the requesting client)
 * @param subject whose authority the token carries
 * @param actors delegation chain, current actor first (empty unless token exchange)
 * @param context request context
 */
public record TokenRequestFacts(
        TokenEvent event,
        String realm,
        String issuer,
        String grantType,
        List<String> requestedScopes,
        List<String> audience,
        Client client,
        Subject subject,
        List<Actor> actors,
        Context context) {

    public TokenRequestFacts {
        Objects.requireNonNull(event, "event");
        Objects.requireNonNull(realm, "realm");
        Objects.requireNonNull(client, "client");
        Objects.requireNonNull(subject, "subject");
        requestedScopes = List.copyOf(requestedScopes);
        audience = List.copyOf(audience);
        actors = List.copyOf(actors);
        context = context == null ? new Context(null, null, null) : context;
    }

    /**
     * The client.
     *
     * @param clientId OAuth client id
     * @param attributes all client attributes; the builder sends only {@code kpb.*} ones
     */
    public record Client(String clientId, Map<String, String> attributes) {
        public Client {
            Objects.requireNonNull(clientId, "clientId");
            attributes = attributes == null ? Map.of() : new LinkedHashMap<>(attributes);
        }
    }

    /**
     * The token subject as Keycloak sees it.
     *
     * @param id Keycloak user id
     * @param username nullable
     * @param email nullable
     * @param emailVerified Keycloak's {@code emailVerified}: the bridge joins by e-mail only when true
     * @param serviceAccountClientId client id whose service account this user is (nullable)
     * @param serviceAccountClientKind that client's {@code kpb.kind} attribute (nullable)
     * @param attributes selected user attributes (name -> values)
     * @param directoryRoles effective role names (realm roles by name, client roles as {@code client/role})
     * @param groups group paths
     * @param acr nullable
     * @param amr authentication method references
     * @param authTime unix seconds of the authentication (nullable)
     * @param sessionId user session id (nullable: transient sessions have none)
     */
    public record Subject(
            String id,
            String username,
            String email,
            boolean emailVerified,
            String serviceAccountClientId,
            String serviceAccountClientKind,
            Map<String, List<String>> attributes,
            List<String> directoryRoles,
            List<String> groups,
            String acr,
            List<String> amr,
            Long authTime,
            String sessionId) {
        public Subject {
            Objects.requireNonNull(id, "id");
            attributes = attributes == null ? Map.of() : new LinkedHashMap<>(attributes);
            directoryRoles = List.copyOf(directoryRoles);
            groups = List.copyOf(groups);
            amr = List.copyOf(amr);
        }
    }

    /**
     * One link of the delegation chain.
     *
     * @param sub the actor's Keycloak user id (its service account), nullable
     * @param clientId the actor's client id, nullable (one of the two is set)
     * @param kindHint {@code human}, {@code service_account} or {@code agent}
     */
    public record Actor(String sub, String clientId, String kindHint) {
        public Actor {
            if (sub == null && clientId == null) {
                throw new IllegalArgumentException("an actor needs a sub or a client_id");
            }
        }
    }

    /**
     * Request context; every field nullable.
     *
     * @param ip caller address of this request
     * @param userAgent caller's User-Agent
     * @param tenant requested tenant
     */
    public record Context(String ip, String userAgent, String tenant) {
    }
}
