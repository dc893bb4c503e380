package org.keycloakpolicybridge.mapper.bridge;

import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

/** A JDK HttpServer on 127.0.0.1 standing in for the bridge; each test sets its behaviour. */
public final class StubBridge implements AutoCloseable {

    /** One received request. */
    public record Received(String method, String target, Map<String, List<String>> headers, byte[] body, int remotePort) {
        public String header(String name) {
            for (Map.Entry<String, List<String>> e : headers.entrySet()) {
                if (e.getKey().equalsIgnoreCase(name)) {
                    return e.getValue().get(0);
                }
            }
            return null;
        }
    }

    /** What the stub answers. */
    @FunctionalInterface
    public interface Behaviour {
        void handle(HttpExchange exchange) throws Exception;
    }

    private final HttpServer server;
    private final ExecutorService executor = Executors.newCachedThreadPool();
    private final List<Received> received = new CopyOnWriteArrayList<>();
    private volatile Behaviour behaviour = ex -> respond(ex, 500, "{}");

    public StubBridge() throws IOException {
        server = HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 0);
        server.createContext("/", exchange -> {
            byte[] body = exchange.getRequestBody().readAllBytes();
            received.add(new Received(exchange.getRequestMethod(), exchange.getRequestURI().toString(),
                    Map.copyOf(exchange.getRequestHeaders()), body, exchange.getRemoteAddress().getPort()));
            try {
                behaviour.handle(exchange);
            } catch (Exception e) {
                // The client side of each test asserts what it saw; a broken pipe here is expected for timeouts.
            } finally {
                exchange.close();
            }
        });
        server.setExecutor(executor);
        server.start();
    }

    public void behave(Behaviour next) {
        behaviour = next;
    }

    /** Base URL {@code http://127.0.0.1:<port>}. */
    public String baseUrl() {
        return "http://127.0.0.1:" + server.getAddress().getPort();
    }

    public URI claimsEndpoint() {
        return URI.create(baseUrl() + BridgeEndpoint.CLAIMS_PATH);
    }

    public List<Received> received() {
        return received;
    }

    public static void respond(HttpExchange exchange, int status, String body) throws IOException {
        byte[] bytes = body.getBytes(StandardCharsets.UTF_8);
        exchange.getResponseHeaders().set("Content-Type", "application/json");
        exchange.sendResponseHeaders(status, bytes.length);
        try (OutputStream out = exchange.getResponseBody()) {
            out.write(bytes);
        }
    }

    public static String permit(String decisionId, String claimsJson) {
        return "{\"decision_id\":\"" + decisionId + "\",\"effect\":\"permit\",\"claims\":" + claimsJson
                + ",\"remove_claims\":[],\"reasons\":[]}";
    }

    public static String deny(String decisionId, String rule, String message) {
        return "{\"decision_id\":\"" + decisionId + "\",\"effect\":\"deny\",\"claims\":{},\"remove_claims\":[],"
                + "\"reasons\":[{\"rule\":\"" + rule + "\",\"message\":\"" + message + "\",\"kind\":\"deny\"}]}";
    }

    @Override
    public void close() {
        server.stop(0);
        executor.shutdownNow();
    }
}
