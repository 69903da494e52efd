import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * attach against the real local cluster: a real API server, kubelet, containerd and Delve, the fixture Go
 * service as the target, and real kubectl port-forward to ask Delve for its version.
 */
@Tag("cluster")
@ExtendWith(ClusterExtension.class)
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class AttachTest {
    Cluster cluster;
    String namespace;
    String image;

    @BeforeAll
    void setUp(Cluster cluster) throws IOException {
        this.cluster = cluster;
        this.image = DebugImage.loadInto(cluster);
        this.namespace = cluster.createNamespace("attach");
    }

    @AfterAll
    void tearDown() {
        if (namespace != null) cluster.deleteNamespace(namespace);
    }

    TestTools.Result attach(String... args) {
        List<String> all = new ArrayList<>(List.of("--kubeconfig", cluster.kubeconfig().toString(), "--image", image, "--timeout", "90s"));
        all.addAll(List.of(args));
        return TestTools.run(new Attach(), all.toArray(String[]::new));
    }

    @Test
    void attachesToTheServiceAndIsReusedTheSecondTime() throws Exception {
        String pod = cluster.deploy(namespace, "demo-service.yaml", "demo-service", Duration.ofSeconds(90));
        try (Service service = Service.watch(cluster, namespace, pod)) {
            TestTools.Result first = attach("-n", namespace, pod, "-o", "json");
            assertEquals(0, first.status(), first.toString());
            JsonNode json = new ObjectMapper().readTree(first.out());
            assertEquals(pod, json.get("pod").asText());
            assertEquals("app", json.get("container").asText());
            assertEquals(1, json.get("pid").asInt(), "the Go process is PID 1 in this pod: " + first);
            assertTrue(json.get("goVersion").asText().startsWith("go1."), first.toString());
            assertFalse(json.get("reused").asBoolean());
            assertDelveAnswersThroughKubectl(pod, json.get("port").asInt());

            TestTools.Result second = attach("-n", namespace, "deploy/demo-service");
            assertEquals(0, second.status(), second.toString());
            assertTrue(second.err().contains("reusing debugger " + json.get("debugger").asText()), second.toString());
            assertTrue(second.err().contains("breakpoint may hold the process about 15 s"), second.toString());
            assertEquals(1, cluster.kubectl("get", "pod", "-n", namespace, pod, "-o", "jsonpath={.spec.ephemeralContainers[*].name}")
                    .stdoutOrThrow().trim().split(" ").length, "a second attach adds no container");
            service.assertAlwaysAnswered();
        }
    }

    @Test
    void nonRootPodGetsARootDebugger() throws Exception {
        String pod = cluster.deploy(namespace, "demo-service-nonroot.yaml", "demo-service-nonroot", Duration.ofSeconds(90));
        try (Service service = Service.watch(cluster, namespace, pod)) {
            TestTools.Result result = attach("-n", namespace, pod, "app");
            assertEquals(0, result.status(), result.toString());
            assertTrue(result.err().contains("runs as non-root: the debugger runs as uid 0"), result.toString());
            assertDelveAnswersThroughKubectl(pod, 2345);
            service.assertAlwaysAnswered();
        }
    }

    @Test
    void findsTheGoProcessBehindAShellWrapper() throws Exception {
        String pod = cluster.deploy(namespace, "demo-service-shell.yaml", "demo-service-shell", Duration.ofSeconds(90));
        try (Service service = Service.watch(cluster, namespace, pod)) {
            TestTools.Result result = attach("-n", namespace, pod, "-o", "json");
            assertEquals(0, result.status(), result.toString());
            int pid = new ObjectMapper().readTree(result.out()).get("pid").asInt();
            assertNotEquals(1, pid, "PID 1 is the shell: " + result);
            assertEquals(String.valueOf(pid), service.get("/pid").strip(), "attached to the process that serves HTTP");
            assertDelveAnswersThroughKubectl(pod, 2345);
            service.assertAlwaysAnswered();
        }
    }

    /** Real kubectl port-forward to the pod's loopback port, then Delve's JSON-RPC GetVersion. */
    void assertDelveAnswersThroughKubectl(String pod, int port) throws Exception {
        try (PortForward forward = PortForward.start(cluster, namespace, pod, port);
             Delve delve = Delve.connect(new InetSocketAddress("127.0.0.1", forward.localPort), 10_000)) {
            Delve.Version version = delve.version();
            assertEquals(2, version.apiVersion());
            assertFalse(version.delveVersion().isEmpty());
        }
    }

    /** `kubectl port-forward pod/POD :PORT`, reading the local port kubectl chose. */
    static final class PortForward implements AutoCloseable {
        static final Pattern FORWARDING = Pattern.compile("Forwarding from 127\\.0\\.0\\.1:(\\d+)");
        final Process process;
        final int localPort;

        PortForward(Process process, int localPort) {
            this.process = process;
            this.localPort = localPort;
        }

        static PortForward start(Cluster cluster, String namespace, String pod, int port) throws IOException {
            Process process = cluster.startKubectl("port-forward", "-n", namespace, "pod/" + pod, ":" + port);
            BufferedReader out = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8));
            for (String line; (line = out.readLine()) != null; ) {
                Matcher matcher = FORWARDING.matcher(line);
                if (matcher.find()) {
                    Thread drain = new Thread(() -> { try { out.transferTo(java.io.Writer.nullWriter()); } catch (IOException ignored) { } });
                    drain.setDaemon(true);
                    drain.start();
                    return new PortForward(process, Integer.parseInt(matcher.group(1)));
                }
            }
            process.destroy();
            throw new AssertionError("kubectl port-forward did not start: " + new String(process.getErrorStream().readAllBytes(), StandardCharsets.UTF_8));
        }

        @Override
        public void close() throws InterruptedException {
            process.destroy();
            process.waitFor(10, TimeUnit.SECONDS);
        }
    }

    /** Polls the service's HTTP port through kubectl port-forward while a test runs, counting failures. */
    static final class Service implements AutoCloseable {
        final PortForward forward;
        final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(3)).build();
        final AtomicInteger answered = new AtomicInteger();
        final List<String> failures = new ArrayList<>();
        final Thread poller;
        volatile boolean stop;

        Service(PortForward forward) {
            this.forward = forward;
            this.poller = new Thread(this::poll, "service-poller");
            poller.setDaemon(true);
            poller.start();
        }

        static Service watch(Cluster cluster, String namespace, String pod) throws IOException {
            return new Service(PortForward.start(cluster, namespace, pod, 8080));
        }

        String get(String path) throws IOException, InterruptedException {
            return get(path, Duration.ofSeconds(5));
        }

        String get(String path, Duration timeout) throws IOException, InterruptedException {
            HttpRequest request = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + forward.localPort + path)).timeout(timeout).build();
            HttpResponse<String> response = http.send(request, HttpResponse.BodyHandlers.ofString());
            if (response.statusCode() != 200) throw new IOException("HTTP " + response.statusCode());
            return response.body();
        }

        void poll() {
            while (!stop) {
                try {
                    get("/hello?name=poller");
                    answered.incrementAndGet();
                } catch (IOException e) {
                    synchronized (failures) {
                        failures.add(e.toString());
                    }
                } catch (InterruptedException e) {
                    return;
                }
                try {
                    Thread.sleep(200);
                } catch (InterruptedException e) {
                    return;
                }
            }
        }

        void assertAlwaysAnswered() {
            synchronized (failures) {
                assertTrue(failures.isEmpty(), "the service stopped answering: " + failures);
            }
            assertTrue(answered.get() > 0, "the service was never asked");
        }

        @Override
        public void close() throws InterruptedException {
            stop = true;
            poller.interrupt();
            poller.join(5000);
            forward.close();
        }
    }
}
