import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * attach's bad input on the real local cluster: each case one line, its own exit code, no stack trace, and
 * nothing changed in the pod unless the message says so.
 */
@Tag("cluster")
@ExtendWith(ClusterExtension.class)
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class AttachBadInputTest {
    Cluster cluster;
    String namespace;
    String pod;
    String image;

    @BeforeAll
    void setUp(Cluster cluster) throws IOException {
        this.cluster = cluster;
        this.image = DebugImage.loadInto(cluster);
        this.namespace = cluster.createNamespace("attach-bad");
        this.pod = cluster.deploy(namespace, "demo-service.yaml", "demo-service", Duration.ofSeconds(90));
    }

    @AfterAll
    void tearDown() {
        if (namespace != null) cluster.deleteNamespace(namespace);
    }

    TestTools.Result attach(Path kubeconfig, String... args) {
        List<String> all = new ArrayList<>(List.of("--kubeconfig", kubeconfig.toString(), "--image", image, "--timeout", "40s"));
        all.addAll(List.of(args));
        return TestTools.run(new Attach(), all.toArray(String[]::new));
    }

    TestTools.Result attach(String... args) {
        return attach(cluster.kubeconfig(), args);
    }

    int ephemeralContainers(String ns, String podName) {
        String names = cluster.kubectl("get", "pod", "-n", ns, podName, "-o", "jsonpath={.spec.ephemeralContainers[*].name}").stdoutOrThrow().trim();
        return names.isEmpty() ? 0 : names.split(" ").length;
    }

    static void assertFailure(TestTools.Result result, int status, String expected) {
        assertEquals(status, result.status(), result.toString());
        List<String> lines = result.err().strip().lines().toList();
        String last = lines.get(lines.size() - 1);
        assertTrue(last.contains(expected), "the error line should say '" + expected + "':\n" + result);
        assertFalse(result.err().contains("\tat "), "no stack trace without -v:\n" + result);
        assertFalse(result.err().contains("Exception"), "no exception names:\n" + result);
    }

    @Test
    void unknownPod() {
        assertFailure(attach("-n", namespace, "no-such-pod"), ExitCode.NOT_FOUND, "pod no-such-pod not found in namespace " + namespace);
    }

    @Test
    void unknownNamespace() {
        assertFailure(attach("-n", "no-such-namespace", pod), ExitCode.NOT_FOUND, "namespace no-such-namespace does not exist");
    }

    @Test
    void unknownContainer() {
        assertFailure(attach("-n", namespace, pod, "sidecar"), ExitCode.NOT_FOUND, "has no container 'sidecar'; its containers are app");
    }

    @Test
    void unknownContext() {
        assertFailure(attach("--context", "no-such-context", "-n", namespace, pod), ExitCode.USAGE, "context 'no-such-context' is not in");
    }

    @Test
    void podNotRunning() {
        cluster.kubectl("run", "pending", "-n", namespace, "--image=kdlv.local/never-built:1", "--image-pull-policy=Never").stdoutOrThrow();
        assertFailure(attach("-n", namespace, "pending"), ExitCode.STATE, "is Pending, not Running");
    }

    @Test
    void nameAlreadyUsed() {
        int before = ephemeralContainers(namespace, pod);
        assertFailure(attach("-n", namespace, pod, "-c", "app"), ExitCode.NAME_TAKEN, "already has a container named app");
        assertEquals(before, ephemeralContainers(namespace, pod), "nothing added");
    }

    @Test
    void baselinePodSecurityNamespace() {
        String baseline = cluster.createNamespace("attach-baseline", "pod-security.kubernetes.io/enforce=baseline");
        try {
            String target = cluster.deploy(baseline, "demo-service.yaml", "demo-service", Duration.ofSeconds(90));
            assertFailure(attach("-n", baseline, target), ExitCode.POLICY, "enforces PodSecurity 'baseline'");
            assertEquals(0, ephemeralContainers(baseline, target), "nothing added");
        } finally {
            cluster.deleteNamespace(baseline);
        }
    }

    @Test
    void serviceAccountWithoutEphemeralContainers() throws IOException {
        String role = """
                apiVersion: v1
                kind: ServiceAccount
                metadata: {name: viewer}
                ---
                apiVersion: rbac.authorization.k8s.io/v1
                kind: Role
                metadata: {name: pod-viewer}
                rules:
                - {apiGroups: [""], resources: [pods, pods/log], verbs: [get, list, watch]}
                - {apiGroups: [""], resources: [pods/portforward, pods/exec], verbs: [create]}
                ---
                apiVersion: rbac.authorization.k8s.io/v1
                kind: RoleBinding
                metadata: {name: viewer-can-view}
                subjects: [{kind: ServiceAccount, name: viewer}]
                roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-viewer}
                """;
        cluster.kubectlWithInput(role.getBytes(), Duration.ofSeconds(30), "apply", "-n", namespace, "-f", "-").stdoutOrThrow();
        String token = cluster.kubectl("create", "token", "viewer", "-n", namespace).stdoutOrThrow().trim();
        Path kubeconfig = Files.createTempFile("viewer", ".kubeconfig");
        Files.copy(cluster.kubeconfig(), kubeconfig, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
        Cluster.Result set = Cluster.run(List.of(cluster.kubectl().toString(), "--kubeconfig", kubeconfig.toString(),
                "config", "set-credentials", "viewer", "--token=" + token), null, Duration.ofSeconds(20), java.util.Map.of());
        assertTrue(set.ok(), set.toString());
        Cluster.Result context = Cluster.run(List.of(cluster.kubectl().toString(), "--kubeconfig", kubeconfig.toString(),
                "config", "set-context", "--current", "--user=viewer"), null, Duration.ofSeconds(20), java.util.Map.of());
        assertTrue(context.ok(), context.toString());

        int before = ephemeralContainers(namespace, pod);
        assertFailure(attach(kubeconfig, "-n", namespace, pod), ExitCode.FORBIDDEN, "RBAC does not let you patch pods/ephemeralcontainers");
        assertEquals(before, ephemeralContainers(namespace, pod), "nothing added");
    }

    @Test
    void imageThatCannotBePulled() {
        TestTools.Result result = TestTools.run(new Attach(), "--kubeconfig", cluster.kubeconfig().toString(), "-n", namespace,
                "--image", "kdlv.local/no-such-image:1", "--timeout", "60s", pod);
        assertFailure(result, ExitCode.IMAGE, "cannot start: ErrImagePull");
        assertTrue(result.err().contains("stays in the pod"), "says what was left behind:\n" + result);
    }

    @Test
    void delveFailingToAttach() {
        TestTools.Result result = attach("-n", namespace, pod, "--pid", "999999");
        assertFailure(result, ExitCode.DEBUGGER_FAILED, "Delve did not start in debugger");
        assertTrue(result.err().contains("999999"), "names the PID Delve could not attach to:\n" + result);
    }
}
