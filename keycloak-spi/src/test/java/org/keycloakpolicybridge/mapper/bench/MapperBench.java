package org.keycloakpolicybridge.mapper.bench;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.UUID;

import org.keycloak.representations.AccessToken;
import org.keycloak.representations.IDToken;
import org.keycloakpolicybridge.mapper.DecisionEnforcer;
import org.keycloakpolicybridge.mapper.FailureMode;
import org.keycloakpolicybridge.mapper.Outcome;
import org.keycloakpolicybridge.mapper.TokenEvent;
import org.keycloakpolicybridge.mapper.bridge.BridgeDecision;
import org.keycloakpolicybridge.mapper.bridge.DecisionParser;
import org.keycloakpolicybridge.mapper.bridge.RequestSigner;
import org.keycloakpolicybridge.mapper.request.ClaimsRequestBuilder;
import org.keycloakpolicybridge.mapper.request.TokenRequestFacts;

/**
 * Times the mapper's own work per token request, the bridge's time excluded: build the claims
 * request JSON, sign it (HMAC v1), parse and validate a realistic permit, and apply it to an access
 * token and an ID token. Reading Keycloak's models is Keycloak's cost and is not included.
 *
 * <pre>
 * mvn -B -q -f keycloak-spi/pom.xml test-compile exec:java \
 *     -Dexec.mainClass=org.keycloakpolicybridge.mapper.bench.MapperBench -Dexec.classpathScope=test [-Dexec.args="200000"]
 * </pre>
 *
 * Prints p50/p90/p99/p99.9/max/mean in microseconds over the measured iterations (after a
 * warm-up of a quarter as many), plus the machine's load average for context.
 */
public final class MapperBench {

    private static final long NOW = 1_795_852_800L;

    private MapperBench() {
    }

    public static void main(String[] args) throws Exception {
        int iterations = args.length > 0 ? Integer.parseInt(args[0]) : 200_000;
        int warmup = Math.max(iterations / 4, 20_000);
        TokenRequestFacts facts = facts();
        RequestSigner signer = new RequestSigner("kpb-2026-11", HexFormat.of().parseHex("ffc3ccab52583f57c4f23b93fc4a27a0da8e99421df74c9da0507b34d2b4fe2f"));
        byte[] response = RESPONSE.getBytes(StandardCharsets.UTF_8);

        long sink = 0;
        for (int i = 0; i < warmup; i++) {
            sink += once(facts, signer, response, freshAccessToken(), freshIdToken());
        }
        long[] nanos = new long[iterations];
        for (int i = 0; i < iterations; i++) {
            AccessToken access = freshAccessToken();
            IDToken id = freshIdToken();
            long start = System.nanoTime();
            sink += once(facts, signer, response, access, id);
            nanos[i] = System.nanoTime() - start;
        }
        Arrays.sort(nanos);
        double mean = Arrays.stream(nanos).average().orElse(0) / 1000.0;
        System.out.printf(Locale.ROOT, "kpb mapper bench: %d iterations after %d warm-up; request %d bytes, response %d bytes%n",
                iterations, warmup, ClaimsRequestBuilder.toBytes(facts, UUID.randomUUID().toString()).length, response.length);
        System.out.printf(Locale.ROOT, "  per token request (build + sign + parse + apply to access and ID token), microseconds:%n");
        System.out.printf(Locale.ROOT, "  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f%n",
                pct(nanos, 50), pct(nanos, 90), pct(nanos, 99), pct(nanos, 99.9), nanos[nanos.length - 1] / 1000.0, mean);
        System.out.printf(Locale.ROOT, "  java %s, %d cpus, load average %s (checksum %d)%n", System.getProperty("java.version"),
                Runtime.getRuntime().availableProcessors(), loadAverage(), sink);
    }

    private static long once(TokenRequestFacts facts, RequestSigner signer, byte[] response, AccessToken access, IDToken id)
            throws Exception {
        byte[] body = ClaimsRequestBuilder.toBytes(facts, UUID.randomUUID().toString());
        Map<String, String> headers = signer.headers("POST", "/v1/claims", NOW, body);
        BridgeDecision decision = DecisionParser.parse(response);
        Outcome outcome = Outcome.decided("r", decision);
        DecisionEnforcer.enforce(outcome, access, FailureMode.FAIL_CLOSED, 60, NOW);
        DecisionEnforcer.enforce(outcome, id, FailureMode.FAIL_CLOSED, 60, NOW);
        return body.length + headers.get(RequestSigner.SIGNATURE_HEADER).length() + access.getExp() + id.getOtherClaims().size();
    }

    private static double pct(long[] sorted, double percentile) {
        int index = (int) Math.min(sorted.length - 1, Math.ceil(percentile / 100.0 * sorted.length) - 1);
        return sorted[Math.max(index, 0)] / 1000.0;
    }

    private static String loadAverage() {
        try {
            return Files.readString(Path.of("/proc/loadavg")).trim();
        } catch (Exception e) {
            return "unknown";
        }
    }

    private static AccessToken freshAccessToken() {
        AccessToken token = new AccessToken();
        token.exp(NOW + 300);
        token.setRealmAccess(new AccessToken.Access().addRole("offline_access").addRole("default-roles-acme"));
        token.addAccess("account").addRole("view-profile");
        token.getOtherClaims().put("groups", List.of("/sales"));
        return token;
    }

    private static IDToken freshIdToken() {
        IDToken token = new IDToken();
        token.exp(NOW + 300);
        return token;
    }

    /** Alice through research-agent (token exchange): the largest common request shape. */
    private static TokenRequestFacts facts() {
        TokenRequestFacts.Subject alice = new TokenRequestFacts.Subject("a11ce000-0000-4000-8000-000000000001", "alice",
                "alice@acme.example", true, null, null, Map.of("department", List.of("sales")),
                List.of("account/manage-account", "account/view-profile", "default-roles-acme", "offline_access", "uma_authorization"),
                List.of("/sales"), "1", List.of("pwd"), NOW - 10, "3c5e1f2a-7b7d-4d36-9f0e-sess-alice");
        return new TokenRequestFacts(TokenEvent.TOKEN, "acme", "http://localhost:8080/realms/acme",
                "urn:ietf:params:oauth:grant-type:token-exchange", List.of("openid", "crm"), List.of("crm-api"),
                new TokenRequestFacts.Client("research-agent", Map.of("kpb.kind", "agent", "standard.token.exchange.enabled", "true")),
                alice, List.of(new TokenRequestFacts.Actor("9a7e0000-0000-4000-8000-0000000000cc", "research-agent", "agent")),
                new TokenRequestFacts.Context("10.0.5.9", "research-agent/0.9 python-httpx", "acme-eu"));
    }

    /** A permit as the acme bridge answers it for that request (with provenance, which the mapper ignores). */
    private static final String RESPONSE = "{\"decision_id\":\"01JDX6Q2M3VEC0000000000005\",\"effect\":\"permit\","
            + "\"claims\":{\"roles\":[\"crm:read\"],\"tenant\":\"acme-eu\",\"act\":{\"sub\":\"9a7e0000-0000-4000-8000-0000000000cc\","
            + "\"client_id\":\"research-agent\"}},\"remove_claims\":[\"realm_access\",\"resource_access\"],\"max_ttl_seconds\":300,"
            + "\"reasons\":[{\"rule\":\"kpb:delegation\",\"message\":\"'crm:write' left out: the acting agent does not hold it\","
            + "\"kind\":\"omit\",\"claim\":\"roles\"},{\"rule\":\"kpb:delegation\",\"message\":\"'finance:approve' left out: the acting "
            + "agent does not hold it\",\"kind\":\"omit\",\"claim\":\"roles\"}],\"policy\":{\"id\":\"acme-token-policy\",\"version\":"
            + "\"2026-11-28.1\",\"digest\":\"sha256:3333333333333333333333333333333333333333333333333333333333333333\"},"
            + "\"entitlements\":{\"snapshot\":\"sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\","
            + "\"generated_at\":\"2026-11-28T02:00:04Z\",\"age_seconds\":21596,\"stale\":false},\"evaluated_at\":\"2026-11-28T08:00:00Z\","
            + "\"principals\":[{\"role\":\"subject\",\"subject_id\":\"E1001\",\"kind\":\"human\",\"status\":\"active\",\"matched_by\":"
            + "\"keycloak_user_id\"},{\"role\":\"actors[0]\",\"subject_id\":\"A3001\",\"kind\":\"ai_agent\",\"status\":\"active\","
            + "\"matched_by\":\"keycloak_client_id\"}],\"provenance\":{\"roles\":[{\"value\":\"crm:read\",\"sources\":[{\"rule\":"
            + "\"roles-from-app-roles\",\"pass\":\"subject\",\"records\":[{\"source\":\"crm\",\"account\":\"alice\",\"entitlement_kind\":"
            + "\"app_role\",\"entitlement_value\":\"crm:read\",\"via\":\"role\",\"via_id\":\"ROLE-SALES\"}]}]}],\"tenant\":[{\"value\":"
            + "\"acme-eu\",\"sources\":[{\"rule\":\"tenant-from-entitlements\",\"pass\":\"subject\"}]}]}}";
}
