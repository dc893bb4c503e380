package org.keycloakpolicybridge.mapper.authzen;

import java.util.Locale;
import java.util.Set;
import java.util.regex.Pattern;

import org.keycloakpolicybridge.mapper.token.ReservedClaims;

/**
 * Which claim names an AuthZEN PDP may fill, through resource search ({@code kpb.authzen.claims})
 * or {@code context.issuance.claims}: a valid claim name (the bridge's rule) that is neither
 * reserved nor typed ({@link ReservedClaims}, aliases included), nor one the token-issuance profile
 * reserves to the authorization server ({@link #PROFILE_RESERVED}: {@code client_id}, the
 * delegation claims, {@code authorization_details}).
 */
public final class AuthzenClaims {

    /** The bridge's claim-name rule (policy.v1.schema.json $defs/claimName), as the decision parser has it. */
    public static final Pattern CLAIM_NAME = Pattern.compile("[A-Za-z_][A-Za-z0-9_:/.\\-]{0,127}");
    /** Claims the token-issuance profile reserves beyond {@link ReservedClaims#RESERVED}. */
    public static final Set<String> PROFILE_RESERVED = Set.of("client_id", "act", "may_act", "authorization_details");

    private AuthzenClaims() {
    }

    /** Why {@code name} may not be filled by a PDP (never repeating the name), or null when it may. */
    public static String problem(String name) {
        if (name == null || !CLAIM_NAME.matcher(name).matches()) {
            return "is not a valid claim name";
        }
        String head = name.toLowerCase(Locale.ROOT).split("[./]", 2)[0];
        if (ReservedClaims.isReserved(name) || PROFILE_RESERVED.contains(head)) {
            return "names a reserved claim or an alias of one";
        }
        if (ReservedClaims.isTyped(name)) {
            return "names a claim Keycloak keeps in a typed token field";
        }
        return null;
    }
}
