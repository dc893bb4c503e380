package org.keycloakpolicybridge.mapper;

import java.lang.reflect.InvocationHandler;
import java.lang.reflect.Proxy;
import java.util.HashMap;
import java.util.Map;

/**
 * Strict {@link Proxy}-based stubs for Keycloak's large model interfaces: only the methods a
 * test names answer (by method name; overloads share the answer); default methods run their
 * default body; anything else throws, which shows exactly what the code under test touches.
 */
public final class Stub {

    /** Computes an answer from the call's arguments. */
    @FunctionalInterface
    public interface Answer {
        Object answer(Object[] args) throws Throwable;
    }

    private Stub() {
    }

    /** A stub answering {@code answers}: method name -> value, or {@link Answer}. */
    public static <T> T of(Class<T> type, Map<String, ?> answers) {
        Map<String, Object> copy = new HashMap<>(answers);
        InvocationHandler handler = (proxy, method, args) -> {
            String name = method.getName();
            if (copy.containsKey(name)) {
                Object value = copy.get(name);
                return value instanceof Answer ? ((Answer) value).answer(args == null ? new Object[0] : args) : value;
            }
            switch (name) {
                case "toString":
                    return "Stub<" + type.getSimpleName() + ">";
                case "hashCode":
                    return System.identityHashCode(proxy);
                case "equals":
                    return proxy == args[0];
                default:
                    break;
            }
            if (method.isDefault()) {
                return InvocationHandler.invokeDefault(proxy, method, args);
            }
            throw new UnsupportedOperationException("stub " + type.getSimpleName() + "." + name + " not defined");
        };
        return type.cast(Proxy.newProxyInstance(type.getClassLoader(), new Class<?>[] {type}, handler));
    }

    /** Convenience: a map of alternating name/value pairs. */
    public static Map<String, Object> answers(Object... pairs) {
        Map<String, Object> map = new HashMap<>();
        for (int i = 0; i < pairs.length; i += 2) {
            map.put((String) pairs[i], pairs[i + 1]);
        }
        return map;
    }
}
