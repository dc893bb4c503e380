package org.keycloakpolicybridge.mapper.token;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotSame;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.OptionalLong;

import com.fasterxml.jackson.core.type.TypeReference;
import org.junit.jupiter.api.Test;
import org.keycloak.representations.AccessToken;
import org.keycloak.representations.IDToken;
import org.keycloak.util.JsonSerialization;
import org.keycloakpolicybridge.mapper.bridge.BridgeDecision;

class ClaimWriterTest {

    static final long NOW = 1_795_852_800L;

    static BridgeDecision permit(Map<String, Object> claims, List<String> remove, Long ttl) {
        return new BridgeDecision("D-1", BridgeDecision.Effect.PERMIT, claims, remove,
                ttl == null ? OptionalLong.empty() : OptionalLong.of(ttl), List.of());
    }

    static AccessToken accessToken(long expiresIn) {
        AccessToken token = new AccessToken();
        token.exp(NOW + expiresIn);
        token.setRealmAccess(new AccessToken.Access().addRole("offline_access"));
        token.addAccess("account").addRole("view-profile");
        token.setEmail("alice@acme.example");
        token.getOtherClaims().put("groups", List.of("/sales"));
        return token;
    }

    @Test
    void aliasesOfReservedAndTypedClaimsAreRefusedLikeTheClaimsThemselves() {
        for (String alias : List.of("SUB", "Exp", "act.sub", "may_act/sub", "authz_decision_id.x")) {
            assertTrue(ReservedClaims.isReserved(alias), alias);
            assertThrows(IllegalArgumentException.class, () -> ClaimWriter.applyPermit(accessToken(300), permit(Map.of(alias, "x"), List.of(), null), NOW), alias);
        }
        for (String alias : List.of("Email", "realm_access.roles", "RESOURCE_ACCESS/account")) {
            assertTrue(ReservedClaims.isTyped(alias), alias);
            assertThrows(IllegalArgumentException.class, () -> ClaimWriter.applyPermit(accessToken(300), permit(Map.of(alias, "x"), List.of(), null), NOW), alias);
        }
        assertFalse(ReservedClaims.isReserved("act"), "act itself is the bridge's to set");
        assertFalse(ReservedClaims.isReserved("crm.tier") || ReservedClaims.isTyped("crm.tier"));
        assertFalse(ReservedClaims.isReserved("https://acme.example/roles") || ReservedClaims.isTyped("https://acme.example/roles"));
    }

    @Test
    void setsNestedClaimsWithTheirJsonTypesAndTheDecisionId() throws Exception {
        Map<String, Object> limits = new LinkedHashMap<>();
        limits.put("export", Map.of("max_rows", 5000, "formats", List.of("csv")));
        limits.put("approver", true);
        limits.put("discount", 0.15);
        limits.put("region", null);
        AccessToken token = accessToken(300);
        ClaimWriter.applyPermit(token, permit(Map.of("roles", List.of("crm:read"), "crm_limits", limits, "a.b", "dotted"),
                List.of(), null), NOW);

        Map<String, Object> json = JsonSerialization.readValue(JsonSerialization.writeValueAsBytes(token), new TypeReference<Map<String, Object>>() { });
        assertEquals(List.of("crm:read"), json.get("roles"));
        Map<String, Object> serialized = new LinkedHashMap<>(limits);
        // Keycloak serializes tokens with NON_NULL inclusion: a null member of a claim object is omitted.
        serialized.remove("region");
        assertEquals(serialized, json.get("crm_limits"), "objects, arrays, numbers and booleans keep their JSON types");
        assertTrue(((Map<?, ?>) token.getOtherClaims().get("crm_limits")).containsKey("region"), "the token object keeps the null");
        assertEquals("dotted", json.get("a.b"), "a dotted name is one claim, not a path");
        assertEquals("D-1", json.get("authz_decision_id"));
        assertEquals(NOW + 300, ((Number) json.get("exp")).longValue(), "no max_ttl: exp unchanged");
    }

    @Test
    void removeClaimsUsesTheTypedSettersAndOtherClaims() {
        AccessToken token = accessToken(300);
        ClaimWriter.applyPermit(token, permit(Map.of(), List.of("realm_access", "resource_access", "email", "groups", "absent"), null), NOW);
        assertNull(token.getRealmAccess());
        assertTrue(token.getResourceAccess().isEmpty());
        assertNull(token.getEmail());
        assertFalse(token.getOtherClaims().containsKey("groups"));
    }

    @Test
    void aClaimBothRemovedAndSetEndsUpSet() {
        AccessToken token = accessToken(300);
        ClaimWriter.applyPermit(token, permit(Map.of("groups", List.of("/new")), List.of("groups"), null), NOW);
        assertEquals(List.of("/new"), token.getOtherClaims().get("groups"));
    }

    @Test
    void maxTtlShortensButNeverLengthens() {
        AccessToken shortLived = accessToken(60);
        ClaimWriter.applyPermit(shortLived, permit(Map.of(), List.of(), 300L), NOW);
        assertEquals(NOW + 60, shortLived.getExp());

        AccessToken longLived = accessToken(3600);
        ClaimWriter.applyPermit(longLived, permit(Map.of(), List.of(), 300L), NOW);
        assertEquals(NOW + 300, longLived.getExp());

        AccessToken zero = accessToken(3600);
        ClaimWriter.applyPermit(zero, permit(Map.of(), List.of(), 0L), NOW);
        assertEquals(NOW, zero.getExp());
    }

    @Test
    void aTokenWithoutExpGetsNone() {
        AccessToken userinfo = new AccessToken();
        ClaimWriter.applyPermit(userinfo, permit(Map.of("roles", List.of()), List.of(), 300L), NOW);
        assertNull(userinfo.getExp());
        ClaimWriter.applyDegraded(userinfo, NOW, 60);
        assertNull(userinfo.getExp());
    }

    @Test
    void worksOnIdTokensWhichHaveNoAccessFields() {
        IDToken idToken = new IDToken();
        idToken.exp(NOW + 300);
        idToken.setEmail("a@b");
        ClaimWriter.applyPermit(idToken, permit(Map.of("tenant", "acme-eu"), List.of("realm_access", "email"), 100L), NOW);
        assertEquals("acme-eu", idToken.getOtherClaims().get("tenant"));
        assertNull(idToken.getEmail());
        assertEquals(NOW + 100, idToken.getExp());
    }

    @Test
    void eachTokenGetsItsOwnCopyOfTheClaimValues() {
        List<String> roles = new ArrayList<>(List.of("crm:read"));
        BridgeDecision decision = permit(Map.of("roles", roles), List.of(), null);
        AccessToken access = accessToken(300);
        IDToken id = new IDToken();
        ClaimWriter.applyPermit(access, decision, NOW);
        ClaimWriter.applyPermit(id, decision, NOW);
        assertNotSame(access.getOtherClaims().get("roles"), id.getOtherClaims().get("roles"));
        @SuppressWarnings("unchecked")
        List<String> accessRoles = (List<String>) access.getOtherClaims().get("roles");
        accessRoles.add("changed-by-a-later-mapper");
        assertEquals(List.of("crm:read"), id.getOtherClaims().get("roles"));
    }

    @Test
    void refusesReservedAndTypedClaimsAndDenies() {
        AccessToken token = accessToken(300);
        assertThrows(IllegalArgumentException.class, () -> ClaimWriter.applyPermit(token, permit(Map.of("exp", 1), List.of(), null), NOW));
        assertThrows(IllegalArgumentException.class, () -> ClaimWriter.applyPermit(token, permit(Map.of("email", "x"), List.of(), null), NOW));
        assertThrows(IllegalArgumentException.class, () -> ClaimWriter.applyPermit(token, permit(Map.of(), List.of("sub"), null), NOW));
        BridgeDecision deny = new BridgeDecision("D", BridgeDecision.Effect.DENY, Map.of(), List.of(), OptionalLong.empty(), List.of());
        assertThrows(IllegalArgumentException.class, () -> ClaimWriter.applyPermit(token, deny, NOW));
        assertEquals(NOW + 300, token.getExp(), "a refused decision changed nothing it could not undo");
    }

    @Test
    void degradedMarksTheTokenAndCapsItsLifetime() {
        AccessToken token = accessToken(300);
        token.getOtherClaims().put("authz_decision_id", "stale");
        token.setRealmAccess(new AccessToken.Access().addRole("admin"));
        token.addAccess("crm-api").addRole("crm:write");
        ClaimWriter.applyDegraded(token, NOW, 60);
        assertEquals(Boolean.TRUE, token.getOtherClaims().get("authz_degraded"));
        assertFalse(token.getOtherClaims().containsKey("authz_decision_id"));
        assertNull(token.getRealmAccess(), "directory roles are authority without a decision");
        assertTrue(token.getResourceAccess() == null || token.getResourceAccess().isEmpty());
        assertEquals(NOW + 60, token.getExp());

        AccessToken shorter = accessToken(30);
        ClaimWriter.applyDegraded(shorter, NOW, 60);
        assertEquals(NOW + 30, shorter.getExp());
    }
}
