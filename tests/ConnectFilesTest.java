import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.net.InetSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import javax.xml.parsers.DocumentBuilderFactory;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.w3c.dom.Document;
import org.w3c.dom.Element;

/**
 * connect's pure parts, no Delve needed: the substitutePath matching for binaries built with and without -trimpath,
 * the VS Code and GoLand files, and --dry-run. The same against a real Delve is ConnectTest.
 */
class ConnectFilesTest {
    static final ObjectMapper JSON = new ObjectMapper();

    /**
     * The subset of the Go extension's launch schema that connect writes: golang/vscode-go extension/package.json,
     * contributes.debuggers[type=go].configurationAttributes.attach (properties mode, host, port, substitutePath),
     * plus the properties every VS Code configuration has (name, type, request). The names of all attach properties
     * are listed so that a misspelt one fails.
     */
    static final Set<String> ATTACH_PROPERTIES = Set.of("apiVersion", "asRoot", "backend", "console", "cwd", "debugAdapter",
            "dlvFlags", "dlvLoadConfig", "goroutineFilters", "hideSystemGoroutines", "host", "logDest", "logOutput",
            "maxArrayValues", "maxStringLen", "mode", "port", "processId", "remotePath", "showGlobalVariables", "showLog",
            "showPprofLabels", "showRegisters", "stackTraceDepth", "stopOnEntry", "substitutePath", "trace", "waitFor");

    /** Validates one configuration against that schema subset; returns it for further checks. */
    static JsonNode assertValidRemoteAttach(JsonNode configuration) {
        configuration.fieldNames().forEachRemaining(field -> assertTrue(
                Set.of("name", "type", "request").contains(field) || ATTACH_PROPERTIES.contains(field),
                "'" + field + "' is not a property of the Go extension's attach configuration: " + configuration));
        assertTrue(configuration.path("name").isTextual(), "name is a string");
        assertEquals("go", configuration.path("type").asText());
        assertEquals("attach", configuration.path("request").asText());
        assertTrue(Set.of("local", "remote").contains(configuration.path("mode").asText()), "mode enum [local, remote]");
        assertEquals("remote", configuration.path("mode").asText());
        assertTrue(configuration.path("host").isTextual(), "host: string");
        assertTrue(configuration.path("port").isNumber(), "port: number");
        if (configuration.has("substitutePath")) {
            JsonNode substitute = configuration.get("substitutePath");
            assertTrue(substitute.isArray(), "substitutePath: array");
            for (JsonNode entry : substitute) {
                assertTrue(entry.isObject(), "substitutePath items: object");
                entry.fieldNames().forEachRemaining(f -> assertTrue(Set.of("from", "to").contains(f), "substitutePath item property " + f));
                assertTrue(entry.path("from").isTextual() && entry.path("to").isTextual(), "from/to: strings " + entry);
            }
        }
        return configuration;
    }

    /** A GoLand run configuration file: well-formed XML, one Go Remote configuration; returns that element. */
    static Element assertGolandFile(Path file, String name, String host, int port) throws Exception {
        Document doc = DocumentBuilderFactory.newInstance().newDocumentBuilder().parse(file.toFile());
        Element component = doc.getDocumentElement();
        assertEquals("component", component.getTagName());
        assertEquals("ProjectRunConfigurationManager", component.getAttribute("name"));
        assertEquals(1, component.getElementsByTagName("configuration").getLength());
        Element configuration = (Element) component.getElementsByTagName("configuration").item(0);
        assertEquals("GoRemoteDebugConfigurationType", configuration.getAttribute("type"));
        assertEquals("Go Remote", configuration.getAttribute("factoryName"));
        assertEquals(name, configuration.getAttribute("name"));
        assertEquals(host, configuration.getAttribute("host"));
        assertEquals(Integer.toString(port), configuration.getAttribute("port"));
        return configuration;
    }

    @TempDir Path dir;

    @Test
    void mappingForABinaryBuiltWithoutTrimpath() {
        Path local = Path.of("/home/me/src/demo-service");
        Optional<SourceMapping> mapping = SourceMapping.match(local, List.of("internal/greet/greet.go", "main.go"),
                "example.com/demo-service", List.of("/usr/local/go/src/fmt/print.go", "/build/demo-service/main.go",
                        "/build/demo-service/internal/greet/greet.go", "/root/go/pkg/mod/github.com/x/y@v1.0.0/main.go"));
        assertEquals("/build/demo-service", mapping.orElseThrow().to());
        assertEquals(local.toString(), mapping.get().from());
    }

    @Test
    void mappingForABinaryBuiltWithTrimpath() {
        Path local = Path.of("/home/me/src/demo-service");
        Optional<SourceMapping> mapping = SourceMapping.match(local, List.of("cmd/demo/main.go", "internal/greet/greet.go"),
                "example.com/demo-service", List.of("fmt/print.go", "example.com/demo-service/cmd/demo/main.go",
                        "example.com/demo-service/internal/greet/greet.go", "github.com/x/y@v1.0.0/cmd/demo/main.go"));
        assertEquals("example.com/demo-service", mapping.orElseThrow().to());
        assertTrue(mapping.get().how().contains("-trimpath"), mapping.get().how());
    }

    @Test
    void noMatchIsEmpty() {
        assertTrue(SourceMapping.match(Path.of("/src/other"), List.of("other.go"), "example.com/other",
                List.of("/build/demo/main.go")).isEmpty());
    }

    @Test
    void computeReadsTheLocalModuleAndSkipsVendorAndNestedModules() throws Exception {
        Path module = dir.resolve("checkout");
        Files.createDirectories(module.resolve("vendor/github.com/x"));
        Files.createDirectories(module.resolve("tools"));
        Files.writeString(module.resolve("go.mod"), "module example.com/demo-service\n\ngo 1.24\n");
        Files.writeString(module.resolve("main.go"), "package main\n");
        Files.writeString(module.resolve("vendor/github.com/x/x.go"), "package x\n");
        Files.writeString(module.resolve("tools/go.mod"), "module example.com/tools\n");
        Files.writeString(module.resolve("tools/tool.go"), "package tools\n");
        assertEquals(List.of("main.go"), SourceMapping.localFiles(module));
        SourceMapping mapping = SourceMapping.compute(module, null, () -> List.of("/src/main.go")).orElseThrow();
        assertEquals("/src", mapping.to());
        assertEquals(module.toAbsolutePath().normalize().toString(), mapping.from());
        SourceMapping overridden = SourceMapping.compute(module, "/elsewhere/", () -> fail("overrides need no source list")).orElseThrow();
        assertEquals("/elsewhere", overridden.to());
        try {
            SourceMapping.compute(module, null, () -> List.of("/src/other.go"));
            fail("a binary with none of the module's files is an error");
        } catch (ExitException e) {
            assertEquals(ExitCode.NOT_FOUND, e.status);
            assertTrue(e.getMessage().contains("--local-root and --remote-root"), e.getMessage());
        }
    }

    @Test
    void vscodeConfigurationIsAddedThenUpdatedInPlaceKeepingTheOthers() throws Exception {
        Path launch = dir.resolve(".vscode/launch.json");
        Files.createDirectories(launch.getParent());
        Files.writeString(launch, """
                {"version": "0.2.0", "configurations": [
                  {"name": "Launch Package", "type": "go", "request": "launch", "mode": "auto", "program": "${fileDirname}"},
                  {"name": "kdlv", "type": "go", "request": "attach", "mode": "remote", "port": 1},
                  {"name": "Other", "type": "node", "request": "launch"}],
                 "compounds": []}
                """);
        SourceMapping mapping = new SourceMapping(dir.resolve("svc").toString(), "/build/svc", "test");
        Connect.writeVscode(dir, "kdlv", new InetSocketAddress("127.0.0.1", 40000), mapping);
        Connect.writeVscode(dir, "kdlv", new InetSocketAddress("127.0.0.1", 40001), mapping);
        JsonNode root = JSON.readTree(launch.toFile());
        assertTrue(root.has("compounds"), "other top-level keys kept");
        JsonNode configurations = root.get("configurations");
        assertEquals(3, configurations.size(), root.toPrettyString());
        assertEquals("Launch Package", configurations.get(0).path("name").asText());
        assertEquals("${fileDirname}", configurations.get(0).path("program").asText());
        assertEquals("Other", configurations.get(2).path("name").asText());
        JsonNode ours = assertValidRemoteAttach(configurations.get(1));
        assertEquals(40001, ours.path("port").asInt());
        assertEquals("${workspaceFolder}/svc", ours.at("/substitutePath/0/from").asText());
        assertEquals("/build/svc", ours.at("/substitutePath/0/to").asText());
    }

    @Test
    void vscodeFileIsCreatedWhenMissing() throws Exception {
        Path file = Connect.writeVscode(dir, "kdlv web", new InetSocketAddress("127.0.0.1", 2345),
                new SourceMapping(dir.toString(), "example.com/web", "test"));
        JsonNode root = JSON.readTree(file.toFile());
        assertEquals("0.2.0", root.path("version").asText());
        JsonNode ours = assertValidRemoteAttach(root.path("configurations").get(0));
        assertEquals("${workspaceFolder}", ours.at("/substitutePath/0/from").asText());
    }

    @Test
    void golandFileIsWellFormedGoRemoteAndEscapesTheName() throws Exception {
        String name = "web <\"prod\"> & co";
        Path file = Connect.writeGoland(dir, name, new InetSocketAddress("127.0.0.1", 40000));
        assertTrue(file.startsWith(dir.resolve(".run")) && file.getFileName().toString().endsWith(".run.xml"), file.toString());
        Element configuration = assertGolandFile(file, name, "127.0.0.1", 40000);
        assertEquals("LEAVE", ((Element) configuration.getElementsByTagName("disconnect").item(0)).getAttribute("value"));
    }

    @Test
    void dryRunPrintsTheManualStepsAndChangesNothing() throws Exception {
        TestTools.Result result = TestTools.run(new Connect(), "--dry-run", "--ide", "vscode,goland", "--project", dir.toString(),
                "--remote-root", "/build/svc", "--local-root", dir.toString(), "--address", "127.0.0.1:1");
        assertEquals(0, result.status(), result.toString());
        assertTrue(result.out().contains("dlv connect 127.0.0.1:1"), result.out());
        assertTrue(result.out().contains("exit -c"), result.out());
        assertTrue(result.out().contains("GoRemoteDebugConfigurationType"), result.out());
        assertTrue(result.out().contains("\"substitutePath\""), result.out());
        try (var files = Files.list(dir)) {
            assertEquals(0, files.count(), "dry run wrote nothing");
        }
        TestTools.Result detach = TestTools.run(new Connect(), "detach", "--dry-run", "--address", "127.0.0.1:1");
        assertEquals(0, detach.status(), detach.toString());
        assertTrue(detach.out().contains("exit -d"), detach.out());
    }

    @Test
    void goVersionAndSupportRange() {
        assertEquals("go1.26.8", Connect.goVersion("Go cmd/compile go1.26.8"));
        assertEquals("", Connect.goVersion(""));
        Delve.Version delve = new Delve.Version("1.27.2", 2, "", "go1.25.0", "go1.27.0");
        assertEquals("", Connect.supportNote("go1.26.8", delve));
        assertTrue(Connect.supportNote("go1.20.1", delve).contains("OUTSIDE"));
        assertEquals(Map.of("host", "127.0.0.1", "port", 2345),
                Map.of("host", Connect.parseAddress("2345").getAddress().getHostAddress(), "port", Connect.parseAddress("2345").getPort()));
        assertFalse(Connect.fileName("a/b:c").contains("/"));
    }
}
