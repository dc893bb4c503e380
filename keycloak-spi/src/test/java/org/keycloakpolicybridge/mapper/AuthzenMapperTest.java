package org.keycloakpolicybridge.mapper;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.HashMap;
import java.util.List;
import java.util.Map;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.sun.net.httpserver.HttpExchange;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
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
import org.keycloakpolicybridge.mapper.bridge.RequestSigner;
import org.keycloakpolicybridge.mapper.bridge.StubBridge;

/** The mapper with {@code kpb.pdp.protocol=authzen}, as Keycloak drives it, against stub PDPs on 127.0.0.1. */
class AuthzenMapperTest {

    static final String SECRET = PolicyBridgeMapperTest.SECRET;
    static final String BEARER = "pdp-token-0123456789abcdef";
    static final ObjectMapper JSON = new ObjectMapper();
    static final String EVALUATION = "/access/v1/evaluation";
    static final String SEARCH = "/access/v1/search/resource";

    private StubBridge pdp;
    private LogCapture logs;
    private final KeycloakStubs kc = new KeycloakStubs();
    private ClientModel web;
    private KeycloakSession session;
    private UserSessionModel userSession;

    /** Answers per path: the gate's body, then the search pages by the request's page.token. */
    interface Route {
        void handle(HttpExchange exchange, JsonNode request) throws Exception;
    }

    @BeforeEach
    void setUp() throws Exception {
        pdp = new StubBridge();
        logs = new LogCapture();
        web = kc.client("id-web", "acme-web", Map.of(), false);
        session = kc.session(web);
        userSession = kc.userSession(kc.user("u-alice", "alice", "alice@acme.example", null, Map.of(), List.of()), "sess-1");
        kc.contextAttributes.put("grant_type", "authorization_code");
    }

    @AfterEach
    void tearDown() {
        pdp.close();
        logs.close();
    }

    private void route(Route gate, Route search) {
        pdp.behave(ex -> {
            JsonNode request = JSON.readTree(pdp.received().get(pdp.received().size() - 1).body());
            if (ex.getRequestURI().getPath().equals(EVALUATION)) {
                gate.handle(ex, request);
            } else if (ex.getRequestURI().getPath().equals(SEARCH)) {
                search.handle(ex, request);
            } else {
                StubBridge.respond(ex, 404, "{}");
            }
        });
    }

    /** A new token request: KeycloakStubs shares one attribute map, so earlier cached outcomes are dropped. */
    private ClientSessionContext freshRequest() {
        kc.contextAttributes.keySet().removeIf(key -> key.startsWith("kpb.outcome:"));
        return kc.clientSessionContext(web);
    }

    private static Route answer(String body) {
        return (ex, request) -> StubBridge.respond(ex, 200, body);
    }

    /** Two pages of roles ({@code crm:read}, then {@code crm:approve}), one of groups. */
    private static final Route PAGED = (ex, request) -> {
        String type = request.at("/resource/type").asText();
        String token = request.at("/page/token").asText("");
        if (type.equals("roles") && token.isEmpty()) {
            StubBridge.respond(ex, 200, "{\"results\":[{\"type\":\"roles\",\"id\":\"crm:read\"}],\"page\":{\"next_token\":\"p2\"}}");
        } else if (type.equals("roles") && token.equals("p2")) {
            StubBridge.respond(ex, 200, "{\"results\":[{\"type\":\"roles\",\"id\":\"crm:approve\"},{\"type\":\"roles\",\"id\":\"crm:read\"}],"
                    + "\"page\":{\"next_token\":\"\"}}");
        } else if (type.equals("groups")) {
            StubBridge.respond(ex, 200, "{\"results\":[{\"type\":\"groups\",\"id\":\"finance\"}]}");
        } else {
            StubBridge.respond(ex, 400, "{}");
        }
    };

    private PolicyBridgeMapper mapper(String secretHex, String bearer) {
        Map<String, String> spi = new HashMap<>();
        spi.put("bridge-url", pdp.baseUrl());
        spi.put("hmac-key-id", "kpb-test");
        if (secretHex != null) {
            spi.put("hmac-secret", secretHex);
        }
        if (bearer != null) {
            spi.put("authzen-bearer-token", bearer);
        }
        PolicyBridgeMapper mapper = new PolicyBridgeMapper();
        mapper.configure(ServerSettings.load(spi::get, name -> null));
        return mapper;
    }

    private static ProtocolMapperModel model(String... config) {
        ProtocolMapperModel model = new ProtocolMapperModel();
        model.setId("model-az");
        model.setName("policy bridge (authzen)");
        model.setProtocolMapper(PolicyBridgeMapper.PROVIDER_ID);
        Map<String, String> map = new HashMap<>(Map.of("access.token.claim", "true", "id.token.claim", "true",
                "kpb.pdp.protocol", "authzen", "kpb.authzen.claims", "roles, groups"));
        for (int i = 0; i < config.length; i += 2) {
            map.put(config[i], config[i + 1]);
        }
        model.setConfig(map);
        return model;
    }

    private static AccessToken accessToken(int expiresIn) {
        AccessToken token = new AccessToken();
        token.id("jti-abc");
        token.exp(Time.currentTimeMillis() / 1000L + expiresIn);
        return token;
    }

    @Test
    void aPermitFillsTheClaimsFromPagedSearchesAndSharesOneConversationPerRequest() throws Exception {
        route(answer("{\"decision\":true,\"context\":{\"decision_id\":\"AZ-1\",\"issuance\":{\"token_lifetime\":90,"
                + "\"claims\":{\"tenant\":\"acme-eu\",\"groups\":[\"overridden\"]}}}}"), PAGED);
        PolicyBridgeMapper mapper = mapper(SECRET, null);
        ClientSessionContext ctx = freshRequest();
        AccessToken access = accessToken(300);
        IDToken id = new IDToken();
        mapper.transformAccessToken(access, model(), session, userSession, ctx);
        mapper.transformIDToken(id, model(), session, userSession, ctx);

        assertEquals(List.of("crm:read", "crm:approve"), access.getOtherClaims().get("roles"), "pages joined in order, deduplicated");
        assertEquals(List.of("finance"), access.getOtherClaims().get("groups"), "a search result wins over an issuance claim");
        assertEquals("acme-eu", access.getOtherClaims().get("tenant"));
        assertEquals("AZ-1", access.getOtherClaims().get("authz_decision_id"));
        assertTrue(access.getExp() <= Time.currentTimeMillis() / 1000L + 90, "token_lifetime is a ceiling");
        assertEquals(List.of("crm:read", "crm:approve"), id.getOtherClaims().get("roles"));

        List<StubBridge.Received> calls = pdp.received();
        assertEquals(List.of(EVALUATION, SEARCH, SEARCH, SEARCH), calls.stream().map(StubBridge.Received::target).toList(),
                "one gate, two pages of roles, one of groups; the ID token reuses the outcome");
        JsonNode gate = JSON.readTree(calls.get(0).body());
        assertEquals("issue:access_token:authorization_code", gate.at("/action/name").asText());
        assertEquals("audience", gate.at("/resource/type").asText());
        assertEquals("acme-web", gate.at("/resource/id").asText());
        assertEquals("u-alice", gate.at("/subject/id").asText());
        assertEquals("jti-abc", gate.at("/context/jti").asText());
        String requestId = gate.at("/context/request_id").asText();
        for (StubBridge.Received call : calls) {
            assertEquals(requestId, call.header("X-Request-ID"));
            assertTrue(call.header("X-KPB-Signature").matches("v1=[0-9a-f]{64}"));
            assertEquals("kpb-test", call.header("X-KPB-Key-Id"));
            assertNull(call.header("Authorization"));
        }
        // The signature covers the AuthZEN path, so the bridge's verifier can check it.
        StubBridge.Received first = calls.get(0);
        String canonical = RequestSigner.canonicalRequest("POST", EVALUATION, Long.parseLong(first.header("X-KPB-Timestamp")), first.body());
        assertEquals(RequestSigner.signatureHeader(List.of(java.util.HexFormat.of().parseHex(SECRET)), canonical),
                first.header("X-KPB-Signature"));
        assertEquals("p2", JSON.readTree(calls.get(2).body()).at("/page/token").asText());
    }

    @Test
    void aGateDenyIsA403LikeABridgeDenyAndNoSearchIsMade() throws Exception {
        route(answer("{\"decision\":false,\"context\":{\"decision_id\":\"AZ-2\",\"reason_user\":\"Your account is not active.\","
                + "\"reason_admin\":\"rule deny-inactive\"}}"), PAGED);
        PolicyBridgeMapper mapper = mapper(SECRET, null);
        ErrorResponseException e = assertThrows(ErrorResponseException.class,
                () -> mapper.transformAccessToken(accessToken(300), model(), session, userSession, freshRequest()));
        assertEquals("access_denied", e.getError());
        assertEquals(403, e.getResponse().getStatus());
        assertEquals("Your account is not active. (reference AZ-2)", e.getErrorDescription());
        assertEquals(1, pdp.received().size());
    }

    @Test
    void aDenyWithoutDecisionIdReferencesTheRequestIdAndAPermitWritesNoDecisionId() throws Exception {
        route(answer("{\"decision\":false}"), PAGED);
        PolicyBridgeMapper mapper = mapper(SECRET, null);
        ErrorResponseException e = assertThrows(ErrorResponseException.class,
                () -> mapper.transformAccessToken(accessToken(300), model(), session, userSession, freshRequest()));
        String requestId = JSON.readTree(pdp.received().get(0).body()).at("/context/request_id").asText();
        assertEquals(DecisionEnforcer.DEFAULT_DENY_TEXT + " (reference " + requestId + ")", e.getErrorDescription());

        route(answer("{\"decision\":true}"), PAGED);
        AccessToken token = accessToken(300);
        mapper.transformAccessToken(token, model("kpb.authzen.claims", ""), session, userSession, freshRequest());
        assertFalse(token.getOtherClaims().containsKey("authz_decision_id"));
        assertEquals(Boolean.FALSE, token.getOtherClaims().containsKey("roles"), "no claims configured: gate only");
    }

    @Test
    void aPermitTheMapperCannotFullyApplyIsADeny() throws Exception {
        route(answer("{\"decision\":true,\"context\":{\"decision_id\":\"AZ-3\",\"issuance\":{\"granted_scope\":\"openid\"}}}"), PAGED);
        PolicyBridgeMapper mapper = mapper(SECRET, null);
        ErrorResponseException e = assertThrows(ErrorResponseException.class,
                () -> mapper.transformAccessToken(accessToken(300), model(), session, userSession, freshRequest()));
        assertEquals(403, e.getResponse().getStatus());
        assertTrue(logs.warnings().get(0).contains("granted_scope"), logs.warnings().toString());

        route(answer("{\"decision\":true,\"context\":{\"issuance\":{\"token_lifetime\":0}}}"), PAGED);
        assertEquals(403, assertThrows(ErrorResponseException.class, () -> mapper.transformAccessToken(accessToken(300), model(),
                session, userSession, freshRequest())).getResponse().getStatus());
    }

    @Test
    void aMalformedSearchFailsClosedOrDegrades() throws Exception {
        route(answer("{\"decision\":true}"), answer("{\"results\":[{\"type\":\"roles\"}]}"));
        PolicyBridgeMapper mapper = mapper(SECRET, null);
        ErrorResponseException e = assertThrows(ErrorResponseException.class,
                () -> mapper.transformAccessToken(accessToken(300), model(), session, userSession, freshRequest()));
        assertEquals("temporarily_unavailable", e.getError());
        assertEquals(503, e.getResponse().getStatus());
        assertTrue(logs.warnings().get(0).contains("INVALID_RESPONSE"), logs.warnings().toString());
        assertFalse(logs.all().contains("alice") || logs.all().contains(SECRET));

        AccessToken degraded = accessToken(300);
        mapper.transformAccessToken(degraded, model("kpb.failure.mode", "degraded"), session, userSession, freshRequest());
        assertEquals(Boolean.TRUE, degraded.getOtherClaims().get("authz_degraded"));
        assertFalse(degraded.getOtherClaims().containsKey("roles"));
    }

    @Test
    void endlessPaginationAndRepeatedTokensAreFailures() throws Exception {
        int[] n = {0};
        route(answer("{\"decision\":true}"), (ex, request) -> StubBridge.respond(ex, 200,
                "{\"results\":[],\"page\":{\"next_token\":\"t" + (++n[0]) + "\"}}"));
        PolicyBridgeMapper mapper = mapper(SECRET, null);
        assertThrows(ErrorResponseException.class, () -> mapper.transformAccessToken(accessToken(300),
                model("kpb.authzen.claims", "roles"), session, userSession, freshRequest()));
        assertEquals(1 + 16, pdp.received().size(), "the gate, then at most 16 pages");
        assertTrue(logs.warnings().get(0).contains("more than 16 pages"), logs.warnings().toString());

        route(answer("{\"decision\":true}"), answer("{\"results\":[],\"page\":{\"next_token\":\"same\"}}"));
        assertThrows(ErrorResponseException.class, () -> mapper.transformAccessToken(accessToken(300),
                model("kpb.authzen.claims", "roles"), session, userSession, freshRequest()));
        assertTrue(logs.warnings().get(1).contains("repeated a page.next_token"), logs.warnings().toString());
    }

    @Test
    void theGateAndTheSearchesShareOneDeadline() throws Exception {
        // Each answer alone fits the read timeout; together they exceed connect + read timeout.
        route((ex, request) -> {
            Thread.sleep(150);
            StubBridge.respond(ex, 200, "{\"decision\":true}");
        }, (ex, request) -> {
            Thread.sleep(150);
            StubBridge.respond(ex, 200, "{\"results\":[]}");
        });
        PolicyBridgeMapper mapper = mapper(SECRET, null);
        long start = System.nanoTime();
        ErrorResponseException e = assertThrows(ErrorResponseException.class, () -> mapper.transformAccessToken(accessToken(300),
                model("kpb.read.timeout.ms", "250", "kpb.connect.timeout.ms", "50"), session, userSession, freshRequest()));
        long elapsedMs = (System.nanoTime() - start) / 1_000_000;
        assertEquals(503, e.getResponse().getStatus());
        assertTrue(elapsedMs < 450, "budget 300 ms, took " + elapsedMs);
        assertTrue(logs.warnings().get(0).contains("TIMEOUT"), logs.warnings().toString());
        assertEquals(2, pdp.received().size(), "the gate, then the search cut by the deadline");
    }

    @Test
    void aPdp5xxFailsOverToTheNextUrlWithADistinctAttempt() throws Exception {
        try (StubBridge second = new StubBridge()) {
            pdp.behave(ex -> StubBridge.respond(ex, 503, "{}"));
            second.behave(ex -> {
                if (ex.getRequestURI().getPath().equals(EVALUATION)) {
                    StubBridge.respond(ex, 200, "{\"decision\":true,\"context\":{\"decision_id\":\"AZ-9\"}}");
                } else {
                    StubBridge.respond(ex, 200, "{\"results\":[{\"type\":\"roles\",\"id\":\"r1\"}]}");
                }
            });
            PolicyBridgeMapper mapper = mapper(SECRET, null);
            AccessToken token = accessToken(300);
            mapper.transformAccessToken(token, model("kpb.authzen.claims", "roles", "kpb.bridge.url", pdp.baseUrl() + "," + second.baseUrl()),
                    session, userSession, freshRequest());
            assertEquals("AZ-9", token.getOtherClaims().get("authz_decision_id"));
            assertEquals(List.of("r1"), token.getOtherClaims().get("roles"));
            assertEquals(1, pdp.received().size());
            assertEquals(2, JSON.readTree(second.received().get(0).body()).at("/context/attempt").asInt());
            assertTrue(logs.warnings().get(0).contains("after failover"), logs.warnings().toString());
        }
    }

    @Test
    void bearerAndNoCredentialModesNeedNoHmacSecret() throws Exception {
        route(answer("{\"decision\":true}"), answer("{\"results\":[]}"));
        PolicyBridgeMapper mapper = mapper(null, BEARER);
        AccessToken token = accessToken(300);
        mapper.transformAccessToken(token, model("kpb.authzen.auth", "bearer"), session, userSession, freshRequest());
        assertEquals(List.of(), token.getOtherClaims().get("roles"), "no results: an empty list");
        for (StubBridge.Received call : pdp.received()) {
            assertEquals("Bearer " + BEARER, call.header("Authorization"));
            assertNull(call.header("X-KPB-Signature"));
        }
        assertFalse(logs.all().contains(BEARER), "the token is never logged");

        pdp.received().clear();
        mapper.transformAccessToken(accessToken(300), model("kpb.authzen.auth", "none"), session, userSession, freshRequest());
        assertNull(pdp.received().get(0).header("Authorization"));
        assertNull(pdp.received().get(0).header("X-KPB-Signature"));

        // hmac without a secret: not configured, so fail closed without a call.
        pdp.received().clear();
        assertEquals(503, assertThrows(ErrorResponseException.class, () -> mapper.transformAccessToken(accessToken(300), model(),
                session, userSession, freshRequest())).getResponse().getStatus());
        assertEquals(0, pdp.received().size());
    }

    @Test
    void settingsAreValidatedNamingTheKeyNeverTheValue() throws Exception {
        MapperSettings s = MapperSettings.parse(Map.of("kpb.pdp.protocol", "authzen", "kpb.authzen.claims", " roles ,groups,roles,",
                "kpb.authzen.auth", "bearer"));
        assertEquals(MapperSettings.Protocol.AUTHZEN, s.protocol());
        assertEquals(List.of("roles", "groups"), s.authzenClaims());
        assertEquals(MapperSettings.Protocol.KPB, MapperSettings.defaults().protocol());
        assertEquals(List.of(), MapperSettings.defaults().authzenClaims());
        for (String reserved : List.of("sub", "roles,Exp", "act", "client_id", "realm_access", "email", "bad name")) {
            ProtocolMapperConfigException e = assertThrows(ProtocolMapperConfigException.class,
                    () -> MapperSettings.parse(Map.of("kpb.authzen.claims", reserved)), reserved);
            assertTrue(e.getMessage().startsWith("kpb.authzen.claims "), e.getMessage());
        }
        String many = String.join(",", java.util.stream.IntStream.range(0, 17).mapToObj(i -> "c" + i).toList());
        assertThrows(ProtocolMapperConfigException.class, () -> MapperSettings.parse(Map.of("kpb.authzen.claims", many)));
        ProtocolMapperConfigException e = assertThrows(ProtocolMapperConfigException.class,
                () -> MapperSettings.parse(Map.of("kpb.pdp.protocol", "opa-secret-thing")));
        assertEquals("kpb.pdp.protocol must be one of kpb, authzen", e.getMessage());
        assertThrows(ProtocolMapperConfigException.class, () -> MapperSettings.parse(Map.of("kpb.authzen.auth", "basic")));
        assertTrue(new PolicyBridgeMapper().getConfigProperties().stream().map(p -> p.getName()).toList()
                .containsAll(List.of("kpb.pdp.protocol", "kpb.authzen.claims", "kpb.authzen.auth")));
    }

    @Test
    void aBadBearerTokenIsAProblemNeverEchoed() {
        ServerSettings server = ServerSettings.load(Map.of("authzen-bearer-token", "bad token\u00e9")::get, name -> null);
        assertTrue(server.authzenBearerToken().isEmpty());
        assertTrue(server.problems().stream().anyMatch(p -> p.startsWith("authzen-bearer-token ")));
        assertFalse(server.problems().toString().contains("bad token") || server.toString().contains("bad token"));
        assertTrue(ServerSettings.load(Map.of("authzen-bearer-token", BEARER)::get, name -> null).toString().contains("authzenBearerToken=present"));
        assertFalse(ServerSettings.load(Map.of("authzen-bearer-token", BEARER)::get, name -> null).toString().contains(BEARER));
    }
}
