package org.keycloakpolicybridge.mapper.authzen;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.OptionalLong;
import java.util.Set;
import java.util.regex.Pattern;

import com.fasterxml.jackson.databind.JsonNode;
import org.keycloakpolicybridge.mapper.bridge.BridgeFailure;
import org.keycloakpolicybridge.mapper.bridge.JsonCodec;

/**
 * Reads the {@code 200} bodies of an AuthZEN PDP, or refuses them with a
 * {@link BridgeFailure.Kind#INVALID_RESPONSE} failure whose message names the field, never its value.
 *
 * <p>Evaluation: {@code decision} must be a boolean; {@code context}, when present, an object.
 * From the context the mapper reads {@code decision_id} (printable ASCII, at most 128 characters),
 * {@code reason_user} (a string, or an object whose first string value is taken; other shapes are
 * ignored: it is advisory) and, on a permit only, the token-issuance profile's {@code issuance}
 * object: {@code token_lifetime} (integer &gt;= 0, a ceiling), {@code claims} (an object; every
 * name must pass {@link AuthzenClaims#problem}, else the whole answer is refused, as the profile
 * requires) and {@code crit} (names of members of {@code claims}; the mapper writes every claim it
 * accepts, so they are honoured). Any other {@code issuance} member ({@code granted_scope},
 * {@code audience}, {@code authorization_details}, or one the mapper does not know) is reported in
 * {@link Evaluation#unsupported}: the profile makes such keys mandatory to understand, so the
 * caller turns the permit into a deny.
 *
 * <p>Search page: {@code results} must be an array of objects with {@code type} equal to the
 * searched type and a string {@code id}; {@code page.next_token}, when a non-empty string, asks for
 * another page.
 */
public final class AuthzenResponses {

    /**
     * A read evaluation.
     *
     * @param decision the gate's answer
     * @param decisionId {@code context.decision_id}, or null
     * @param userText {@code context.reason_user} as sent (sanitized where it leaves Keycloak), or null
     * @param claims {@code context.issuance.claims} of a permit (plain JSON values), else empty
     * @param tokenLifetime {@code context.issuance.token_lifetime} of a permit, if any
     * @param unsupported names of {@code issuance} members the mapper cannot apply (safe to log)
     */
    public record Evaluation(boolean decision, String decisionId, String userText, Map<String, Object> claims,
                             OptionalLong tokenLifetime, List<String> unsupported) {
        public Evaluation {
            claims = Collections.unmodifiableMap(new LinkedHashMap<>(claims));
            unsupported = List.copyOf(unsupported);
        }
    }

    /**
     * One search page.
     *
     * @param ids the results' ids, in order
     * @param nextToken the next page's token, or null when this is the last page
     */
    public record Page(List<String> ids, String nextToken) {
        public Page {
            ids = List.copyOf(ids);
        }
    }

    private static final Pattern DECISION_ID = Pattern.compile("[\\x21-\\x7e]{1,128}");
    private static final Set<String> ISSUANCE_APPLIED = Set.of("token_lifetime", "claims", "crit");
    private static final Pattern LOGGABLE_KEY = Pattern.compile("[A-Za-z0-9_.:\\-]{1,64}");

    private AuthzenResponses() {
    }

    /** Reads an evaluation response. */
    public static Evaluation evaluation(byte[] body) throws BridgeFailure {
        JsonNode root = object(body, "evaluation");
        JsonNode decision = root.get("decision");
        if (decision == null || !decision.isBoolean()) {
            throw invalid("evaluation: decision must be a boolean");
        }
        JsonNode context = root.get("context");
        if (context == null || context.isNull()) {
            return new Evaluation(decision.booleanValue(), null, null, Map.of(), OptionalLong.empty(), List.of());
        }
        if (!context.isObject()) {
            throw invalid("evaluation: context must be an object");
        }
        String decisionId = null;
        JsonNode id = context.get("decision_id");
        if (id != null && !id.isNull()) {
            if (!id.isTextual() || !DECISION_ID.matcher(id.textValue()).matches()) {
                throw invalid("evaluation: context.decision_id must be a non-empty printable ASCII string of at most 128 characters");
            }
            decisionId = id.textValue();
        }
        String userText = userText(context.get("reason_user"));
        JsonNode issuance = context.get("issuance");
        if (!decision.booleanValue() || issuance == null || issuance.isNull()) {
            // The profile: shaping keys of a denied evaluation are ignored.
            return new Evaluation(decision.booleanValue(), decisionId, userText, Map.of(), OptionalLong.empty(), List.of());
        }
        if (!issuance.isObject()) {
            throw invalid("evaluation: context.issuance must be an object");
        }
        List<String> unsupported = new ArrayList<>();
        issuance.fieldNames().forEachRemaining(name -> {
            if (!ISSUANCE_APPLIED.contains(name)) {
                unsupported.add(LOGGABLE_KEY.matcher(name).matches() ? name : "(unprintable name)");
            }
        });
        Map<String, Object> claims = claims(issuance.get("claims"));
        crit(issuance.get("crit"), claims);
        return new Evaluation(true, decisionId, userText, claims, tokenLifetime(issuance.get("token_lifetime")), unsupported);
    }

    /** Reads one resource-search page for {@code type}. */
    public static Page searchPage(byte[] body, String type) throws BridgeFailure {
        JsonNode root = object(body, "search");
        JsonNode results = root.get("results");
        if (results == null || !results.isArray()) {
            throw invalid("search: results must be an array");
        }
        List<String> ids = new ArrayList<>(results.size());
        for (JsonNode result : results) {
            if (!result.isObject()) {
                throw invalid("search: results must hold objects");
            }
            JsonNode resultType = result.get("type");
            if (resultType == null || !resultType.isTextual() || !resultType.textValue().equals(type)) {
                throw invalid("search: results[].type must be the searched type");
            }
            JsonNode id = result.get("id");
            if (id == null || !id.isTextual()) {
                throw invalid("search: results[].id must be a string");
            }
            ids.add(id.textValue());
        }
        JsonNode page = root.get("page");
        if (page == null || page.isNull()) {
            return new Page(ids, null);
        }
        if (!page.isObject()) {
            throw invalid("search: page must be an object");
        }
        JsonNode next = page.get("next_token");
        if (next == null || next.isNull()) {
            return new Page(ids, null);
        }
        if (!next.isTextual()) {
            throw invalid("search: page.next_token must be a string");
        }
        return new Page(ids, next.textValue().isEmpty() ? null : next.textValue());
    }

    private static JsonNode object(byte[] body, String what) throws BridgeFailure {
        JsonNode root;
        try {
            root = JsonCodec.MAPPER.readTree(body);
        } catch (IOException e) {
            throw invalid(what + ": body is not JSON");
        }
        if (root == null || !root.isObject()) {
            throw invalid(what + ": body is not a JSON object");
        }
        return root;
    }

    private static String userText(JsonNode node) {
        if (node == null) {
            return null;
        }
        if (node.isTextual()) {
            return node.textValue();
        }
        if (node.isObject()) {
            for (JsonNode value : node) {
                if (value.isTextual()) {
                    return value.textValue();
                }
            }
        }
        return null;
    }

    private static Map<String, Object> claims(JsonNode node) throws BridgeFailure {
        Map<String, Object> claims = new LinkedHashMap<>();
        if (node == null || node.isNull()) {
            return claims;
        }
        if (!node.isObject()) {
            throw invalid("evaluation: context.issuance.claims must be an object");
        }
        for (Map.Entry<String, JsonNode> field : node.properties()) {
            String problem = AuthzenClaims.problem(field.getKey());
            if (problem != null) {
                throw invalid("evaluation: context.issuance.claims " + problem);
            }
            claims.put(field.getKey(), JsonCodec.MAPPER.convertValue(field.getValue(), Object.class));
        }
        return claims;
    }

    private static void crit(JsonNode node, Map<String, Object> claims) throws BridgeFailure {
        if (node == null || node.isNull()) {
            return;
        }
        if (!node.isArray()) {
            throw invalid("evaluation: context.issuance.crit must be an array");
        }
        for (JsonNode name : node) {
            if (!name.isTextual() || !claims.containsKey(name.textValue())) {
                throw invalid("evaluation: context.issuance.crit must name members of context.issuance.claims");
            }
        }
    }

    private static OptionalLong tokenLifetime(JsonNode node) throws BridgeFailure {
        if (node == null || node.isNull()) {
            return OptionalLong.empty();
        }
        if (!node.isIntegralNumber() || !node.canConvertToLong() || node.longValue() < 0) {
            throw invalid("evaluation: context.issuance.token_lifetime must be an integer >= 0");
        }
        return OptionalLong.of(node.longValue());
    }

    private static BridgeFailure invalid(String message) {
        return new BridgeFailure(BridgeFailure.Kind.INVALID_RESPONSE, "invalid AuthZEN answer: " + message);
    }
}
