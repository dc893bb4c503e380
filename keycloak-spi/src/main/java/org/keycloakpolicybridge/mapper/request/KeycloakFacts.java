package org.keycloakpolicybridge.mapper.request;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.function.Function;
import java.util.stream.Collectors;

import jakarta.ws.rs.core.MultivaluedHashMap;
import jakarta.ws.rs.core.MultivaluedMap;
import org.keycloak.authentication.authenticators.util.AuthenticatorUtils;
import org.keycloak.common.ClientConnection;
import org.keycloak.http.HttpRequest;
import org.keycloak.models.AuthenticatedClientSessionModel;
import org.keycloak.models.ClientModel;
import org.keycloak.models.ClientSessionContext;
import org.keycloak.models.Constants;
import org.keycloak.models.KeycloakContext;
import org.keycloak.models.KeycloakSession;
import org.keycloak.models.RealmModel;
import org.keycloak.models.RoleModel;
import org.keycloak.models.UserModel;
import org.keycloak.models.UserSessionModel;
import org.keycloak.models.utils.KeycloakModelUtils;
import org.keycloak.protocol.oidc.utils.AmrUtils;
import org.keycloak.representations.IDToken;
import org.keycloakpolicybridge.mapper.MapperSettings;
import org.keycloakpolicybridge.mapper.TokenEvent;

/**
 * The thin adapter from Keycloak's models to {@link TokenRequestFacts}. It only reads; every
 * decision about what to send lives in {@link ClaimsRequestBuilder}, {@link KindHints} and
 * {@link ActorChain}, which are tested without Keycloak.
 *
 * <p>Where values come from (Keycloak 26.x):
 * <ul>
 * <li>grant type: client-session-context attribute {@code grant_type} (token event only);</li>
 * <li>requested scopes: the {@code scope} form parameter of this request, else the client-session
 *     note {@code scope} (the authorization request's), else none; for userinfo and
 *     introspection the token's scope;</li>
 * <li>audience: the requested-audience clients Keycloak resolved, else the {@code audience}
 *     form parameters;</li>
 * <li>roles: the client-session context's expanded, scope-filtered roles; groups: paths;</li>
 * <li>acr: the token being minted; amr: Keycloak's authenticator reference values of the user
 *     session; auth_time: the user-session note {@code AUTH_TIME}; session id: none for
 *     transient sessions (client credentials, token exchange);</li>
 * <li>context: the caller of this HTTP request (address, User-Agent) and the tenant from the
 *     configured parameter (form, then query) or header. For authorization-code and refresh
 *     grants the caller is the client's backend, not the user's browser;</li>
 * <li>actors (token exchange): the requesting client first, then the subject token's
 *     {@code act} chain.</li>
 * </ul>
 */
public final class KeycloakFacts {

    static final String TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
    /** Same value as {@code AuthenticationManager.AUTH_TIME}; not referenced to avoid loading that class. */
    static final String AUTH_TIME_NOTE = "AUTH_TIME";
    private static final String SCOPE = "scope";
    private static final String ISSUER_NOTE = "iss";

    private KeycloakFacts() {
    }

    /** Reads the facts of the current token request. */
    public static TokenRequestFacts from(TokenEvent event, MapperSettings settings, IDToken token, KeycloakSession session,
                                         UserSessionModel userSession, ClientSessionContext clientSessionCtx) {
        RealmModel realm = userSession.getRealm();
        AuthenticatedClientSessionModel clientSession = clientSessionCtx.getClientSession();
        ClientModel client = clientSession.getClient();
        KeycloakContext context = session.getContext();
        HttpRequest http = context == null ? null : context.getHttpRequest();
        MultivaluedMap<String, String> form = formParameters(http);
        boolean tokenEvent = event == TokenEvent.TOKEN;

        String grantType = tokenEvent ? clientSessionCtx.getAttribute(Constants.GRANT_TYPE, String.class) : null;
        String issuer = token.getIssuer() != null ? token.getIssuer() : clientSession.getNote(ISSUER_NOTE);
        String scope = tokenEvent
                ? firstNonBlank(form.getFirst(SCOPE), clientSession.getNote(SCOPE))
                : clientSessionCtx.getScopeString();

        List<TokenRequestFacts.Actor> actors = List.of();
        if (tokenEvent && TOKEN_EXCHANGE.equals(grantType)) {
            actors = ActorChain.build(currentActor(session, client), form.getFirst("subject_token"),
                    clientId -> clientKind(realm.getClientByClientId(clientId)));
        }
        return new TokenRequestFacts(event, realm.getName(), issuer, grantType, words(scope),
                tokenEvent ? audience(clientSessionCtx, form) : List.of(),
                new TokenRequestFacts.Client(client.getClientId(), client.getAttributes()),
                subject(settings, token, realm, userSession, clientSessionCtx),
                actors,
                new TokenRequestFacts.Context(
                        remoteAddress(context),
                        http == null ? null : http.getHttpHeaders().getHeaderString("User-Agent"),
                        tenant(settings, http, form)));
    }

    private static TokenRequestFacts.Subject subject(MapperSettings settings, IDToken token, RealmModel realm,
                                                     UserSessionModel userSession, ClientSessionContext clientSessionCtx) {
        UserModel user = userSession.getUser();
        String link = user.getServiceAccountClientLink();
        ClientModel serviceAccountClient = link == null ? null : realm.getClientById(link);
        Map<String, List<String>> attributes = selectAttributes(settings.userAttributes(),
                name -> user.getAttributeStream(name).collect(Collectors.toList()));
        boolean transientSession = userSession.getPersistenceState() == UserSessionModel.SessionPersistenceState.TRANSIENT;
        return new TokenRequestFacts.Subject(
                user.getId(), user.getUsername(), user.getEmail(), user.isEmailVerified(),
                serviceAccountClient == null ? null : serviceAccountClient.getClientId(),
                clientKind(serviceAccountClient),
                attributes,
                clientSessionCtx.getRolesStream().map(KeycloakFacts::roleName).distinct().sorted().collect(Collectors.toList()),
                user.getGroupsStream().map(KeycloakModelUtils::buildGroupPath).sorted().collect(Collectors.toList()),
                token.getAcr(),
                amr(userSession, realm),
                authTime(userSession.getNote(AUTH_TIME_NOTE)),
                transientSession ? null : userSession.getId());
    }

    /**
     * The configured user attributes that have values, in configuration order; attributes not
     * configured are never read.
     */
    public static Map<String, List<String>> selectAttributes(List<String> names, Function<String, List<String>> values) {
        Map<String, List<String>> selected = new LinkedHashMap<>();
        for (String name : names) {
            List<String> found = values.apply(name);
            List<String> present = found == null ? List.of()
                    : found.stream().filter(Objects::nonNull).collect(Collectors.toList());
            if (!present.isEmpty()) {
                selected.put(name, present);
            }
        }
        return selected;
    }

    private static TokenRequestFacts.Actor currentActor(KeycloakSession session, ClientModel client) {
        UserModel serviceAccount = client.isServiceAccountsEnabled() ? session.users().getServiceAccount(client) : null;
        return new TokenRequestFacts.Actor(serviceAccount == null ? null : serviceAccount.getId(), client.getClientId(),
                KindHints.actor(clientKind(client)));
    }

    private static String clientKind(ClientModel client) {
        return client == null ? null : client.getAttribute(KindHints.KIND_ATTRIBUTE);
    }

    private static String roleName(RoleModel role) {
        if (role.isClientRole() && role.getContainer() instanceof ClientModel) {
            return ((ClientModel) role.getContainer()).getClientId() + "/" + role.getName();
        }
        return role.getName();
    }

    private static List<String> amr(UserSessionModel userSession, RealmModel realm) {
        String completed = userSession.getNote(Constants.AUTHENTICATORS_COMPLETED);
        if (completed == null) {
            return List.of();
        }
        try {
            return AmrUtils.getAuthenticationExecutionReferences(AuthenticatorUtils.parseCompletedExecutions(completed), realm);
        } catch (RuntimeException e) {
            // A malformed note means Keycloak itself cannot tell; send no amr rather than fail the token.
            return List.of();
        }
    }

    private static List<String> audience(ClientSessionContext clientSessionCtx, MultivaluedMap<String, String> form) {
        ClientModel[] clients = clientSessionCtx.getAttribute(Constants.REQUESTED_AUDIENCE_CLIENTS, ClientModel[].class);
        if (clients != null && clients.length > 0) {
            return Arrays.stream(clients).map(ClientModel::getClientId).collect(Collectors.toList());
        }
        List<String> requested = form.get("audience");
        return requested == null ? List.of() : requested.stream().filter(a -> a != null && !a.isBlank()).collect(Collectors.toList());
    }

    private static String tenant(MapperSettings settings, HttpRequest http, MultivaluedMap<String, String> form) {
        if (http == null) {
            return null;
        }
        String query = http.getUri() == null ? null : http.getUri().getQueryParameters().getFirst(settings.tenantParam());
        return firstNonBlank(form.getFirst(settings.tenantParam()), query,
                http.getHttpHeaders().getHeaderString(settings.tenantHeader()));
    }

    private static String remoteAddress(KeycloakContext context) {
        ClientConnection connection = context == null ? null : context.getConnection();
        return connection == null ? null : connection.getRemoteAddr();
    }

    private static MultivaluedMap<String, String> formParameters(HttpRequest http) {
        try {
            MultivaluedMap<String, String> form = http == null ? null : http.getDecodedFormParameters();
            return form == null ? new MultivaluedHashMap<>() : form;
        } catch (RuntimeException e) {
            // Not a form request (userinfo by GET, for example): no form parameters.
            return new MultivaluedHashMap<>();
        }
    }

    private static Long authTime(String note) {
        if (note == null) {
            return null;
        }
        try {
            return Long.valueOf(note.trim());
        } catch (NumberFormatException e) {
            return null;
        }
    }

    private static List<String> words(String text) {
        if (text == null || text.isBlank()) {
            return List.of();
        }
        return Arrays.stream(text.trim().split("\\s+")).distinct().collect(Collectors.toList());
    }

    private static String firstNonBlank(String... values) {
        for (String value : values) {
            if (value != null && !value.isBlank()) {
                return value.trim();
            }
        }
        return null;
    }
}
