package org.keycloakpolicybridge.mapper.request;

import java.util.List;
import java.util.Map;
import java.util.TreeMap;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.keycloakpolicybridge.mapper.bridge.JsonCodec;

/**
 * Builds the body of {@code POST /v1/claims} (contract v1 section 1, schema
 * {@code claims-request.v1.schema.json}) from {@link TokenRequestFacts}. Pure: no Keycloak
 * model, clock or randomness; the request id is an argument.
 *
 * <p>Choices the schema leaves open: {@code grant_type} is {@value #NO_GRANT} when Keycloak has no
 * grant (userinfo, introspection), because the schema requires a non-empty string; absent
 * optional values ({@code issuer}, {@code audience}, {@code actors}, context fields) are omitted
 * rather than sent as null; only client attributes named {@code kpb.*} are sent.
 */
public final class ClaimsRequestBuilder {

    public static final String VERSION = "1";
    /** {@code grant_type} sent when there is no grant (userinfo and introspection events). */
    public static final String NO_GRANT = "none";
    /** Prefix of the client attributes that are sent. */
    public static final String CLIENT_ATTRIBUTE_PREFIX = "kpb.";

    private ClaimsRequestBuilder() {
    }

    /** The request as UTF-8 JSON bytes, ready to sign and send. */
    public static byte[] toBytes(TokenRequestFacts facts, String requestId) {
        return toBytes(facts, requestId, 1);
    }

    /**
     * The request for the {@code attempt}-th request sent for one token request (failover to
     * another bridge URL). From the second on, the body carries {@code "attempt": n}, an additive
     * field the bridge ignores and records with the request: it makes each attempt a distinct
     * signed request, so a replica sharing the decision log of one that received an earlier
     * attempt does not refuse it as a replay. The first attempt is byte-identical to {@link #toBytes(TokenRequestFacts, String)}.
     */
    public static byte[] toBytes(TokenRequestFacts facts, String requestId, int attempt) {
        if (attempt < 1) {
            throw new IllegalArgumentException("attempt counts from 1");
        }
        ObjectNode json = toJson(facts, requestId);
        if (attempt > 1) {
            json.put("attempt", attempt);
        }
        try {
            return JsonCodec.MAPPER.writeValueAsBytes(json);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException("claims request is not serializable", e);
        }
    }

    /** The request as a JSON tree. */
    public static ObjectNode toJson(TokenRequestFacts facts, String requestId) {
        ObjectNode root = JsonCodec.MAPPER.createObjectNode();
        root.put("version", VERSION);
        root.put("request_id", requestId);
        root.put("realm", facts.realm());
        if (facts.issuer() != null) {
            root.put("issuer", facts.issuer());
        }
        root.put("event", facts.event().wire());
        root.put("grant_type", facts.grantType() == null || facts.grantType().isEmpty() ? NO_GRANT : facts.grantType());
        strings(root.putArray("requested_scopes"), facts.requestedScopes());
        if (!facts.audience().isEmpty()) {
            strings(root.putArray("audience"), facts.audience());
        }
        client(root.putObject("client"), facts.client());
        subject(root.putObject("subject"), facts.subject());
        if (!facts.actors().isEmpty()) {
            ArrayNode actors = root.putArray("actors");
            for (TokenRequestFacts.Actor actor : facts.actors()) {
                ObjectNode node = actors.addObject();
                putIfPresent(node, "sub", actor.sub());
                putIfPresent(node, "client_id", actor.clientId());
                node.put("kind_hint", actor.kindHint());
            }
        }
        ObjectNode context = root.putObject("context");
        putIfPresent(context, "ip", facts.context().ip());
        putIfPresent(context, "user_agent", facts.context().userAgent());
        putIfPresent(context, "tenant", facts.context().tenant());
        return root;
    }

    private static void client(ObjectNode node, TokenRequestFacts.Client client) {
        node.put("client_id", client.clientId());
        ObjectNode attributes = node.putObject("attributes");
        Map<String, String> sorted = new TreeMap<>();
        client.attributes().forEach((name, value) -> {
            if (name.startsWith(CLIENT_ATTRIBUTE_PREFIX) && value != null) {
                sorted.put(name, value);
            }
        });
        sorted.forEach(attributes::put);
    }

    private static void subject(ObjectNode node, TokenRequestFacts.Subject subject) {
        node.put("id", subject.id());
        node.put("username", subject.username());
        node.put("email", subject.email());
        // Always sent: the bridge joins by e-mail only when it is true (absent would mean false too).
        node.put("email_verified", subject.emailVerified());
        node.put("kind_hint", KindHints.subject(subject.serviceAccountClientId(), subject.serviceAccountClientKind()));
        if (subject.serviceAccountClientId() != null) {
            node.put("service_account_client_id", subject.serviceAccountClientId());
        }
        ObjectNode attributes = node.putObject("attributes");
        subject.attributes().forEach((name, values) -> strings(attributes.putArray(name), values));
        strings(node.putArray("directory_roles"), subject.directoryRoles());
        strings(node.putArray("groups"), subject.groups());
        ObjectNode auth = node.putObject("auth");
        auth.put("acr", subject.acr());
        strings(auth.putArray("amr"), subject.amr());
        auth.put("auth_time", subject.authTime());
        auth.put("session_id", subject.sessionId());
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
