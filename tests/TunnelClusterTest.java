import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.UUID;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.zip.CRC32;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;
import org.junit.jupiter.api.io.TempDir;

/**
 * The tunnel against a real cluster: Delve attached by an ephemeral container and listening on the pod's
 * 127.0.0.1, an echo service (busybox `nc -ll -e cat`) in another ephemeral container for the load check, and
 * the bad input that needs a real API server (RBAC, container states).
 */
@Tag("cluster")
@ExtendWith(ClusterExtension.class)
class TunnelClusterTest {
    static final String BUSYBOX = "kdlv.local/busybox:1.35";
    static final String DELVE = "kdlv.local/delve:v1.27.2";
    static final int ECHO_PORT = 2346;

    static String namespace;
    static String pod;
    static Path kubeconfig;

    @TempDir static Path dir;

    @BeforeAll
    static void deploy(Cluster cluster) {
        kubeconfig = cluster.kubeconfig();
        namespace = cluster.createNamespace("kdlv-tunnel");
        pod = cluster.deploy(namespace, "demo-service.yaml", "demo-service", Duration.ofSeconds(120));
        debug(cluster, pod, "debugger", DELVE, "--target=app", "--profile=general", "--", "dlv", "attach", "1", "--listen=127.0.0.1:2345",
                "--headless", "--api-version=2", "--accept-multiclient", "--continue", "--only-same-user=false");
        awaitLog(cluster, pod, "debugger", "API server listening at: 127.0.0.1:2345");
        debug(cluster, pod, "echo", BUSYBOX, "--", "nc", "-ll", "-p", Integer.toString(ECHO_PORT), "-e", "cat");
    }

    @AfterAll
    static void cleanUp(Cluster cluster) {
        if (namespace != null) cluster.deleteNamespace(namespace);
    }

    // ---- Delve through the tunnel ------------------------------------------------------------------------------

    @Test
    void portForwardReachesDelve() throws Exception {
        try (TunnelTest.Running tunnel = run("--local-port", "0", "-o", "json")) {
            int port = tunnel.port();
            assertTrue(getVersion(port).contains("\"APIVersion\":2"), tunnel.toString());
            assertTrue(getVersion(port).contains("DelveVersion"), tunnel.toString());
            assertEquals(130, tunnel.stop(), tunnel.toString());
        }
    }

    @Test
    void execModeReachesDelveAndLeavesNoNetcatBehind(Cluster cluster) throws Exception {
        try (TunnelTest.Running tunnel = run("--mode", "exec", "--local-port", "0", "-o", "json")) {
            int port = tunnel.port();
            ExecutorService pool = Executors.newFixedThreadPool(5);
            List<Future<String>> versions = new ArrayList<>();
            for (int i = 0; i < 5; i++) versions.add(pool.submit(() -> getVersion(port)));
            for (Future<String> version : versions) assertTrue(version.get(60, TimeUnit.SECONDS).contains("DelveVersion"));
            pool.shutdown();
            TunnelTest.awaitTrue(() -> !cluster.kubectl("exec", "-n", namespace, pod, "-c", "debugger", "--", "ps", "-o", "args")
                    .stdoutOrThrow().contains("nc 127.0.0.1"), "no nc left in the debugger container");
            assertEquals(130, tunnel.stop(), tunnel.toString());
        }
    }

    // ---- load --------------------------------------------------------------------------------------------------

    /** 20 clients for 60 s to the echo service: every byte back equal; no threads or descriptors left over. */
    @Test
    void twentyClientsForSixtySeconds() throws Exception {
        Kube kube = Kube.connect(kubeconfig, null, namespace);
        try (Tunnel warm = Tunnel.open(kube, pod, "echo", ECHO_PORT, new InetSocketAddress("127.0.0.1", 0), Tunnel.Mode.PORT_FORWARD)) {
            TunnelTest.echoInParallel(warm.localPort(), 2, 10_000);
        }
        TunnelTest.awaitTrue(() -> TunnelTest.tunnelThreads() == 0, "no tunnel thread after the warm-up");
        int fdsBefore = TunnelTest.openFiles();
        long threadsBefore = TunnelTest.ownThreads();
        AtomicLong bytes = new AtomicLong();
        AtomicLong connections = new AtomicLong();
        StringBuffer events = new StringBuffer();
        try (Tunnel tunnel = Tunnel.open(kube, pod, "echo", ECHO_PORT, new InetSocketAddress("127.0.0.1", 0), Tunnel.Mode.PORT_FORWARD,
                line -> events.append(line).append('\n'), false)) {
            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
            ExecutorService pool = Executors.newFixedThreadPool(40);
            List<Future<String>> clients = new ArrayList<>();
            for (int c = 0; c < 20; c++) {
                int client = c;
                clients.add(pool.submit(() -> {
                    // Clients arrive 100 ms apart, as an IDE and a dlv would, not in one burst: the echo fixture (busybox
                    // nc -ll) listens with a backlog of 1, unlike Delve's Go listener.
                    Thread.sleep(100L * client);
                    Random random = new Random(client);
                    int round = 0;
                    while (System.nanoTime() < end) {
                        // a long-lived connection with many exchanges, then a fresh one: both patterns a debugger has
                        try (Socket socket = new Socket("127.0.0.1", tunnel.localPort())) {
                            socket.setSoTimeout(30_000);
                            connections.incrementAndGet();
                            for (int exchange = 0; exchange < 20 && System.nanoTime() < end; exchange++) {
                                byte[] data = new byte[1 + random.nextInt(64 * 1024)];
                                random.nextBytes(data);
                                Future<?> writer = pool.submit(() -> {
                                    socket.getOutputStream().write(data);
                                    return null;
                                });
                                byte[] back = socket.getInputStream().readNBytes(data.length);
                                writer.get(30, TimeUnit.SECONDS);
                                if (back.length != data.length || TunnelTest.crc(back) != TunnelTest.crc(data)) {
                                    return "client " + client + " round " + round + ": " + back.length + " of " + data.length
                                            + " bytes back, checksum " + (TunnelTest.crc(back) == TunnelTest.crc(data) ? "equal" : "differs");
                                }
                                bytes.addAndGet(data.length);
                            }
                        }
                        round++;
                    }
                    return null;
                }));
            }
            for (Future<String> client : clients) {
                String problem = client.get(120, TimeUnit.SECONDS);
                if (problem != null) fail(problem + "\n--- the tunnel said:\n" + events);
            }
            pool.shutdown();
            assertFalse(tunnel.ended().isDone(), "the tunnel is still up");
            TunnelTest.awaitTrue(() -> tunnel.activeConnections() == 0, "every stream closed");
            System.out.printf("load: %d connections, %d MiB echoed in 60 s (%.1f MiB/s)%n", connections.get(), bytes.get() >> 20,
                    bytes.get() / 60.0 / (1 << 20));
            assertTrue(bytes.get() > 20L * 64 * 1024, "some bytes went through: " + bytes.get());
        }
        TunnelTest.awaitTrue(() -> TunnelTest.tunnelThreads() == 0, "no tunnel thread left: " + TunnelTest.threadNames());
        TunnelTest.awaitTrue(() -> TunnelTest.openFiles() <= fdsBefore, "file descriptors back to " + fdsBefore);
        TunnelTest.awaitTrue(() -> TunnelTest.ownThreads() <= threadsBefore, "threads back to " + threadsBefore + ": " + TunnelTest.threadNames(),
                TunnelTest.THREADS_SETTLE_SECONDS);
    }

    @Test
    void execModeEchoesManyClients() throws Exception {
        try (TunnelTest.Running tunnel = run("-c", "echo", "--remote-port", Integer.toString(ECHO_PORT), "--mode", "exec", "--local-port", "0", "-o", "json")) {
            int port = tunnel.port();
            TunnelTest.echoInParallel(port, 10, 256 * 1024);
            assertEquals(130, tunnel.stop(), tunnel.toString());
        }
    }

    // ---- life cycle and bad input -------------------------------------------------------------------------------

    @Test
    void debuggerThatTerminatesEndsTheTunnelWithItsOwnCode(Cluster cluster) throws Exception {
        String name = "short-" + UUID.randomUUID().toString().substring(0, 5);
        debug(cluster, pod, name, BUSYBOX, "--", "sleep", "8");
        try (TunnelTest.Running tunnel = run("-c", name, "--local-port", "0", "-o", "json")) {
            tunnel.port();
            assertEquals(ExitCode.GONE, tunnel.await(), tunnel.toString());
            assertTrue(tunnel.err().contains("debugger container '" + name + "' of pod " + pod + " terminated with exit code 0"), tunnel.toString());
            assertFalse(tunnel.err().contains("\tat "), tunnel.toString());
        }
        // and a terminated debugger is bad input for the next tunnel
        TestTools.Result again = TestTools.run(new TunnelCommand(), pod, "-c", name, "--kubeconfig", kubeconfig.toString(), "-n", namespace, "--local-port", "0");
        TunnelTest.assertOneLine(again, ExitCode.STATE, "is not running (terminated with exit code 0");
    }

    @Test
    void podDeletedEndsTheTunnel(Cluster cluster) throws Exception {
        String bare = "bare-" + UUID.randomUUID().toString().substring(0, 5);
        cluster.kubectl("run", "-n", namespace, bare, "--image=" + BUSYBOX, "--image-pull-policy=Never", "--restart=Never", "--", "sleep", "3600")
                .stdoutOrThrow();
        cluster.kubectl(Duration.ofSeconds(90), "wait", "-n", namespace, "--for=condition=Ready", "pod/" + bare, "--timeout=80s").stdoutOrThrow();
        debug(cluster, bare, "debugger", BUSYBOX, "--", "nc", "-ll", "-p", "2345", "-e", "cat");
        try (TunnelTest.Running tunnel = new TunnelTest.Running(bare, "--kubeconfig", kubeconfig.toString(), "-n", namespace, "--local-port", "0", "-o", "json")) {
            int port = tunnel.port();
            TunnelTest.echoInParallel(port, 1, 1000);
            cluster.kubectl("delete", "pod", "-n", namespace, bare, "--wait=false").stdoutOrThrow();
            assertEquals(ExitCode.GONE, tunnel.await(), tunnel.toString());
            assertTrue(tunnel.err().contains("pod " + bare + " is being deleted") || tunnel.err().contains("pod " + bare + " was deleted"), tunnel.toString());
            TunnelTest.assertRefused(port);
        }
    }

    /**
     * The API connection drops (a relay between the tunnel and the API server cuts every connection): the clients on
     * it end with one line, the listener stays, and the next client opens a new connection and reaches Delve.
     */
    @Test
    void aDroppedApiConnectionKeepsTheListener() throws Exception {
        String config = Files.readString(kubeconfig);
        java.util.regex.Matcher server = java.util.regex.Pattern.compile("server: https://127\\.0\\.0\\.1:(\\d+)").matcher(config);
        org.junit.jupiter.api.Assumptions.assumeTrue(server.find(), "the API server is not on 127.0.0.1: no relay possible");
        try (Relay relay = new Relay(Integer.parseInt(server.group(1)))) {
            Path relayed = dir.resolve("relayed.kubeconfig");
            Files.writeString(relayed, config.replace(server.group(0), "server: https://127.0.0.1:" + relay.port()));
            try (TunnelTest.Running tunnel = new TunnelTest.Running(pod, "--kubeconfig", relayed.toString(), "-n", namespace,
                    "--local-port", "0", "-o", "json")) {
                int port = tunnel.port();
                try (Socket first = new Socket("127.0.0.1", port)) {
                    first.setSoTimeout(30_000);
                    assertTrue(rpc(first, 1).contains("DelveVersion"));
                    relay.dropAll();
                    InputStream in = first.getInputStream();
                    while (in.read() >= 0) {
                        // Delve's newline after the answer, then the end: the client on the dropped connection is closed
                    }
                }
                TunnelTest.awaitTrue(() -> tunnel.err().lines().anyMatch(l -> l.startsWith("connection 1: ") && l.contains("port-forward connection")
                        && l.contains("the listener stays up")), "a one-line message");
                assertTrue(getVersion(port).contains("DelveVersion"), "a new client goes through: " + tunnel);
                assertTrue(tunnel.thread.isAlive(), tunnel.toString());
                assertFalse(tunnel.err().contains("\tat "), tunnel.toString());
                assertEquals(130, tunnel.stop(), tunnel.toString());
            }
        }
    }

    /** A TCP relay on 127.0.0.1 to a local port whose connections the test can cut all at once. */
    static final class Relay implements AutoCloseable {
        final java.net.ServerSocket server = new java.net.ServerSocket(0, 50, java.net.InetAddress.getLoopbackAddress());
        final java.util.Set<Socket> sockets = java.util.concurrent.ConcurrentHashMap.newKeySet();
        final int target;

        Relay(int target) throws IOException {
            this.target = target;
            Thread acceptor = new Thread(() -> {
                while (!server.isClosed()) {
                    try {
                        Socket in = server.accept();
                        Socket out = new Socket("127.0.0.1", target);
                        sockets.add(in);
                        sockets.add(out);
                        pump(in, out);
                        pump(out, in);
                    } catch (IOException e) {
                        return;
                    }
                }
            }, "relay");
            acceptor.setDaemon(true);
            acceptor.start();
        }

        int port() {
            return server.getLocalPort();
        }

        void pump(Socket from, Socket to) {
            Thread thread = new Thread(() -> {
                try {
                    from.getInputStream().transferTo(to.getOutputStream());
                } catch (IOException ignored) {
                    // cut
                } finally {
                    try {
                        from.close();
                        to.close();
                    } catch (IOException ignored) {
                        // closed
                    }
                }
            }, "relay-pump");
            thread.setDaemon(true);
            thread.start();
        }

        void dropAll() throws IOException {
            for (Socket socket : List.copyOf(sockets)) socket.close();
            sockets.clear();
        }

        @Override
        public void close() throws IOException {
            server.close();
            dropAll();
        }
    }

    @Test
    void missingDebuggerContainer() {
        TestTools.Result result = TestTools.run(new TunnelCommand(), pod, "-c", "nope", "--kubeconfig", kubeconfig.toString(), "-n", namespace, "--local-port", "0");
        TunnelTest.assertOneLine(result, ExitCode.NOT_FOUND, "has no container 'nope'");
        assertTrue(result.err().contains("debugger"), result.toString());
    }

    @Test
    void missingPod() {
        TunnelTest.assertOneLine(TestTools.run(new TunnelCommand(), "no-such-pod", "--kubeconfig", kubeconfig.toString(), "-n", namespace, "--local-port", "0"),
                ExitCode.NOT_FOUND, "pod no-such-pod not found");
    }

    /** A service account that may read pods but not open streams: both modes are refused up front, in one line. */
    @Test
    void noPermissionForPortForwardOrExec(Cluster cluster) throws IOException {
        cluster.kubectl("create", "serviceaccount", "-n", namespace, "reader").stdoutOrThrow();
        cluster.kubectl("create", "role", "-n", namespace, "pod-reader", "--verb=get,list,watch", "--resource=pods").stdoutOrThrow();
        cluster.kubectl("create", "rolebinding", "-n", namespace, "reader", "--role=pod-reader", "--serviceaccount=" + namespace + ":reader").stdoutOrThrow();
        String token = cluster.kubectl("create", "token", "-n", namespace, "reader").stdoutOrThrow().strip();
        String server = cluster.kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdoutOrThrow().strip();
        Path limited = dir.resolve("reader.kubeconfig");
        Files.writeString(limited, "apiVersion: v1\nkind: Config\ncurrent-context: reader\n"
                + "clusters:\n- name: c\n  cluster: {server: \"" + server + "\", insecure-skip-tls-verify: true}\n"
                + "users:\n- name: reader\n  user: {token: \"" + token + "\"}\n"
                + "contexts:\n- name: reader\n  context: {cluster: c, user: reader, namespace: " + namespace + "}\n");
        TunnelTest.assertOneLine(TestTools.run(new TunnelCommand(), pod, "--kubeconfig", limited.toString(), "--local-port", "0"),
                ExitCode.FORBIDDEN, "not allowed to open pods/portforward on pod " + pod);
        TunnelTest.assertOneLine(TestTools.run(new TunnelCommand(), pod, "--mode", "exec", "--kubeconfig", limited.toString(), "--local-port", "0"),
                ExitCode.FORBIDDEN, "not allowed to open pods/exec on pod " + pod);
    }

    /** The RBAC kubectl's documentation asks for (create pods/portforward) is enough: SPDY on an upgraded POST. */
    @Test
    void createOnPortForwardIsEnough(Cluster cluster) throws Exception {
        cluster.kubectl("create", "serviceaccount", "-n", namespace, "forwarder").stdoutOrThrow();
        cluster.kubectl("create", "role", "-n", namespace, "forwarder", "--verb=get,list,watch", "--resource=pods").stdoutOrThrow();
        cluster.kubectl("create", "role", "-n", namespace, "forwarder-pf", "--verb=create", "--resource=pods/portforward").stdoutOrThrow();
        cluster.kubectl("create", "rolebinding", "-n", namespace, "forwarder", "--role=forwarder", "--serviceaccount=" + namespace + ":forwarder").stdoutOrThrow();
        cluster.kubectl("create", "rolebinding", "-n", namespace, "forwarder-pf", "--role=forwarder-pf", "--serviceaccount=" + namespace + ":forwarder").stdoutOrThrow();
        Path config = serviceAccountKubeconfig(cluster, "forwarder");
        try (TunnelTest.Running tunnel = new TunnelTest.Running(pod, "--kubeconfig", config.toString(), "--local-port", "0", "-o", "json", "-v")) {
            int port = tunnel.port();
            assertTrue(getVersion(port).contains("DelveVersion"), tunnel.toString());
            assertEquals(130, tunnel.stop(), tunnel.toString());
        }
        TunnelTest.assertOneLine(TestTools.run(new TunnelCommand(), pod, "--mode", "exec", "--kubeconfig", config.toString(), "--local-port", "0"),
                ExitCode.FORBIDDEN, "not allowed to open pods/exec on pod " + pod);
    }

    static Path serviceAccountKubeconfig(Cluster cluster, String account) throws IOException {
        String token = cluster.kubectl("create", "token", "-n", namespace, account).stdoutOrThrow().strip();
        String server = cluster.kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdoutOrThrow().strip();
        Path file = dir.resolve(account + ".kubeconfig");
        Files.writeString(file, "apiVersion: v1\nkind: Config\ncurrent-context: " + account + "\n"
                + "clusters:\n- name: c\n  cluster: {server: \"" + server + "\", insecure-skip-tls-verify: true}\n"
                + "users:\n- name: " + account + "\n  user: {token: \"" + token + "\"}\n"
                + "contexts:\n- name: " + account + "\n  context: {cluster: c, user: " + account + ", namespace: " + namespace + "}\n");
        return file;
    }

    // ---- helpers -----------------------------------------------------------------------------------------------

    static TunnelTest.Running run(String... args) {
        List<String> all = new ArrayList<>(List.of(pod, "--kubeconfig", kubeconfig.toString(), "-n", namespace));
        all.addAll(List.of(args));
        return new TunnelTest.Running(all.toArray(String[]::new));
    }

    /** `kubectl debug` an ephemeral container and waits until it runs. */
    static void debug(Cluster cluster, String target, String name, String image, String... rest) {
        List<String> args = new ArrayList<>(List.of("debug", "-n", namespace, target, "-c", name, "--image=" + image, "--image-pull-policy=Never"));
        args.addAll(List.of(rest));
        cluster.kubectl(args.toArray(String[]::new)).stdoutOrThrow();
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(90);
        while (System.nanoTime() < end) {
            String state = cluster.kubectl("get", "pod", "-n", namespace, target, "-o",
                    "jsonpath={.status.ephemeralContainerStatuses[?(@.name==\"" + name + "\")].state}").stdout();
            if (state.contains("running")) return;
            sleep(250);
        }
        fail("ephemeral container " + name + " did not start: " + cluster.kubectl("describe", "pod", "-n", namespace, target).stdout());
    }

    static void awaitLog(Cluster cluster, String target, String container, String text) {
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
        String logs = "";
        while (System.nanoTime() < end) {
            logs = cluster.kubectl("logs", "-n", namespace, target, "-c", container).stdout();
            if (logs.contains(text)) return;
            sleep(250);
        }
        fail("no '" + text + "' in the logs of " + container + ":\n" + logs);
    }

    static void sleep(long millis) {
        try {
            Thread.sleep(millis);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException(e);
        }
    }

    /** One RPCServer.GetVersion JSON-RPC call on a fresh connection; returns the raw response. */
    static String getVersion(int port) throws IOException {
        try (Socket socket = new Socket("127.0.0.1", port)) {
            socket.setSoTimeout(30_000);
            return rpc(socket, 1);
        }
    }

    /** Sends one GetVersion request and reads one complete JSON object back (Delve sends no newline framing). */
    static String rpc(Socket socket, int id) throws IOException {
        OutputStream out = socket.getOutputStream();
        out.write(("{\"method\":\"RPCServer.GetVersion\",\"params\":[{}],\"id\":" + id + "}").getBytes(StandardCharsets.UTF_8));
        out.flush();
        InputStream in = socket.getInputStream();
        StringBuilder response = new StringBuilder();
        int depth = 0;
        boolean inString = false, escaped = false, started = false;
        while (true) {
            int c = in.read();
            if (c < 0) throw new IOException("the connection closed after " + response);
            response.append((char) c);
            if (inString) {
                if (escaped) escaped = false;
                else if (c == '\\') escaped = true;
                else if (c == '"') inString = false;
            } else if (c == '"') {
                inString = true;
            } else if (c == '{') {
                depth++;
                started = true;
            } else if (c == '}') {
                depth--;
                if (started && depth == 0) return response.toString();
            }
        }
    }
}
