package org.keycloakpolicybridge.mapper.bridge;

import java.io.ByteArrayOutputStream;
import java.io.EOFException;
import java.io.FilterInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InterruptedIOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.ProtocolException;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayDeque;
import java.util.Locale;
import java.util.Map;
import java.util.function.LongSupplier;

import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.SSLSocketFactory;

/**
 * A minimal blocking HTTP/1.1 client for one origin: sends a {@code POST} and reads the answer in
 * the calling thread over pooled keep-alive connections. The JDK {@code HttpClient} it replaces
 * handed every call to its selector thread and executor and back (issue 13: that, not the
 * mapper's logic, was most of the CPU a governed token cost Keycloak); here a call is one write
 * and a few reads on the caller's thread.
 *
 * <p>Deadlines. The TCP connect (and, for {@code https}, the TLS handshake) must finish within the
 * connect timeout; the answer must be complete within the read timeout after the request was
 * written; and the whole call within connect + read timeout. Every read is given only the time
 * left ({@link Socket#setSoTimeout}), so a peer that trickles its answer cannot stretch the call.
 * The request is written in one {@code write}; a claims request (a few KiB) fits the socket
 * buffers, so the write does not wait for the peer.
 *
 * <p>Answers: {@code Content-Length}, chunked or close-delimited bodies; interim {@code 1xx}
 * answers are skipped. A body longer than {@code maxBodyBytes} is not read (declared length) or
 * not read further (chunked, close-delimited): {@link Response#body()} is then null and the
 * connection is closed. Redirects are not followed (a {@code 3xx} is just a status).
 *
 * <p>Pool: at most {@link #MAX_IDLE_CONNECTIONS} idle connections, most recently used first; a
 * connection idle for {@link #MAX_IDLE_NANOS} or longer is closed instead of reused, well within
 * the bridge's 75 s keep-alive, so the bridge rarely closes one under us. When it does (a
 * restarted worker, a proxy's shorter idle timeout), the failure shows on a reused connection
 * before any byte of the answer; only then is the request sent once more, on a new connection,
 * as the same bytes. That is safe for a signed claims request: a request the bridge never read
 * is decided once, and one it did read is refused as a replay ({@code replayed_signature}), never
 * decided twice. A timeout is never retried. Thread-safe.
 */
final class Http1Client {

    /** Idle connections kept per origin; more are closed when returned. */
    static final int MAX_IDLE_CONNECTIONS = 32;
    /** Idle time after which a pooled connection is closed rather than reused (bridge keep-alive: 75 s). */
    static final long MAX_IDLE_NANOS = 30_000_000_000L;
    private static final int MAX_HEAD_BYTES = 16 * 1024;
    private static final int BUFFER_BYTES = 8 * 1024;

    /** An answer: status and body; the body is null when it exceeded the limit (connection closed). */
    record Response(int status, byte[] body) {
    }

    private final boolean tls;
    private final String host;
    private final int port;
    private final String requestLinePrefix;
    private final long connectTimeoutNanos;
    private final long maxBodyBytes;
    private final LongSupplier nanoClock;
    private final SSLSocketFactory tlsFactory;
    private final ArrayDeque<Connection> idle = new ArrayDeque<>();

    /**
     * @param endpoint the URL posted to ({@code http} or {@code https}, a host, no user info)
     * @param connectTimeoutMillis time allowed to connect (and finish the TLS handshake)
     * @param maxBodyBytes longest answer body read
     * @param nanoClock monotonic clock ({@code System::nanoTime} outside tests)
     */
    Http1Client(URI endpoint, int connectTimeoutMillis, long maxBodyBytes, LongSupplier nanoClock) {
        this(endpoint, connectTimeoutMillis, maxBodyBytes, nanoClock, null);
    }

    /** As above, with {@code tlsFactory} instead of the JVM's default TLS context (tests). */
    Http1Client(URI endpoint, int connectTimeoutMillis, long maxBodyBytes, LongSupplier nanoClock, SSLSocketFactory tlsFactory) {
        this.tls = "https".equalsIgnoreCase(endpoint.getScheme());
        String rawHost = endpoint.getHost();
        // An IPv6 literal is bracketed in a URI, not in a socket address.
        this.host = rawHost.startsWith("[") ? rawHost.substring(1, rawHost.length() - 1) : rawHost;
        this.port = endpoint.getPort() != -1 ? endpoint.getPort() : (tls ? 443 : 80);
        this.requestLinePrefix = " " + BridgeEndpoint.requestTarget(endpoint) + " HTTP/1.1\r\nHost: " + endpoint.getRawAuthority() + "\r\n";
        this.connectTimeoutNanos = connectTimeoutMillis * 1_000_000L;
        this.maxBodyBytes = maxBodyBytes;
        this.nanoClock = nanoClock;
        this.tlsFactory = tlsFactory;
    }

    /**
     * Sends {@code method} with {@code headers} and {@code body} and reads the answer.
     *
     * @param headers request headers (names and values ASCII without CR/LF); {@code Host} and
     *     {@code Content-Length} are added
     * @param readTimeoutNanos time allowed for the answer once the request is written
     * @throws SocketTimeoutException when a deadline passed (connect, read or overall)
     * @throws java.net.ConnectException when the connection was refused
     * @throws IOException for any other transport or protocol failure
     */
    Response send(String method, Map<String, String> headers, byte[] body, long readTimeoutNanos) throws IOException {
        return send(method, headers, body, readTimeoutNanos, Long.MAX_VALUE);
    }

    /**
     * As {@link #send(String, Map, byte[], long)}, with the whole call also bounded by
     * {@code deadlineNanos} (on {@code nanoClock}): the failover across bridge URLs shares one
     * overall deadline between its attempts. {@link Long#MAX_VALUE} means no extra bound.
     */
    Response send(String method, Map<String, String> headers, byte[] body, long readTimeoutNanos, long deadlineNanos)
            throws IOException {
        if (Thread.currentThread().isInterrupted()) {
            throw new InterruptedIOException("interrupted before sending");
        }
        long start = nanoClock.getAsLong();
        long own = start + connectTimeoutNanos + readTimeoutNanos;
        // Compared as differences: nanoTime values may be negative or wrap.
        long deadline = deadlineNanos == Long.MAX_VALUE || own - deadlineNanos <= 0 ? own : deadlineNanos;
        if (deadline - start <= 0) {
            throw new SocketTimeoutException("deadline passed");
        }
        byte[] request = request(method, headers, body);
        Connection pooled = take(start);
        if (pooled != null) {
            try {
                return exchange(pooled, request, readTimeoutNanos, deadline);
            } catch (SocketTimeoutException e) {
                throw e;
            } catch (IOException e) {
                if (pooled.answerStarted || Thread.currentThread().isInterrupted()) {
                    throw e;
                }
                // The peer closed this idle connection before reading the request (a restarted bridge
                // closed all of them): drop the ones idle for longer, and send again, once, on a new one.
                closeIdleSince(pooled.idleSince);
            }
        }
        return exchange(connect(deadline), request, readTimeoutNanos, deadline);
    }

    /** Closes the idle connections (in-flight ones close when their call ends). */
    void closeIdle() {
        synchronized (idle) {
            idle.forEach(Connection::close);
            idle.clear();
        }
    }

    int idleCount() {
        synchronized (idle) {
            return idle.size();
        }
    }

    private byte[] request(String method, Map<String, String> headers, byte[] body) {
        StringBuilder head = new StringBuilder(256 + 64 * headers.size()).append(method).append(requestLinePrefix);
        for (Map.Entry<String, String> header : headers.entrySet()) {
            head.append(header.getKey()).append(": ").append(header.getValue()).append("\r\n");
        }
        head.append("Content-Length: ").append(body.length).append("\r\n\r\n");
        byte[] headBytes = head.toString().getBytes(StandardCharsets.ISO_8859_1);
        byte[] request = new byte[headBytes.length + body.length];
        System.arraycopy(headBytes, 0, request, 0, headBytes.length);
        System.arraycopy(body, 0, request, headBytes.length, body.length);
        return request;
    }

    private Response exchange(Connection connection, byte[] request, long readTimeoutNanos, long deadline) throws IOException {
        boolean reusable = false;
        try {
            connection.out.write(request);
            connection.out.flush();
            long answerDeadline = Math.min(deadline, nanoClock.getAsLong() + readTimeoutNanos);
            Response response = connection.readResponse(answerDeadline);
            reusable = response.body() != null && connection.keepAlive && connection.pos == connection.limit;
            return response;
        } finally {
            if (reusable) {
                give(connection);
            } else {
                connection.close();
            }
        }
    }

    private Connection take(long now) {
        synchronized (idle) {
            Connection connection = idle.pollFirst();
            if (connection == null) {
                return null;
            }
            if (now - connection.idleSince < MAX_IDLE_NANOS) {
                connection.answerStarted = false;
                return connection;
            }
            // The most recently used is too old, so all are.
            connection.close();
            idle.forEach(Connection::close);
            idle.clear();
            return null;
        }
    }

    /** Closes the idle connections returned to the pool at or before {@code idleSince}. */
    private void closeIdleSince(long idleSince) {
        synchronized (idle) {
            idle.removeIf(connection -> {
                if (connection.idleSince - idleSince <= 0) {
                    connection.close();
                    return true;
                }
                return false;
            });
        }
    }

    private void give(Connection connection) {
        connection.idleSince = nanoClock.getAsLong();
        synchronized (idle) {
            if (idle.size() < MAX_IDLE_CONNECTIONS) {
                idle.addFirst(connection);
                return;
            }
        }
        connection.close();
    }

    private Connection connect(long deadline) throws IOException {
        DeadlineSocket tcp = new DeadlineSocket(nanoClock);
        tcp.deadline = Math.min(deadline, nanoClock.getAsLong() + connectTimeoutNanos);
        Socket socket = tcp;
        try {
            tcp.setTcpNoDelay(true);
            tcp.connect(new InetSocketAddress(host, port), millisLeft(tcp.deadline, nanoClock));
            if (tls) {
                SSLSocket ssl = (SSLSocket) (tlsFactory != null ? tlsFactory : defaultTls()).createSocket(tcp, host, port, true);
                socket = ssl;
                SSLParameters parameters = ssl.getSSLParameters();
                parameters.setEndpointIdentificationAlgorithm("HTTPS");
                ssl.setSSLParameters(parameters);
                // The handshake reads through tcp's stream, so the connect deadline bounds all of it.
                ssl.startHandshake();
            }
            return new Connection(tcp, socket);
        } catch (IOException | RuntimeException e) {
            closeQuietly(socket);
            throw e;
        }
    }

    /** The JVM's default TLS context, as the JDK HTTP client used (Keycloak's truststore options configure it). */
    private static SSLSocketFactory defaultTls() throws IOException {
        try {
            return SSLContext.getDefault().getSocketFactory();
        } catch (NoSuchAlgorithmException e) {
            throw new IOException("no default TLS context", e);
        }
    }

    private static int millisLeft(long deadline, LongSupplier nanoClock) throws SocketTimeoutException {
        long left = deadline - nanoClock.getAsLong();
        if (left <= 0) {
            throw new SocketTimeoutException("deadline passed");
        }
        // Rounded up: 0 would mean "no timeout".
        return (int) Math.min(Integer.MAX_VALUE, (left + 999_999) / 1_000_000);
    }

    private static void closeQuietly(Socket socket) {
        try {
            socket.close();
        } catch (IOException e) {
            // Nothing left to release.
        }
    }

    /**
     * A TCP socket whose every read is given only the time left before {@link #deadline}. A TLS
     * socket layered on it reads through this stream too, so the deadline bounds the handshake
     * and every record read, not just each read separately.
     */
    private static final class DeadlineSocket extends Socket {

        private final LongSupplier nanoClock;
        /** Set by the thread using the connection (handed over through the pool's lock). */
        long deadline;
        private InputStream bounded;

        DeadlineSocket(LongSupplier nanoClock) {
            this.nanoClock = nanoClock;
        }

        @Override
        public synchronized InputStream getInputStream() throws IOException {
            if (bounded == null) {
                bounded = new FilterInputStream(super.getInputStream()) {
                    @Override
                    public int read() throws IOException {
                        setSoTimeout(millisLeft(deadline, nanoClock));
                        return super.read();
                    }

                    @Override
                    public int read(byte[] b, int off, int len) throws IOException {
                        setSoTimeout(millisLeft(deadline, nanoClock));
                        return super.read(b, off, len);
                    }
                };
            }
            return bounded;
        }
    }

    /** One connection with its read buffer; used by one call at a time. */
    private final class Connection {

        final DeadlineSocket tcp;
        final Socket socket;
        final InputStream in;
        final OutputStream out;
        final byte[] buffer = new byte[BUFFER_BYTES];
        int pos;
        int limit;
        boolean keepAlive;
        boolean answerStarted;
        long idleSince;

        /** {@code socket} is {@code tcp} itself or a TLS socket layered on it. */
        Connection(DeadlineSocket tcp, Socket socket) throws IOException {
            this.tcp = tcp;
            this.socket = socket;
            this.in = socket.getInputStream();
            this.out = socket.getOutputStream();
        }

        Response readResponse(long deadline) throws IOException {
            tcp.deadline = deadline;
            while (true) {
                String statusLine = line();
                if (!statusLine.startsWith("HTTP/1.") || statusLine.length() < 12 || statusLine.charAt(8) != ' ') {
                    throw new ProtocolException("malformed status line");
                }
                int status = parseStatus(statusLine);
                boolean http10 = statusLine.charAt(7) == '0';
                long contentLength = -1;
                boolean chunked = false;
                boolean close = http10;
                int headBytes = statusLine.length();
                for (String header = line(); !header.isEmpty(); header = line()) {
                    headBytes += header.length();
                    if (headBytes > MAX_HEAD_BYTES) {
                        throw new ProtocolException("answer head too large");
                    }
                    int colon = header.indexOf(':');
                    if (colon <= 0) {
                        throw new ProtocolException("malformed header line");
                    }
                    String name = header.substring(0, colon).trim().toLowerCase(Locale.ROOT);
                    String value = header.substring(colon + 1).trim().toLowerCase(Locale.ROOT);
                    switch (name) {
                        case "content-length" -> contentLength = contentLength(value, contentLength);
                        case "transfer-encoding" -> chunked = value.endsWith("chunked");
                        case "connection" -> close = value.contains("close") || (http10 && !value.contains("keep-alive"));
                        default -> {
                        }
                    }
                }
                if (status >= 100 && status < 200) {
                    if (status == 101) {
                        throw new ProtocolException("unexpected protocol switch");
                    }
                    continue;
                }
                keepAlive = !close;
                if (status == 204 || status == 304) {
                    return new Response(status, new byte[0]);
                }
                byte[] body;
                if (chunked) {
                    body = chunkedBody();
                } else if (contentLength >= 0) {
                    body = contentLength > maxBodyBytes ? null : fixedBody((int) contentLength);
                } else {
                    keepAlive = false;
                    body = bodyToEnd();
                }
                return new Response(status, body);
            }
        }

        private int parseStatus(String statusLine) throws ProtocolException {
            int status = 0;
            for (int i = 9; i < 12; i++) {
                char c = statusLine.charAt(i);
                if (c < '0' || c > '9') {
                    throw new ProtocolException("malformed status code");
                }
                status = status * 10 + (c - '0');
            }
            if (statusLine.length() > 12 && statusLine.charAt(12) != ' ') {
                throw new ProtocolException("malformed status code");
            }
            return status;
        }

        private long contentLength(String value, long previous) throws ProtocolException {
            long length;
            try {
                length = Long.parseLong(value);
            } catch (NumberFormatException e) {
                throw new ProtocolException("malformed Content-Length");
            }
            if (length < 0 || (previous >= 0 && previous != length)) {
                throw new ProtocolException("malformed Content-Length");
            }
            return length;
        }

        private byte[] fixedBody(int length) throws IOException {
            byte[] body = new byte[length];
            int filled = 0;
            while (filled < length) {
                if (pos == limit && fill() < 0) {
                    throw new EOFException("answer body cut short");
                }
                int n = Math.min(length - filled, limit - pos);
                System.arraycopy(buffer, pos, body, filled, n);
                pos += n;
                filled += n;
            }
            return body;
        }

        private byte[] chunkedBody() throws IOException {
            ByteArrayOutputStream body = new ByteArrayOutputStream();
            while (true) {
                String sizeLine = line();
                int extension = sizeLine.indexOf(';');
                long size;
                try {
                    size = Long.parseLong((extension < 0 ? sizeLine : sizeLine.substring(0, extension)).trim(), 16);
                } catch (NumberFormatException e) {
                    throw new ProtocolException("malformed chunk size");
                }
                if (size < 0) {
                    throw new ProtocolException("malformed chunk size");
                }
                if (size == 0) {
                    for (String trailer = line(); !trailer.isEmpty(); trailer = line()) {
                        // Trailers are not used.
                    }
                    return body.toByteArray();
                }
                if (body.size() + size > maxBodyBytes) {
                    keepAlive = false;
                    return null;
                }
                body.write(fixedBody((int) size));
                if (!line().isEmpty()) {
                    throw new ProtocolException("malformed chunk");
                }
            }
        }

        private byte[] bodyToEnd() throws IOException {
            ByteArrayOutputStream body = new ByteArrayOutputStream();
            while (pos < limit || fill() >= 0) {
                if (body.size() + (limit - pos) > maxBodyBytes) {
                    return null;
                }
                body.write(buffer, pos, limit - pos);
                pos = limit;
            }
            return body.toByteArray();
        }

        /** One line without its CRLF (or bare LF), ISO-8859-1. */
        private String line() throws IOException {
            StringBuilder line = new StringBuilder(64);
            while (true) {
                if (pos == limit && fill() < 0) {
                    throw new EOFException(answerStarted ? "answer cut short" : "connection closed before an answer");
                }
                byte b = buffer[pos++];
                if (b == '\n') {
                    int end = line.length();
                    if (end > 0 && line.charAt(end - 1) == '\r') {
                        line.setLength(end - 1);
                    }
                    return line.toString();
                }
                if (line.length() >= MAX_HEAD_BYTES) {
                    throw new ProtocolException("answer line too long");
                }
                line.append((char) (b & 0xff));
            }
        }

        /** Reads more bytes into the empty buffer (the socket bounds each read by the deadline); -1 at end of stream. */
        private int fill() throws IOException {
            int n = in.read(buffer, 0, buffer.length);
            if (n > 0) {
                answerStarted = true;
                pos = 0;
                limit = n;
            }
            return n;
        }

        void close() {
            closeQuietly(socket);
        }
    }
}
