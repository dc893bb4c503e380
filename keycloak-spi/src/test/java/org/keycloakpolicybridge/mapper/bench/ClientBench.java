package org.keycloakpolicybridge.mapper.bench;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.management.ManagementFactory;
import java.net.HttpURLConnection;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

import com.fasterxml.jackson.databind.JsonNode;
import org.apache.http.client.config.RequestConfig;
import org.apache.http.client.methods.CloseableHttpResponse;
import org.apache.http.client.methods.HttpPost;
import org.apache.http.entity.ByteArrayEntity;
import org.apache.http.impl.client.CloseableHttpClient;
import org.apache.http.impl.client.HttpClients;
import org.apache.http.impl.conn.PoolingHttpClientConnectionManager;
import org.apache.http.util.EntityUtils;
import org.keycloakpolicybridge.mapper.bridge.BridgeClient;
import org.keycloakpolicybridge.mapper.bridge.BridgeClients;
import org.keycloakpolicybridge.mapper.bridge.BridgeEndpoint;
import org.keycloakpolicybridge.mapper.bridge.DecisionParser;
import org.keycloakpolicybridge.mapper.bridge.JsonCodec;
import org.keycloakpolicybridge.mapper.bridge.RequestSigner;

/**
 * The mapper's HTTP call to a real, running bridge, per HTTP client: latency and the JVM's CPU per
 * call (all threads: {@code OperatingSystemMXBean.getProcessCpuTime}), with 1 and with 8 calling
 * threads, interleaved over rounds (the candidate order rotates each round). Each call signs a
 * fresh claims request (examples/acme/requests/alice-login.json with a new request_id), posts it
 * with the mapper's headers, checks the 200 and parses the decision, as the mapper does.
 *
 * <pre>
 * make bench-client        # bench/mapper_client.sh: starts a bridge (HMAC on, durable log) on 127.0.0.1:8911, runs this, stops it
 * KPB_BENCH_HMAC_SECRET=&lt;hex&gt; mvn -B -q -f keycloak-spi/pom.xml test-compile exec:java \
 *     -Dexec.mainClass=org.keycloakpolicybridge.mapper.bench.ClientBench -Dexec.classpathScope=test \
 *     -Dexec.args="http://127.0.0.1:8911 [calls per run] [rounds]"      # against a bridge with KPB_HMAC_SECRETS=kpb-bench=&lt;hex&gt;
 * </pre>
 *
 * Candidates: {@code jdk-async} (JDK HttpClient sendAsync + get: the mapper before issue 13),
 * {@code jdk-send} (JDK HttpClient send), {@code urlconnection} (HttpURLConnection, JDK keep-alive
 * cache), {@code apache-4.5} (Apache HttpClient 4.5, pooled, as Keycloak ships it) and
 * {@code kpb-http1} (the mapper's {@link BridgeClient}: its own blocking HTTP/1.1 pool); {@code no-http} is the
 * floor: the same signing and parsing of a canned full answer without any HTTP.
 */
public final class ClientBench {

    private static final int CONNECT_MS = 200;
    private static final int READ_MS = 2000;

    /** One candidate: a full signed call returning the decision id. */
    @FunctionalInterface
    private interface Call {
        String call(byte[] body) throws Exception;
    }

    private record Candidate(String name, Call call) {
    }

    private ClientBench() {
    }

    public static void main(String[] args) throws Exception {
        String secret = System.getenv("KPB_BENCH_HMAC_SECRET");
        if (args.length < 1 || secret == null) {
            System.err.println("usage: KPB_BENCH_HMAC_SECRET=<hex> ClientBench <bridge base url> [calls per run] [rounds]");
            System.exit(2);
        }
        // HttpURLConnection keeps at most 5 idle connections per destination unless told otherwise.
        System.setProperty("http.maxConnections", "32");
        URI endpoint = BridgeEndpoint.claimsEndpoint(args[0]).orElseThrow();
        RequestSigner signer = new RequestSigner("kpb-bench", HexFormat.of().parseHex(secret));
        int calls = args.length > 1 ? Integer.parseInt(args[1]) : 2000;
        int rounds = args.length > 2 ? Integer.parseInt(args[2]) : 3;
        String template = JsonCodec.MAPPER.writeValueAsString(JsonCodec.MAPPER.readTree(
                Files.readAllBytes(repoRoot().resolve("examples/acme/requests/alice-login.json"))));

        List<Candidate> candidates = candidates(endpoint, signer);
        // name -> threads -> per-round results
        Map<String, Map<Integer, List<double[]>>> results = new LinkedHashMap<>();
        for (Candidate c : candidates) {
            Map<Integer, List<double[]>> byThreads = new LinkedHashMap<>();
            byThreads.put(1, new ArrayList<>());
            byThreads.put(8, new ArrayList<>());
            results.put(c.name(), byThreads);
        }
        for (Candidate c : candidates) {
            // Warm-up, not reported: JIT (each candidate's code path), connections.
            run(c, 8, calls, template);
            run(c, 1, calls / 4, template);
        }
        for (int round = 0; round < rounds; round++) {
            for (int i = 0; i < candidates.size(); i++) {
                Candidate c = candidates.get((i + round) % candidates.size());
                for (int threads : new int[] {1, 8}) {
                    double[] r = run(c, threads, calls, template);
                    results.get(c.name()).get(threads).add(r);
                    System.out.printf(Locale.ROOT,
                            "  round %d %-13s threads %d: p50 %6.0f us  p99 %6.0f us  cpu %5.0f us/call  %5.0f calls/s%n",
                            round + 1, c.name(), threads, r[0], r[1], r[2], r[3]);
                }
            }
        }
        System.out.printf(Locale.ROOT, "%nkpb client bench: %d calls per run, %d rounds, bridge %s; java %s, %d cpus, load %s%n",
                calls, rounds, args[0], System.getProperty("java.version"), Runtime.getRuntime().availableProcessors(), loadAverage());
        System.out.println("candidate       threads  p50 us (median, min-max)   p99 us (median, min-max)   "
                + "JVM CPU us/call (median, min-max)   calls/s");
        for (Map.Entry<String, Map<Integer, List<double[]>>> e : results.entrySet()) {
            for (Map.Entry<Integer, List<double[]>> t : e.getValue().entrySet()) {
                List<double[]> rs = t.getValue();
                System.out.printf(Locale.ROOT, "%-15s %7d  %s  %s  %s  %s%n", e.getKey(), t.getKey(),
                        spread(rs, 0, 27), spread(rs, 1, 27), spread(rs, 2, 35), spread(rs, 3, 0).trim());
            }
        }
        System.exit(0); // the JDK and Apache clients keep non-daemon threads
    }

    /** Runs {@code calls} calls over {@code threads} threads: {p50 us, p99 us, JVM CPU us per call, calls/s}. */
    private static double[] run(Candidate candidate, int threads, int calls, String template) throws Exception {
        int perThread = calls / threads;
        long[] nanos = new long[perThread * threads];
        CountDownLatch go = new CountDownLatch(1);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        List<Thread> workers = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            int offset = t * perThread;
            Thread worker = new Thread(() -> {
                try {
                    go.await();
                    for (int i = 0; i < perThread; i++) {
                        byte[] body = template.replace("req-alice-login", UUID.randomUUID().toString()).getBytes(StandardCharsets.UTF_8);
                        long start = System.nanoTime();
                        candidate.call().call(body);
                        nanos[offset + i] = System.nanoTime() - start;
                    }
                } catch (Throwable e) {
                    failure.compareAndSet(null, e);
                }
            }, "bench-" + t);
            workers.add(worker);
            worker.start();
        }
        var os = (com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean();
        long cpu0 = os.getProcessCpuTime();
        long wall0 = System.nanoTime();
        go.countDown();
        for (Thread worker : workers) {
            worker.join();
        }
        long wall = System.nanoTime() - wall0;
        long cpu = os.getProcessCpuTime() - cpu0;
        if (failure.get() != null) {
            throw new IllegalStateException(candidate.name() + " failed", failure.get());
        }
        Arrays.sort(nanos);
        return new double[] {pct(nanos, 50), pct(nanos, 99), cpu / 1000.0 / nanos.length, nanos.length / (wall / 1e9)};
    }

    private static List<Candidate> candidates(URI endpoint, RequestSigner signer) {
        String target = BridgeEndpoint.requestTarget(endpoint);
        List<Candidate> list = new ArrayList<>();

        HttpClient jdk = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).connectTimeout(Duration.ofMillis(CONNECT_MS))
                .followRedirects(HttpClient.Redirect.NEVER).build();
        list.add(new Candidate("jdk-async", body -> {
            HttpResponse<byte[]> r = jdk.sendAsync(jdkRequest(endpoint, target, signer, body), HttpResponse.BodyHandlers.ofByteArray())
                    .get(CONNECT_MS + READ_MS, TimeUnit.MILLISECONDS);
            return decisionId(r.statusCode(), r.body());
        }));
        list.add(new Candidate("jdk-send", body -> {
            HttpResponse<byte[]> r = jdk.send(jdkRequest(endpoint, target, signer, body), HttpResponse.BodyHandlers.ofByteArray());
            return decisionId(r.statusCode(), r.body());
        }));

        list.add(new Candidate("urlconnection", body -> {
            HttpURLConnection c = (HttpURLConnection) endpoint.toURL().openConnection();
            c.setConnectTimeout(CONNECT_MS);
            c.setReadTimeout(READ_MS);
            c.setInstanceFollowRedirects(false);
            c.setDoOutput(true);
            c.setRequestMethod("POST");
            c.setFixedLengthStreamingMode(body.length);
            headers(signer, target, body).forEach(c::setRequestProperty);
            try (OutputStream out = c.getOutputStream()) {
                out.write(body);
            }
            int status = c.getResponseCode();
            // Reading the body to its end returns the connection to the keep-alive cache.
            try (InputStream in = status < 400 ? c.getInputStream() : c.getErrorStream()) {
                return decisionId(status, readAll(in));
            }
        }));

        PoolingHttpClientConnectionManager pool = new PoolingHttpClientConnectionManager(30, TimeUnit.SECONDS);
        pool.setMaxTotal(32);
        pool.setDefaultMaxPerRoute(32);
        CloseableHttpClient apache = HttpClients.custom().setConnectionManager(pool).disableRedirectHandling().disableAutomaticRetries()
                .disableCookieManagement().disableContentCompression().disableAuthCaching()
                .setDefaultRequestConfig(RequestConfig.custom().setConnectTimeout(CONNECT_MS).setSocketTimeout(READ_MS)
                        .setConnectionRequestTimeout(CONNECT_MS).build())
                .build();
        list.add(new Candidate("apache-4.5", body -> {
            HttpPost post = new HttpPost(endpoint);
            headers(signer, target, body).forEach(post::setHeader);
            post.setEntity(new ByteArrayEntity(body));
            try (CloseableHttpResponse r = apache.execute(post)) {
                return decisionId(r.getStatusLine().getStatusCode(), EntityUtils.toByteArray(r.getEntity()));
            }
        }));

        // The floor: the same signing, request building and parsing, no HTTP (latency is not a call's).
        byte[] canned = CANNED.getBytes(StandardCharsets.UTF_8);
        list.add(new Candidate("no-http", body -> {
            headers(signer, target, body);
            return decisionId(200, canned);
        }));

        BridgeClient kpb = new BridgeClients(signer, System::nanoTime, () -> System.currentTimeMillis() / 1000L)
                .get(endpoint, CONNECT_MS, 1_000_000, 1000);
        list.add(new Candidate("kpb-http1", body -> kpb.decide(body, Duration.ofMillis(READ_MS)).decisionId()));
        return list;
    }

    /** A full acme permit (about the size the bridge answers without {@code Prefer: return=minimal}). */
    private static final String CANNED = "{\"decision_id\":\"01JDX6Q2M3VEC0000000000005\",\"effect\":\"permit\","
            + "\"claims\":{\"roles\":[\"crm:read\"],\"tenant\":\"acme-eu\"},\"remove_claims\":[\"realm_access\",\"resource_access\"],"
            + "\"max_ttl_seconds\":300,\"reasons\":[],\"policy\":{\"id\":\"acme-token-policy\",\"version\":\"2026-11-28.1\","
            + "\"digest\":\"sha256:3333333333333333333333333333333333333333333333333333333333333333\"},\"entitlements\":{\"snapshot\":"
            + "\"sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\",\"generated_at\":\"2026-11-28T02:00:04Z\","
            + "\"age_seconds\":21596,\"stale\":false},\"evaluated_at\":\"2026-11-28T08:00:00Z\",\"principals\":[{\"role\":\"subject\","
            + "\"subject_id\":\"E1001\",\"kind\":\"human\",\"status\":\"active\",\"matched_by\":\"keycloak_user_id\"}],"
            + "\"provenance\":{\"roles\":[{\"value\":\"crm:read\",\"sources\":[{\"rule\":\"roles-from-app-roles\",\"pass\":"
            + "\"subject\",\"records\":[{\"source\":\"crm\",\"account\":\"alice\",\"entitlement_kind\":\"app_role\","
            + "\"entitlement_value\":\"crm:read\",\"via\":\"role\",\"via_id\":\"ROLE-SALES\"}]}]}]}}";

    private static Map<String, String> headers(RequestSigner signer, String target, byte[] body) {
        Map<String, String> headers = new LinkedHashMap<>();
        headers.put("Content-Type", "application/json");
        headers.put("Accept", "application/json");
        headers.put("Prefer", "return=minimal");
        headers.putAll(signer.headers("POST", target, System.currentTimeMillis() / 1000L, body));
        return headers;
    }

    private static HttpRequest jdkRequest(URI endpoint, String target, RequestSigner signer, byte[] body) {
        HttpRequest.Builder b = HttpRequest.newBuilder(endpoint).timeout(Duration.ofMillis(READ_MS))
                .POST(HttpRequest.BodyPublishers.ofByteArray(body));
        headers(signer, target, body).forEach(b::header);
        return b.build();
    }

    private static String decisionId(int status, byte[] body) throws Exception {
        if (status != 200) {
            JsonNode error = body == null ? null : JsonCodec.MAPPER.readTree(body).get("error");
            throw new IllegalStateException("bridge answered HTTP " + status + " " + error);
        }
        return DecisionParser.parse(body).decisionId();
    }

    private static byte[] readAll(InputStream in) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        in.transferTo(out);
        return out.toByteArray();
    }

    private static double pct(long[] sorted, double percentile) {
        int index = (int) Math.min(sorted.length - 1, Math.ceil(percentile / 100.0 * sorted.length) - 1);
        return sorted[Math.max(index, 0)] / 1000.0;
    }

    private static String spread(List<double[]> rounds, int field, int width) {
        double[] v = rounds.stream().mapToDouble(r -> r[field]).sorted().toArray();
        String text = String.format(Locale.ROOT, "%.0f (%.0f-%.0f)", v[v.length / 2], v[0], v[v.length - 1]);
        return String.format(Locale.ROOT, "%-" + Math.max(width, 1) + "s", text);
    }

    /** The repository root: {@code kpb.repo.root}, else the working directory or its parent (make runs from the root). */
    private static Path repoRoot() {
        String configured = System.getProperty("kpb.repo.root");
        if (configured != null) {
            return Path.of(configured);
        }
        return Files.isDirectory(Path.of("examples")) ? Path.of(".") : Path.of("..");
    }

    private static String loadAverage() {
        try {
            return Files.readString(Path.of("/proc/loadavg")).trim();
        } catch (IOException e) {
            return "unknown";
        }
    }
}
