package org.keycloakpolicybridge.mapper.bridge;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.OutputStream;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/** The mapper's HTTP/1.1 transport: deadlines, pooling, the stale-connection retry, body framing and limits. */
class Http1ClientTest {

    private static final byte[] BODY = BridgeClientTest.BODY;
    private static final Duration READ = BridgeClientTest.READ;
    private static final int CONNECT_MS = 200;

    private final AtomicLong skew = new AtomicLong();
    private final BridgeClients clients = new BridgeClients(new RequestSigner("kpb-test", BridgeClientTest.SECRET),
            () -> System.nanoTime() + skew.get(), () -> 1795852800L);
    private final List<AutoCloseable> peers = new ArrayList<>();

    @AfterEach
    void stop() throws Exception {
        for (AutoCloseable peer : peers) {
            peer.close();
        }
    }

    private RawBridge raw(RawBridge.Script script) throws Exception {
        RawBridge bridge = new RawBridge(script);
        peers.add(bridge);
        return bridge;
    }

    private StubBridge stub() throws Exception {
        StubBridge bridge = new StubBridge();
        peers.add(bridge);
        return bridge;
    }

    private BridgeClient client(URI endpoint) {
        return clients.get(endpoint, CONNECT_MS, 100, 60_000);
    }

    @Test
    void aTricklingBodyIsCutOffAtTheDeadline() throws Exception {
        // Every byte arrives well within the read timeout: only the overall deadline stops this.
        RawBridge bridge = raw(peer -> {
            peer.read();
            peer.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n");
            peer.trickle(" ".repeat(400), 20);
        });
        long start = System.nanoTime();
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> client(bridge.claimsEndpoint()).decide(BODY, READ));
        long elapsedMs = (System.nanoTime() - start) / 1_000_000;
        assertEquals(BridgeFailure.Kind.TIMEOUT, failure.kind());
        // connect 200 + read 300 ms bound the call; the trickle alone would take 8 s.
        assertTrue(elapsedMs >= 250 && elapsedMs < 900, "gave up after " + elapsedMs + " ms");
    }

    @Test
    void aTricklingHeadIsCutOffAtTheReadTimeout() throws Exception {
        RawBridge bridge = raw(peer -> {
            peer.read();
            peer.trickle("HTTP/1.1 200 OK\r\nX-Padding: " + "a".repeat(400) + "\r\n", 20);
        });
        long start = System.nanoTime();
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> client(bridge.claimsEndpoint()).decide(BODY, READ));
        long elapsedMs = (System.nanoTime() - start) / 1_000_000;
        assertEquals(BridgeFailure.Kind.TIMEOUT, failure.kind());
        assertTrue(elapsedMs >= 250 && elapsedMs < 900, "gave up after " + elapsedMs + " ms");
    }

    @Test
    void aConnectionIsReusedUntilItHasIdledTooLong() throws Exception {
        StubBridge bridge = stub();
        bridge.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D", "{}")));
        BridgeClient client = client(bridge.claimsEndpoint());
        client.decide(BODY, READ);
        skew.addAndGet(Http1Client.MAX_IDLE_NANOS - 1_000_000_000L);
        client.decide(BODY, READ);
        skew.addAndGet(Http1Client.MAX_IDLE_NANOS);
        client.decide(BODY, READ);
        List<StubBridge.Received> sent = bridge.received();
        assertEquals(sent.get(0).remotePort(), sent.get(1).remotePort(), "idle for less than the limit: reused");
        assertNotEquals(sent.get(1).remotePort(), sent.get(2).remotePort(), "idle for the limit: a new connection");
    }

    @Test
    void theIdlePoolIsBounded() throws Exception {
        int calls = Http1Client.MAX_IDLE_CONNECTIONS + 4;
        CountDownLatch allArrived = new CountDownLatch(calls);
        StubBridge bridge = stub();
        bridge.behave(ex -> {
            allArrived.countDown();
            allArrived.await(5, TimeUnit.SECONDS);
            StubBridge.respond(ex, 200, StubBridge.permit("D", "{}"));
        });
        Http1Client http = new Http1Client(bridge.claimsEndpoint(), CONNECT_MS, BridgeClient.MAX_RESPONSE_BYTES, System::nanoTime);
        ExecutorService callers = Executors.newFixedThreadPool(calls);
        try {
            List<Future<Http1Client.Response>> answers = new ArrayList<>();
            for (int i = 0; i < calls; i++) {
                answers.add(callers.submit(() -> http.send("POST", Map.of(), BODY, Duration.ofSeconds(8).toNanos())));
            }
            for (Future<Http1Client.Response> answer : answers) {
                assertEquals(200, answer.get(10, TimeUnit.SECONDS).status());
            }
        } finally {
            callers.shutdownNow();
        }
        assertEquals(calls, bridge.received().stream().map(StubBridge.Received::remotePort).distinct().count(),
                "concurrent calls, own connections");
        assertEquals(Http1Client.MAX_IDLE_CONNECTIONS, http.idleCount());
        http.closeIdle();
        assertEquals(0, http.idleCount());
    }

    @Test
    void aPooledConnectionTheBridgeClosedIsRetriedOnceOnANewOne() throws Exception {
        CountDownLatch firstClosed = new CountDownLatch(1);
        RawBridge bridge = raw(peer -> {
            peer.read();
            peer.answer(StubBridge.permit("D" + peer.index, "{}"));
            if (peer.index == 0) {
                // Like gunicorn's keep-alive timeout: an idle connection closed without notice.
                peer.socket.close();
                firstClosed.countDown();
            }
        });
        BridgeClient client = client(bridge.claimsEndpoint());
        assertEquals("D0", client.decide(BODY, READ).decisionId());
        assertTrue(firstClosed.await(2, TimeUnit.SECONDS));
        Thread.sleep(50);
        assertEquals("D1", client.decide(BODY, READ).decisionId());
        assertEquals(2, bridge.connections());
        // The closed connection never delivered the second request; the new one did, signed as the first attempt was.
        assertEquals(2, bridge.requests().size());
        assertEquals(1, bridge.requests().get(1).connection());
        assertArrayEquals(BODY, bridge.requests().get(1).body());
        assertEquals(bridge.requests().get(0).header("X-KPB-Signature"), bridge.requests().get(1).header("X-KPB-Signature"));
        assertEquals(CircuitBreaker.State.CLOSED, client.breaker().state());
    }

    @Test
    void aStaleConnectionDropsTheConnectionsIdleForLonger() throws Exception {
        // Two pooled connections, then the bridge restarts and closes both.
        CountDownLatch bothArrived = new CountDownLatch(2);
        CountDownLatch bothClosed = new CountDownLatch(2);
        RawBridge bridge = raw(peer -> {
            peer.read();
            if (peer.index < 2) {
                bothArrived.countDown();
                bothArrived.await(5, TimeUnit.SECONDS);
            }
            peer.answer(StubBridge.permit("D" + peer.index, "{}"));
            if (peer.index < 2) {
                peer.socket.close();
                bothClosed.countDown();
            } else {
                peer.read();
            }
        });
        Http1Client http = new Http1Client(bridge.claimsEndpoint(), CONNECT_MS, BridgeClient.MAX_RESPONSE_BYTES, System::nanoTime);
        ExecutorService callers = Executors.newFixedThreadPool(2);
        try {
            Future<Http1Client.Response> a = callers.submit(() -> http.send("POST", Map.of(), BODY, READ.toNanos()));
            Future<Http1Client.Response> b = callers.submit(() -> http.send("POST", Map.of(), BODY, READ.toNanos()));
            assertEquals(200, a.get(5, TimeUnit.SECONDS).status());
            assertEquals(200, b.get(5, TimeUnit.SECONDS).status());
        } finally {
            callers.shutdownNow();
        }
        assertEquals(2, http.idleCount());
        assertTrue(bothClosed.await(2, TimeUnit.SECONDS));
        Thread.sleep(50);
        assertEquals(200, http.send("POST", Map.of(), BODY, READ.toNanos()).status());
        assertEquals(3, bridge.connections(), "one retry on a new connection");
        assertEquals(1, http.idleCount(), "the older dead connection is gone, the new one pooled");
    }

    @Test
    void aFailureAfterTheAnswerStartedIsNotRetried() throws Exception {
        RawBridge bridge = raw(peer -> {
            peer.read();
            peer.answer(StubBridge.permit("D", "{}"));
            peer.read();
            peer.write("HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"decision_id\"");
        });
        BridgeClient client = client(bridge.claimsEndpoint());
        client.decide(BODY, READ);
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> client.decide(BODY, READ));
        assertEquals(BridgeFailure.Kind.UNREACHABLE, failure.kind());
        assertEquals(1, bridge.connections(), "not sent again");
    }

    @Test
    void aTimeoutOnAPooledConnectionIsNotRetried() throws Exception {
        RawBridge bridge = raw(peer -> {
            peer.read();
            peer.answer(StubBridge.permit("D", "{}"));
            peer.read();
            Thread.sleep(2000);
        });
        BridgeClient client = client(bridge.claimsEndpoint());
        client.decide(BODY, READ);
        assertEquals(BridgeFailure.Kind.TIMEOUT, assertThrows(BridgeFailure.class, () -> client.decide(BODY, READ)).kind());
        assertEquals(1, bridge.connections(), "not sent again");
    }

    @Test
    void aNewConnectionClosedWithoutAnAnswerIsNotRetried() throws Exception {
        RawBridge bridge = raw(RawBridge.Peer::read);
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> client(bridge.claimsEndpoint()).decide(BODY, READ));
        assertEquals(BridgeFailure.Kind.UNREACHABLE, failure.kind());
        assertEquals(1, bridge.connections());
    }

    @Test
    void aChunkedAnswerIsReadAndItsConnectionReused() throws Exception {
        StubBridge bridge = stub();
        bridge.behave(ex -> {
            ex.getResponseHeaders().set("Content-Type", "application/json");
            ex.sendResponseHeaders(200, 0); // length 0: chunked
            try (OutputStream out = ex.getResponseBody()) {
                for (String part : new String[] {"{\"decision_id\":\"C\",", "\"effect\":\"permit\",", "\"claims\":{\"tenant\":\"t\"}}"}) {
                    out.write(part.getBytes(StandardCharsets.UTF_8));
                    out.flush();
                }
            }
        });
        BridgeClient client = client(bridge.claimsEndpoint());
        assertEquals("t", client.decide(BODY, READ).claims().get("tenant"));
        assertEquals("t", client.decide(BODY, READ).claims().get("tenant"));
        assertEquals(1, bridge.received().stream().map(StubBridge.Received::remotePort).distinct().count());
    }

    @Test
    void anOversizedChunkedAnswerIsRefusedAndItsConnectionClosed() throws Exception {
        StubBridge bridge = stub();
        bridge.behave(ex -> {
            ex.sendResponseHeaders(200, 0);
            try (OutputStream out = ex.getResponseBody()) {
                out.write(new byte[(int) BridgeClient.MAX_RESPONSE_BYTES + 1]);
            }
        });
        BridgeClient client = client(bridge.claimsEndpoint());
        assertEquals(BridgeFailure.Kind.INVALID_RESPONSE,
                assertThrows(BridgeFailure.class, () -> client.decide(BODY, Duration.ofSeconds(2))).kind());
        bridge.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D", "{}")));
        client.decide(BODY, READ);
        List<StubBridge.Received> sent = bridge.received();
        assertNotEquals(sent.get(0).remotePort(), sent.get(1).remotePort());
    }

    @Test
    void aCloseDelimitedAnswerIsReadAndItsConnectionNotReused() throws Exception {
        RawBridge bridge = raw(peer -> {
            peer.read();
            peer.write("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + StubBridge.permit("E" + peer.index, "{}"));
        });
        BridgeClient client = client(bridge.claimsEndpoint());
        assertEquals("E0", client.decide(BODY, READ).decisionId());
        assertEquals("E1", client.decide(BODY, READ).decisionId());
        assertEquals(2, bridge.connections());
    }

    @Test
    void interimAnswersAreSkipped() throws Exception {
        RawBridge bridge = raw(peer -> {
            peer.read();
            peer.write("HTTP/1.1 100 Continue\r\n\r\n");
            peer.answer(StubBridge.permit("I", "{}"));
        });
        assertEquals("I", client(bridge.claimsEndpoint()).decide(BODY, READ).decisionId());
    }

    @Test
    void aMalformedStatusLineIsAFailure() throws Exception {
        RawBridge bridge = raw(peer -> {
            peer.read();
            peer.write("SSH-2.0-OpenSSH\r\n\r\n");
        });
        assertEquals(BridgeFailure.Kind.UNREACHABLE,
                assertThrows(BridgeFailure.class, () -> client(bridge.claimsEndpoint()).decide(BODY, READ)).kind());
    }

    @Test
    void aRedirectIsNotFollowed() throws Exception {
        StubBridge bridge = stub();
        bridge.behave(ex -> {
            ex.getResponseHeaders().set("Location", bridge.baseUrl() + "/elsewhere");
            StubBridge.respond(ex, 302, "{}");
        });
        BridgeFailure failure = assertThrows(BridgeFailure.class, () -> client(bridge.claimsEndpoint()).decide(BODY, READ));
        assertEquals(BridgeFailure.Kind.HTTP_STATUS, failure.kind());
        assertEquals(302, failure.status());
        assertEquals(1, bridge.received().size());
    }

    @Test
    void anInterruptedCallerDoesNotCallTheBridge() throws Exception {
        StubBridge bridge = stub();
        bridge.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D", "{}")));
        Thread.currentThread().interrupt();
        try {
            BridgeFailure failure = assertThrows(BridgeFailure.class, () -> client(bridge.claimsEndpoint()).decide(BODY, READ));
            assertEquals(BridgeFailure.Kind.INTERRUPTED, failure.kind());
            assertTrue(Thread.currentThread().isInterrupted(), "the interrupt is kept for Keycloak");
        } finally {
            Thread.interrupted();
        }
        assertEquals(0, bridge.received().size());
    }
}
