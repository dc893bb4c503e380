package org.keycloakpolicybridge.mapper;

import java.net.URI;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Optional;
import java.util.function.Function;
import java.util.regex.Pattern;

import org.keycloak.provider.ProviderConfigProperty;
import org.keycloak.provider.ProviderConfigurationBuilder;
import org.keycloakpolicybridge.mapper.bridge.BridgeEndpoint;
import org.keycloakpolicybridge.mapper.bridge.PdpAuth;

/**
 * Deployment-wide settings of the mapper: the bridge URL and the HMAC credential. They are
 * server-level SPI options (never mapper config, which lands in realm exports), with environment
 * variables as fallback:
 *
 * <table>
 * <caption>Server options</caption>
 * <tr><th>SPI option (CLI)</th><th>environment form</th><th>fallback</th></tr>
 * <tr><td>{@code --spi-protocol-mapper--kpb-policy-bridge-mapper--bridge-url}</td>
 *     <td>{@code KC_SPI_PROTOCOL_MAPPER__KPB_POLICY_BRIDGE_MAPPER__BRIDGE_URL}</td><td>{@code KPB_BRIDGE_URL}</td></tr>
 * <tr><td>{@code --spi-protocol-mapper--kpb-policy-bridge-mapper--hmac-key-id}</td>
 *     <td>{@code KC_SPI_PROTOCOL_MAPPER__KPB_POLICY_BRIDGE_MAPPER__HMAC_KEY_ID}</td><td>{@code KPB_HMAC_KEY_ID}</td></tr>
 * <tr><td>{@code --spi-protocol-mapper--kpb-policy-bridge-mapper--hmac-secret}</td>
 *     <td>{@code KC_SPI_PROTOCOL_MAPPER__KPB_POLICY_BRIDGE_MAPPER__HMAC_SECRET}</td><td>{@code KPB_HMAC_SECRET}</td></tr>
 * <tr><td>{@code --spi-protocol-mapper--kpb-policy-bridge-mapper--authzen-bearer-token}</td>
 *     <td>{@code KC_SPI_PROTOCOL_MAPPER__KPB_POLICY_BRIDGE_MAPPER__AUTHZEN_BEARER_TOKEN}</td><td>{@code KPB_AUTHZEN_BEARER_TOKEN}</td></tr>
 * </table>
 *
 * <p>{@code bridge-url} may list several base URLs, comma-separated, in order of preference
 * (bridge replicas: the mapper fails over between them, see {@code FailoverClient}); an empty
 * entry, a duplicate or a bad URL is a problem naming the entry's position, and then no URL is used.
 * The secret is hex of at least 32 bytes; the key id is optional (without it the bridge tries
 * each of its secrets). Problems are collected, not thrown: a mapper without a usable credential
 * still loads, and each token request then fails per the mapper's failure mode. Neither
 * {@link #toString()} nor any problem text contains the secret.
 */
public final class ServerSettings {

    public static final String OPTION_BRIDGE_URL = "bridge-url";
    public static final String OPTION_HMAC_KEY_ID = "hmac-key-id";
    public static final String OPTION_HMAC_SECRET = "hmac-secret";
    public static final String ENV_BRIDGE_URL = "KPB_BRIDGE_URL";
    public static final String ENV_HMAC_KEY_ID = "KPB_HMAC_KEY_ID";
    public static final String ENV_HMAC_SECRET = "KPB_HMAC_SECRET";
    /** Static bearer token for AuthZEN PDPs (mapper setting {@code kpb.authzen.auth=bearer}); optional. */
    public static final String OPTION_AUTHZEN_BEARER_TOKEN = "authzen-bearer-token";
    public static final String ENV_AUTHZEN_BEARER_TOKEN = "KPB_AUTHZEN_BEARER_TOKEN";
    public static final int MIN_SECRET_BYTES = 32;

    // Same rule as the bridge (keycloak_policy_bridge/signature.py), so a key id the mapper
    // accepts is one the verifier can name.
    private static final Pattern KEY_ID = Pattern.compile("[A-Za-z0-9][A-Za-z0-9._:-]{0,63}");
    private static final Pattern HEX = Pattern.compile("(?:[0-9a-fA-F]{2})+");

    private final List<URI> claimsEndpoints;
    private final String keyId;
    private final byte[] secret;
    private final List<String> problems;
    private final String authzenBearerToken;

    private ServerSettings(List<URI> claimsEndpoints, String keyId, byte[] secret, List<String> problems, String authzenBearerToken) {
        this.claimsEndpoints = List.copyOf(claimsEndpoints);
        this.keyId = keyId;
        this.secret = secret;
        this.problems = List.copyOf(problems);
        this.authzenBearerToken = authzenBearerToken;
    }

    /**
     * Reads the settings: each from the SPI option, else from the environment variable.
     *
     * @param spiOption SPI option lookup by short name ({@code bridge-url}), null when unset
     * @param environment environment lookup, null when unset
     */
    public static ServerSettings load(Function<String, String> spiOption, Function<String, String> environment) {
        List<String> problems = new ArrayList<>();
        String url = first(spiOption.apply(OPTION_BRIDGE_URL), environment.apply(ENV_BRIDGE_URL));
        String keyId = first(spiOption.apply(OPTION_HMAC_KEY_ID), environment.apply(ENV_HMAC_KEY_ID));
        String secretHex = first(spiOption.apply(OPTION_HMAC_SECRET), environment.apply(ENV_HMAC_SECRET));

        List<URI> endpoints = List.of();
        if (url != null) {
            BridgeEndpoint.Endpoints parsed = BridgeEndpoint.claimsEndpoints(url);
            parsed.problems().forEach(problem -> problems.add(OPTION_BRIDGE_URL + " " + problem));
            endpoints = parsed.endpoints();
        }
        if (keyId != null && !KEY_ID.matcher(keyId).matches()) {
            problems.add(OPTION_HMAC_KEY_ID + " must match " + KEY_ID.pattern());
            keyId = null;
        }
        byte[] secret = null;
        if (secretHex == null) {
            problems.add("no HMAC secret configured (" + OPTION_HMAC_SECRET + " SPI option or " + ENV_HMAC_SECRET + ")");
        } else if (!HEX.matcher(secretHex).matches()) {
            problems.add(OPTION_HMAC_SECRET + " must be hex");
        } else if (secretHex.length() / 2 < MIN_SECRET_BYTES) {
            problems.add(OPTION_HMAC_SECRET + " is shorter than " + MIN_SECRET_BYTES + " bytes");
        } else {
            secret = HexFormat.of().parseHex(secretHex);
        }
        String bearer = first(spiOption.apply(OPTION_AUTHZEN_BEARER_TOKEN), environment.apply(ENV_AUTHZEN_BEARER_TOKEN));
        if (bearer != null && !PdpAuth.BEARER_TOKEN.matcher(bearer).matches()) {
            problems.add(OPTION_AUTHZEN_BEARER_TOKEN + " must be an RFC 6750 b64token");
            bearer = null;
        }
        return new ServerSettings(endpoints, keyId, secret, problems, bearer);
    }

    /** The SPI options, for Keycloak's provider info; the secret is marked secret. */
    public static List<ProviderConfigProperty> optionMetadata() {
        return ProviderConfigurationBuilder.create()
                .property().name(OPTION_BRIDGE_URL).type(ProviderConfigProperty.STRING_TYPE)
                .helpText("Base URL of keycloak-policy-bridge; several, comma-separated, in order of preference, "
                        + "for failover between replicas (fallback: " + ENV_BRIDGE_URL + ").").add()
                .property().name(OPTION_HMAC_KEY_ID).type(ProviderConfigProperty.STRING_TYPE)
                .helpText("HMAC key id sent as X-KPB-Key-Id (fallback: " + ENV_HMAC_KEY_ID + ").").add()
                .property().name(OPTION_HMAC_SECRET).type(ProviderConfigProperty.PASSWORD).secret(true)
                .helpText("HMAC secret, hex, at least " + MIN_SECRET_BYTES + " bytes (fallback: " + ENV_HMAC_SECRET + ").").add()
                .property().name(OPTION_AUTHZEN_BEARER_TOKEN).type(ProviderConfigProperty.PASSWORD).secret(true)
                .helpText("Static bearer token sent to AuthZEN PDPs by mappers set to kpb.authzen.auth=bearer (fallback: "
                        + ENV_AUTHZEN_BEARER_TOKEN + ").").add()
                .build();
    }

    private static String first(String a, String b) {
        if (a != null && !a.isBlank()) {
            return a.trim();
        }
        return b != null && !b.isBlank() ? b.trim() : null;
    }

    /** The server-wide preferred (first) claims endpoint, if a valid bridge URL list is configured. */
    public Optional<URI> claimsEndpoint() {
        return claimsEndpoints.stream().findFirst();
    }

    /** The server-wide claims endpoints in order of preference; empty unless a valid list is configured. */
    public List<URI> claimsEndpoints() {
        return claimsEndpoints;
    }

    /** The HMAC key id sent as {@code X-KPB-Key-Id}, if configured. */
    public Optional<String> keyId() {
        return Optional.ofNullable(keyId);
    }

    /** A copy of the HMAC secret, if a valid one is configured. */
    public Optional<byte[]> secret() {
        return secret == null ? Optional.empty() : Optional.of(secret.clone());
    }

    /** The static AuthZEN bearer token, if a valid one is configured (never logged). */
    public Optional<String> authzenBearerToken() {
        return Optional.ofNullable(authzenBearerToken);
    }

    /** Configuration problems, secret-free; empty when everything configured is valid. */
    public List<String> problems() {
        return problems;
    }

    @Override
    public String toString() {
        return "ServerSettings[claimsEndpoints=" + claimsEndpoints + ", keyId=" + keyId
                + ", secret=" + (secret == null ? "absent" : "present") + ", authzenBearerToken="
                + (authzenBearerToken == null ? "absent" : "present") + ", problems=" + problems + "]";
    }
}
