package org.keycloakpolicybridge.mapper.bridge;

import java.io.ByteArrayOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * A scripted HTTP/1.1 peer on a raw socket, for what the JDK HttpServer of {@link StubBridge}
 * cannot do: close an idle keep-alive connection, stop half-way through an answer, trickle bytes.
 * Each accepted connection runs the script on its own thread.
 */
final class RawBridge implements AutoCloseable {

    /** Serves one connection. */
    @FunctionalInterface
    interface Script {
        void serve(Peer peer) throws Exception;
    }

    /** The bridge's end of one connection; {@code index} counts connections from 0. */
    final class Peer {
        final int index;
        final Socket socket;
        private final InputStream in;
        private final OutputStream out;

        Peer(int index, Socket socket) throws IOException {
            this.index = index;
            this.socket = socket;
            this.in = socket.getInputStream();
            this.out = socket.getOutputStream();
        }

        /** Reads and records the next request. */
        Request read() throws IOException {
            Request request = readRequest(index, in);
            if (request == null) {
                throw new EOFException("client closed before sending");
            }
            return request;
        }

        /** A complete {@code 200} answer with a {@code Content-Length}, connection kept open. */
        void answer(String json) throws IOException {
            byte[] body = json.getBytes(StandardCharsets.UTF_8);
            write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + body.length + "\r\n\r\n");
            out.write(body);
            out.flush();
        }

        /** Writes raw text (UTF-8) and flushes. */
        void write(String text) throws IOException {
            out.write(text.getBytes(StandardCharsets.UTF_8));
            out.flush();
        }

        /** Writes {@code text} one byte at a time, {@code millis} apart. */
        void trickle(String text, long millis) throws Exception {
            for (byte b : text.getBytes(StandardCharsets.UTF_8)) {
                out.write(b);
                out.flush();
                Thread.sleep(millis);
            }
        }
    }

    /** One request read by {@link #readRequest}: the connection it came on, its head and body. */
    record Request(int connection, String head, byte[] body) {
        String header(String name) {
            for (String line : head.split("\r\n")) {
                int colon = line.indexOf(':');
                if (colon > 0 && line.substring(0, colon).equalsIgnoreCase(name)) {
                    return line.substring(colon + 1).trim();
                }
            }
            return null;
        }
    }

    private final ServerSocket server;
    private final AtomicInteger connections = new AtomicInteger();
    private final List<Request> requests = new CopyOnWriteArrayList<>();
    private final List<Socket> sockets = new CopyOnWriteArrayList<>();

    RawBridge(Script script) throws IOException {
        server = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
        Thread acceptor = new Thread(() -> {
            while (!server.isClosed()) {
                try {
                    Socket socket = server.accept();
                    sockets.add(socket);
                    int index = connections.getAndIncrement();
                    Thread worker = new Thread(() -> {
                        try (socket) {
                            script.serve(new Peer(index, socket));
                        } catch (Exception e) {
                            // The client side of each test asserts what it saw.
                        }
                    }, "raw-bridge-" + index);
                    worker.setDaemon(true);
                    worker.start();
                } catch (IOException e) {
                    return;
                }
            }
        }, "raw-bridge-accept");
        acceptor.setDaemon(true);
        acceptor.start();
    }

    URI claimsEndpoint() {
        return URI.create("http://127.0.0.1:" + server.getLocalPort() + BridgeEndpoint.CLAIMS_PATH);
    }

    int connections() {
        return connections.get();
    }

    List<Request> requests() {
        return requests;
    }

    /** Reads one request (head and {@code Content-Length} body) and records it; null when the client closed first. */
    private Request readRequest(int connection, InputStream in) throws IOException {
        ByteArrayOutputStream head = new ByteArrayOutputStream();
        int matched = 0;
        while (matched < 4) {
            int b = in.read();
            if (b < 0) {
                return null;
            }
            head.write(b);
            matched = (b == (matched % 2 == 0 ? '\r' : '\n')) ? matched + 1 : (b == '\r' ? 1 : 0);
        }
        String text = head.toString(StandardCharsets.ISO_8859_1);
        int length = 0;
        for (String line : text.split("\r\n")) {
            if (line.toLowerCase(Locale.ROOT).startsWith("content-length:")) {
                length = Integer.parseInt(line.substring(15).trim());
            }
        }
        Request request = new Request(connection, text, in.readNBytes(length));
        requests.add(request);
        return request;
    }

    @Override
    public void close() throws IOException {
        server.close();
        for (Socket socket : sockets) {
            socket.close();
        }
    }
}
