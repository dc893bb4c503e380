package org.keycloakpolicybridge.mapper;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.URI;
import java.util.List;
import java.util.Map;
import java.util.Optional;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.keycloak.protocol.ProtocolMapperConfigException;

/** {@code bridge-url} and {@code kpb.bridge.url} with several URLs (failover between bridge replicas). */
class BridgeUrlListTest {

    private static ServerSettings server(String urls) {
        return ServerSettings.load(Map.of("bridge-url", urls, "hmac-secret", ServerSettingsTest.SECRET)::get, Map.<String, String>of()::get);
    }

    @Test
    void severalUrlsParseInOrderOfPreference() throws Exception {
        String urls = " https://kpb-a.internal:8443/bridge/ , http://10.0.0.7:8000,https://kpb-c.internal";
        List<URI> expected = List.of(URI.create("https://kpb-a.internal:8443/bridge/v1/claims"),
                URI.create("http://10.0.0.7:8000/v1/claims"), URI.create("https://kpb-c.internal/v1/claims"));
        ServerSettings s = server(urls);
        assertEquals(List.of(), s.problems());
        assertEquals(expected, s.claimsEndpoints());
        assertEquals(Optional.of(expected.get(0)), s.claimsEndpoint());
        MapperSettings m = MapperSettings.parse(Map.of("kpb.bridge.url", urls));
        assertEquals(expected, m.bridgeEndpoints());
        assertEquals(Optional.of(expected.get(0)), m.bridgeEndpoint());
    }

    @Test
    void theEnvironmentFallbackTakesAListToo() {
        ServerSettings s = ServerSettings.load(Map.of("hmac-secret", ServerSettingsTest.SECRET)::get,
                Map.of("KPB_BRIDGE_URL", "http://127.0.0.1:8000,http://127.0.0.1:8001")::get);
        assertEquals(2, s.claimsEndpoints().size());
        assertEquals(List.of(), s.problems());
    }

    @ParameterizedTest
    @CsvSource(delimiter = '|', value = {
        "http://a.internal,,http://b.internal|entry 2 of 3 is empty",
        "http://a.internal,http://b.internal,|entry 3 of 3 is empty",
        "' ,http://a.internal'|entry 1 of 2 is empty",
        "http://a.internal:8000,http://b.internal,http://A.INTERNAL:8000/|entry 3 of 3 duplicates entry 1",
        "http://a.internal,ftp://b.internal|entry 2 of 2 must be an http(s) URL without credentials, query or fragment",
        "http://a.internal,https://user:pw@b.internal|entry 2 of 2 must be an http(s) URL"
    })
    void aBadEntryIsRejectedNamingItsPositionNotItsValue(String urls, String expected) {
        ServerSettings s = server(urls);
        assertEquals(List.of(), s.claimsEndpoints(), "a list with a bad entry is not used at all");
        assertEquals(1, s.problems().size(), s.problems().toString());
        assertTrue(s.problems().get(0).startsWith("bridge-url " + expected), s.problems().get(0));
        ProtocolMapperConfigException e = assertThrows(ProtocolMapperConfigException.class,
                () -> MapperSettings.parse(Map.of("kpb.bridge.url", urls)));
        assertTrue(e.getMessage().startsWith("kpb.bridge.url " + expected), e.getMessage());
        assertFalse(e.getMessage().contains("b.internal") || e.getMessage().contains("user:pw"), "no value echoed: " + e.getMessage());
    }

    @Test
    void everyBadEntryIsReported() {
        ServerSettings s = server("http://a.internal,,ftp://c.internal,http://a.internal");
        assertEquals(List.of("bridge-url entry 2 of 4 is empty",
                "bridge-url entry 3 of 4 must be an http(s) URL without credentials, query or fragment",
                "bridge-url entry 4 of 4 duplicates entry 1"), s.problems());
    }

    @Test
    void aSingleBadUrlIsReportedAsBefore() {
        assertEquals(List.of("bridge-url must be an http(s) URL without credentials, query or fragment"), server("ftp://x").problems());
    }

    @Test
    void atMostSixteenUrls() {
        StringBuilder urls = new StringBuilder();
        for (int i = 0; i < 17; i++) {
            urls.append(i == 0 ? "" : ",").append("http://kpb-").append(i).append(".internal");
        }
        assertTrue(server(urls.toString()).problems().get(0).contains("at most 16"));
        String sixteen = urls.substring(0, urls.lastIndexOf(","));
        assertEquals(16, server(sixteen).claimsEndpoints().size());
    }
}
