import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.TreeSet;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/** jbang-catalog.json against the scripts, and the ./jbang launcher resolving it. */
class CatalogTest {
    final Path root = TestTools.repoRoot();

    JsonNode aliases() throws IOException {
        return new ObjectMapper().readTree(root.resolve("jbang-catalog.json").toFile()).get("aliases");
    }

    static Optional<String> directive(Path script, String name) throws IOException {
        try (Stream<String> lines = Files.lines(script)) {
            return lines.filter(l -> l.startsWith("//" + name + " ")).map(l -> l.substring(name.length() + 3).strip()).findFirst();
        }
    }

    @Test
    void everyAliasPointsAtAScriptWithTheSameDescription() throws IOException {
        for (Map.Entry<String, JsonNode> alias : (Iterable<Map.Entry<String, JsonNode>>) aliases()::fields) {
            Path script = root.resolve(alias.getValue().get("script-ref").asText());
            assertTrue(Files.isRegularFile(script), alias.getKey() + " points at a missing " + script);
            assertEquals(directive(script, "DESCRIPTION").orElse(null), alias.getValue().path("description").asText(null),
                    "description of alias " + alias.getKey());
            assertEquals("17+", alias.getValue().path("java").asText(), "java version of alias " + alias.getKey());
            assertEquals(alias.getKey() + ".java", script.getFileName().toString(), "alias names its script");
        }
    }

    @Test
    void everyScriptHasAnAliasAndTheHeaderInOrder() throws IOException {
        TreeSet<String> scripts;
        try (Stream<Path> files = Files.list(root.resolve("scripts"))) {
            scripts = files.filter(f -> f.toString().endsWith(".java")).map(f -> f.getFileName().toString().replace(".java", ""))
                    .collect(Collectors.toCollection(TreeSet::new));
        }
        TreeSet<String> listed = new TreeSet<>();
        aliases().fieldNames().forEachRemaining(listed::add);
        assertEquals(scripts, listed, "scripts/ and the catalog's aliases");
        for (String name : scripts) {
            List<String> header = Files.readAllLines(root.resolve("scripts/" + name + ".java")).stream().limit(4).toList();
            assertEquals(List.of("///usr/bin/env jbang \"$0\" \"$@\" ; exit $?", "//JAVA 17+", "//SOURCES lib/*.java"),
                    header.subList(0, 3), name + ".java header");
            assertTrue(header.get(3).startsWith("//DESCRIPTION ") || header.get(3).startsWith("//FILES "), name + ".java header");
            assertTrue(directive(root.resolve("scripts/" + name + ".java"), "DESCRIPTION").isPresent(), name + ".java has a //DESCRIPTION");
        }
    }

    @Test
    void dependencyVersionsArePinnedOnlyInTheHelper() throws IOException {
        try (Stream<Path> files = Files.walk(root.resolve("scripts"))) {
            for (Path file : files.filter(f -> f.toString().endsWith(".java")).toList()) {
                if (file.endsWith("lib/Cli.java")) continue;
                assertTrue(directive(file, "DEPS").isEmpty(), file + " pins a dependency; pins live in scripts/lib/Cli.java");
            }
        }
    }

    @Test
    void theLauncherResolvesTheLocalCatalog() {
        Cluster.Result result = Cluster.run(List.of(root.resolve("jbang").toString(), "alias", "list"), null, Duration.ofMinutes(3),
                Map.of("NO_COLOR", "1"));
        assertEquals(0, result.exitCode(), result.toString());
        for (String alias : List.of("attach")) {
            assertTrue(result.stdout().lines().anyMatch(l -> l.strip().equals(alias)), alias + " listed:\n" + result);
        }
    }
}
