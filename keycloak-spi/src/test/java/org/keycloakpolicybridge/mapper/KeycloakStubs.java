package org.keycloakpolicybridge.mapper;

import static org.keycloakpolicybridge.mapper.Stub.answers;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import jakarta.ws.rs.core.HttpHeaders;
import jakarta.ws.rs.core.MultivaluedHashMap;
import jakarta.ws.rs.core.MultivaluedMap;
import jakarta.ws.rs.core.UriInfo;
import org.keycloak.common.ClientConnection;
import org.keycloak.http.HttpRequest;
import org.keycloak.models.AuthenticatedClientSessionModel;
import org.keycloak.models.ClientModel;
import org.keycloak.models.ClientSessionContext;
import org.keycloak.models.GroupModel;
import org.keycloak.models.KeycloakContext;
import org.keycloak.models.KeycloakSession;
import org.keycloak.models.RealmModel;
import org.keycloak.models.RoleModel;
import org.keycloak.models.UserModel;
import org.keycloak.models.UserProvider;
import org.keycloak.models.UserSessionModel;

/**
 * A small, coherent Keycloak world of {@link Stub}s for one token request: realm, clients, a
 * user, its sessions, the client-session context and the HTTP request. Only the methods the
 * mapper reads are answered.
 */
public final class KeycloakStubs {

    public final Map<String, ClientModel> clientsById = new HashMap<>();
    public final Map<String, ClientModel> clientsByClientId = new HashMap<>();
    public final Map<String, UserModel> serviceAccounts = new HashMap<>();
    public final MultivaluedMap<String, String> form = new MultivaluedHashMap<>();
    public final MultivaluedMap<String, String> query = new MultivaluedHashMap<>();
    public final Map<String, String> headers = new HashMap<>();
    public final Map<String, Object> contextAttributes = new HashMap<>();
    public final Map<String, String> userSessionNotes = new HashMap<>();
    public final Map<String, String> clientSessionNotes = new HashMap<>();
    public final List<RoleModel> roles = new ArrayList<>();
    public String remoteAddr = "127.0.0.1";
    public String scopeString = "openid";
    public UserSessionModel.SessionPersistenceState persistence = UserSessionModel.SessionPersistenceState.PERSISTENT;

    public final RealmModel realm = Stub.of(RealmModel.class, answers(
            "getName", "acme",
            "getClientById", (Stub.Answer) args -> clientsById.get(args[0]),
            "getClientByClientId", (Stub.Answer) args -> clientsByClientId.get(args[0])));

    public ClientModel client(String id, String clientId, Map<String, String> attributes, boolean serviceAccountsEnabled) {
        ClientModel client = Stub.of(ClientModel.class, answers(
                "getId", id,
                "getClientId", clientId,
                "getAttributes", attributes,
                "getAttribute", (Stub.Answer) args -> attributes.get(args[0]),
                "isServiceAccountsEnabled", serviceAccountsEnabled));
        clientsById.put(id, client);
        clientsByClientId.put(clientId, client);
        return client;
    }

    /** A user whose e-mail is not verified (Keycloak's default for a new user). */
    public UserModel user(String id, String username, String email, String serviceAccountLink,
                          Map<String, List<String>> attributes, List<GroupModel> groups) {
        return user(id, username, email, false, serviceAccountLink, attributes, groups);
    }

    public UserModel user(String id, String username, String email, boolean emailVerified, String serviceAccountLink,
                          Map<String, List<String>> attributes, List<GroupModel> groups) {
        return Stub.of(UserModel.class, answers(
                "getId", id,
                "getUsername", username,
                "getEmail", email,
                "isEmailVerified", emailVerified,
                "getServiceAccountClientLink", serviceAccountLink,
                "getAttributeStream", (Stub.Answer) args -> attributes.getOrDefault(args[0], List.of()).stream(),
                "getGroupsStream", (Stub.Answer) args -> groups.stream()));
    }

    public static GroupModel group(String name, GroupModel parent) {
        return Stub.of(GroupModel.class, answers("getName", name, "getParent", parent, "getOrganization", null));
    }

    public static RoleModel realmRole(String name) {
        return Stub.of(RoleModel.class, answers("getName", name, "isClientRole", false));
    }

    public static RoleModel clientRole(ClientModel client, String name) {
        return Stub.of(RoleModel.class, answers("getName", name, "isClientRole", true, "getContainer", client));
    }

    public UserSessionModel userSession(UserModel user, String id) {
        return Stub.of(UserSessionModel.class, answers(
                "getId", id,
                "getRealm", realm,
                "getUser", user,
                "getNote", (Stub.Answer) args -> userSessionNotes.get(args[0]),
                "getPersistenceState", (Stub.Answer) args -> persistence));
    }

    public ClientSessionContext clientSessionContext(ClientModel client) {
        AuthenticatedClientSessionModel clientSession = Stub.of(AuthenticatedClientSessionModel.class, answers(
                "getClient", client,
                "getNote", (Stub.Answer) args -> clientSessionNotes.get(args[0])));
        return Stub.of(ClientSessionContext.class, answers(
                "getClientSession", clientSession,
                "getAttribute", (Stub.Answer) args -> ((Class<?>) args[1]).cast(contextAttributes.get(args[0])),
                "setAttribute", (Stub.Answer) args -> contextAttributes.put((String) args[0], args[1]),
                "getScopeString", (Stub.Answer) args -> scopeString,
                "getRolesStream", (Stub.Answer) args -> roles.stream()));
    }

    public KeycloakSession session(ClientModel contextClient) {
        HttpHeaders httpHeaders = Stub.of(HttpHeaders.class, answers(
                "getHeaderString", (Stub.Answer) args -> headers.get(args[0])));
        UriInfo uri = Stub.of(UriInfo.class, answers("getQueryParameters", query));
        HttpRequest request = Stub.of(HttpRequest.class, answers(
                "getDecodedFormParameters", form, "getHttpHeaders", httpHeaders, "getUri", uri));
        ClientConnection connection = Stub.of(ClientConnection.class, answers("getRemoteAddr", (Stub.Answer) args -> remoteAddr));
        KeycloakContext context = Stub.of(KeycloakContext.class, answers(
                "getHttpRequest", request, "getConnection", connection, "getClient", contextClient, "getRealm", realm));
        UserProvider users = Stub.of(UserProvider.class, answers(
                "getServiceAccount", (Stub.Answer) args -> serviceAccounts.get(((ClientModel) args[0]).getClientId())));
        return Stub.of(KeycloakSession.class, answers(
                "getContext", context, "users", users, "getAttribute", null));
    }
}
