package org.keycloakpolicybridge.mapper.token;

import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.function.Consumer;
import java.util.regex.Pattern;
import java.util.stream.Collectors;

import org.keycloak.representations.AccessToken;
import org.keycloak.representations.AddressClaimSet;
import org.keycloak.representations.IDToken;

/**
 * Which claims a bridge decision may touch.
 *
 * <ul>
 * <li><b>Reserved</b> ({@link #RESERVED}): the JWT/OIDC envelope Keycloak owns and the two claims
 *     the mapper itself writes. A decision that sets or removes one is invalid. {@code act} is not
 *     reserved here: the bridge legitimately sets it for delegated requests.</li>
 * <li><b>Typed</b> ({@link #TYPED}): claims Keycloak keeps in typed fields of {@link IDToken} /
 *     {@link AccessToken} rather than in other-claims. A decision may remove them (the field is
 *     cleared), but not set them: writing the same name into other-claims would serialize the
 *     claim twice, and {@code realm_access}/{@code resource_access} have a structure resource
 *     servers rely on.</li>
 * </ul>
 *
 * <p>Both checks also catch aliases: a name that differs from a listed claim only by case
 * ({@code SUB}), and a name that addresses the inside of one ({@code act.sub},
 * {@code realm_access.roles}): clients that fold case, JSON-path readers and Keycloak's own claim
 * paths (which nest on {@code .}) read them as that claim. The bridge's policy validator refuses
 * the same names; this is the mapper's own line of defence.
 */
public final class ReservedClaims {

    /** Claims a decision may neither set nor remove. */
    public static final Set<String> RESERVED = Set.of(
            "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "typ", "azp", "nonce", "auth_time",
            "session_state", "sid", "scope", "acr", "cnf", "authz_decision_id", "authz_degraded",
            "at_hash", "c_hash", "s_hash");

    private static final Map<String, Consumer<IDToken>> ID_TOKEN_FIELDS = Map.ofEntries(
            Map.entry(IDToken.NAME, t -> t.setName(null)),
            Map.entry(IDToken.GIVEN_NAME, t -> t.setGivenName(null)),
            Map.entry(IDToken.FAMILY_NAME, t -> t.setFamilyName(null)),
            Map.entry(IDToken.MIDDLE_NAME, t -> t.setMiddleName(null)),
            Map.entry(IDToken.NICKNAME, t -> t.setNickName(null)),
            Map.entry(IDToken.PREFERRED_USERNAME, t -> t.setPreferredUsername(null)),
            Map.entry(IDToken.PROFILE, t -> t.setProfile(null)),
            Map.entry(IDToken.PICTURE, t -> t.setPicture(null)),
            Map.entry(IDToken.WEBSITE, t -> t.setWebsite(null)),
            Map.entry(IDToken.EMAIL, t -> t.setEmail(null)),
            Map.entry(IDToken.EMAIL_VERIFIED, t -> t.setEmailVerified(null)),
            Map.entry(IDToken.GENDER, t -> t.setGender(null)),
            Map.entry(IDToken.BIRTHDATE, t -> t.setBirthdate(null)),
            Map.entry(IDToken.ZONEINFO, t -> t.setZoneinfo(null)),
            Map.entry(IDToken.LOCALE, t -> t.setLocale(null)),
            Map.entry(IDToken.PHONE_NUMBER, t -> t.setPhoneNumber(null)),
            Map.entry(IDToken.PHONE_NUMBER_VERIFIED, t -> t.setPhoneNumberVerified(null)),
            Map.entry(IDToken.ADDRESS, t -> t.setAddress((AddressClaimSet) null)),
            Map.entry(IDToken.UPDATED_AT, t -> t.setUpdatedAt(null)),
            Map.entry(IDToken.CLAIMS_LOCALES, t -> t.setClaimsLocales(null)));

    private static final Map<String, Consumer<AccessToken>> ACCESS_TOKEN_FIELDS = Map.of(
            "realm_access", t -> t.setRealmAccess(null),
            "resource_access", t -> t.setResourceAccess(null),
            "allowed-origins", t -> t.setAllowedOrigins(null),
            "trusted-certs", t -> t.setTrustedCertificates(null),
            "authorization", t -> t.setAuthorization(null),
            "authorization_details", t -> t.setAuthorizationDetails(null));

    /** Claims held in typed token fields: removable, never settable by a decision. */
    public static final Set<String> TYPED = union(ID_TOKEN_FIELDS.keySet(), ACCESS_TOKEN_FIELDS.keySet());

    private static final Pattern NESTING = Pattern.compile("[./]");
    private static final Set<String> RESERVED_FOLDED = folded(RESERVED);
    /** {@code act} itself is the bridge's to set, but nothing may address its inside. */
    private static final Set<String> RESERVED_HEADS = folded(union(RESERVED, Set.of("act", "may_act")));
    private static final Set<String> TYPED_FOLDED = folded(TYPED);

    private ReservedClaims() {
    }

    /** A reserved claim, a case variant of one, or a name addressing the inside of one. */
    public static boolean isReserved(String claim) {
        String folded = claim.toLowerCase(Locale.ROOT);
        String head = head(folded);
        return RESERVED.contains(claim) || RESERVED_FOLDED.contains(folded) || (!head.equals(folded) && RESERVED_HEADS.contains(head));
    }

    /** A typed claim, a case variant of one, or a name addressing the inside of one: never settable. */
    public static boolean isTyped(String claim) {
        String folded = claim.toLowerCase(Locale.ROOT);
        return TYPED.contains(claim) || TYPED_FOLDED.contains(folded) || TYPED_FOLDED.contains(head(folded));
    }

    private static String head(String folded) {
        return NESTING.split(folded, 2)[0];
    }

    private static Set<String> folded(Set<String> names) {
        return names.stream().map(n -> n.toLowerCase(Locale.ROOT)).collect(Collectors.toUnmodifiableSet());
    }

    /**
     * Removes a claim from the token: clears the typed field for a typed claim (when this token
     * type has it), and drops it from other-claims in every case (another mapper may have put it
     * there).
     *
     * @throws IllegalArgumentException for a reserved claim
     */
    static void remove(IDToken token, String claim) {
        if (isReserved(claim)) {
            throw new IllegalArgumentException("reserved claim cannot be removed");
        }
        Consumer<IDToken> idField = ID_TOKEN_FIELDS.get(claim);
        if (idField != null) {
            idField.accept(token);
        }
        Consumer<AccessToken> accessField = ACCESS_TOKEN_FIELDS.get(claim);
        if (accessField != null && token instanceof AccessToken) {
            accessField.accept((AccessToken) token);
        }
        token.getOtherClaims().remove(claim);
    }

    private static Set<String> union(Set<String> a, Set<String> b) {
        java.util.Set<String> all = new java.util.HashSet<>(a);
        all.addAll(b);
        return Set.copyOf(all);
    }
}
