package org.keycloakpolicybridge.mapper.bridge;

import java.net.URI;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.StringJoiner;
import java.util.function.LongSupplier;

/**
 * Asks the first of several bridge URLs (replicas, in order of preference) that can answer for
 * the decision of one token request. Thread-safe; {@link BridgeClients} shares one instance per
 * URL list and settings, and every URL keeps its own {@link BridgeClient}, connection pool and
 * {@link CircuitBreaker}, so a dead replica is skipped without a network call while the others serve.
 *
 * <p>What moves on to the next URL: a connect failure or reset before an answer
 * ({@link BridgeFailure.Kind#UNREACHABLE}), a {@link BridgeFailure.Kind#TIMEOUT timeout}, an HTTP
 * 5xx answer, and a URL whose circuit is open (skipped, no request sent). What never moves on: a
 * well-formed decision, permit or deny (a deny is a decision, not a failure), a 4xx or any other
 * non-5xx status (a misconfiguration every replica shares), an invalid 200 answer (the replica
 * decided, and recorded, but the mapper cannot read it; another replica would answer the same),
 * an interrupted thread. So at most one decision is applied per token request, and no request goes
 * to a further URL once one has answered with a decision.
 *
 * <p>Deadline: the whole failover keeps the one-URL budget, connect timeout + read timeout,
 * measured from the first attempt; more URLs never lengthen a token request. Each attempt keeps
 * its own connect and read timeouts within that budget. An attempt that has a later URL whose
 * circuit would admit a call gets at most half of the time left, so a replica that accepts the
 * connection and then hangs leaves the next one at least as much time as it took; the last
 * candidate gets all that is left. With one URL this is exactly the single-endpoint call.
 *
 * <p>Signing and replays: every request sent is signed afresh at send time, and the second and
 * later requests sent carry {@code "attempt": n} in the body (see {@code ClaimsRequestBuilder}),
 * so each attempt is a distinct signed request ({@code signed_request_id}: method, path,
 * timestamp, body hash). Re-sending the first attempt's signed bytes would be refused as a replay
 * ({@code replayed_signature}) by any replica sharing the first one's decision log, whose nonces
 * are shared precisely to stop replays across processes; a new timestamp alone is not enough, as
 * it has whole-second resolution. Replay protection is unchanged: each signed request is still
 * accepted once. The cost is the expected one: a replica that recorded a decision and died before
 * answering leaves that record, and the next replica records a second decision for the same
 * {@code request_id} (its request shows {@code attempt}).
 */
public final class FailoverClient {

    /**
     * A URL that gave no decision.
     *
     * @param position 1-based position of the URL in the configured list
     * @param endpoint the claims endpoint (never carries credentials: they are refused in URLs)
     * @param failure why
     */
    public record Attempt(int position, URI endpoint, BridgeFailure failure) {
    }

    /**
     * A decision and where it came from.
     *
     * @param decision the decision
     * @param position 1-based position of the URL that answered
     * @param endpoint the claims endpoint that answered
     * @param failedBefore the URLs tried or skipped before it, in order; empty when the first answered
     */
    public record Answer(BridgeDecision decision, int position, URI endpoint, List<Attempt> failedBefore) {
        public Answer {
            failedBefore = List.copyOf(failedBefore);
        }
    }

    /** The body of the n-th request actually sent for one token request (n from 1). */
    @FunctionalInterface
    public interface Bodies {
        byte[] forAttempt(int attempt);
    }

    private final List<BridgeClient> replicas;
    private final long connectTimeoutNanos;
    private final LongSupplier nanoClock;

    /**
     * @param replicas one client per URL, in order of preference (at least one)
     * @param connectTimeoutMs the mapper's connect timeout, part of the overall deadline
     * @param nanoClock the monotonic clock the clients' deadlines use
     */
    FailoverClient(List<BridgeClient> replicas, int connectTimeoutMs, LongSupplier nanoClock) {
        if (replicas.isEmpty()) {
            throw new IllegalArgumentException("at least one bridge URL");
        }
        this.replicas = List.copyOf(replicas);
        this.connectTimeoutNanos = connectTimeoutMs * 1_000_000L;
        this.nanoClock = nanoClock;
    }

    /**
     * Gets one decision, failing over as the class describes.
     *
     * @param bodies the request body per attempt actually sent
     * @param readTimeout time allowed for an answer once a request is sent
     * @throws BridgeFailure when no URL gave a decision (the mapper's failure mode then applies, as
     *     with one URL): with one URL, its failure as is; with several, the kind and status of the
     *     last failure that was not a skipped open circuit, the message naming every URL and why
     */
    public Answer decide(Bodies bodies, Duration readTimeout) throws BridgeFailure {
        long deadline = nanoClock.getAsLong() + connectTimeoutNanos + readTimeout.toNanos();
        List<Attempt> failed = new ArrayList<>(0);
        int sent = 0;
        byte[] body = null;
        for (int i = 0; i < replicas.size(); i++) {
            BridgeClient replica = replicas.get(i);
            long now = nanoClock.getAsLong();
            if (deadline - now <= 0) {
                failed.add(new Attempt(i + 1, replica.endpoint(),
                        new BridgeFailure(BridgeFailure.Kind.TIMEOUT, "not tried: the overall deadline had passed")));
                continue;
            }
            if (body == null) {
                body = bodies.forAttempt(sent + 1);
            }
            long attemptDeadline = laterAdmits(i) ? now + (deadline - now) / 2 : deadline;
            try {
                return new Answer(replica.decide(body, readTimeout, attemptDeadline), i + 1, replica.endpoint(), failed);
            } catch (BridgeFailure failure) {
                failed.add(new Attempt(i + 1, replica.endpoint(), failure));
                if (!movesOn(failure)) {
                    throw failed.size() == 1 ? failure : new BridgeFailure(failure.kind(), failure.status(),
                            failure.getMessage() + " (from #" + (i + 1) + " " + replica.endpoint() + ", after "
                                    + describe(failed.subList(0, failed.size() - 1)) + ")");
                }
                if (failure.kind() != BridgeFailure.Kind.CIRCUIT_OPEN) {
                    // The request may have reached that replica: the next one gets a distinct signed request.
                    sent++;
                    body = null;
                }
            }
        }
        throw allFailed(failed);
    }

    /** True for a failure after which the next URL may still decide: nothing was decided here. */
    static boolean movesOn(BridgeFailure failure) {
        return switch (failure.kind()) {
            case UNREACHABLE, TIMEOUT, CIRCUIT_OPEN -> true;
            case HTTP_STATUS -> failure.status() >= 500 && failure.status() <= 599;
            default -> false;
        };
    }

    /** The clients, in order (tests and diagnostics). */
    public List<BridgeClient> replicas() {
        return replicas;
    }

    private boolean laterAdmits(int index) {
        for (int j = index + 1; j < replicas.size(); j++) {
            if (replicas.get(j).breaker().wouldAdmit()) {
                return true;
            }
        }
        return false;
    }

    private static BridgeFailure allFailed(List<Attempt> failed) {
        if (failed.size() == 1) {
            return failed.get(0).failure();
        }
        BridgeFailure last = failed.get(failed.size() - 1).failure();
        for (Attempt attempt : failed) {
            if (attempt.failure().kind() != BridgeFailure.Kind.CIRCUIT_OPEN) {
                last = attempt.failure();
            }
        }
        return new BridgeFailure(last.kind(), last.status(),
                "none of " + failed.size() + " bridge URLs gave a decision: " + describe(failed));
    }

    /** {@code #1 http://a/v1/claims: UNREACHABLE: message; #2 ...}: URLs and secret-free failure texts. */
    public static String describe(List<Attempt> attempts) {
        StringJoiner text = new StringJoiner("; ");
        for (Attempt attempt : attempts) {
            text.add("#" + attempt.position() + " " + attempt.endpoint() + ": " + attempt.failure().kind() + ": "
                    + attempt.failure().getMessage());
        }
        return text.toString();
    }
}
