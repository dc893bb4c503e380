package org.keycloakpolicybridge.mapper.bridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;

import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLHandshakeException;
import javax.net.ssl.TrustManagerFactory;

import com.sun.net.httpserver.HttpsConfigurator;
import com.sun.net.httpserver.HttpsServer;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * The transport over TLS: a bridge with a certificate for 127.0.0.1 only
 * ({@code src/test/resources/tls/bridge-127.0.0.1.p12}, self-signed, password {@code kpb-test}),
 * which the client trusts.
 */
class Http1ClientTlsTest {

    private static final byte[] BODY = BridgeClientTest.BODY;
    private static final long READ_NANOS = Duration.ofMillis(500).toNanos();

    private static SSLContext serverContext;
    private static SSLContext clientContext;

    private HttpsServer server;
    private final List<Integer> remotePorts = new CopyOnWriteArrayList<>();

    @BeforeAll
    static void contexts() throws Exception {
        KeyStore store = KeyStore.getInstance("PKCS12");
        try (InputStream in = Http1ClientTlsTest.class.getResourceAsStream("/tls/bridge-127.0.0.1.p12")) {
            store.load(in, "kpb-test".toCharArray());
        }
        KeyManagerFactory keys = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        keys.init(store, "kpb-test".toCharArray());
        serverContext = SSLContext.getInstance("TLS");
        serverContext.init(keys.getKeyManagers(), null, null);
        TrustManagerFactory trust = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        trust.init(store);
        clientContext = SSLContext.getInstance("TLS");
        clientContext.init(null, trust.getTrustManagers(), null);
    }

    @AfterEach
    void stop() {
        if (server != null) {
            server.stop(0);
        }
    }

    private int startServer() throws IOException {
        server = HttpsServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 0);
        server.setHttpsConfigurator(new HttpsConfigurator(serverContext));
        server.createContext("/", exchange -> {
            exchange.getRequestBody().readAllBytes();
            remotePorts.add(exchange.getRemoteAddress().getPort());
            StubBridge.respond(exchange, 200, StubBridge.permit("T", "{}"));
            exchange.close();
        });
        server.start();
        return server.getAddress().getPort();
    }

    private Http1Client client(String host, int port) {
        return new Http1Client(URI.create("https://" + host + ":" + port + "/v1/claims"), 1000, BridgeClient.MAX_RESPONSE_BYTES,
                System::nanoTime, clientContext.getSocketFactory());
    }

    @Test
    void anHttpsCallIsAnsweredOverOneKeptAliveConnection() throws Exception {
        Http1Client http = client("127.0.0.1", startServer());
        for (int i = 0; i < 3; i++) {
            Http1Client.Response response = http.send("POST", Map.of("Content-Type", "application/json"), BODY, READ_NANOS);
            assertEquals(200, response.status());
            assertTrue(new String(response.body(), StandardCharsets.UTF_8).contains("\"T\""));
        }
        assertEquals(1, remotePorts.stream().distinct().count());
    }

    @Test
    void aCertificateForAnotherHostIsRefused() throws Exception {
        // The certificate names 127.0.0.1 only; "localhost" reaches the same server but must not verify.
        Http1Client http = client("localhost", startServer());
        assertThrows(SSLHandshakeException.class, () -> http.send("POST", Map.of(), BODY, READ_NANOS));
        assertEquals(0, remotePorts.size());
    }

    @Test
    void aStalledHandshakeIsBoundedByTheConnectTimeout() throws Exception {
        try (ServerSocket silent = new ServerSocket(0, 50, InetAddress.getLoopbackAddress())) {
            Thread peer = new Thread(() -> {
                try (Socket accepted = silent.accept(); OutputStream out = accepted.getOutputStream()) {
                    // Read the ClientHello, then send a handshake record header announcing 16 KiB and its
                    // body one byte every 50 ms: every read is quick, the handshake never ends.
                    accepted.getInputStream().read(new byte[4096]);
                    out.write(new byte[] {0x16, 0x03, 0x03, 0x40, 0x00});
                    for (int i = 0; i < 100; i++) {
                        out.write(0x02);
                        out.flush();
                        Thread.sleep(50);
                    }
                } catch (Exception e) {
                    // The client gave up, as expected.
                }
            });
            peer.setDaemon(true);
            peer.start();
            Http1Client http = new Http1Client(URI.create("https://127.0.0.1:" + silent.getLocalPort() + "/v1/claims"), 300,
                    BridgeClient.MAX_RESPONSE_BYTES, System::nanoTime, clientContext.getSocketFactory());
            long start = System.nanoTime();
            assertThrows(SocketTimeoutException.class, () -> http.send("POST", Map.of(), BODY, Duration.ofSeconds(5).toNanos()));
            long elapsedMs = (System.nanoTime() - start) / 1_000_000;
            assertTrue(elapsedMs >= 250 && elapsedMs < 1000, "gave up after " + elapsedMs + " ms");
        }
    }
}
