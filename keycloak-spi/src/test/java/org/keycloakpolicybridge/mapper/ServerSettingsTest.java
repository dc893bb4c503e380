package org.keycloakpolicybridge.mapper;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.URI;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Optional;

import org.junit.jupiter.api.Test;

class ServerSettingsTest {

    static final String SECRET = "ffc3ccab52583f57c4f23b93fc4a27a0da8e99421df74c9da0507b34d2b4fe2f";

    private static ServerSettings load(Map<String, String> spi, Map<String, String> env) {
        return ServerSettings.load(spi::get, env::get);
    }

    @Test
    void spiOptionsWinOverTheEnvironment() {
        ServerSettings s = load(
                Map.of("bridge-url", "http://spi.example:8000", "hmac-key-id", "kpb-2026-11", "hmac-secret", SECRET),
                Map.of("KPB_BRIDGE_URL", "http://env.example", "KPB_HMAC_KEY_ID", "env", "KPB_HMAC_SECRET", "00".repeat(40)));
        assertEquals(Optional.of(URI.create("http://spi.example:8000/v1/claims")), s.claimsEndpoint());
        assertEquals(Optional.of("kpb-2026-11"), s.keyId());
        assertArrayEquals(HexFormat.of().parseHex(SECRET), s.secret().orElseThrow());
        assertEquals(List.of(), s.problems());
    }

    @Test
    void theEnvironmentIsTheFallback() {
        ServerSettings s = load(Map.of(), Map.of("KPB_BRIDGE_URL", "http://127.0.0.1:8000", "KPB_HMAC_SECRET", SECRET.toUpperCase()));
        assertEquals(Optional.of(URI.create("http://127.0.0.1:8000/v1/claims")), s.claimsEndpoint());
        assertEquals(Optional.empty(), s.keyId());
        assertTrue(s.secret().isPresent());
    }

    @Test
    void aMissingSecretIsAProblemNotAnException() {
        ServerSettings s = load(Map.of("bridge-url", "http://127.0.0.1:8000"), Map.of());
        assertTrue(s.secret().isEmpty());
        assertEquals(1, s.problems().size());
        assertTrue(s.problems().get(0).contains("no HMAC secret"));
    }

    @Test
    void badValuesAreReportedWithoutTheirValue() {
        String shortSecret = "ab".repeat(31);
        ServerSettings s = load(Map.of("bridge-url", "https://u:p@x", "hmac-key-id", "bad id!", "hmac-secret", shortSecret), Map.of());
        assertEquals(3, s.problems().size(), s.problems().toString());
        assertTrue(s.secret().isEmpty() && s.keyId().isEmpty() && s.claimsEndpoint().isEmpty());
        String all = String.join(" ", s.problems()) + s;
        assertFalse(all.contains(shortSecret) || all.contains("u:p") || all.contains("bad id!"));
        ServerSettings notHex = load(Map.of("hmac-secret", "zz" + SECRET), Map.of());
        assertTrue(notHex.problems().get(0).contains("must be hex"));
    }

    @Test
    void toStringNeverShowsTheSecret() {
        ServerSettings s = load(Map.of("hmac-secret", SECRET), Map.of());
        assertFalse(s.toString().contains(SECRET));
        assertTrue(s.toString().contains("secret=present"));
    }
}
