package org.keycloakpolicybridge.mapper.bridge;

import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.StringJoiner;

import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * HMAC request signing, scheme {@code v1}, sender side. The normative description is the
 * docstring of {@code keycloak_policy_bridge/signature.py}; {@code contract/vectors/hmac/} pins
 * the bytes for both sides:
 *
 * <pre>
 * canonical request = "v1" LF METHOD LF PATH LF TIMESTAMP LF hex(SHA-256(body))   (ASCII, no trailing LF)
 * X-KPB-Timestamp: TIMESTAMP
 * X-KPB-Signature: v1=hex(HMAC-SHA256(secret, canonical request))
 * X-KPB-Key-Id:    key id (only when configured)
 * </pre>
 *
 * Instances are immutable and thread-safe; they hold a private copy of the secret and never
 * expose it.
 */
public final class RequestSigner {

    public static final String TIMESTAMP_HEADER = "X-KPB-Timestamp";
    public static final String SIGNATURE_HEADER = "X-KPB-Signature";
    public static final String KEY_ID_HEADER = "X-KPB-Key-Id";
    private static final String SCHEME = "v1";
    private static final String HMAC = "HmacSHA256";
    private static final HexFormat HEX = HexFormat.of();

    private final String keyId;
    private final SecretKeySpec key;

    /**
     * @param keyId sent as {@code X-KPB-Key-Id}; null sends no key id
     * @param secret the shared secret (copied)
     */
    public RequestSigner(String keyId, byte[] secret) {
        if (secret == null || secret.length == 0) {
            throw new IllegalArgumentException("HMAC secret is empty");
        }
        this.keyId = keyId;
        this.key = new SecretKeySpec(secret, HMAC);
    }

    /** The headers for one request sent at {@code timestampSeconds} (unix seconds). */
    public Map<String, String> headers(String method, String requestTarget, long timestampSeconds, byte[] body) {
        Map<String, String> headers = new LinkedHashMap<>();
        headers.put(TIMESTAMP_HEADER, Long.toString(timestampSeconds));
        headers.put(SIGNATURE_HEADER, signature(key, canonicalRequest(method, requestTarget, timestampSeconds, body)));
        if (keyId != null) {
            headers.put(KEY_ID_HEADER, keyId);
        }
        return headers;
    }

    /**
     * The canonical request string. {@code requestTarget} is the raw path plus {@code ?query}
     * exactly as sent.
     *
     * @throws IllegalArgumentException for a negative timestamp or a method/target the scheme
     *     cannot carry (non-ASCII, spaces, CR/LF)
     */
    public static String canonicalRequest(String method, String requestTarget, long timestampSeconds, byte[] body) {
        if (timestampSeconds < 0) {
            throw new IllegalArgumentException("timestamp must not be negative");
        }
        if (method == null || !method.matches("[!#$%&'*+\\-.^_`|~0-9A-Za-z]+")) {
            throw new IllegalArgumentException("method must be an HTTP token");
        }
        if (requestTarget == null || !requestTarget.matches("/[\\x21-\\x7e]*")) {
            throw new IllegalArgumentException("request target must be '/' then printable ASCII");
        }
        return SCHEME + "\n" + method.toUpperCase(Locale.ROOT) + "\n" + requestTarget + "\n" + timestampSeconds + "\n"
                + bodySha256Hex(body);
    }

    /** Lowercase hex SHA-256 of the body bytes. */
    public static String bodySha256Hex(byte[] body) {
        try {
            return HEX.formatHex(MessageDigest.getInstance("SHA-256").digest(body));
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("SHA-256 unavailable", e);
        }
    }

    /**
     * The {@code X-KPB-Signature} value for one or more secrets (rotation: one {@code v1=}
     * value per secret, in order, joined by {@code ,}).
     */
    public static String signatureHeader(List<byte[]> secrets, String canonicalRequest) {
        StringJoiner joined = new StringJoiner(",");
        for (byte[] secret : secrets) {
            joined.add(signature(new SecretKeySpec(secret, HMAC), canonicalRequest));
        }
        return joined.toString();
    }

    private static String signature(SecretKeySpec key, String canonicalRequest) {
        try {
            // A Mac is not thread-safe; a fresh one per request costs about a microsecond.
            Mac mac = Mac.getInstance(HMAC);
            mac.init(key);
            return SCHEME + "=" + HEX.formatHex(mac.doFinal(canonicalRequest.getBytes(StandardCharsets.US_ASCII)));
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("HMAC-SHA256 unavailable", e);
        }
    }

    @Override
    public String toString() {
        return "RequestSigner[keyId=" + keyId + "]";
    }
}
