package org.keycloakpolicybridge.mapper;

import java.util.ArrayList;
import java.util.List;
import java.util.UUID;
import java.util.function.LongSupplier;

import org.jboss.logging.Logger;
import org.keycloak.Config;
import org.keycloak.common.util.Time;
import org.keycloak.models.ClientSessionContext;
import org.keycloak.models.KeycloakSession;
import org.keycloak.models.ProtocolMapperContainerModel;
import org.keycloak.models.ProtocolMapperModel;
import org.keycloak.models.RealmModel;
import org.keycloak.models.UserSessionModel;
import org.keycloak.protocol.ProtocolMapperConfigException;
import org.keycloak.protocol.oidc.mappers.AbstractOIDCProtocolMapper;
import org.keycloak.protocol.oidc.mappers.OIDCAccessTokenMapper;
import org.keycloak.protocol.oidc.mappers.OIDCAttributeMapperHelper;
import org.keycloak.protocol.oidc.mappers.OIDCIDTokenMapper;
import org.keycloak.protocol.oidc.mappers.TokenIntrospectionTokenMapper;
import org.keycloak.protocol.oidc.mappers.UserInfoTokenMapper;
import org.keycloak.provider.ProviderConfigProperty;
import org.keycloak.representations.AccessToken;
import org.keycloak.representations.IDToken;
import org.keycloakpolicybridge.mapper.authzen.AuthzenService;
import org.keycloakpolicybridge.mapper.bridge.AuthzenClients;
import org.keycloakpolicybridge.mapper.bridge.BridgeClients;
import org.keycloakpolicybridge.mapper.bridge.PdpAuth;
import org.keycloakpolicybridge.mapper.bridge.RequestSigner;
import org.keycloakpolicybridge.mapper.request.KeycloakFacts;

/**
 * OIDC protocol mapper that asks keycloak-policy-bridge ({@code POST /v1/claims}), or with
 * {@code kpb.pdp.protocol=authzen} any AuthZEN 1.0 PDP ({@link AuthzenService}), for the governed
 * claims of each token and applies the decision: claims set, directory claims withdrawn, lifetime
 * capped, or the token refused. One bridge call per token request (access and ID token share it);
 * userinfo and introspection are their own calls.
 *
 * <p>This class only wires Keycloak to the helpers: {@link KeycloakFacts} reads the models,
 * {@link DecisionService} builds, signs and sends the request, {@link DecisionCache} keeps the
 * outcome for the request, {@link DecisionEnforcer} applies it. Priority 100 runs it after the
 * built-in role mappers, so a decision can withdraw {@code realm_access}/{@code resource_access}.
 *
 * <p>Try it by hand (bridge on :8000 in insecure dev mode, realm {@code acme}, mapper on client
 * {@code billing-bot}):
 * <pre>{@code
 * kc.sh start-dev --spi-protocol-mapper--kpb-policy-bridge-mapper--bridge-url=http://127.0.0.1:8000 \
 *                 --spi-protocol-mapper--kpb-policy-bridge-mapper--hmac-secret=$(openssl rand -hex 32)
 * curl -s -d grant_type=client_credentials -u billing-bot:$SECRET \
 *      http://localhost:8080/realms/acme/protocol/openid-connect/token
 * }</pre>
 */
public class PolicyBridgeMapper extends AbstractOIDCProtocolMapper
        implements OIDCAccessTokenMapper, OIDCIDTokenMapper, UserInfoTokenMapper, TokenIntrospectionTokenMapper {

    public static final String PROVIDER_ID = "kpb-policy-bridge-mapper";
    public static final int PRIORITY = 100;
    private static final Logger LOG = Logger.getLogger(PolicyBridgeMapper.class);
    private static final List<ProviderConfigProperty> CONFIG_PROPERTIES = new ArrayList<>(MapperSettings.configProperties());

    static {
        OIDCAttributeMapperHelper.addIncludeInTokensConfig(CONFIG_PROPERTIES, PolicyBridgeMapper.class);
    }

    private volatile DecisionService decisions = unconfigured("mapper not initialized");
    /** Null until {@link #configure}: an AuthZEN mapper then fails per its failure mode like an unconfigured one. */
    private volatile AuthzenService authzen;

    @Override
    public void init(Config.Scope config) {
        configure(ServerSettings.load(config::get, System::getenv));
    }

    /** Applies the server settings read by {@link #init}: a usable secret yields a live decision service. */
    void configure(ServerSettings server) {
        server.problems().forEach(problem -> LOG.warnf("%s: %s; token requests through this mapper fail closed "
                + "(or are degraded, per mapper setting %s)", PROVIDER_ID, problem, MapperSettings.FAILURE_MODE));
        LongSupplier epochSeconds = () -> System.currentTimeMillis() / 1000L;
        // AuthZEN mappers may use a bearer token or no credential, so they do not need the HMAC secret.
        List<PdpAuth> credentials = new ArrayList<>(List.of(PdpAuth.none()));
        server.authzenBearerToken().ifPresent(token -> credentials.add(PdpAuth.bearer(token)));
        if (server.secret().isEmpty()) {
            decisions = unconfigured("no valid HMAC secret configured");
        } else {
            RequestSigner signer = new RequestSigner(server.keyId().orElse(null), server.secret().get());
            credentials.add(PdpAuth.hmac(signer, epochSeconds));
            BridgeClients clients = new BridgeClients(signer, System::nanoTime, epochSeconds);
            decisions = new DecisionService(server.claimsEndpoints(), clients, null, () -> UUID.randomUUID().toString());
        }
        authzen = new AuthzenService(server.claimsEndpoints(), new AuthzenClients(credentials, System::nanoTime),
                () -> UUID.randomUUID().toString());
    }

    private static DecisionService unconfigured(String problem) {
        return new DecisionService(List.of(), null, problem, () -> UUID.randomUUID().toString());
    }

    @Override
    public String getId() {
        return PROVIDER_ID;
    }

    @Override
    public String getDisplayCategory() {
        return TOKEN_MAPPER_CATEGORY;
    }

    @Override
    public String getDisplayType() {
        return "Policy bridge (governed claims)";
    }

    @Override
    public String getHelpText() {
        return "Asks keycloak-policy-bridge for the governed claims of each token and applies its decision "
                + "(claims, withdrawn claims, lifetime cap, or refusal).";
    }

    @Override
    public int getPriority() {
        return PRIORITY;
    }

    @Override
    public List<ProviderConfigProperty> getConfigProperties() {
        return CONFIG_PROPERTIES;
    }

    /** Server-level SPI options (shown in Keycloak's provider info); the secret is masked. */
    @Override
    public List<ProviderConfigProperty> getConfigMetadata() {
        return ServerSettings.optionMetadata();
    }

    @Override
    public void validateConfig(KeycloakSession session, RealmModel realm, ProtocolMapperContainerModel client,
                               ProtocolMapperModel mapperModel) throws ProtocolMapperConfigException {
        MapperSettings.parse(mapperModel.getConfig());
    }

    @Override
    protected void setClaim(IDToken token, ProtocolMapperModel mappingModel, UserSessionModel userSession,
                            KeycloakSession keycloakSession, ClientSessionContext clientSessionCtx) {
        govern(TokenEvent.TOKEN, token, mappingModel, keycloakSession, userSession, clientSessionCtx);
    }

    @Override
    public AccessToken transformUserInfoToken(AccessToken token, ProtocolMapperModel mappingModel, KeycloakSession session,
                                              UserSessionModel userSession, ClientSessionContext clientSessionCtx) {
        if (OIDCAttributeMapperHelper.includeInUserInfo(mappingModel)) {
            govern(TokenEvent.USERINFO, token, mappingModel, session, userSession, clientSessionCtx);
        }
        return token;
    }

    @Override
    public AccessToken transformIntrospectionToken(AccessToken token, ProtocolMapperModel mappingModel, KeycloakSession session,
                                                   UserSessionModel userSession, ClientSessionContext clientSessionCtx) {
        if (OIDCAttributeMapperHelper.includeInIntrospection(mappingModel)) {
            govern(TokenEvent.INTROSPECTION, token, mappingModel, session, userSession, clientSessionCtx);
        }
        return token;
    }

    private void govern(TokenEvent event, IDToken token, ProtocolMapperModel model, KeycloakSession session,
                        UserSessionModel userSession, ClientSessionContext clientSessionCtx) {
        MapperSettings settings;
        String problem = null;
        try {
            settings = MapperSettings.parse(model.getConfig());
        } catch (ProtocolMapperConfigException e) {
            // validateConfig is bypassed by realm imports; a bad value must still fail safe.
            settings = null;
            problem = e.getMessage();
        }
        String cacheKey = DecisionCache.key(event, model);
        Outcome outcome = DecisionCache.get(clientSessionCtx, cacheKey);
        if (outcome == null) {
            MapperSettings valid = settings;
            AuthzenService pdp = authzen;
            if (valid == null) {
                outcome = decisions.misconfigured(problem);
            } else if (valid.protocol() == MapperSettings.Protocol.AUTHZEN && pdp != null) {
                // The jti of the first artifact minted (the access token at the token endpoint) joins PDP and token logs.
                outcome = pdp.decide(valid, () -> KeycloakFacts.from(event, valid, token, session, userSession, clientSessionCtx),
                        token.getId());
            } else if (valid.protocol() == MapperSettings.Protocol.AUTHZEN) {
                outcome = decisions.misconfigured("mapper not initialized");
            } else {
                outcome = decisions.decide(valid, () -> KeycloakFacts.from(event, valid, token, session, userSession, clientSessionCtx));
            }
            DecisionCache.put(clientSessionCtx, cacheKey, outcome);
        }
        FailureMode mode = settings == null ? FailureMode.FAIL_CLOSED : settings.failureMode();
        int degradedTtl = settings == null ? 0 : settings.degradedTtlSeconds();
        // Keycloak's clock (it honours the server time offset), the base of the token's exp.
        DecisionEnforcer.enforce(outcome, token, mode, degradedTtl, Time.currentTimeMillis() / 1000L);
    }
}
