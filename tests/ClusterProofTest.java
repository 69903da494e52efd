import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * Proves, with the real kubectl only, that the test cluster does what kdlv relies on: an ephemeral container
 * targeting a container shares its PID namespace, {@code kubectl exec -i} pipes bytes, {@code kubectl port-forward}
 * reaches a port that only an ephemeral container listens on (at 127.0.0.1 inside the pod), and PodSecurity
 * "baseline" rejects an ephemeral container that adds SYS_PTRACE.
 */
@Tag("cluster")
@ExtendWith(ClusterExtension.class)
class ClusterProofTest {
    static final String BUSYBOX = "kdlv.local/busybox:1.35";
    static final Duration READY = Duration.ofSeconds(120);

    static String namespace;
    static String pod;

    @BeforeAll
    static void deployTarget(Cluster cluster) {
        namespace = cluster.createNamespace("kdlv-proof");
        pod = cluster.deploy(namespace, "demo-service.yaml", "demo-service", READY);
    }

    @AfterAll
    static void cleanUp(Cluster cluster) {
        if (namespace != null) cluster.deleteNamespace(namespace);
    }

    @Test
    void ephemeralContainerWithTargetSeesTheTargetsProcesses(Cluster cluster) {
        String name = "ps-" + shortId();
        debug(cluster, name, "--profile=general", "--", "sleep", "600");
        String ps = cluster.kubectl("exec", "-n", namespace, pod, "-c", name, "--", "ps", "-o", "pid,args")
                .stdoutOrThrow();
        assertTrue(ps.lines().anyMatch(l -> l.trim().matches("1\\s+/demo-service.*")),
                "PID 1 in the ephemeral container's PID namespace must be the Go service, not /pause:\n" + ps);
    }

    @Test
    void execPipesBytesBothWays(Cluster cluster) {
        String name = "cat-" + shortId();
        debug(cluster, name, "--", "sleep", "600");
        byte[] input = ("kdlv exec proof " + UUID.randomUUID() + "\n\u00e9\t\u0001 binary-ish line\n")
                .getBytes(StandardCharsets.UTF_8);
        Cluster.Result cat = cluster.kubectlWithInput(input, Duration.ofSeconds(30),
                "exec", "-i", "-n", namespace, pod, "-c", name, "--", "cat");
        assertEquals(0, cat.exitCode(), cat.toString());
        assertEquals(new String(input, StandardCharsets.UTF_8), cat.stdout());
    }

    @Test
    void portForwardReachesALoopbackPortOnlyAnEphemeralContainerListensOn(Cluster cluster) throws Exception {
        String name = "web-" + shortId();
        String token = "kdlv-port-forward-" + UUID.randomUUID();
        debug(cluster, name, "--", "sh", "-c", "mkdir -p /tmp/www && echo " + token
                + " > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:2345 -h /tmp/www");
        // The listener is on the pod's loopback only: waiting for it from inside the pod.
        waitUntil(Duration.ofSeconds(20), () -> cluster.kubectl("exec", "-n", namespace, pod, "-c", name, "--",
                "wget", "-q", "-O", "-", "http://127.0.0.1:2345/").stdout().contains(token));

        Process forward = cluster.startKubectl("port-forward", "-n", namespace, "pod/" + pod, ":2345");
        try {
            BufferedReader lines = new BufferedReader(new InputStreamReader(forward.getInputStream(), StandardCharsets.UTF_8));
            String first = CompletableFuture.supplyAsync(() -> {
                try {
                    return lines.readLine();
                } catch (java.io.IOException e) {
                    return null;
                }
            }).get(30, TimeUnit.SECONDS);
            Matcher m = Pattern.compile("Forwarding from 127\\.0\\.0\\.1:(\\d+) -> 2345").matcher(String.valueOf(first));
            assertTrue(m.find(), "kubectl port-forward printed: " + first);
            int local = Integer.parseInt(m.group(1));
            HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
            HttpResponse<String> response = http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + local + "/"))
                    .timeout(Duration.ofSeconds(10)).build(), HttpResponse.BodyHandlers.ofString());
            assertEquals(200, response.statusCode());
            assertEquals(token, response.body().trim());
        } finally {
            forward.destroy();
            forward.waitFor(5, TimeUnit.SECONDS);
            forward.destroyForcibly();
        }
    }

    @Test
    void podSecurityBaselineRejectsAnEphemeralContainerAddingSysPtrace(Cluster cluster) throws Exception {
        String ns = cluster.createNamespace("kdlv-proof-baseline", "pod-security.kubernetes.io/enforce=baseline");
        try {
            String target = cluster.deploy(ns, "demo-service.yaml", "demo-service", READY);
            Path custom = Files.createTempFile("kdlv-sys-ptrace", ".json");
            Files.writeString(custom, "{\"securityContext\":{\"capabilities\":{\"add\":[\"SYS_PTRACE\"]}}}");
            try {
                Cluster.Result rejected = cluster.kubectl("debug", "-n", ns, target, "--image=" + BUSYBOX,
                        "--image-pull-policy=Never", "--target=app", "-c", "ptrace", "--profile=legacy",
                        "--custom=" + custom, "--", "sleep", "600");
                assertNotEquals(0, rejected.exitCode(), "PodSecurity baseline must reject SYS_PTRACE: " + rejected);
                assertTrue(rejected.stderr().contains("violates PodSecurity \"baseline:latest\"")
                        && rejected.stderr().contains("SYS_PTRACE"), rejected.toString());
            } finally {
                Files.deleteIfExists(custom);
            }
            // Control: the same ephemeral container without the capability is admitted.
            Cluster.Result admitted = cluster.kubectl("debug", "-n", ns, target, "--image=" + BUSYBOX,
                    "--image-pull-policy=Never", "--target=app", "-c", "plain", "--profile=baseline", "--", "sleep", "600");
            assertEquals(0, admitted.exitCode(), admitted.toString());
        } finally {
            cluster.deleteNamespace(ns);
        }
    }

    // ---- the up/down scripts themselves (local cluster only) -------------------------------------------------------

    @Test
    void secondUpReusesTheRunningClusterQuickly(Cluster cluster) {
        org.junit.jupiter.api.Assumptions.assumeTrue(cluster.source().equals("local"), "local cluster only");
        long start = System.nanoTime();
        Cluster.Result up = Cluster.run(java.util.List.of(cluster.repoRoot().resolve("tests/cluster/up").toString()),
                null, Duration.ofMinutes(5), java.util.Map.of());
        long millis = (System.nanoTime() - start) / 1_000_000;
        assertEquals(0, up.exitCode(), up.toString());
        String[] lines = up.stdout().strip().split("\n");
        assertEquals(cluster.kubeconfig().toString(), lines[lines.length - 1], "last stdout line is the kubeconfig");
        assertTrue(up.stderr().contains("already running"), up.stderr());
        assertTrue(millis < 15_000, "a second up took " + millis + " ms");
    }

    @Test
    void upNamesAPortInUseAndLeavesNothingBehind(Cluster cluster) throws Exception {
        org.junit.jupiter.api.Assumptions.assumeTrue(cluster.source().equals("local"), "local cluster only");
        Path state = Files.createTempDirectory("kdlv-second-cluster");
        Files.delete(state);
        // Same ports as the running cluster, another state dir: refused before anything starts.
        Cluster.Result up = Cluster.run(java.util.List.of(cluster.repoRoot().resolve("tests/cluster/up").toString(),
                "--no-fixtures"), null, Duration.ofMinutes(5), java.util.Map.of("KDLV_CLUSTER_DIR", state.toString()));
        assertEquals(1, up.exitCode(), up.toString());
        assertTrue(up.stderr().matches("(?s).*port \\d+ is already in use.*"), up.stderr());
        assertTrue(!Files.exists(state), "no state dir is left behind: " + state);
    }

    @Test
    void downOnNothingIsANoOp(Cluster cluster) throws Exception {
        org.junit.jupiter.api.Assumptions.assumeTrue(cluster.source().equals("local"), "local cluster only");
        Path state = Files.createTempDirectory("kdlv-no-cluster");
        Files.delete(state);
        Cluster.Result down = Cluster.run(java.util.List.of(cluster.repoRoot().resolve("tests/cluster/down").toString()),
                null, Duration.ofMinutes(2), java.util.Map.of("KDLV_CLUSTER_DIR", state.toString()));
        assertEquals(0, down.exitCode(), down.toString());
        assertTrue(down.stderr().contains("nothing to do"), down.stderr());
        assertEquals("", cluster.kubectl("get", "--raw", "/readyz").stdoutOrThrow().replace("ok", "").strip(),
                "the running cluster is untouched");
    }

    // ---- helpers -------------------------------------------------------------------------------------------------

    /** kubectl debug POD --target=app with the local busybox image; waits until the ephemeral container runs. */
    static void debug(Cluster cluster, String name, String... rest) {
        java.util.List<String> args = new java.util.ArrayList<>(java.util.List.of("debug", "-n", namespace, pod,
                "--image=" + BUSYBOX, "--image-pull-policy=Never", "--target=app", "-c", name));
        args.addAll(java.util.List.of(rest));
        cluster.kubectl(args.toArray(String[]::new)).stdoutOrThrow();
        waitUntil(Duration.ofSeconds(60), () -> !cluster.kubectl("get", "pod", "-n", namespace, pod, "-o",
                "jsonpath={.status.ephemeralContainerStatuses[?(@.name==\"" + name + "\")].state.running.startedAt}")
                .stdout().isBlank());
    }

    static void waitUntil(Duration timeout, java.util.function.BooleanSupplier condition) {
        long end = System.nanoTime() + timeout.toNanos();
        while (!condition.getAsBoolean()) {
            if (System.nanoTime() > end) throw new AssertionError("condition not met within " + timeout);
            try {
                Thread.sleep(300);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new AssertionError("interrupted", e);
            }
        }
    }

    static String shortId() {
        return UUID.randomUUID().toString().substring(0, 6);
    }
}
