import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Spec;

/** The kubectl-compatible options of the shared helper, against real kubeconfig files. */
class KubeOptionsTest {
    /** A command that only resolves the cluster and prints what it resolved. */
    @Command(name = "probe")
    static class Probe implements Callable<Integer> {
        @Mixin KubeOptions kube;
        @Mixin VerboseOption verbose;

        @Spec CommandSpec spec;

        @Override
        public Integer call() {
            Kube resolved = kube.kube();
            spec.commandLine().getOut().println(resolved.context + " " + resolved.namespace + " " + resolved.client.getBasePath());
            return 0;
        }
    }

    static final String TWO_CONTEXTS = """
            apiVersion: v1
            kind: Config
            current-context: dev
            clusters:
            - name: dev-cluster
              cluster: {server: "https://127.0.0.1:16443", insecure-skip-tls-verify: true}
            - name: prod-cluster
              cluster: {server: "https://127.0.0.2:16443", insecure-skip-tls-verify: true}
            users:
            - name: someone
              user: {token: not-a-real-token}
            contexts:
            - name: dev
              context: {cluster: dev-cluster, user: someone, namespace: team-dev}
            - name: prod
              context: {cluster: prod-cluster, user: someone, namespace: team-prod}
            - name: bare
              context: {cluster: dev-cluster, user: someone}
            """;

    @TempDir Path dir;

    TestTools.Result probe(String... args) {
        return TestTools.run(new Probe(), args);
    }

    Path kubeconfig(String text) throws IOException {
        Path file = dir.resolve("config");
        Files.writeString(file, text);
        return file;
    }

    @Test
    void currentContextAndItsNamespace() throws IOException {
        TestTools.Result result = probe("--kubeconfig", kubeconfig(TWO_CONTEXTS).toString());
        assertEquals(0, result.status(), result.toString());
        assertEquals("dev team-dev https://127.0.0.1:16443", result.out().strip());
    }

    @Test
    void contextSelectsClusterAndNamespace() throws IOException {
        TestTools.Result result = probe("--kubeconfig", kubeconfig(TWO_CONTEXTS).toString(), "--context", "prod");
        assertEquals(0, result.status(), result.toString());
        assertEquals("prod team-prod https://127.0.0.2:16443", result.out().strip());
    }

    @Test
    void namespaceOptionOverridesTheContext() throws IOException {
        TestTools.Result result = probe("--kubeconfig", kubeconfig(TWO_CONTEXTS).toString(), "--context", "prod", "-n", "elsewhere");
        assertEquals(0, result.status(), result.toString());
        assertEquals("prod elsewhere https://127.0.0.2:16443", result.out().strip());
    }

    @Test
    void contextWithoutNamespaceMeansDefault() throws IOException {
        TestTools.Result result = probe("--kubeconfig", kubeconfig(TWO_CONTEXTS).toString(), "--context", "bare");
        assertEquals(0, result.status(), result.toString());
        assertEquals("bare default https://127.0.0.1:16443", result.out().strip());
    }

    @Test
    void missingFile() {
        TestTools.Result result = probe("--kubeconfig", dir.resolve("nope").toString());
        assertOneLineUsageError(result, "does not exist");
    }

    @Test
    void unknownContextListsTheKnownOnes() throws IOException {
        TestTools.Result result = probe("--kubeconfig", kubeconfig(TWO_CONTEXTS).toString(), "--context", "staging");
        assertOneLineUsageError(result, "context 'staging' is not in");
        assertTrue(result.err().contains("dev, prod, bare"), result.toString());
    }

    @Test
    void malformedYaml() throws IOException {
        TestTools.Result result = probe("--kubeconfig", kubeconfig("apiVersion: v1\nclusters: [ {name: x\n  : : :\n").toString());
        assertOneLineUsageError(result, "is not a valid kubeconfig");
    }

    @Test
    void verboseAddsTheStackTrace() {
        TestTools.Result result = probe("-v", "--kubeconfig", dir.resolve("nope").toString());
        assertEquals(ExitCode.USAGE, result.status());
        assertTrue(result.err().contains("\tat "), result.toString());
    }

    @Test
    void unknownOptionPrintsOneLineAndTryHelp() {
        TestTools.Result result = probe("--frobnicate");
        assertEquals(ExitCode.USAGE, result.status(), result.toString());
        String[] lines = result.err().strip().split("\n");
        assertEquals(2, lines.length, result.toString());
        assertTrue(lines[0].contains("--frobnicate"), result.toString());
        assertEquals("Try 'probe --help' for more information.", lines[1]);
    }

    static void assertOneLineUsageError(TestTools.Result result, String expected) {
        assertEquals(ExitCode.USAGE, result.status(), result.toString());
        assertEquals(1, result.err().strip().lines().count(), "one line expected:\n" + result);
        assertTrue(result.err().contains(expected), result.toString());
        assertFalse(result.err().contains("\tat "), "no stack trace without -v:\n" + result);
    }
}
