package org.keycloakpolicybridge.mapper.request;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.function.Function;

import com.fasterxml.jackson.databind.JsonNode;
import org.keycloakpolicybridge.mapper.bridge.JsonCodec;

/**
 * The delegation chain of a token exchange (RFC 8693), current actor first.
 *
 * <p>The current actor is the requesting client. Earlier actors come from the {@code act} claim
 * of the subject token (which the bridge wrote when that token was minted): its nested
 * {@code act} objects are flattened outermost (most recent) first. Keycloak has already validated
 * the subject token, so its payload is only decoded, not verified here. An opaque or encrypted
 * subject token has no readable {@code act}: the chain is then the current actor alone.
 */
public final class ActorChain {

    /** At most this many actors are sent (the request schema's limit). */
    public static final int MAX_ACTORS = 16;

    /**
     * One link read from an {@code act} claim.
     *
     * @param sub nullable
     * @param clientId nullable
     */
    public record ActRef(String sub, String clientId) {
    }

    private ActorChain() {
    }

    /**
     * The chain: {@code current}, then the subject token's actors, each labelled through
     * {@code clientKind} (client id -> its {@code kpb.kind} attribute, or null). A chain longer
     * than {@link #MAX_ACTORS} is cut there; it still exceeds any depth a policy allows, so it is
     * still denied.
     */
    public static List<TokenRequestFacts.Actor> build(TokenRequestFacts.Actor current, String subjectToken,
                                                      Function<String, String> clientKind) {
        List<TokenRequestFacts.Actor> chain = new ArrayList<>();
        chain.add(current);
        for (ActRef ref : fromSubjectToken(subjectToken)) {
            if (chain.size() == MAX_ACTORS) {
                break;
            }
            String kind = KindHints.actor(ref.clientId() == null ? null : clientKind.apply(ref.clientId()));
            chain.add(new TokenRequestFacts.Actor(ref.sub(), ref.clientId(), kind));
        }
        return chain;
    }

    /**
     * The links of the {@code act} claim of a compact JWS, outermost first; empty when the token
     * is absent, not a readable JWS, or has no {@code act}. Reading stops at the first link that
     * names neither {@code sub} nor {@code client_id}.
     */
    public static List<ActRef> fromSubjectToken(String token) {
        List<ActRef> links = new ArrayList<>();
        if (token == null) {
            return links;
        }
        String[] parts = token.split("\\.", -1);
        if (parts.length != 3) {
            return links;
        }
        JsonNode act;
        try {
            act = JsonCodec.MAPPER.readTree(Base64.getUrlDecoder().decode(parts[1])).get("act");
        } catch (IOException | IllegalArgumentException e) {
            return links;
        }
        while (act != null && act.isObject() && links.size() < MAX_ACTORS) {
            String sub = text(act.get("sub"));
            String clientId = text(act.get("client_id"));
            if (sub == null && clientId == null) {
                break;
            }
            links.add(new ActRef(sub, clientId));
            act = act.get("act");
        }
        return links;
    }

    private static String text(JsonNode node) {
        return node != null && node.isTextual() && !node.textValue().isEmpty() ? node.textValue() : null;
    }
}
