import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.extension.ExtendWith;
import org.junit.jupiter.api.io.TempDir;

/**
 * debug end to end on the real local cluster, as a user runs it: the script in its own process, a real
 * `dlv connect --init FILE` through its tunnel hitting a breakpoint on an HTTP request, then Ctrl-C (SIGINT)
 * detaching and leaving the service running, untraced.
 */
@Tag("cluster")
@ExtendWith(ClusterExtension.class)
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class DebugTest {
    static final Pattern LISTENS = Pattern.compile("listens on 127\\.0\\.0\\.1:(\\d+)");
    Cluster cluster;
    String namespace;
    String image;
    @TempDir Path project;

    @BeforeAll
    void setUp(Cluster cluster) throws IOException {
        this.cluster = cluster;
        this.image = DebugImage.loadInto(cluster);
        this.namespace = cluster.createNamespace("debug");
    }

    @AfterAll
    void tearDown() {
        if (namespace != null) cluster.deleteNamespace(namespace);
    }

    @Test
    void breakpointThroughTheTunnelThenDetachOnInterrupt() throws Exception {
        String pod = cluster.deploy(namespace, "demo-service.yaml", "demo-service", Duration.ofSeconds(90));
        Path dlv = TestTools.dlv().orElseThrow();
        try (AttachTest.Service service = AttachTest.Service.watch(cluster, namespace, pod)) {
            ProcessBuilder builder = new ProcessBuilder(cluster.repoRoot().resolve("jbang").toString(), "scripts/debug.java",
                    "-n", namespace, "deploy/demo-service", "--image", image, "--local-port", "0", "--ide", "vscode", "--project", project.toString())
                    .directory(cluster.repoRoot().toFile());
            builder.environment().putAll(cluster.env());
            builder.environment().put("NO_COLOR", "1");
            Process debug = builder.start();
            StringBuilder errors = new StringBuilder();
            Thread errPump = pump(debug.getErrorStream(), errors);
            try {
                int port = localPort(debug, errors);

                // A real dlv client through the tunnel: break in the handler, print a local, resume, quit safely.
                Path init = project.resolve("init.dlv");
                Files.writeString(init, "break main.greet\ncondition 1 name == \"breakpoint-test\"\ncontinue\nprint name\nclearall\nexit -c\n");
                CompletableFuture<String> request = CompletableFuture.supplyAsync(() -> {
                    try {
                        Thread.sleep(3000); // dlv sets the breakpoint first
                        return service.get("/hello?name=breakpoint-test", Duration.ofSeconds(30));
                    } catch (Exception e) {
                        return e.toString();
                    }
                });
                Cluster.Result session = Cluster.run(List.of(dlv.toString(), "connect", "127.0.0.1:" + port, "--init", init.toString()),
                        null, Duration.ofSeconds(60), Map.of());
                assertEquals(0, session.exitCode(), session.toString());
                assertTrue(session.stdout().contains("\"breakpoint-test\""), "the local variable, printed at the breakpoint:\n" + session);
                String answer = request.get(30, TimeUnit.SECONDS);
                assertTrue(answer.contains("Hello, breakpoint-test!"), "the request completed after the resume: " + answer);
                assertTrue(Files.readString(project.resolve(".vscode/launch.json")).contains("\"port\": " + port), "launch.json names the tunnel");

                // Ctrl-C: detach, the debugger container ends, the target runs on untraced.
                // Ctrl-C is SIGINT to the process (Process.destroy() would also close our end of its stderr).
                Cluster.Result interrupt = Cluster.run(List.of("kill", "-INT", Long.toString(debug.pid())), null, Duration.ofSeconds(10), Map.of());
                assertEquals(0, interrupt.exitCode(), interrupt.toString());
                assertTrue(debug.waitFor(60, TimeUnit.SECONDS), "debug ended within a minute of the signal");
                errPump.join(5000);
                assertTrue(errors.toString().contains("detached: PID 1 of " + pod + " runs on, untraced"),
                        "exit " + debug.exitValue() + ", stderr:\n" + errors);
                Cluster.Result ended = cluster.kubectl(Duration.ofSeconds(70), "wait", "-n", namespace, "pod/" + pod, "--timeout=60s",
                        "--for=jsonpath={.status.ephemeralContainerStatuses[0].state.terminated.reason}=Completed");
                assertEquals(0, ended.exitCode(), "the debugger container ended when Delve exited: " + ended);
                Cluster.Result tracer = cluster.kubectl(Duration.ofSeconds(90), "debug", "-n", namespace, pod, "--image=kdlv.local/busybox:1.35",
                        "--image-pull-policy=Never", "--profile=general", "--target=app", "-c", "check-tracer", "-q", "--attach=true", "--",
                        "grep", "TracerPid", "/proc/1/status");
                assertTrue(tracer.stdout().contains("TracerPid:\t0"), "no tracer left on the target:\n" + tracer);
                assertEquals("0", cluster.kubectl("get", "pod", "-n", namespace, pod, "-o",
                        "jsonpath={.status.containerStatuses[0].restartCount}").stdoutOrThrow().trim(), "the target never restarted");
                service.assertAlwaysAnswered();
            } finally {
                debug.destroyForcibly();
            }
        }
    }

    @Test
    void resumesAHaltedTargetOnceNoClientIsLeft() throws Exception {
        String ns = cluster.createNamespace("debug-grace");
        try {
            String pod = cluster.deploy(ns, "demo-service.yaml", "demo-service", Duration.ofSeconds(90));
            Path dlv = TestTools.dlv().orElseThrow();
            try (AttachTest.Service service = AttachTest.Service.watch(cluster, ns, pod)) {
                ProcessBuilder builder = new ProcessBuilder(cluster.repoRoot().resolve("jbang").toString(), "scripts/debug.java",
                        "-n", ns, pod, "--image", image, "--local-port", "0", "--grace", "3s").directory(cluster.repoRoot().toFile());
                builder.environment().putAll(cluster.env());
                builder.environment().put("NO_COLOR", "1");
                Process debug = builder.start();
                StringBuilder errors = new StringBuilder();
                pump(debug.getErrorStream(), errors);
                try {
                    int port = localPort(debug, errors);
                    // A client stops the target at a breakpoint and dies there without resuming it (killed, network gone).
                    Path init = project.resolve("halt.dlv");
                    Files.writeString(init, "break main.greet\ncondition 1 name == \"grace\"\ncontinue\n");
                    Process client = new ProcessBuilder(dlv.toString(), "connect", "127.0.0.1:" + port, "--init", init.toString())
                            .redirectErrorStream(true).redirectOutput(project.resolve("client.log").toFile()).start();
                    CompletableFuture<String> request = CompletableFuture.supplyAsync(() -> {
                        try {
                            Thread.sleep(3000);
                            return service.get("/hello?name=grace", Duration.ofSeconds(60)); // held at the breakpoint until resumed
                        } catch (Exception e) {
                            return e.toString();
                        }
                    });
                    for (int i = 0; i < 100 && !Files.readString(project.resolve("client.log")).contains("[Breakpoint 1]"); i++) Thread.sleep(200);
                    assertTrue(Files.readString(project.resolve("client.log")).contains("[Breakpoint 1]"), "the breakpoint was hit");
                    client.destroyForcibly().waitFor(10, TimeUnit.SECONDS);
                    // debug resumes it after --grace: the held request completes, the kubelet never restarts the container.
                    String answer = request.get(70, TimeUnit.SECONDS);
                    assertTrue(answer.contains("Hello, grace!"), "the halted request completed after the resume: " + answer);
                    synchronized (errors) {
                        assertTrue(errors.toString().contains("stayed halted with no client connected for 3s: resuming it"), errors.toString());
                    }
                    assertEquals("0", cluster.kubectl("get", "pod", "-n", ns, pod, "-o",
                            "jsonpath={.status.containerStatuses[0].restartCount}").stdoutOrThrow().trim(), "the target never restarted");
                } finally {
                    Cluster.run(List.of("kill", "-INT", Long.toString(debug.pid())), null, Duration.ofSeconds(10), Map.of());
                    debug.waitFor(60, TimeUnit.SECONDS);
                    debug.destroyForcibly();
                }
            }
        } finally {
            cluster.deleteNamespace(ns);
        }
    }

    @Test
    void refusesADelveItDidNotStartBeforeAddingAnything() throws Exception {
        String ns = cluster.createNamespace("debug-taken");
        try {
            String pod = cluster.deploy(ns, "demo-service.yaml", "demo-service", Duration.ofSeconds(90));
            // The article's way, by hand: kubectl debug running dlv attach, here on the pod's loopback.
            cluster.kubectl(Duration.ofSeconds(60), "debug", "-n", ns, pod, "--image=" + image, "--image-pull-policy=IfNotPresent",
                    "--profile=general", "-c", "by-hand", "--target=app", "--", "dlv", "attach", "1", "--listen=127.0.0.1:2345",
                    "--headless=true", "--api-version=2", "--accept-multiclient", "--continue", "--only-same-user=false").stdoutOrThrow();
            for (int i = 0; i < 150 && !cluster.kubectl("logs", "-n", ns, pod, "-c", "by-hand").stdout().contains("API server listening"); i++) {
                Thread.sleep(200);
            }

            TestTools.Result refused = TestTools.run(new Debug(), "-n", ns, pod, "--image", image, "--local-port", "0", "--kubeconfig", cluster.kubeconfig().toString());
            assertEquals(ExitCode.STATE, refused.status(), refused.toString());
            assertTrue(refused.err().contains("a Delve already answers on 127.0.0.1:2345 in pod " + pod + ", and kdlv did not start it"), refused.err());
            assertEquals(1, refused.err().strip().lines().count(), "one line: " + refused.err());
            assertEquals("by-hand", cluster.kubectl("get", "pod", "-n", ns, pod, "-o", "jsonpath={.spec.ephemeralContainers[*].name}").stdoutOrThrow().trim(),
                    "no debugger was added");
        } finally {
            cluster.deleteNamespace(ns);
        }
    }

    /** Reads debug's stdout until it says where Delve listens locally; fails with its stderr if it ends first. */
    static int localPort(Process debug, StringBuilder errors) throws IOException {
        BufferedReader out = new BufferedReader(new InputStreamReader(debug.getInputStream(), StandardCharsets.UTF_8));
        List<String> lines = new ArrayList<>();
        for (String line; (line = out.readLine()) != null; ) {
            lines.add(line);
            Matcher listens = LISTENS.matcher(line);
            if (listens.find()) return Integer.parseInt(listens.group(1));
        }
        throw new AssertionError("debug ended without saying where Delve listens:\n" + String.join("\n", lines) + "\n--- stderr\n" + errors);
    }

    static Thread pump(java.io.InputStream in, StringBuilder sink) {
        Thread thread = new Thread(() -> {
            try (BufferedReader lines = new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8))) {
                for (String line; (line = lines.readLine()) != null; ) {
                    synchronized (sink) {
                        sink.append(line).append('\n');
                    }
                }
            } catch (IOException ignored) {
                // the process ended
            }
        }, "debug-stderr");
        thread.setDaemon(true);
        thread.start();
        return thread;
    }
}
