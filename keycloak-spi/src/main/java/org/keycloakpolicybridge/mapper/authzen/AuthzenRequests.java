package org.keycloakpolicybridge.mapper.authzen;

import java.util.List;
import java.util.Map;
import java.util.TreeMap;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.keycloakpolicybridge.mapper.bridge.JsonCodec;
import org.keycloakpolicybridge.mapper.request.ClaimsRequestBuilder;
import org.keycloakpolicybridge.mapper.request.KindHints;
import org.keycloakpolicybridge.mapper.request.TokenRequestFacts;

/**
 * Builds the AuthZEN 1.0 request bodies of one token request from {@link TokenRequestFacts}: the
 * gate ({@code POST /access/v1/evaluation}) and one resource search per governed claim
 * ({@code POST /access/v1/search/resource}). Pure: no Keycloak model, clock or randomness.
 *
 * <ul>
 * <li>{@code subject}: a human is {@code {type: "user", id: <Keycloak user id>}}; a client's
 *     service account is {@code {type: "client", id: <client id>}}. {@code properties} carry what
 *     a claims request says of its subject: {@code keycloak_user_id}, {@code username},
 *     {@code email}, {@code email_verified}, {@code kind_hint}, {@code attributes} (the configured
 *     user attributes), {@code directory_roles}, {@code groups}, {@code auth}
 *     ({@code acr}, {@code amr}, {@code auth_time}, {@code session_id}); absent values omitted.</li>
 * <li>{@code action}: {@code {name: "issue:access_token:<grant_type>"}} ({@value ClaimsRequestBuilder#NO_GRANT}
 *     when Keycloak has no grant: userinfo, introspection); the searches use the same action.</li>
 * <li>{@code resource} of the gate: {@code {type: "audience", id: <first requested audience, else the client id>}};
 *     of a search: {@code {type: <claim name>}}; from the second page on, {@code page.token} is the
 *     previous answer's {@code page.next_token}.</li>
 * <li>{@code context}: {@code request_id}, {@code realm}, {@code issuer}, {@code event},
 *     {@code grant_type}, {@code client_id}, {@code client_attributes} ({@code kpb.*} only),
 *     {@code requested_scopes}, {@code audience}, {@code actors} (token exchange: current actor
 *     first), {@code jti}, {@code tenant}, {@code ip}, {@code user_agent}, and from the second PDP
 *     asked on, {@code attempt} (so each signed request is distinct, as for {@code /v1/claims}).</li>
 * </ul>
 */
public final class AuthzenRequests {

    public static final String ACTION_PREFIX = "issue:access_token:";
    public static final String AUDIENCE_TYPE = "audience";
    public static final String USER_TYPE = "user";
    public static final String CLIENT_TYPE = "client";

    private AuthzenRequests() {
    }

    /** The gate action's name for this request. */
    public static String action(TokenRequestFacts facts) {
        return ACTION_PREFIX + grant(facts);
    }

    /** The gate evaluation body. */
    public static byte[] evaluation(TokenRequestFacts facts, String requestId, String jti, int attempt) {
        ObjectNode root = common(facts);
        ObjectNode resource = JsonCodec.MAPPER.createObjectNode();
        resource.put("type", AUDIENCE_TYPE);
        resource.put("id", facts.audience().isEmpty() ? facts.client().clientId() : facts.audience().get(0));
        root.set("resource", resource);
        root.set("context", context(facts, requestId, jti, attempt));
        return bytes(root);
    }

    /**
     * One page of the resource search for {@code claim}.
     *
     * @param nextToken the previous page's {@code page.next_token}, sent back as {@code page.token}
     *     (AuthZEN 1.0: a request's page carries {@code token}, a response's {@code next_token});
     *     null for the first page
     */
    public static byte[] searchResource(TokenRequestFacts facts, String claim, String requestId, String jti, int attempt,
                                        String nextToken) {
        ObjectNode root = common(facts);
        root.putObject("resource").put("type", claim);
        root.set("context", context(facts, requestId, jti, attempt));
        if (nextToken != null) {
            root.putObject("page").put("token", nextToken);
        }
        return bytes(root);
    }

    private static ObjectNode common(TokenRequestFacts facts) {
        ObjectNode root = JsonCodec.MAPPER.createObjectNode();
        root.set("subject", subject(facts.subject()));
        root.putObject("action").put("name", action(facts));
        return root;
    }

    static ObjectNode subject(TokenRequestFacts.Subject subject) {
        ObjectNode node = JsonCodec.MAPPER.createObjectNode();
        boolean client = subject.serviceAccountClientId() != null;
        node.put("type", client ? CLIENT_TYPE : USER_TYPE);
        node.put("id", client ? subject.serviceAccountClientId() : subject.id());
        ObjectNode properties = node.putObject("properties");
        properties.put("keycloak_user_id", subject.id());
        putIfPresent(properties, "username", subject.username());
        putIfPresent(properties, "email", subject.email());
        properties.put("email_verified", subject.emailVerified());
        properties.put("kind_hint", KindHints.subject(subject.serviceAccountClientId(), subject.serviceAccountClientKind()));
        ObjectNode attributes = properties.putObject("attributes");
        subject.attributes().forEach((name, values) -> strings(attributes.putArray(name), values));
        strings(properties.putArray("directory_roles"), subject.directoryRoles());
        strings(properties.putArray("groups"), subject.groups());
        ObjectNode auth = properties.putObject("auth");
        putIfPresent(auth, "acr", subject.acr());
        strings(auth.putArray("amr"), subject.amr());
        if (subject.authTime() != null) {
            auth.put("auth_time", subject.authTime());
        }
        putIfPresent(auth, "session_id", subject.sessionId());
        return node;
    }

    static ObjectNode context(TokenRequestFacts facts, String requestId, String jti, int attempt) {
        if (attempt < 1) {
            throw new IllegalArgumentException("attempt counts from 1");
        }
        ObjectNode context = JsonCodec.MAPPER.createObjectNode();
        context.put("request_id", requestId);
        context.put("realm", facts.realm());
        putIfPresent(context, "issuer", facts.issuer());
        context.put("event", facts.event().wire());
        context.put("grant_type", grant(facts));
        context.put("client_id", facts.client().clientId());
        ObjectNode clientAttributes = context.putObject("client_attributes");
        Map<String, String> sorted = new TreeMap<>();
        facts.client().attributes().forEach((name, value) -> {
            if (name.startsWith(ClaimsRequestBuilder.CLIENT_ATTRIBUTE_PREFIX) && value != null) {
                sorted.put(name, value);
            }
        });
        sorted.forEach(clientAttributes::put);
        strings(context.putArray("requested_scopes"), facts.requestedScopes());
        strings(context.putArray("audience"), facts.audience());
        if (!facts.actors().isEmpty()) {
            ArrayNode actors = context.putArray("actors");
            for (TokenRequestFacts.Actor actor : facts.actors()) {
                ObjectNode node = actors.addObject();
                putIfPresent(node, "sub", actor.sub());
                putIfPresent(node, "client_id", actor.clientId());
                node.put("kind_hint", actor.kindHint());
            }
        }
        putIfPresent(context, "jti", jti);
        putIfPresent(context, "tenant", facts.context().tenant());
        putIfPresent(context, "ip", facts.context().ip());
        putIfPresent(context, "user_agent", facts.context().userAgent());
        if (attempt > 1) {
            context.put("attempt", attempt);
        }
        return context;
    }

    private static String grant(TokenRequestFacts facts) {
        return facts.grantType() == null || facts.grantType().isEmpty() ? ClaimsRequestBuilder.NO_GRANT : facts.grantType();
    }

    private static byte[] bytes(ObjectNode root) {
        try {
            return JsonCodec.MAPPER.writeValueAsBytes(root);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException("AuthZEN request is not serializable", e);
        }
    }

    private static void strings(ArrayNode array, List<String> values) {
        values.forEach(array::add);
    }

    private static void putIfPresent(ObjectNode node, String field, String value) {
        if (value != null) {
            node.put(field, value);
        }
    }
}
