package org.keycloakpolicybridge.mapper.bridge;

import java.util.function.LongSupplier;

/**
 * A small, thread-safe circuit breaker for the bridge call.
 *
 * <p>Closed: calls pass; {@code threshold} consecutive failures open it. Open: calls are refused
 * without touching the network until {@code openMillis} have passed. Then exactly one caller gets
 * a half-open trial; its success closes the circuit, its failure re-opens it for another
 * {@code openMillis}. Every caller that {@link #tryAcquire() acquired} must report
 * {@link #onSuccess()} or {@link #onFailure()}.
 */
public final class CircuitBreaker {

    /** The breaker's state, for tests and diagnostics. */
    public enum State { CLOSED, OPEN, HALF_OPEN }

    private final int threshold;
    private final long openNanos;
    private final LongSupplier nanoClock;

    private State state = State.CLOSED;
    private int consecutiveFailures;
    private long openedAt;

    /**
     * @param threshold consecutive failures that open the circuit (at least 1)
     * @param openMillis how long the circuit stays open (at least 1)
     * @param nanoClock monotonic clock in nanoseconds ({@code System::nanoTime} in production)
     */
    public CircuitBreaker(int threshold, long openMillis, LongSupplier nanoClock) {
        if (threshold < 1 || openMillis < 1) {
            throw new IllegalArgumentException("threshold and openMillis must be positive");
        }
        this.threshold = threshold;
        this.openNanos = openMillis * 1_000_000L;
        this.nanoClock = nanoClock;
    }

    /** True if the caller may call the bridge now (and must then report the outcome). */
    public synchronized boolean tryAcquire() {
        switch (state) {
            case CLOSED:
                return true;
            case OPEN:
                if (nanoClock.getAsLong() - openedAt >= openNanos) {
                    state = State.HALF_OPEN;
                    return true;
                }
                return false;
            default:
                // A half-open trial is in flight: everyone else keeps failing fast.
                return false;
        }
    }

    /**
     * True if {@link #tryAcquire()} would admit a call now; changes nothing (no half-open trial is
     * granted). A hint only, since another thread may acquire in between: the failover uses it to
     * decide whether a later URL is worth keeping time for.
     */
    public synchronized boolean wouldAdmit() {
        return switch (state) {
            case CLOSED -> true;
            case OPEN -> nanoClock.getAsLong() - openedAt >= openNanos;
            default -> false;
        };
    }

    /** The call succeeded (any well-formed decision, permit or deny). */
    public synchronized void onSuccess() {
        consecutiveFailures = 0;
        state = State.CLOSED;
    }

    /** The call failed (unreachable, timeout, non-200, invalid answer). */
    public synchronized void onFailure() {
        consecutiveFailures++;
        if (state == State.HALF_OPEN || consecutiveFailures >= threshold) {
            state = State.OPEN;
            openedAt = nanoClock.getAsLong();
        }
    }

    public synchronized State state() {
        return state;
    }
}
