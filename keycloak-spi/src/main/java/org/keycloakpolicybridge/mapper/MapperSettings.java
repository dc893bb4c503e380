package org.keycloakpolicybridge.mapper;

import java.net.URI;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.function.Function;
import java.util.regex.Pattern;

import org.keycloak.protocol.ProtocolMapperConfigException;
import org.keycloak.provider.ProviderConfigProperty;
import org.keycloak.provider.ProviderConfigurationBuilder;
import org.keycloakpolicybridge.mapper.authzen.AuthzenClaims;
import org.keycloakpolicybridge.mapper.bridge.BridgeEndpoint;
import org.keycloakpolicybridge.mapper.bridge.PdpAuth;

/**
 * The per-mapper settings (the mapper's config map, which is part of realm exports, so it holds
 * no secrets). {@link #parse} applies defaults to absent or blank keys and rejects bad values with
 * a {@link ProtocolMapperConfigException} whose message names the key but never repeats the value.
 *
 * @param failureMode {@code kpb.failure.mode}
 * @param degradedTtlSeconds {@code kpb.degraded.ttl.seconds}: token lifetime cap in degraded mode
 * @param connectTimeoutMs {@code kpb.connect.timeout.ms}
 * @param readTimeoutMs {@code kpb.read.timeout.ms}: time allowed for the bridge's answer
 * @param userAttributes {@code kpb.user.attributes}: user attribute names sent to the bridge
 * @param tenantParam {@code kpb.tenant.param}: form or query parameter carrying the tenant
 * @param tenantHeader {@code kpb.tenant.header}: header carrying the tenant (when no parameter)
 * @param circuitFailureThreshold {@code kpb.circuit.failure.threshold}: consecutive failures that open the circuit
 * @param circuitOpenMs {@code kpb.circuit.open.ms}: how long an open circuit fails fast
 * @param bridgeEndpoints {@code kpb.bridge.url} turned into claims endpoints, in order of preference (one or
 *     several, comma-separated: the mapper fails over between them); empty means the server-level URLs
 * @param protocol {@code kpb.pdp.protocol}: {@code kpb} asks {@code /v1/claims} (the default), {@code authzen}
 *     asks the same base URLs as AuthZEN 1.0 PDPs (see {@code AuthzenService})
 * @param authzenClaims {@code kpb.authzen.claims}: claims filled by one AuthZEN resource search each
 *     (comma-separated; reserved, typed and profile-reserved claims refused, see {@code AuthzenClaims})
 * @param authzenAuth {@code kpb.authzen.auth}: how the mapper authenticates to the AuthZEN PDP
 *     ({@code hmac}, the default; {@code bearer}, the server-level token; {@code none})
 */
public record MapperSettings(
        FailureMode failureMode,
        int degradedTtlSeconds,
        int connectTimeoutMs,
        int readTimeoutMs,
        List<String> userAttributes,
        String tenantParam,
        String tenantHeader,
        int circuitFailureThreshold,
        int circuitOpenMs,
        List<URI> bridgeEndpoints,
        Protocol protocol,
        List<String> authzenClaims,
        PdpAuth.Mode authzenAuth) {

    /** Which API the mapper asks. */
    public enum Protocol {
        KPB("kpb"), AUTHZEN("authzen");

        private final String configValue;

        Protocol(String configValue) {
            this.configValue = configValue;
        }

        public String configValue() {
            return configValue;
        }
    }

    public static final String FAILURE_MODE = "kpb.failure.mode";
    public static final String DEGRADED_TTL_SECONDS = "kpb.degraded.ttl.seconds";
    public static final String CONNECT_TIMEOUT_MS = "kpb.connect.timeout.ms";
    public static final String READ_TIMEOUT_MS = "kpb.read.timeout.ms";
    public static final String USER_ATTRIBUTES = "kpb.user.attributes";
    public static final String TENANT_PARAM = "kpb.tenant.param";
    public static final String TENANT_HEADER = "kpb.tenant.header";
    public static final String CIRCUIT_FAILURE_THRESHOLD = "kpb.circuit.failure.threshold";
    public static final String CIRCUIT_OPEN_MS = "kpb.circuit.open.ms";
    public static final String BRIDGE_URL = "kpb.bridge.url";
    public static final String PROTOCOL = "kpb.pdp.protocol";
    public static final String AUTHZEN_CLAIMS = "kpb.authzen.claims";
    public static final String AUTHZEN_AUTH = "kpb.authzen.auth";
    /** At most this many claims are searched: each is one more round trip within the deadline. */
    public static final int MAX_AUTHZEN_CLAIMS = 16;

    private static final Pattern ATTRIBUTE_NAME = Pattern.compile("[A-Za-z0-9_.:\\-]{1,255}");
    private static final Pattern PARAM_NAME = Pattern.compile("[A-Za-z0-9_.\\-]{1,64}");
    // RFC 9110 token characters.
    private static final Pattern HEADER_NAME = Pattern.compile("[!#$%&'*+\\-.^_`|~0-9A-Za-z]{1,64}");
    private static final int MAX_USER_ATTRIBUTES = 128;

    public MapperSettings {
        userAttributes = List.copyOf(userAttributes);
        bridgeEndpoints = List.copyOf(bridgeEndpoints);
        authzenClaims = List.copyOf(authzenClaims);
    }

    /** The preferred (first) endpoint of {@code kpb.bridge.url}; empty means the server-level URLs. */
    public Optional<URI> bridgeEndpoint() {
        return bridgeEndpoints.stream().findFirst();
    }

    /** The settings with every default; what an empty config map yields. */
    public static MapperSettings defaults() {
        try {
            return parse(Map.of());
        } catch (ProtocolMapperConfigException e) {
            throw new IllegalStateException("defaults must be valid", e);
        }
    }

    /**
     * Parses a mapper config map.
     *
     * @throws ProtocolMapperConfigException naming the first offending key
     */
    public static MapperSettings parse(Map<String, String> config) throws ProtocolMapperConfigException {
        String mode = value(config, FAILURE_MODE);
        FailureMode failureMode = mode == null ? FailureMode.FAIL_CLOSED : FailureMode.fromConfig(mode)
                .orElseThrow(() -> invalid(FAILURE_MODE, "must be fail_closed or degraded"));
        return new MapperSettings(
                failureMode,
                integer(config, DEGRADED_TTL_SECONDS, 60, 1, 86_400),
                integer(config, CONNECT_TIMEOUT_MS, 200, 1, 60_000),
                integer(config, READ_TIMEOUT_MS, 1000, 1, 60_000),
                attributeNames(config),
                name(config, TENANT_PARAM, "tenant", PARAM_NAME),
                name(config, TENANT_HEADER, "X-KPB-Tenant", HEADER_NAME),
                integer(config, CIRCUIT_FAILURE_THRESHOLD, 5, 1, 10_000),
                integer(config, CIRCUIT_OPEN_MS, 5000, 1, 3_600_000),
                bridgeUrls(config),
                choice(config, PROTOCOL, Protocol.KPB, Protocol.values(), Protocol::configValue),
                authzenClaims(config),
                choice(config, AUTHZEN_AUTH, PdpAuth.Mode.HMAC, PdpAuth.Mode.values(), PdpAuth.Mode::configValue));
    }

    /** The mapper's own config properties, as shown in the admin console. */
    public static List<ProviderConfigProperty> configProperties() {
        return ProviderConfigurationBuilder.create()
                .property().name(FAILURE_MODE).label("Failure mode").type(ProviderConfigProperty.LIST_TYPE)
                .options(FailureMode.FAIL_CLOSED.configValue(), FailureMode.DEGRADED.configValue())
                .defaultValue(FailureMode.FAIL_CLOSED.configValue())
                .helpText("When the bridge cannot decide: fail_closed refuses the token (503 temporarily_unavailable); "
                        + "degraded mints it without governed claims, marked authz_degraded, with a short lifetime.")
                .add()
                .property().name(DEGRADED_TTL_SECONDS).label("Degraded token lifetime (s)").type(ProviderConfigProperty.INTEGER_TYPE)
                .defaultValue("60").helpText("Lifetime cap of a token minted in degraded mode.").add()
                .property().name(CONNECT_TIMEOUT_MS).label("Connect timeout (ms)").type(ProviderConfigProperty.INTEGER_TYPE)
                .defaultValue("200").helpText("TCP connect timeout to the bridge.").add()
                .property().name(READ_TIMEOUT_MS).label("Read timeout (ms)").type(ProviderConfigProperty.INTEGER_TYPE)
                .defaultValue("1000").helpText("Time the bridge has to answer once connected.").add()
                .property().name(USER_ATTRIBUTES).label("User attributes sent").type(ProviderConfigProperty.STRING_TYPE)
                .defaultValue("").helpText("Comma-separated user attribute names sent to the bridge as subject.attributes.").add()
                .property().name(TENANT_PARAM).label("Tenant parameter").type(ProviderConfigProperty.STRING_TYPE)
                .defaultValue("tenant").helpText("Form or query parameter of the token request naming the tenant.").add()
                .property().name(TENANT_HEADER).label("Tenant header").type(ProviderConfigProperty.STRING_TYPE)
                .defaultValue("X-KPB-Tenant").helpText("Request header naming the tenant, used when the parameter is absent.").add()
                .property().name(CIRCUIT_FAILURE_THRESHOLD).label("Circuit failure threshold").type(ProviderConfigProperty.INTEGER_TYPE)
                .defaultValue("5").helpText("Consecutive bridge failures that open the circuit breaker.").add()
                .property().name(CIRCUIT_OPEN_MS).label("Circuit open time (ms)").type(ProviderConfigProperty.INTEGER_TYPE)
                .defaultValue("5000").helpText("How long an open circuit fails fast before one trial call.").add()
                .property().name(BRIDGE_URL).label("Bridge URL override").type(ProviderConfigProperty.STRING_TYPE)
                .defaultValue("").helpText("Optional base URL of the bridge (several, comma-separated, in order of preference, "
                        + "for failover between replicas); empty uses the server-level bridge-url option. "
                        + "Not a secret: the HMAC credential is server-level only.")
                .add()
                .property().name(PROTOCOL).label("PDP protocol").type(ProviderConfigProperty.LIST_TYPE)
                .options(Protocol.KPB.configValue(), Protocol.AUTHZEN.configValue()).defaultValue(Protocol.KPB.configValue())
                .helpText("kpb asks the bridge's /v1/claims; authzen asks the same URL(s) as an AuthZEN 1.0 PDP: one gate "
                        + "evaluation (issue:access_token:<grant> on the audience) plus one resource search per governed claim.")
                .add()
                .property().name(AUTHZEN_CLAIMS).label("AuthZEN claims").type(ProviderConfigProperty.STRING_TYPE)
                .defaultValue("").helpText("Comma-separated claim names, each filled with the ids of a resource search of that type "
                        + "(always a list). Reserved claims are refused.").add()
                .property().name(AUTHZEN_AUTH).label("AuthZEN credential").type(ProviderConfigProperty.LIST_TYPE)
                .options(PdpAuth.Mode.HMAC.configValue(), PdpAuth.Mode.BEARER.configValue(), PdpAuth.Mode.NONE.configValue())
                .defaultValue(PdpAuth.Mode.HMAC.configValue())
                .helpText("hmac signs requests like /v1/claims (the bridge); bearer sends the server-level authzen-bearer-token; "
                        + "none sends no credential.").add()
                .build();
    }

    private static String value(Map<String, String> config, String key) {
        String value = config == null ? null : config.get(key);
        return value == null || value.isBlank() ? null : value.trim();
    }

    private static int integer(Map<String, String> config, String key, int fallback, int min, int max)
            throws ProtocolMapperConfigException {
        String text = value(config, key);
        if (text == null) {
            return fallback;
        }
        String rule = "must be an integer from " + min + " to " + max;
        if (!text.matches("[0-9]{1,9}")) {
            throw invalid(key, rule);
        }
        int parsed = Integer.parseInt(text);
        if (parsed < min || parsed > max) {
            throw invalid(key, rule);
        }
        return parsed;
    }

    private static String name(Map<String, String> config, String key, String fallback, Pattern pattern)
            throws ProtocolMapperConfigException {
        String text = value(config, key);
        if (text == null) {
            return fallback;
        }
        if (!pattern.matcher(text).matches()) {
            throw invalid(key, "must match " + pattern.pattern());
        }
        return text;
    }

    private static List<String> attributeNames(Map<String, String> config) throws ProtocolMapperConfigException {
        String text = value(config, USER_ATTRIBUTES);
        if (text == null) {
            return List.of();
        }
        List<String> names = new ArrayList<>();
        for (String part : text.split(",")) {
            String attribute = part.trim();
            if (attribute.isEmpty()) {
                continue;
            }
            if (!ATTRIBUTE_NAME.matcher(attribute).matches()) {
                throw invalid(USER_ATTRIBUTES, "entries must match " + ATTRIBUTE_NAME.pattern());
            }
            if (!names.contains(attribute)) {
                names.add(attribute);
            }
        }
        if (names.size() > MAX_USER_ATTRIBUTES) {
            throw invalid(USER_ATTRIBUTES, "names at most " + MAX_USER_ATTRIBUTES + " attributes");
        }
        return names;
    }

    private static <E> E choice(Map<String, String> config, String key, E fallback, E[] values, Function<E, String> wire)
            throws ProtocolMapperConfigException {
        String text = value(config, key);
        if (text == null) {
            return fallback;
        }
        List<String> allowed = new ArrayList<>();
        for (E candidate : values) {
            if (wire.apply(candidate).equals(text)) {
                return candidate;
            }
            allowed.add(wire.apply(candidate));
        }
        throw invalid(key, "must be one of " + String.join(", ", allowed));
    }

    private static List<String> authzenClaims(Map<String, String> config) throws ProtocolMapperConfigException {
        String text = value(config, AUTHZEN_CLAIMS);
        if (text == null) {
            return List.of();
        }
        List<String> names = new ArrayList<>();
        for (String part : text.split(",")) {
            String claim = part.trim();
            if (claim.isEmpty()) {
                continue;
            }
            String problem = AuthzenClaims.problem(claim);
            if (problem != null) {
                throw invalid(AUTHZEN_CLAIMS, "entry " + (names.size() + 1) + " " + problem);
            }
            if (!names.contains(claim)) {
                names.add(claim);
            }
        }
        if (names.size() > MAX_AUTHZEN_CLAIMS) {
            throw invalid(AUTHZEN_CLAIMS, "names at most " + MAX_AUTHZEN_CLAIMS + " claims");
        }
        return names;
    }

    private static List<URI> bridgeUrls(Map<String, String> config) throws ProtocolMapperConfigException {
        String text = value(config, BRIDGE_URL);
        if (text == null) {
            return List.of();
        }
        BridgeEndpoint.Endpoints parsed = BridgeEndpoint.claimsEndpoints(text);
        if (!parsed.problems().isEmpty()) {
            throw invalid(BRIDGE_URL, String.join("; ", parsed.problems()));
        }
        return parsed.endpoints();
    }

    private static ProtocolMapperConfigException invalid(String key, String rule) {
        return new ProtocolMapperConfigException(key + " " + rule);
    }
}
