import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.kubernetes.client.openapi.models.V1LabelSelector;
import io.kubernetes.client.openapi.models.V1LabelSelectorRequirement;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine.TypeConversionException;

/** attach's command line and pure logic, without a cluster. */
class AttachOptionsTest {
    @TempDir Path dir;

    Path kubeconfig() throws IOException {
        Path file = dir.resolve("config");
        Files.writeString(file, KubeOptionsTest.TWO_CONTEXTS);
        return file;
    }

    @Test
    void noTargetIsBadInput() throws IOException {
        TestTools.Result result = TestTools.run(new Attach(), "--kubeconfig", kubeconfig().toString(), "--image", "x");
        KubeOptionsTest.assertOneLineUsageError(result, "no target: name a pod");
    }

    @Test
    void podAndSelectorTogetherIsBadInput() throws IOException {
        TestTools.Result result = TestTools.run(new Attach(), "--kubeconfig", kubeconfig().toString(), "my-pod", "-l", "app=web");
        KubeOptionsTest.assertOneLineUsageError(result, "not both");
    }

    @Test
    void portOutOfRange() {
        KubeOptionsTest.assertOneLineUsageError(TestTools.run(new Attach(), "my-pod", "--port", "70000"), "is not a TCP port");
    }

    @Test
    void unknownOutputFormat() {
        KubeOptionsTest.assertOneLineUsageError(TestTools.run(new Attach(), "my-pod", "-o", "yaml"), "unknown output format 'yaml'");
    }

    @Test
    void badTimeout() {
        TestTools.Result result = TestTools.run(new Attach(), "my-pod", "--timeout", "soon");
        assertEquals(ExitCode.USAGE, result.status(), result.toString());
        assertTrue(result.err().contains("'soon' is not a duration"), result.toString());
        assertTrue(result.err().contains("Try 'attach --help'"), result.toString());
    }

    @Test
    void durationsAsKubectlWritesThem() {
        assertEquals(Duration.ofSeconds(90), Durations.parse("90"));
        assertEquals(Duration.ofSeconds(90), Durations.parse("1m30s"));
        assertEquals(Duration.ofMinutes(2), Durations.parse("2m"));
        assertEquals(Duration.ofMillis(500), Durations.parse("500ms"));
        assertThrows(TypeConversionException.class, () -> Durations.parse("2x"));
        assertThrows(TypeConversionException.class, () -> Durations.parse("m2"));
        assertEquals("2m", Durations.format(Duration.ofMinutes(2)));
        assertEquals("90s", Durations.format(Duration.ofSeconds(90)));
    }

    @Test
    void workloadSelectorsBecomeListQueries() {
        V1LabelSelector selector = new V1LabelSelector().matchLabels(Map.of("tier", "web", "app", "shop"))
                .matchExpressions(List.of(
                        new V1LabelSelectorRequirement().key("env").operator("In").values(List.of("prod", "staging")),
                        new V1LabelSelectorRequirement().key("canary").operator("DoesNotExist")));
        assertEquals("app=shop,tier=web,env in (prod,staging),!canary", Selectors.toQuery(selector));
    }

    @Test
    void debuggerNamesLookLikeKubectls() {
        String suffix = Attach.randomSuffix();
        assertTrue(suffix.matches("[bcdfghjklmnpqrstvwxz2456789]{5}"), suffix);
    }
}
