package org.keycloakpolicybridge.mapper.bridge;

import java.net.URI;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.function.LongSupplier;

/**
 * Runs one AuthZEN conversation (the gate evaluation, then the resource searches with their
 * pages) against the first of several PDP base URLs that completes it: the AuthZEN counterpart of
 * {@link FailoverClient}, with the same rules, applied to the whole conversation rather than to
 * each call, because a search's {@code page.next_token} is only meaningful to the PDP that issued it.
 *
 * <ul>
 * <li>What moves on to the next URL: {@link FailoverClient#movesOn} failures (unreachable,
 *     timeout, 5xx, open circuit) of any call of the conversation; the conversation then starts
 *     again there, with {@code attempt} n in its bodies so each signed request is distinct.</li>
 * <li>What never moves on: a completed conversation (permit or deny), a 4xx, a malformed answer,
 *     an interrupted thread.</li>
 * <li>Deadline: connect timeout + read timeout from the start, shared by every call of every
 *     attempt (the gate and the searches share one budget, as one {@code /v1/claims} call has
 *     it); an attempt with a later URL whose circuit admits calls gets at most half the time left.</li>
 * <li>Circuit breaker: per URL; a conversation is one success or one failure.</li>
 * </ul>
 * Thread-safe.
 */
public final class AuthzenFailover {

    /** The calls of one attempt, bound to one PDP, the request id, the read timeout and the deadline. */
    public interface Exchange {
        /** Posts to the PDP; see {@link AuthzenPdp#post}. */
        byte[] post(AuthzenPdp.Call call, byte[] body) throws BridgeFailure;
    }

    /** One conversation; {@code attempt} counts the PDPs actually asked, from 1. */
    @FunctionalInterface
    public interface Conversation<T> {
        T run(Exchange exchange, int attempt) throws BridgeFailure;
    }

    /**
     * A completed conversation.
     *
     * @param result what the conversation returned
     * @param position 1-based position of the URL that completed it
     * @param base that URL
     * @param failedBefore the URLs tried or skipped before it
     */
    public record Answer<T>(T result, int position, URI base, List<FailoverClient.Attempt> failedBefore) {
        public Answer {
            failedBefore = List.copyOf(failedBefore);
        }
    }

    private final List<AuthzenPdp> pdps;
    private final long connectTimeoutNanos;
    private final LongSupplier nanoClock;

    AuthzenFailover(List<AuthzenPdp> pdps, int connectTimeoutMs, LongSupplier nanoClock) {
        if (pdps.isEmpty()) {
            throw new IllegalArgumentException("at least one PDP URL");
        }
        this.pdps = List.copyOf(pdps);
        this.connectTimeoutNanos = connectTimeoutMs * 1_000_000L;
        this.nanoClock = nanoClock;
    }

    /**
     * Runs the conversation as the class describes.
     *
     * @param requestId sent as {@code X-Request-ID} on every call
     * @param readTimeout time allowed for each answer, and (with the connect timeout) the whole budget
     * @throws BridgeFailure when no URL completed it (as {@link FailoverClient#decide} reports it)
     */
    public <T> Answer<T> run(Conversation<T> conversation, String requestId, Duration readTimeout) throws BridgeFailure {
        long readNanos = readTimeout.toNanos();
        long deadline = nanoClock.getAsLong() + connectTimeoutNanos + readNanos;
        List<FailoverClient.Attempt> failed = new ArrayList<>(0);
        int sent = 0;
        for (int i = 0; i < pdps.size(); i++) {
            AuthzenPdp pdp = pdps.get(i);
            long now = nanoClock.getAsLong();
            if (deadline - now <= 0) {
                failed.add(new FailoverClient.Attempt(i + 1, pdp.base(),
                        new BridgeFailure(BridgeFailure.Kind.TIMEOUT, "not tried: the overall deadline had passed")));
                continue;
            }
            if (!pdp.breaker().tryAcquire()) {
                failed.add(new FailoverClient.Attempt(i + 1, pdp.base(),
                        new BridgeFailure(BridgeFailure.Kind.CIRCUIT_OPEN, "circuit breaker open: not calling the PDP")));
                continue;
            }
            long attemptDeadline = laterAdmits(i) ? now + (deadline - now) / 2 : deadline;
            sent++;
            Exchange exchange = (call, body) -> pdp.post(call, body, requestId, readNanos, attemptDeadline);
            T result;
            try {
                result = conversation.run(exchange, sent);
            } catch (BridgeFailure failure) {
                pdp.breaker().onFailure();
                failed.add(new FailoverClient.Attempt(i + 1, pdp.base(), failure));
                if (!FailoverClient.movesOn(failure)) {
                    throw failed.size() == 1 ? failure : new BridgeFailure(failure.kind(), failure.status(),
                            failure.getMessage() + " (from #" + (i + 1) + " " + pdp.base() + ", after "
                                    + FailoverClient.describe(failed.subList(0, failed.size() - 1)) + ")");
                }
                continue;
            } catch (RuntimeException e) {
                // A half-open breaker must hear back, or it would refuse every later call.
                pdp.breaker().onFailure();
                throw e;
            }
            pdp.breaker().onSuccess();
            return new Answer<>(result, i + 1, pdp.base(), failed);
        }
        throw allFailed(failed);
    }

    /** The PDPs, in order (tests and diagnostics). */
    public List<AuthzenPdp> pdps() {
        return pdps;
    }

    private boolean laterAdmits(int index) {
        for (int j = index + 1; j < pdps.size(); j++) {
            if (pdps.get(j).breaker().wouldAdmit()) {
                return true;
            }
        }
        return false;
    }

    private static BridgeFailure allFailed(List<FailoverClient.Attempt> failed) {
        if (failed.size() == 1) {
            return failed.get(0).failure();
        }
        BridgeFailure last = failed.get(failed.size() - 1).failure();
        for (FailoverClient.Attempt attempt : failed) {
            if (attempt.failure().kind() != BridgeFailure.Kind.CIRCUIT_OPEN) {
                last = attempt.failure();
            }
        }
        return new BridgeFailure(last.kind(), last.status(),
                "none of " + failed.size() + " PDP URLs completed the AuthZEN exchange: " + FailoverClient.describe(failed));
    }
}
