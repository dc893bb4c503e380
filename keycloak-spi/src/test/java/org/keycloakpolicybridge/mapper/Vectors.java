package org.keycloakpolicybridge.mapper;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Collectors;
import java.util.stream.Stream;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

/** Reads the shared contract vectors under {@code contract/vectors/} of the repository. */
public final class Vectors {

    private static final ObjectMapper JSON = new ObjectMapper();

    private Vectors() {
    }

    /** The repository root: system property {@code kpb.repo.root} (set by the POM), else the parent directory. */
    public static Path root() {
        return Path.of(System.getProperty("kpb.repo.root", "..")).toAbsolutePath().normalize();
    }

    /** The {@code NN-*.json} files of {@code contract/vectors/<kind>}, in name order. */
    public static List<Path> files(String kind) {
        Path dir = root().resolve("contract").resolve("vectors").resolve(kind);
        try (Stream<Path> listing = Files.list(dir)) {
            return listing.filter(p -> p.getFileName().toString().matches("[0-9]{2}-.*\\.json"))
                    .sorted().collect(Collectors.toList());
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public static JsonNode read(Path file) {
        try {
            return JSON.readTree(file.toFile());
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public static JsonNode read(String kind, String name) {
        return read(root().resolve("contract").resolve("vectors").resolve(kind).resolve(name));
    }
}
