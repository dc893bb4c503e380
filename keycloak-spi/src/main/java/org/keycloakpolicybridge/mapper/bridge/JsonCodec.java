package org.keycloakpolicybridge.mapper.bridge;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;

/** The one Jackson mapper of the module (thread-safe once configured). */
public final class JsonCodec {

    /**
     * Strict about what it reads: duplicate keys and trailing content are errors, so two parsers
     * (the bridge's and ours) cannot read one body differently.
     */
    public static final ObjectMapper MAPPER = JsonMapper.builder()
            .enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS)
            .build();

    private JsonCodec() {
    }
}
