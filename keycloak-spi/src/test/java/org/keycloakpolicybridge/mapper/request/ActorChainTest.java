package org.keycloakpolicybridge.mapper.request;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.List;
import java.util.Map;

import org.junit.jupiter.api.Test;

class ActorChainTest {

    static String jws(String payloadJson) {
        Base64.Encoder b64 = Base64.getUrlEncoder().withoutPadding();
        return b64.encodeToString("{\"alg\":\"RS256\"}".getBytes(StandardCharsets.UTF_8)) + "."
                + b64.encodeToString(payloadJson.getBytes(StandardCharsets.UTF_8)) + ".c2ln";
    }

    static final TokenRequestFacts.Actor CURRENT = new TokenRequestFacts.Actor("sa-3", "agent-3", "agent");

    @Test
    void nestedActClaimsAreFlattenedMostRecentFirst() {
        String token = jws("{\"sub\":\"alice\",\"act\":{\"sub\":\"sa-2\",\"client_id\":\"agent-2\","
                + "\"act\":{\"client_id\":\"legacy-bot\",\"act\":{\"sub\":\"sa-0\"}}}}");
        assertEquals(List.of(new ActorChain.ActRef("sa-2", "agent-2"), new ActorChain.ActRef(null, "legacy-bot"),
                new ActorChain.ActRef("sa-0", null)), ActorChain.fromSubjectToken(token));
    }

    @Test
    void theChainStartsWithTheCurrentActorAndLabelsOlderOnesByTheirClient() {
        String token = jws("{\"act\":{\"sub\":\"sa-2\",\"client_id\":\"agent-2\",\"act\":{\"sub\":\"sa-1\",\"client_id\":\"batch\"}}}");
        Map<String, String> kinds = Map.of("batch", "service_account");
        assertEquals(List.of(CURRENT,
                        new TokenRequestFacts.Actor("sa-2", "agent-2", "agent"),
                        new TokenRequestFacts.Actor("sa-1", "batch", "service_account")),
                ActorChain.build(CURRENT, token, kinds::get));
    }

    @Test
    void noReadableActMeansTheCurrentActorAlone() {
        for (String token : new String[] {null, "", "opaque-token", "a.b", "a.b.c.d.e", jws("not json"), jws("{\"sub\":\"x\"}"),
            jws("{\"act\":\"agent\"}"), jws("{\"act\":{}}"), "x.!!!.y", jws("{\"act\":{\"sub\":1}}")}) {
            assertEquals(List.of(CURRENT), ActorChain.build(CURRENT, token, id -> null), String.valueOf(token));
        }
    }

    @Test
    void readingStopsAtAMalformedLink() {
        String token = jws("{\"act\":{\"sub\":\"sa-2\",\"act\":{\"foo\":1,\"act\":{\"sub\":\"sa-0\"}}}}");
        assertEquals(List.of(new ActorChain.ActRef("sa-2", null)), ActorChain.fromSubjectToken(token));
    }

    @Test
    void aVeryDeepChainIsCutAtTheSchemaLimitAndStillTooDeepForAnyPolicy() {
        String nested = "{\"sub\":\"last\"}";
        for (int i = 0; i < 40; i++) {
            nested = "{\"sub\":\"sa-" + i + "\",\"act\":" + nested + "}";
        }
        List<TokenRequestFacts.Actor> chain = ActorChain.build(CURRENT, jws("{\"act\":" + nested + "}"), id -> null);
        assertEquals(ActorChain.MAX_ACTORS, chain.size());
        assertEquals(CURRENT, chain.get(0));
    }

    @Test
    void anActorNeedsSubOrClientId() {
        assertThrows(IllegalArgumentException.class, () -> new TokenRequestFacts.Actor(null, null, "agent"));
    }
}
