package org.keycloakpolicybridge.mapper;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.URI;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.keycloak.protocol.ProtocolMapperConfigException;

class MapperSettingsTest {

    @Test
    void defaultsApplyToAnEmptyConfig() {
        MapperSettings s = MapperSettings.defaults();
        assertEquals(FailureMode.FAIL_CLOSED, s.failureMode());
        assertEquals(60, s.degradedTtlSeconds());
        assertEquals(200, s.connectTimeoutMs());
        assertEquals(1000, s.readTimeoutMs());
        assertEquals(List.of(), s.userAttributes());
        assertEquals("tenant", s.tenantParam());
        assertEquals("X-KPB-Tenant", s.tenantHeader());
        assertEquals(5, s.circuitFailureThreshold());
        assertEquals(5000, s.circuitOpenMs());
        assertEquals(Optional.empty(), s.bridgeEndpoint());
    }

    @Test
    void parsesEveryKey() throws Exception {
        Map<String, String> config = new HashMap<>();
        config.put("kpb.failure.mode", "degraded");
        config.put("kpb.degraded.ttl.seconds", "30");
        config.put("kpb.connect.timeout.ms", "150");
        config.put("kpb.read.timeout.ms", "800");
        config.put("kpb.user.attributes", " department, cost_center ,,department");
        config.put("kpb.tenant.param", "org");
        config.put("kpb.tenant.header", "X-Org");
        config.put("kpb.circuit.failure.threshold", "3");
        config.put("kpb.circuit.open.ms", "2000");
        config.put("kpb.bridge.url", "https://kpb.internal:8443/bridge/");
        config.put("access.token.claim", "true");
        MapperSettings s = MapperSettings.parse(config);
        assertEquals(FailureMode.DEGRADED, s.failureMode());
        assertEquals(30, s.degradedTtlSeconds());
        assertEquals(150, s.connectTimeoutMs());
        assertEquals(800, s.readTimeoutMs());
        assertEquals(List.of("department", "cost_center"), s.userAttributes());
        assertEquals("org", s.tenantParam());
        assertEquals("X-Org", s.tenantHeader());
        assertEquals(3, s.circuitFailureThreshold());
        assertEquals(2000, s.circuitOpenMs());
        assertEquals(Optional.of(URI.create("https://kpb.internal:8443/bridge/v1/claims")), s.bridgeEndpoint());
    }

    @ParameterizedTest
    @CsvSource(delimiter = '|', value = {
        "kpb.failure.mode|fail_open",
        "kpb.degraded.ttl.seconds|0",
        "kpb.degraded.ttl.seconds|86401",
        "kpb.connect.timeout.ms|-5",
        "kpb.read.timeout.ms|1s",
        "kpb.read.timeout.ms|99999999999",
        "kpb.user.attributes|dept,bad name",
        "kpb.tenant.param|ten ant",
        "kpb.tenant.header|X-Tenant:",
        "kpb.circuit.failure.threshold|0",
        "kpb.circuit.open.ms|3600001",
        "kpb.bridge.url|ftp://kpb.internal",
        "kpb.bridge.url|https://user:pw@kpb.internal",
        "kpb.bridge.url|https://kpb.internal/?a=b",
        "kpb.bridge.url|not a url"
    })
    void badValuesAreRejectedNamingTheKeyNotTheValue(String key, String value) {
        ProtocolMapperConfigException e = assertThrows(ProtocolMapperConfigException.class, () -> MapperSettings.parse(Map.of(key, value)));
        assertTrue(e.getMessage().startsWith(key + " "), e.getMessage());
        if (value.length() >= 4) {
            // (Short values such as "0" occur in the rule text itself.)
            assertFalse(e.getMessage().contains(value), "the value is not echoed");
        }
    }

    @Test
    void theAdminConsoleListsEveryKeyWithItsDefault() {
        Map<String, Object> defaults = new HashMap<>();
        MapperSettings.configProperties().forEach(p -> defaults.put(p.getName(), p.getDefaultValue()));
        assertEquals(Map.ofEntries(Map.entry("kpb.failure.mode", "fail_closed"), Map.entry("kpb.degraded.ttl.seconds", "60"),
                Map.entry("kpb.connect.timeout.ms", "200"), Map.entry("kpb.read.timeout.ms", "1000"), Map.entry("kpb.user.attributes", ""),
                Map.entry("kpb.tenant.param", "tenant"), Map.entry("kpb.tenant.header", "X-KPB-Tenant"),
                Map.entry("kpb.circuit.failure.threshold", "5"), Map.entry("kpb.circuit.open.ms", "5000"), Map.entry("kpb.bridge.url", ""),
                Map.entry("kpb.pdp.protocol", "kpb"), Map.entry("kpb.authzen.claims", ""), Map.entry("kpb.authzen.auth", "hmac")), defaults);
        MapperSettings.configProperties().forEach(p -> assertFalse(p.isSecret(), p.getName() + " is not a secret"));
    }
}
