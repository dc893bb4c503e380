package org.keycloakpolicybridge.mapper;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.ServerSocket;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.keycloak.Config;
import org.keycloak.common.util.Time;
import org.keycloak.models.ClientModel;
import org.keycloak.models.ClientSessionContext;
import org.keycloak.models.KeycloakSession;
import org.keycloak.models.ProtocolMapperModel;
import org.keycloak.models.UserSessionModel;
import org.keycloak.representations.AccessToken;
import org.keycloak.representations.IDToken;
import org.keycloak.services.ErrorResponseException;
import org.keycloakpolicybridge.mapper.bridge.StubBridge;

/** The mapper with several bridge URLs, as Keycloak drives it, against real listeners on 127.0.0.1. */
class MapperFailoverTest {

    static final String SECRET = PolicyBridgeMapperTest.SECRET;
    static final ObjectMapper JSON = new ObjectMapper();

    private StubBridge first;
    private StubBridge second;
    private LogCapture logs;
    private final KeycloakStubs kc = new KeycloakStubs();
    private ClientModel web;
    private KeycloakSession session;
    private UserSessionModel userSession;

    @BeforeEach
    void setUp() throws Exception {
        first = new StubBridge();
        second = new StubBridge();
        logs = new LogCapture();
        web = kc.client("id-web", "acme-web", Map.of(), false);
        session = kc.session(web);
        userSession = kc.userSession(kc.user("u-alice", "alice", "alice@acme.example", null, Map.of(), List.of()), "sess-1");
        kc.contextAttributes.put("grant_type", "authorization_code");
    }

    @AfterEach
    void tearDown() {
        first.close();
        second.close();
        logs.close();
    }

    private PolicyBridgeMapper mapper(String bridgeUrls) {
        PolicyBridgeMapper mapper = new PolicyBridgeMapper();
        Map<String, String> spi = Map.of("bridge-url", bridgeUrls, "hmac-key-id", "kpb-test", "hmac-secret", SECRET);
        mapper.init(Stub.of(Config.Scope.class, Stub.answers("get", (Stub.Answer) args -> spi.get((String) args[0]))));
        return mapper;
    }

    private static ProtocolMapperModel model(String... config) {
        ProtocolMapperModel model = new ProtocolMapperModel();
        model.setId("model-1");
        model.setName("policy bridge");
        model.setProtocolMapper(PolicyBridgeMapper.PROVIDER_ID);
        Map<String, String> map = new HashMap<>(Map.of("access.token.claim", "true", "id.token.claim", "true"));
        for (int i = 0; i < config.length; i += 2) {
            map.put(config[i], config[i + 1]);
        }
        model.setConfig(map);
        return model;
    }

    private static AccessToken accessToken() {
        AccessToken token = new AccessToken();
        token.exp(Time.currentTimeMillis() / 1000L + 300);
        return token;
    }

    @Test
    void aDeadFirstReplicaIsFailedOverOnceForTheWholeTokenRequest() throws Exception {
        int closedPort;
        try (ServerSocket socket = new ServerSocket(0)) {
            closedPort = socket.getLocalPort();
        }
        second.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D-2nd", "{\"roles\":[\"crm:read\"]}")));
        PolicyBridgeMapper mapper = mapper("http://127.0.0.1:" + closedPort + "," + second.baseUrl());
        ClientSessionContext ctx = kc.clientSessionContext(web);
        AccessToken access = accessToken();
        IDToken id = new IDToken();

        mapper.transformAccessToken(access, model(), session, userSession, ctx);
        mapper.transformIDToken(id, model(), session, userSession, ctx);

        assertEquals("D-2nd", access.getOtherClaims().get("authz_decision_id"));
        assertEquals("D-2nd", id.getOtherClaims().get("authz_decision_id"));
        assertEquals(1, second.received().size(), "one decision per token request");
        List<String> warnings = logs.warnings();
        assertEquals(1, warnings.size(), warnings.toString());
        assertTrue(warnings.get(0).contains("decided by bridge #2 " + second.claimsEndpoint())
                && warnings.get(0).contains("#1 http://127.0.0.1:" + closedPort + "/v1/claims: UNREACHABLE"), warnings.get(0));
        assertFalse(logs.all().contains(SECRET) || logs.all().contains("alice"), "no secret or subject in logs");
    }

    @Test
    void theMapperOverrideListReplacesTheServerList() throws Exception {
        first.behave(ex -> StubBridge.respond(ex, 503, "{\"error\":\"decision_log_unavailable\"}"));
        second.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D-override", "{}")));
        PolicyBridgeMapper mapper = mapper("http://127.0.0.1:9");
        AccessToken access = accessToken();
        mapper.transformAccessToken(access, model("kpb.bridge.url", first.baseUrl() + ", " + second.baseUrl()), session, userSession,
                kc.clientSessionContext(web));
        assertEquals("D-override", access.getOtherClaims().get("authz_decision_id"));
        assertEquals(1, first.received().size());
        assertEquals(1, second.received().size());
        // The retry is the same request (same request_id, facts read once) marked as attempt 2, so it
        // is a distinct signed request for replicas that share the first one's replay nonces.
        JsonNode sent1 = JSON.readTree(first.received().get(0).body());
        JsonNode sent2 = JSON.readTree(second.received().get(0).body());
        assertFalse(sent1.has("attempt"));
        assertEquals(2, sent2.get("attempt").asInt());
        ((ObjectNode) sent2).remove("attempt");
        assertEquals(sent1, sent2);
    }

    @Test
    void whenEveryReplicaFailsTheFailureModeAppliesAsWithOne() throws Exception {
        first.behave(ex -> StubBridge.respond(ex, 503, "{}"));
        second.behave(ex -> StubBridge.respond(ex, 500, "{}"));
        PolicyBridgeMapper mapper = mapper(first.baseUrl() + "," + second.baseUrl());
        ErrorResponseException e = assertThrows(ErrorResponseException.class,
                () -> mapper.transformAccessToken(accessToken(), model(), session, userSession, kc.clientSessionContext(web)));
        assertEquals(503, e.getResponse().getStatus());
        assertEquals("temporarily_unavailable", e.getError());

        AccessToken degraded = accessToken();
        mapper.transformAccessToken(degraded, model("kpb.failure.mode", "degraded"), session, userSession, kc.clientSessionContext(web));
        assertEquals(Boolean.TRUE, degraded.getOtherClaims().get("authz_degraded"));
        List<String> warnings = logs.warnings();
        assertTrue(warnings.get(warnings.size() - 1).contains("none of 2 bridge URLs gave a decision"), warnings.toString());
    }
}
