package org.keycloakpolicybridge.mapper.bridge;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;

import com.fasterxml.jackson.databind.JsonNode;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;
import org.keycloakpolicybridge.mapper.Vectors;

/** The sender side of the shared HMAC v1 vectors ({@code contract/vectors/hmac}). */
class HmacVectorsTest {

    @Test
    void allFourteenVectorsArePresent() {
        assertEquals(14, Vectors.files("hmac").size());
    }

    @TestFactory
    Stream<DynamicTest> everyVectorSignsAsSpecified() {
        return Vectors.files("hmac").stream().map(file -> DynamicTest.dynamicTest(file.getFileName().toString(), () -> check(file)));
    }

    private static void check(Path file) {
        JsonNode v = Vectors.read(file);
        byte[] body = v.has("body_base64")
                ? Base64.getDecoder().decode(v.get("body_base64").asText())
                : v.get("body").asText().getBytes(StandardCharsets.UTF_8);
        String method = v.get("method").asText();
        String path = v.get("path").asText();
        long timestamp = v.get("timestamp").asLong();

        assertEquals(v.get("body_sha256").asText(), RequestSigner.bodySha256Hex(body), "body_sha256");
        String canonical = RequestSigner.canonicalRequest(method, path, timestamp, body);
        assertEquals(v.get("canonical_request").asText(), canonical, "canonical_request");

        List<byte[]> secrets = new ArrayList<>();
        secrets.add(HexFormat.of().parseHex(v.get("secret_hex").asText()));
        for (JsonNode rotation : v.path("rotation_secrets")) {
            secrets.add(HexFormat.of().parseHex(rotation.get("secret_hex").asText()));
        }
        assertEquals(v.get("signature").asText(), RequestSigner.signatureHeader(secrets, canonical), "signature");

        // Headers a single-secret sender produces (a malformed-header vector alters them on purpose).
        JsonNode headers = v.get("headers");
        if (secrets.size() == 1 && headers.get("X-KPB-Signature").asText().equals(v.get("signature").asText())) {
            String keyId = headers.has("X-KPB-Key-Id") ? headers.get("X-KPB-Key-Id").asText() : null;
            Map<String, String> expected = new LinkedHashMap<>();
            headers.properties().forEach(e -> expected.put(e.getKey(), e.getValue().asText()));
            assertEquals(expected, new RequestSigner(keyId, secrets.get(0)).headers(method, path, timestamp, body));
        }
        assertTrue(canonical.chars().allMatch(c -> c < 128), "canonical request is ASCII");
    }
}
