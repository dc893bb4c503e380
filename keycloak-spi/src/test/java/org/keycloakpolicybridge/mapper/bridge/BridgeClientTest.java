package org.keycloakpolicybridge.mapper.bridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.ServerSocket;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.HexFormat;
import java.util.List;

import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

class BridgeClientTest {

    static final byte[] SECRET = HexFormat.of().parseHex("ffc3ccab52583f57c4f23b93fc4a27a0da8e99421df74c9da0507b34d2b4fe2f");
    static final byte[] BODY = "{\"version\":\"1\",\"request_id\":\"r1\"}".getBytes(StandardCharsets.UTF_8);
    static final Duration READ = Duration.ofMillis(300);

    private StubBridge bridge;
    private BridgeClients clients;

    @BeforeEach
    void start() throws Exception {
        bridge = new StubBridge();
        clients = new BridgeClients(new RequestSigner("kpb-test", SECRET), System::nanoTime, () -> 1795852800L);
    }

    @AfterEach
    void stop() {
        bridge.close();
    }

    private BridgeClient client() {
        return clients.get(bridge.claimsEndpoint(), 200, 3, 60_000);
    }

    @Test
    void aPermitIsReturnedAndTheRequestIsSignedJson() throws Exception {
        bridge.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D1", "{\"roles\":[\"crm:read\"]}")));
        BridgeDecision decision = client().decide(BODY, READ);

        assertEquals("D1", decision.decisionId());
        assertEquals(BridgeDecision.Effect.PERMIT, decision.effect());
        assertEquals(List.of("crm:read"), decision.claims().get("roles"));
        StubBridge.Received sent = bridge.received().get(0);
        assertEquals("POST", sent.method());
        assertEquals("/v1/claims", sent.target());
        assertEquals("application/json", sent.header("Content-Type"));
        // RFC 7240: the bridge may answer only the fields the mapper reads.
        assertEquals("return=minimal", sent.header("Prefer"));
        assertEquals("kpb-test", sent.header("X-KPB-Key-Id"));
        assertEquals("1795852800", sent.header("X-KPB-Timestamp"));
        // Verified with a separate, written-out computation (the bridge's rule).
        String canonical = "v1\nPOST\n/v1/claims\n1795852800\n" + HexFormat.of().formatHex(
                java.security.MessageDigest.getInstance("SHA-256").digest(sent.body()));
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(SECRET, "HmacSHA256"));
        assertEquals("v1=" + HexFormat.of().formatHex(mac.doFinal(canonical.getBytes(StandardCharsets.US_ASCII))),
                sent.header("X-KPB-Signature"));
        assertEquals(new String(BODY, StandardCharsets.UTF_8), new String(sent.body(), StandardCharsets.UTF_8));
    }

    @Test
    void aDenyIsADecisionNotAFailure() throws Exception {
        bridge.behave(ex -> StubBridge.respond(ex, 200, StubBridge.deny("D2", "deny-inactive-principal", "IGA status is not active")));
        BridgeDecision decision = client().decide(BODY, READ);
        assertEquals(BridgeDecision.Effect.DENY, decision.effect());
        assertEquals("deny-inactive-principal", decision.reasons().get(0).rule());
        assertEquals(CircuitBreaker.State.CLOSED, client().breaker().state());
    }

    @Test
    void connectionsAreReused() throws Exception {
        bridge.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D", "{}")));
        for (int i = 0; i < 3; i++) {
            client().decide(BODY, READ);
        }
        List<StubBridge.Received> sent = bridge.received();
        assertEquals(3, sent.size());
        assertEquals(1, sent.stream().map(StubBridge.Received::remotePort).distinct().count(), "one keep-alive connection");
        assertTrue(clients.get(bridge.claimsEndpoint(), 200, 3, 60_000) == client(), "one client per endpoint and settings");
    }

    @Test
    void aSlowBridgeTimesOutWithinTheReadTimeout() {
        bridge.behave(ex -> {
            Thread.sleep(2000);
            StubBridge.respond(ex, 200, StubBridge.permit("late", "{}"));
        });
        long start = System.nanoTime();
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> client().decide(BODY, READ));
        long elapsedMs = (System.nanoTime() - start) / 1_000_000;
        assertEquals(BridgeFailure.Kind.TIMEOUT, failure.kind());
        assertTrue(elapsedMs < 1500, "gave up after " + elapsedMs + " ms");
    }

    @Test
    void aRefusedConnectionIsUnreachable() throws Exception {
        int port;
        try (ServerSocket socket = new ServerSocket(0)) {
            port = socket.getLocalPort();
        }
        BridgeClient closed = clients.get(URI.create("http://127.0.0.1:" + port + "/v1/claims"), 200, 3, 60_000);
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> closed.decide(BODY, READ));
        assertEquals(BridgeFailure.Kind.UNREACHABLE, failure.kind());
    }

    @Test
    void a500IsAnHttpStatusFailure() {
        bridge.behave(ex -> StubBridge.respond(ex, 500, "{\"error\":\"internal_error\",\"message\":\"boom\"}"));
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> client().decide(BODY, READ));
        assertEquals(BridgeFailure.Kind.HTTP_STATUS, failure.kind());
        assertEquals(500, failure.status());
    }

    @Test
    void a401IsAFailureNamingTheErrorCodeButNotTheMessage() {
        bridge.behave(ex -> StubBridge.respond(ex, 401, "{\"error\":\"unauthorized\",\"message\":\"bad signature secret-ish\"}"));
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> client().decide(BODY, READ));
        assertEquals(BridgeFailure.Kind.HTTP_STATUS, failure.kind());
        assertEquals(401, failure.status());
        assertTrue(failure.getMessage().contains("unauthorized"));
        assertFalse(failure.getMessage().contains("secret-ish"));
    }

    @Test
    void invalidJsonIsAnInvalidResponse() {
        bridge.behave(ex -> StubBridge.respond(ex, 200, "{\"decision_id\": \"D\", \"effect\": "));
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> client().decide(BODY, READ));
        assertEquals(BridgeFailure.Kind.INVALID_RESPONSE, failure.kind());
    }

    @Test
    void anOversizedAnswerIsRefusedUnread() {
        bridge.behave(ex -> {
            ex.getResponseHeaders().set("Content-Type", "application/json");
            ex.sendResponseHeaders(200, BridgeClient.MAX_RESPONSE_BYTES + 1);
            ex.getResponseBody().write(new byte[(int) BridgeClient.MAX_RESPONSE_BYTES + 1]);
        });
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> client().decide(BODY, Duration.ofSeconds(2)));
        assertEquals(BridgeFailure.Kind.INVALID_RESPONSE, failure.kind());
    }

    @Test
    void theCircuitOpensAndThenFailsFastWithoutNetwork() {
        bridge.behave(ex -> StubBridge.respond(ex, 503, "{\"error\":\"not_ready\"}"));
        for (int i = 0; i < 3; i++) {
            assertEquals(BridgeFailure.Kind.HTTP_STATUS, assertThrows(BridgeFailure.class, () -> client().decide(BODY, READ)).kind());
        }
        BridgeFailure fast = assertThrows(BridgeFailure.class, () -> client().decide(BODY, READ));
        assertEquals(BridgeFailure.Kind.CIRCUIT_OPEN, fast.kind());
        assertEquals(3, bridge.received().size(), "the open circuit made no call");
    }

    @Test
    void theCircuitRecoversThroughAHalfOpenTrial() throws Exception {
        BridgeClient shortOpen = clients.get(bridge.claimsEndpoint(), 200, 2, 100);
        bridge.behave(ex -> StubBridge.respond(ex, 500, "{}"));
        assertThrows(BridgeFailure.class, () -> shortOpen.decide(BODY, READ));
        assertThrows(BridgeFailure.class, () -> shortOpen.decide(BODY, READ));
        assertEquals(BridgeFailure.Kind.CIRCUIT_OPEN, assertThrows(BridgeFailure.class, () -> shortOpen.decide(BODY, READ)).kind());
        Thread.sleep(150);
        bridge.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("back", "{}")));
        assertNotNull(shortOpen.decide(BODY, READ));
        assertEquals(CircuitBreaker.State.CLOSED, shortOpen.breaker().state());
        assertEquals(3, bridge.received().size());
    }
}
