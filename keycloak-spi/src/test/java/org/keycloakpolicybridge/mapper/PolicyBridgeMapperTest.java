package org.keycloakpolicybridge.mapper;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.stream.Collectors;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
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
import org.keycloak.protocol.ProtocolMapperConfigException;
import org.keycloak.representations.AccessToken;
import org.keycloak.representations.IDToken;
import org.keycloak.services.ErrorResponseException;
import org.keycloakpolicybridge.mapper.bridge.StubBridge;

/** The mapper as Keycloak drives it, against a stub bridge on 127.0.0.1 and stubbed models. */
class PolicyBridgeMapperTest {

    static final String SECRET = "96f701f13b2cef02e0c4cb6e8f76b3b73c1ec73ee33a2831a4ca87bc2f37b6b9";
    static final ObjectMapper JSON = new ObjectMapper();

    private StubBridge bridge;
    private LogCapture logs;
    private final KeycloakStubs kc = new KeycloakStubs();
    private ClientModel web;
    private KeycloakSession session;
    private UserSessionModel userSession;

    @BeforeEach
    void setUp() throws Exception {
        bridge = new StubBridge();
        logs = new LogCapture();
        web = kc.client("id-web", "acme-web", Map.of(), false);
        session = kc.session(web);
        userSession = kc.userSession(kc.user("u-alice", "alice", "alice@acme.example", null, Map.of(), List.of()), "sess-1");
        kc.contextAttributes.put("grant_type", "authorization_code");
    }

    @AfterEach
    void tearDown() {
        bridge.close();
        logs.close();
    }

    private PolicyBridgeMapper mapper(String secretHex) {
        PolicyBridgeMapper mapper = new PolicyBridgeMapper();
        Map<String, String> spi = new HashMap<>();
        spi.put("bridge-url", bridge.baseUrl());
        spi.put("hmac-key-id", "kpb-test");
        if (secretHex != null) {
            spi.put("hmac-secret", secretHex);
        }
        mapper.init(Stub.of(Config.Scope.class, Stub.answers("get", (Stub.Answer) args -> spi.get((String) args[0]))));
        return mapper;
    }

    private static ProtocolMapperModel model(String... config) {
        ProtocolMapperModel model = new ProtocolMapperModel();
        model.setId("model-1");
        model.setName("policy bridge");
        model.setProtocolMapper(PolicyBridgeMapper.PROVIDER_ID);
        Map<String, String> map = new HashMap<>(Map.of("access.token.claim", "true", "id.token.claim", "true",
                "userinfo.token.claim", "true", "introspection.token.claim", "true"));
        for (int i = 0; i < config.length; i += 2) {
            map.put(config[i], config[i + 1]);
        }
        model.setConfig(map);
        return model;
    }

    private static AccessToken accessToken(int expiresIn) {
        AccessToken token = new AccessToken();
        token.exp(Time.currentTimeMillis() / 1000L + expiresIn);
        token.setRealmAccess(new AccessToken.Access().addRole("offline_access"));
        return token;
    }

    private JsonNode sentRequest(int index) throws Exception {
        return JSON.readTree(bridge.received().get(index).body());
    }

    @Test
    void identityPriorityAndRegistration() throws Exception {
        PolicyBridgeMapper mapper = new PolicyBridgeMapper();
        assertEquals("kpb-policy-bridge-mapper", mapper.getId());
        assertEquals(100, mapper.getPriority());
        assertEquals("openid-connect", mapper.getProtocol());
        Set<String> keys = mapper.getConfigProperties().stream().map(p -> p.getName()).collect(Collectors.toSet());
        assertTrue(keys.containsAll(Set.of("kpb.failure.mode", "kpb.degraded.ttl.seconds", "kpb.connect.timeout.ms", "kpb.read.timeout.ms",
                "kpb.user.attributes", "kpb.tenant.param", "kpb.tenant.header", "kpb.circuit.failure.threshold", "kpb.circuit.open.ms",
                "kpb.bridge.url", "access.token.claim", "id.token.claim", "userinfo.token.claim", "introspection.token.claim")), keys.toString());
        assertTrue(mapper.getConfigMetadata().stream().anyMatch(p -> p.getName().equals("hmac-secret") && p.isSecret()));
        Path services = Path.of("src/main/resources/META-INF/services/org.keycloak.protocol.ProtocolMapper");
        assertEquals(PolicyBridgeMapper.class.getName(), Files.readString(services, StandardCharsets.UTF_8).trim());
    }

    @Test
    void validateConfigRejectsBadValuesNamingTheKey() throws Exception {
        PolicyBridgeMapper mapper = new PolicyBridgeMapper();
        mapper.validateConfig(null, null, null, model("kpb.failure.mode", "degraded", "kpb.read.timeout.ms", "500"));
        ProtocolMapperConfigException e = assertThrows(ProtocolMapperConfigException.class,
                () -> mapper.validateConfig(null, null, null, model("kpb.circuit.open.ms", "soon")));
        assertTrue(e.getMessage().startsWith("kpb.circuit.open.ms"));
    }

    @Test
    void accessAndIdTokenShareOneSignedBridgeCall() throws Exception {
        bridge.behave(ex -> StubBridge.respond(ex, 200, "{\"decision_id\":\"D-1\",\"effect\":\"permit\",\"claims\":{\"roles\":[\"crm:read\"],"
                + "\"tenant\":\"acme-eu\"},\"remove_claims\":[\"realm_access\"],\"max_ttl_seconds\":120,\"reasons\":[]}"));
        PolicyBridgeMapper mapper = mapper(SECRET);
        ClientSessionContext ctx = kc.clientSessionContext(web);
        ProtocolMapperModel model = model();
        AccessToken access = accessToken(300);
        IDToken id = new IDToken();
        id.exp(Time.currentTimeMillis() / 1000L + 300);

        mapper.transformAccessToken(access, model, session, userSession, ctx);
        mapper.transformIDToken(id, model, session, userSession, ctx);

        assertEquals(1, bridge.received().size(), "one decision per token request");
        assertEquals(List.of("crm:read"), access.getOtherClaims().get("roles"));
        assertEquals("D-1", access.getOtherClaims().get("authz_decision_id"));
        assertNull(access.getRealmAccess());
        assertTrue(access.getExp() <= (Time.currentTimeMillis() / 1000L) + 120);
        assertEquals("D-1", id.getOtherClaims().get("authz_decision_id"));
        assertEquals("acme-eu", id.getOtherClaims().get("tenant"));
        JsonNode request = sentRequest(0);
        assertEquals("token", request.get("event").asText());
        assertEquals("authorization_code", request.get("grant_type").asText());
        assertEquals("u-alice", request.at("/subject/id").asText());
        assertTrue(bridge.received().get(0).header("X-KPB-Signature").matches("v1=[0-9a-f]{64}"));
        assertEquals("kpb-test", bridge.received().get(0).header("X-KPB-Key-Id"));
    }

    @Test
    void userinfoAndIntrospectionAreTheirOwnEvents() throws Exception {
        bridge.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D-2", "{\"roles\":[]}")));
        PolicyBridgeMapper mapper = mapper(SECRET);
        AccessToken userinfo = new AccessToken();
        mapper.transformUserInfoToken(userinfo, model(), session, userSession, kc.clientSessionContext(web));
        AccessToken introspected = accessToken(300);
        mapper.transformIntrospectionToken(introspected, model(), session, userSession, kc.clientSessionContext(web));

        assertEquals(2, bridge.received().size());
        assertEquals("userinfo", sentRequest(0).get("event").asText());
        assertEquals("none", sentRequest(0).get("grant_type").asText());
        assertEquals("introspection", sentRequest(1).get("event").asText());
        assertEquals("D-2", userinfo.getOtherClaims().get("authz_decision_id"));
        assertNull(userinfo.getExp());
    }

    @Test
    void includeTogglesAreHonoured() throws Exception {
        bridge.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D-3", "{}")));
        PolicyBridgeMapper mapper = mapper(SECRET);
        AccessToken token = new AccessToken();
        mapper.transformUserInfoToken(token, model("userinfo.token.claim", "false"), session, userSession, kc.clientSessionContext(web));
        mapper.transformIntrospectionToken(token, model("introspection.token.claim", "false"), session, userSession, kc.clientSessionContext(web));
        assertEquals(0, bridge.received().size());
    }

    @Test
    void aDenyIsA403AccessDeniedForEveryArtifact() throws Exception {
        bridge.behave(ex -> StubBridge.respond(ex, 200, StubBridge.deny("D-4", "deny-inactive-principal", "IGA status is not active")));
        PolicyBridgeMapper mapper = mapper(SECRET);
        ClientSessionContext ctx = kc.clientSessionContext(web);
        ErrorResponseException e = assertThrows(ErrorResponseException.class,
                () -> mapper.transformAccessToken(accessToken(300), model(), session, userSession, ctx));
        assertEquals("access_denied", e.getError());
        assertEquals(403, e.getResponse().getStatus());
        // This stub answers as an older bridge (no user_message): the mapper's neutral default, never the reasons.
        assertEquals("Access was denied by your organisation's access policy. (reference D-4)", e.getErrorDescription());
        assertThrows(ErrorResponseException.class, () -> mapper.transformIDToken(new IDToken(), model(), session, userSession, ctx));
        assertEquals(1, bridge.received().size());
    }

    @Test
    void aDenyAtUserinfoShowsTheBridgesUserMessageNotTheReasons() throws Exception {
        bridge.behave(ex -> StubBridge.respond(ex, 200, "{\"decision_id\":\"D-5\",\"effect\":\"deny\",\"claims\":{},\"remove_claims\":[],"
                + "\"reasons\":[{\"rule\":\"deny-inactive-principal\",\"message\":\"IGA status is not active\",\"kind\":\"deny\"}],"
                + "\"user_message\":\"Your account is not active. Contact the service desk.\"}"));
        PolicyBridgeMapper mapper = mapper(SECRET);
        ErrorResponseException e = assertThrows(ErrorResponseException.class, () -> mapper.transformUserInfoToken(
                new AccessToken(), model(), session, userSession, kc.clientSessionContext(web)));
        assertEquals("access_denied", e.getError());
        assertEquals("Your account is not active. Contact the service desk. (reference D-5)", e.getErrorDescription());
        assertEquals("userinfo", sentRequest(0).get("event").asText());
    }

    @Test
    void failClosedIsA503AndLogsOnceWithoutSecrets() throws Exception {
        bridge.behave(ex -> StubBridge.respond(ex, 500, "{\"error\":\"internal_error\"}"));
        PolicyBridgeMapper mapper = mapper(SECRET);
        ClientSessionContext ctx = kc.clientSessionContext(web);
        ErrorResponseException e = assertThrows(ErrorResponseException.class,
                () -> mapper.transformAccessToken(accessToken(300), model(), session, userSession, ctx));
        assertEquals("temporarily_unavailable", e.getError());
        assertEquals(503, e.getResponse().getStatus());
        assertThrows(ErrorResponseException.class, () -> mapper.transformIDToken(new IDToken(), model(), session, userSession, ctx));

        assertEquals(1, bridge.received().size(), "the failure is cached for the request too");
        List<String> warnings = logs.warnings();
        assertEquals(1, warnings.size(), warnings.toString());
        assertTrue(warnings.get(0).contains("HTTP_STATUS") && warnings.get(0).contains("acme-web"), warnings.get(0));
        assertFalse(logs.all().contains(SECRET) || logs.all().contains("alice"), "no secret or subject in logs");
    }

    @Test
    void degradedModeMintsAMarkedShortLivedTokenWithoutGovernedClaims() throws Exception {
        int closedPort;
        try (ServerSocket socket = new ServerSocket(0)) {
            closedPort = socket.getLocalPort();
        }
        PolicyBridgeMapper mapper = mapper(SECRET);
        ClientSessionContext ctx = kc.clientSessionContext(web);
        ProtocolMapperModel model = model("kpb.failure.mode", "degraded", "kpb.degraded.ttl.seconds", "45",
                "kpb.bridge.url", "http://127.0.0.1:" + closedPort);
        AccessToken access = accessToken(300);
        IDToken id = new IDToken();
        id.exp(Time.currentTimeMillis() / 1000L + 300);

        mapper.transformAccessToken(access, model, session, userSession, ctx);
        mapper.transformIDToken(id, model, session, userSession, ctx);

        for (IDToken token : List.of(access, id)) {
            assertEquals(Boolean.TRUE, token.getOtherClaims().get("authz_degraded"));
            assertFalse(token.getOtherClaims().containsKey("authz_decision_id"));
            assertTrue(token.getExp() <= (Time.currentTimeMillis() / 1000L) + 45);
        }
        assertNull(access.getRealmAccess(), "directory roles are withdrawn: a degraded token carries no ungoverned authority");
        assertEquals(1, logs.warnings().size());
        assertTrue(logs.warnings().get(0).contains("UNREACHABLE"));
    }

    @Test
    void aMissingSecretFailsClosedWithAClearLogLine() throws Exception {
        PolicyBridgeMapper mapper = mapper(null);
        assertTrue(logs.warnings().stream().anyMatch(w -> w.contains("no HMAC secret configured")), logs.warnings().toString());
        ErrorResponseException e = assertThrows(ErrorResponseException.class,
                () -> mapper.transformAccessToken(accessToken(300), model(), session, userSession, kc.clientSessionContext(web)));
        assertEquals(503, e.getResponse().getStatus());
        assertEquals(0, bridge.received().size());

        AccessToken degraded = accessToken(300);
        mapper.transformAccessToken(degraded, model("kpb.failure.mode", "degraded"), session, userSession, kc.clientSessionContext(web));
        assertEquals(Boolean.TRUE, degraded.getOtherClaims().get("authz_degraded"));
    }

    @Test
    void aShortSecretIsRefusedWithoutPrintingIt() {
        String shortSecret = "ab".repeat(16);
        PolicyBridgeMapper mapper = mapper(shortSecret);
        assertTrue(logs.warnings().stream().anyMatch(w -> w.contains("shorter than 32 bytes")));
        assertFalse(logs.all().contains(shortSecret));
        assertThrows(ErrorResponseException.class,
                () -> mapper.transformAccessToken(accessToken(300), model(), session, userSession, kc.clientSessionContext(web)));
    }

    @Test
    void invalidSettingsThatBypassedValidationFailClosed() throws Exception {
        bridge.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D-5", "{}")));
        PolicyBridgeMapper mapper = mapper(SECRET);
        ErrorResponseException e = assertThrows(ErrorResponseException.class, () -> mapper.transformAccessToken(accessToken(300),
                model("kpb.failure.mode", "degraded", "kpb.read.timeout.ms", "forever"), session, userSession, kc.clientSessionContext(web)));
        assertEquals(503, e.getResponse().getStatus());
        assertEquals(0, bridge.received().size());
        assertTrue(logs.warnings().get(0).contains("kpb.read.timeout.ms"));
    }

    @Test
    void anUnexpectedModelStateFailsPerModeNeverAs500() throws Exception {
        bridge.behave(ex -> StubBridge.respond(ex, 200, StubBridge.permit("D-6", "{}")));
        PolicyBridgeMapper mapper = mapper(SECRET);
        UserSessionModel broken = Stub.of(UserSessionModel.class, Stub.answers());
        ErrorResponseException e = assertThrows(ErrorResponseException.class, () -> mapper.transformAccessToken(accessToken(300),
                model(), session, broken, kc.clientSessionContext(web)));
        assertEquals(503, e.getResponse().getStatus());
        assertTrue(logs.warnings().get(0).contains("MAPPER_ERROR"));
        AccessToken degraded = accessToken(300);
        mapper.transformAccessToken(degraded, model("kpb.failure.mode", "degraded"), session, broken, kc.clientSessionContext(web));
        assertEquals(Boolean.TRUE, degraded.getOtherClaims().get("authz_degraded"));
        assertEquals(0, bridge.received().size());
    }

    @Test
    void aSlowBridgeFailsClosedWithinTheConfiguredDeadline() throws Exception {
        bridge.behave(ex -> {
            Thread.sleep(3000);
            StubBridge.respond(ex, 200, StubBridge.permit("late", "{}"));
        });
        PolicyBridgeMapper mapper = mapper(SECRET);
        long start = System.nanoTime();
        ErrorResponseException e = assertThrows(ErrorResponseException.class, () -> mapper.transformAccessToken(accessToken(300),
                model("kpb.read.timeout.ms", "250"), session, userSession, kc.clientSessionContext(web)));
        assertEquals(503, e.getResponse().getStatus());
        assertTrue((System.nanoTime() - start) / 1_000_000 < 1500);
        assertTrue(logs.warnings().get(0).contains("TIMEOUT"));
    }
}
