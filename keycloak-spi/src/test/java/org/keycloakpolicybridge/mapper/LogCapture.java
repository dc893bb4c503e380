package org.keycloakpolicybridge.mapper;

import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import java.util.stream.Collectors;

/** Collects the module's log lines (JBoss Logging routed to java.util.logging in tests). */
public final class LogCapture extends Handler implements AutoCloseable {

    private final Logger logger = Logger.getLogger("org.keycloakpolicybridge");
    private final List<LogRecord> records = new CopyOnWriteArrayList<>();

    public LogCapture() {
        logger.addHandler(this);
        logger.setLevel(Level.ALL);
    }

    @Override
    public void publish(LogRecord record) {
        records.add(record);
    }

    /** Formatted messages at WARNING or above. */
    public List<String> warnings() {
        return records.stream().filter(r -> r.getLevel().intValue() >= Level.WARNING.intValue())
                .map(r -> new java.util.logging.SimpleFormatter().formatMessage(r)).collect(Collectors.toList());
    }

    /** Every formatted message, any level. */
    public String all() {
        return records.stream().map(r -> new java.util.logging.SimpleFormatter().formatMessage(r)).collect(Collectors.joining("\n"));
    }

    @Override
    public void flush() {
    }

    @Override
    public void close() {
        logger.removeHandler(this);
        logger.setLevel(null);
    }
}
