package org.keycloakpolicybridge.mapper.bridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
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

import com.fasterxml.jackson.databind.JsonNode;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** Failover across bridge URLs, against real listeners on 127.0.0.1. */
class FailoverClientTest {

    static final byte[] SECRET = BridgeClientTest.SECRET;
    static final int CONNECT_MS = 200;
    static final Duration READ = Duration.ofMillis(1000);
    /** What a body supplier sends: the attempt number is visible to the stubs. */
    static final FailoverClient.Bodies BODIES = attempt -> ("{\"version\":\"1\",\"request_id\":\"r1\""
            + (attempt > 1 ? ",\"attempt\":" + attempt : "") + "}").getBytes(StandardCharsets.UTF_8);

    private StubBridge first;
    private StubBridge second;
    private BridgeClients clients;

    @BeforeEach
    void start() throws Exception {
        first = new StubBridge();
        second = new StubBridge();
        second.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D-second", "{}")));
        clients = new BridgeClients(new RequestSigner("kpb-test", SECRET), System::nanoTime, () -> System.currentTimeMillis() / 1000L);
    }

    @AfterEach
    void stop() {
        first.close();
        second.close();
    }

    private FailoverClient failover(URI a, URI b, int threshold, int openMs) {
        return clients.failover(List.of(a, b), CONNECT_MS, threshold, openMs);
    }

    private FailoverClient failover() {
        return failover(first.claimsEndpoint(), second.claimsEndpoint(), 3, 60_000);
    }

    private static URI closedPort() throws Exception {
        int port;
        try (ServerSocket socket = new ServerSocket(0)) {
            port = socket.getLocalPort();
        }
        return URI.create("http://127.0.0.1:" + port + "/v1/claims");
    }

    @Test
    void aRefusedConnectionMovesOnToTheSecond() throws Exception {
        URI closed = closedPort();
        FailoverClient.Answer answer = failover(closed, second.claimsEndpoint(), 3, 60_000).decide(BODIES, READ);
        assertEquals("D-second", answer.decision().decisionId());
        assertEquals(2, answer.position());
        assertEquals(second.claimsEndpoint(), answer.endpoint());
        assertEquals(1, answer.failedBefore().size());
        assertEquals(BridgeFailure.Kind.UNREACHABLE, answer.failedBefore().get(0).failure().kind());
        assertEquals(closed, answer.failedBefore().get(0).endpoint());
        assertEquals(1, second.received().size());
    }

    @Test
    void a503MovesOnAndTheRetryIsADistinctFreshlySignedRequest() throws Exception {
        first.behave(ex -> StubBridge.respond(ex, 503, "{\"error\":\"decision_log_unavailable\"}"));
        FailoverClient.Answer answer = failover().decide(BODIES, READ);
        assertEquals("D-second", answer.decision().decisionId());
        assertEquals(503, answer.failedBefore().get(0).failure().status());

        StubBridge.Received one = first.received().get(0);
        StubBridge.Received two = second.received().get(0);
        JsonNode body1 = JsonCodec.MAPPER.readTree(one.body());
        JsonNode body2 = JsonCodec.MAPPER.readTree(two.body());
        assertEquals("r1", body1.get("request_id").asText());
        assertEquals("r1", body2.get("request_id").asText(), "one token request, one request_id");
        assertNull(body1.get("attempt"));
        assertEquals(2, body2.get("attempt").asInt());
        // Each attempt verifies on its own, and is a different signed request for the replay checks
        // (signature.signed_request_id: SHA-256 of the canonical request).
        String canonical1 = verified(one);
        String canonical2 = verified(two);
        assertNotEquals(sha256(canonical1), sha256(canonical2));
    }

    @Test
    void aDenyFromTheFirstIsTheDecisionAndNothingReachesTheSecond() throws Exception {
        first.behave(ex -> StubBridge.respond(ex, 200, StubBridge.deny("D-first", "deny-inactive", "not active")));
        FailoverClient.Answer answer = failover().decide(BODIES, READ);
        assertEquals(BridgeDecision.Effect.DENY, answer.decision().effect());
        assertEquals("D-first", answer.decision().decisionId());
        assertEquals(1, answer.position());
        assertEquals(List.of(), answer.failedBefore());
        assertEquals(0, second.received().size());
    }

    @Test
    void a4xxOrAnInvalidAnswerNeverMovesOn() throws Exception {
        first.behave(ex -> StubBridge.respond(ex, 401, "{\"error\":\"replayed_signature\"}"));
        BridgeFailure refused = assertThrows(BridgeFailure.class, () -> failover().decide(BODIES, READ));
        assertEquals(BridgeFailure.Kind.HTTP_STATUS, refused.kind());
        assertEquals(401, refused.status());

        first.behave(ex -> StubBridge.respond(ex, 200, "{\"decision_id\": \"D\", \"effect\": "));
        assertEquals(BridgeFailure.Kind.INVALID_RESPONSE, assertThrows(BridgeFailure.class, () -> failover().decide(BODIES, READ)).kind());
        assertEquals(0, second.received().size());
    }

    @Test
    void aHangingFirstLeavesTheSecondTimeWithinTheOverallDeadline() throws Exception {
        first.behave(ex -> {
            Thread.sleep(5000);
            StubBridge.respond(ex, 200, StubBridge.permit("late", "{}"));
        });
        long start = System.nanoTime();
        FailoverClient.Answer answer = failover().decide(BODIES, READ);
        long elapsedMs = (System.nanoTime() - start) / 1_000_000;
        assertEquals("D-second", answer.decision().decisionId());
        assertEquals(BridgeFailure.Kind.TIMEOUT, answer.failedBefore().get(0).failure().kind());
        // The one-URL budget: connect + read timeout. The first attempt got at most half of it.
        assertTrue(elapsedMs < CONNECT_MS + READ.toMillis(), "answered after " + elapsedMs + " ms");
        assertTrue(elapsedMs >= (CONNECT_MS + READ.toMillis()) / 2 - 20, "the hung replica was given its share: " + elapsedMs + " ms");
    }

    @Test
    void twoHangingReplicasStayWithinTheOneUrlDeadline() throws Exception {
        StubBridge.Behaviour hang = ex -> {
            Thread.sleep(5000);
            StubBridge.respond(ex, 200, StubBridge.permit("late", "{}"));
        };
        first.behave(hang);
        second.behave(hang);
        long start = System.nanoTime();
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> failover().decide(BODIES, READ));
        long elapsedMs = (System.nanoTime() - start) / 1_000_000;
        assertEquals(BridgeFailure.Kind.TIMEOUT, failure.kind());
        assertTrue(elapsedMs < CONNECT_MS + READ.toMillis() + 150, "gave up after " + elapsedMs + " ms");
    }

    @Test
    void whenEveryUrlFailsTheFailureNamesEachUrlButNoBody() {
        first.behave(ex -> StubBridge.respond(ex, 503, "{\"error\":\"not_ready\",\"message\":\"secret-ish detail\"}"));
        second.behave(ex -> StubBridge.respond(ex, 500, "{\"error\":\"internal_error\"}"));
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> failover().decide(BODIES, READ));
        assertEquals(BridgeFailure.Kind.HTTP_STATUS, failure.kind());
        assertEquals(500, failure.status(), "the last failure decides the kind and status");
        assertTrue(failure.getMessage().contains("#1 " + first.claimsEndpoint()) && failure.getMessage().contains("#2 " + second.claimsEndpoint()),
                failure.getMessage());
        assertFalse(failure.getMessage().contains("secret-ish"));
    }

    @Test
    void aKilledReplicaIsFailedOverAndItsBreakerSkipsItUntilTheHalfOpenProbe() throws Exception {
        // Generous: the JDK stub answers a keep-alive request in about 40 ms (delayed ACK).
        int openMs = 1500;
        first.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D-first", "{}")));
        FailoverClient client = failover(first.claimsEndpoint(), second.claimsEndpoint(), 3, openMs);
        CircuitBreaker firstBreaker = client.replicas().get(0).breaker();
        for (int i = 0; i < 5; i++) {
            assertEquals("D-first", client.decide(BODIES, READ).decision().decisionId());
        }
        first.close(); // killed midway: listener and keep-alive connections closed

        long openedAt = 0;
        for (int i = 5; i < 16; i++) {
            FailoverClient.Answer answer = client.decide(BODIES, READ);
            assertEquals("D-second", answer.decision().decisionId(), "request " + i);
            BridgeFailure.Kind firstKind = answer.failedBefore().get(0).failure().kind();
            if (i < 8) {
                assertEquals(BridgeFailure.Kind.UNREACHABLE, firstKind, "request " + i + " still tried the first");
            } else {
                assertEquals(BridgeFailure.Kind.CIRCUIT_OPEN, firstKind, "request " + i + " skipped the first");
            }
            if (i == 7) {
                openedAt = System.nanoTime();
                assertEquals(CircuitBreaker.State.OPEN, firstBreaker.state());
            }
        }
        assertTrue((System.nanoTime() - openedAt) / 1_000_000 < openMs, "the skips above happened while open");
        assertEquals(5, first.received().size());
        assertEquals(11, second.received().size());

        Thread.sleep(openMs + 50);
        FailoverClient.Answer probe = client.decide(BODIES, READ);
        assertEquals("D-second", probe.decision().decisionId());
        assertEquals(BridgeFailure.Kind.UNREACHABLE, probe.failedBefore().get(0).failure().kind(), "the half-open probe tried it");
        assertEquals(CircuitBreaker.State.OPEN, firstBreaker.state(), "and re-opened it");
        assertEquals(BridgeFailure.Kind.CIRCUIT_OPEN, client.decide(BODIES, READ).failedBefore().get(0).failure().kind());
    }

    @Test
    void eachUrlHasItsOwnBreakerSharedAcrossLists() {
        FailoverClient ab = failover();
        FailoverClient b = clients.failover(List.of(second.claimsEndpoint()), CONNECT_MS, 3, 60_000);
        assertTrue(ab.replicas().get(1) == b.replicas().get(0), "one client and breaker per URL and settings");
        assertTrue(ab.replicas().get(0).breaker() != ab.replicas().get(1).breaker());
        assertTrue(failover() == ab, "one failover client per list and settings");
    }

    @Test
    void failoverRulesByKind() {
        assertTrue(FailoverClient.movesOn(new BridgeFailure(BridgeFailure.Kind.UNREACHABLE, "x")));
        assertTrue(FailoverClient.movesOn(new BridgeFailure(BridgeFailure.Kind.TIMEOUT, "x")));
        assertTrue(FailoverClient.movesOn(new BridgeFailure(BridgeFailure.Kind.CIRCUIT_OPEN, "x")));
        assertTrue(FailoverClient.movesOn(new BridgeFailure(BridgeFailure.Kind.HTTP_STATUS, 502, "x")));
        assertFalse(FailoverClient.movesOn(new BridgeFailure(BridgeFailure.Kind.HTTP_STATUS, 429, "x")));
        assertFalse(FailoverClient.movesOn(new BridgeFailure(BridgeFailure.Kind.HTTP_STATUS, 302, "x")));
        assertFalse(FailoverClient.movesOn(new BridgeFailure(BridgeFailure.Kind.INVALID_RESPONSE, "x")));
        assertFalse(FailoverClient.movesOn(new BridgeFailure(BridgeFailure.Kind.INTERRUPTED, "x")));
    }

    /** Checks the request's signature with a separate computation; returns its canonical request. */
    private static String verified(StubBridge.Received sent) throws Exception {
        String canonical = "v1\nPOST\n/v1/claims\n" + sent.header("X-KPB-Timestamp") + "\n" + sha256(sent.body());
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(SECRET, "HmacSHA256"));
        assertEquals("v1=" + HexFormat.of().formatHex(mac.doFinal(canonical.getBytes(StandardCharsets.US_ASCII))),
                sent.header("X-KPB-Signature"));
        return canonical;
    }

    private static String sha256(String text) throws Exception {
        return sha256(text.getBytes(StandardCharsets.US_ASCII));
    }

    private static String sha256(byte[] bytes) throws Exception {
        return HexFormat.of().formatHex(java.security.MessageDigest.getInstance("SHA-256").digest(bytes));
    }
}
