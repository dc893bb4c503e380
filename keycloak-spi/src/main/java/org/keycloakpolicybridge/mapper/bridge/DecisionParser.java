package org.keycloakpolicybridge.mapper.bridge;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.OptionalLong;
import java.util.regex.Pattern;

import com.fasterxml.jackson.databind.JsonNode;
import org.keycloakpolicybridge.mapper.token.ReservedClaims;

/**
 * Turns a {@code 200} body of {@code POST /v1/claims} into a {@link BridgeDecision}, or refuses
 * it. Required: {@code decision_id} (non-empty printable ASCII, at most 128 characters),
 * {@code effect} ({@code permit}|{@code deny}) and {@code claims} (an object). Optional but
 * type-checked: {@code remove_claims} (array of claim names), {@code max_ttl_seconds} (integer
 * &gt;= 0), {@code reasons} (array of objects), {@code user_message} (string; kept as sent: the
 * {@code DecisionEnforcer} sanitizes it where it leaves Keycloak). Fields the mapper does not use
 * (policy, entitlements, provenance, ...) are ignored.
 *
 * <p>A decision that sets or removes a reserved claim, or sets a claim Keycloak keeps in a typed
 * token field, is invalid (see {@link ReservedClaims}). Error messages name the field, never its
 * value.
 */
public final class DecisionParser {

    // The bridge's claim-name rule (policy.v1.schema.json $defs/claimName).
    private static final Pattern CLAIM_NAME = Pattern.compile("[A-Za-z_][A-Za-z0-9_:/.\\-]{0,127}");
    private static final Pattern DECISION_ID = Pattern.compile("[\\x21-\\x7e]{1,128}");

    private DecisionParser() {
    }

    /**
     * Parses and validates a decision.
     *
     * @throws BridgeFailure of kind {@link BridgeFailure.Kind#INVALID_RESPONSE}
     */
    public static BridgeDecision parse(byte[] body) throws BridgeFailure {
        JsonNode root;
        try {
            root = JsonCodec.MAPPER.readTree(body);
        } catch (IOException e) {
            throw invalid("body is not JSON");
        }
        if (root == null || !root.isObject()) {
            throw invalid("body is not a JSON object");
        }
        JsonNode id = root.get("decision_id");
        if (id == null || !id.isTextual() || !DECISION_ID.matcher(id.textValue()).matches()) {
            throw invalid("decision_id must be a non-empty printable ASCII string of at most 128 characters");
        }
        BridgeDecision.Effect effect = effect(root.get("effect"));
        JsonNode claimsNode = root.get("claims");
        if (claimsNode == null || !claimsNode.isObject()) {
            throw invalid("claims must be an object");
        }
        Map<String, Object> claims = new LinkedHashMap<>();
        Iterator<Map.Entry<String, JsonNode>> fields = claimsNode.properties().iterator();
        while (fields.hasNext()) {
            Map.Entry<String, JsonNode> field = fields.next();
            String name = field.getKey();
            checkClaimName(name, "claims");
            if (ReservedClaims.isTyped(name)) {
                throw invalid("claims sets a claim Keycloak keeps in a typed token field");
            }
            claims.put(name, JsonCodec.MAPPER.convertValue(field.getValue(), Object.class));
        }
        return new BridgeDecision(id.textValue(), effect, claims, removeClaims(root.get("remove_claims")),
                maxTtl(root.get("max_ttl_seconds")), reasons(root.get("reasons")), userMessage(root.get("user_message")));
    }

    private static BridgeDecision.Effect effect(JsonNode node) throws BridgeFailure {
        if (node != null && node.isTextual()) {
            if (node.textValue().equals("permit")) {
                return BridgeDecision.Effect.PERMIT;
            }
            if (node.textValue().equals("deny")) {
                return BridgeDecision.Effect.DENY;
            }
        }
        throw invalid("effect must be permit or deny");
    }

    private static List<String> removeClaims(JsonNode node) throws BridgeFailure {
        List<String> names = new ArrayList<>();
        if (node == null || node.isNull()) {
            return names;
        }
        if (!node.isArray()) {
            throw invalid("remove_claims must be an array");
        }
        for (JsonNode item : node) {
            if (!item.isTextual()) {
                throw invalid("remove_claims must hold strings");
            }
            checkClaimName(item.textValue(), "remove_claims");
            names.add(item.textValue());
        }
        return names;
    }

    private static OptionalLong maxTtl(JsonNode node) throws BridgeFailure {
        if (node == null || node.isNull()) {
            return OptionalLong.empty();
        }
        if (!node.isIntegralNumber() || !node.canConvertToLong() || node.longValue() < 0) {
            throw invalid("max_ttl_seconds must be an integer >= 0");
        }
        return OptionalLong.of(node.longValue());
    }

    private static List<BridgeDecision.Reason> reasons(JsonNode node) throws BridgeFailure {
        List<BridgeDecision.Reason> reasons = new ArrayList<>();
        if (node == null || node.isNull()) {
            return reasons;
        }
        if (!node.isArray()) {
            throw invalid("reasons must be an array");
        }
        for (JsonNode item : node) {
            if (!item.isObject()) {
                throw invalid("reasons must hold objects");
            }
            reasons.add(new BridgeDecision.Reason(text(item, "rule"), text(item, "message"), text(item, "kind")));
        }
        return reasons;
    }

    private static String userMessage(JsonNode node) throws BridgeFailure {
        if (node == null || node.isNull()) {
            return null;
        }
        if (!node.isTextual()) {
            throw invalid("user_message must be a string");
        }
        return node.textValue();
    }

    private static String text(JsonNode reason, String field) throws BridgeFailure {
        JsonNode value = reason.get(field);
        if (value == null || value.isNull()) {
            return null;
        }
        if (!value.isTextual()) {
            throw invalid("reasons[]." + field + " must be a string");
        }
        return value.textValue();
    }

    private static void checkClaimName(String name, String field) throws BridgeFailure {
        if (!CLAIM_NAME.matcher(name).matches()) {
            throw invalid(field + " holds a name that is not a valid claim name");
        }
        if (ReservedClaims.isReserved(name)) {
            // Not echoed: an alias (a case variant, a nested path) is the bridge's text, not the fixed list.
            throw invalid(field + " names a reserved claim or an alias of one");
        }
    }

    private static BridgeFailure invalid(String message) {
        return new BridgeFailure(BridgeFailure.Kind.INVALID_RESPONSE, "invalid bridge decision: " + message);
    }
}
