import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.ByteArrayOutputStream;
import java.io.Closeable;
import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.zip.CRC32;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import picocli.CommandLine;

/**
 * The tunnel without a cluster: its command line, bad input, and its streams, life cycle and cleanup against a
 * stand-in API server ({@link FakeKubeApi}) whose pods/portforward and pods/exec streams echo. The same protocol
 * against a real cluster is TunnelClusterTest.
 */
class TunnelTest {
    @TempDir Path dir;
    FakeKubeApi api;
    Path kubeconfig;

    @BeforeEach
    void startApi() throws IOException {
        api = new FakeKubeApi();
        kubeconfig = api.kubeconfig(dir);
    }

    @AfterEach
    void stopApi() throws IOException {
        api.close();
    }

    // ---- command line and bad input ------------------------------------------------------------------------

    @Test
    void dryRunPrintsTheManualPortForward() {
        TestTools.Result result = TestTools.run(new TunnelCommand(), "web", "--dry-run", "-n", "shop", "--local-port", "40000");
        assertEquals(0, result.status(), result.toString());
        assertTrue(result.out().contains("kubectl -n shop port-forward --address 127.0.0.1 pod/web 40000:2345"), result.toString());
        assertTrue(result.out().contains("dlv connect 127.0.0.1:40000"), result.toString());
        assertEquals(0, api.streamsServed.get());
    }

    @Test
    void dryRunPrintsTheArticlesPlumbingForExec() {
        TestTools.Result result = TestTools.run(new TunnelCommand(), "web", "--dry-run", "--mode", "exec", "--kubeconfig", kubeconfig.toString(),
                "-c", "debugger-x1", "--remote-port", "4000");
        assertEquals(0, result.status(), result.toString());
        assertTrue(result.out().contains("tcpserver 127.0.0.1 2345 kubectl --kubeconfig " + kubeconfig + " -n ns exec -i -c debugger-x1 web -- nc 127.0.0.1 4000"),
                result.toString());
    }

    @Test
    void unknownModeIsBadInput() {
        assertOneLine(TestTools.run(new TunnelCommand(), "web", "--mode", "ssh", "--kubeconfig", kubeconfig.toString()), ExitCode.USAGE, "--mode must be");
    }

    @Test
    void localPortInUse() throws IOException {
        try (ServerSocket taken = new ServerSocket(0, 1, InetAddress.getByName("127.0.0.1"))) {
            TestTools.Result result = TestTools.run(new TunnelCommand(), "web", "--kubeconfig", kubeconfig.toString(),
                    "--local-port", Integer.toString(taken.getLocalPort()));
            assertOneLine(result, ExitCode.LOCAL_PORT, "is in use");
            assertTrue(result.err().contains("--local-port 0"), result.toString());
        }
    }

    @Test
    void podNotFound() {
        assertOneLine(TestTools.run(new TunnelCommand(), "nope", "--kubeconfig", kubeconfig.toString(), "--local-port", "0"),
                ExitCode.NOT_FOUND, "pod nope not found in namespace ns");
    }

    @Test
    void podWithoutTheNamedDebuggerContainer() {
        TestTools.Result result = TestTools.run(new TunnelCommand(), "web", "-c", "debugger-2", "--kubeconfig", kubeconfig.toString(), "--local-port", "0");
        assertOneLine(result, ExitCode.NOT_FOUND, "pod web has no container 'debugger-2'");
        assertTrue(result.err().contains("ephemeral containers: debugger"), result.toString());
    }

    @Test
    void debuggerContainerNotRunningYet() {
        api.podJson = FakeKubeApi.pod("waiting");
        assertOneLine(TestTools.run(new TunnelCommand(), "web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0"),
                ExitCode.STATE, "debugger container 'debugger' of pod web is not running (waiting: ContainerCreating)");
    }

    @Test
    void debuggerContainerTerminated() {
        api.podJson = FakeKubeApi.pod("terminated");
        TestTools.Result result = TestTools.run(new TunnelCommand(), "web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0");
        assertOneLine(result, ExitCode.STATE, "terminated with exit code 1, Error: could not attach to pid 1");
        assertTrue(result.err().contains("run attach again"), result.toString());
    }

    @Test
    void noPermissionForPortForward() {
        api.allowed = false;
        TestTools.Result result = TestTools.run(new TunnelCommand(), "web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0");
        assertOneLine(result, ExitCode.FORBIDDEN, "not allowed to open pods/portforward on pod web in namespace ns");
        assertEquals(0, api.streamsServed.get());
    }

    @Test
    void noPermissionForExec() {
        api.allowed = false;
        assertOneLine(TestTools.run(new TunnelCommand(), "web", "--mode", "exec", "--kubeconfig", kubeconfig.toString(), "--local-port", "0"),
                ExitCode.FORBIDDEN, "not allowed to open pods/exec");
    }

    @Test
    void unreachableApiServer() throws IOException {
        api.close();
        assertOneLine(TestTools.run(new TunnelCommand(), "web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0"),
                ExitCode.UNREACHABLE, "cannot reach the API server");
    }

    // ---- streams ---------------------------------------------------------------------------------------------

    @Test
    void portForwardEchoesManyClientsAtOnceAndFreesTheirStreams() throws Exception {
        try (Running tunnel = new Running("web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0", "-o", "json")) {
            int port = tunnel.port();
            assertTrue(tunnel.out().contains("\"mode\":\"port-forward\""), tunnel.out());
            assertTrue(tunnel.out().contains("\"container\":\"debugger\""), tunnel.out());
            echoInParallel(port, 8, 300_000);
            awaitTrue(() -> api.openStreams.get() == 0, "every stream closed after its client left");
            assertEquals(8, api.streamsServed.get());
            assertEquals(130, tunnel.stop(), tunnel.toString());
        }
    }

    @Test
    void execModeEchoesWithHalfClose() throws Exception {
        try (Running tunnel = new Running("web", "--mode", "exec", "--kubeconfig", kubeconfig.toString(), "--local-port", "0", "-o", "json", "-v")) {
            int port = tunnel.port();
            echoInParallel(port, 4, 200_000);
            awaitTrue(() -> api.openStreams.get() == 0, "every exec stream ended after stdin was closed");
            assertTrue(tunnel.err().contains("v5.channel.k8s.io"), tunnel.toString());
            assertEquals(130, tunnel.stop());
        }
    }

    @Test
    void aClientThatDisconnectsEarlyFreesItsStream() throws Exception {
        try (Running tunnel = new Running("web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0", "-o", "json", "-v")) {
            int port = tunnel.port();
            Socket socket = new Socket("127.0.0.1", port);
            socket.getOutputStream().write("hello".getBytes(StandardCharsets.UTF_8));
            byte[] back = socket.getInputStream().readNBytes(5);
            assertEquals("hello", new String(back, StandardCharsets.UTF_8), tunnel.toString());
            assertEquals(1, api.openStreams.get());
            socket.setSoLinger(true, 0);
            socket.close(); // a reset, not a clean close
            awaitTrue(() -> api.openStreams.get() == 0, "the stream closed");
            echoInParallel(port, 1, 1000); // and the listener still works
            assertEquals(130, tunnel.stop());
        }
    }

    @Test
    void refusedRemotePortIsOneLinePerConnection() throws Exception {
        api.portForwardError = "error forwarding port 2345 to pod uid-1: failed to connect to localhost:2345 inside namespace: connection refused";
        try (Running tunnel = new Running("web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0", "-o", "json")) {
            int port = tunnel.port();
            try (Socket socket = new Socket("127.0.0.1", port)) {
                socket.setSoTimeout(10_000);
                assertEquals(-1, socket.getInputStream().read(), "the client is closed");
            }
            awaitTrue(() -> tunnel.err().contains("connection 1: nothing listens on 127.0.0.1:2345 in pod web"), "a one-line error");
            assertFalse(tunnel.err().contains("\tat "), tunnel.toString());
            assertEquals(130, tunnel.stop());
        }
    }

    @Test
    void forbiddenStreamIsOneLineAndTheListenerStays() throws Exception {
        try (Running tunnel = new Running("web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0", "-o", "json")) {
            int port = tunnel.port();
            api.refuseStreams = true;
            try (Socket socket = new Socket("127.0.0.1", port)) {
                socket.setSoTimeout(10_000);
                assertEquals(-1, socket.getInputStream().read());
            }
            awaitTrue(() -> tunnel.err().contains("connection 1: not allowed to open pods/portforward"), "a one-line error");
            api.refuseStreams = false;
            echoInParallel(port, 1, 1000);
            assertEquals(130, tunnel.stop());
        }
    }

    @Test
    void podDeletedEndsTheTunnelWithItsOwnExitCode() throws Exception {
        try (Running tunnel = new Running("web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0", "-o", "json")) {
            int port = tunnel.port();
            awaitTrue(() -> api.watches.get() > 0, "the tunnel watches the pod");
            api.watchEvents.add("{\"type\":\"DELETED\",\"object\":" + FakeKubeApi.pod("running") + "}");
            assertEquals(ExitCode.GONE, tunnel.await(), tunnel.toString());
            assertTrue(tunnel.err().contains("pod web was deleted"), tunnel.toString());
            assertFalse(tunnel.err().contains("\tat "), tunnel.toString());
            assertRefused(port);
        }
    }

    @Test
    void debuggerTerminatedEndsTheTunnelWithItsOwnExitCode() throws Exception {
        try (Running tunnel = new Running("web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0", "-o", "json")) {
            tunnel.port();
            awaitTrue(() -> api.watches.get() > 0, "the tunnel watches the pod");
            api.watchEvents.add("{\"type\":\"MODIFIED\",\"object\":" + FakeKubeApi.pod("terminated") + "}");
            assertEquals(ExitCode.GONE, tunnel.await(), tunnel.toString());
            assertTrue(tunnel.err().contains("debugger container 'debugger' of pod web terminated with exit code 1"), tunnel.toString());
        }
    }

    @Test
    void aDroppedApiConnectionKeepsTheListener() throws Exception {
        try (Running tunnel = new Running("web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0", "-o", "json")) {
            int port = tunnel.port();
            awaitTrue(() -> api.watches.get() == 1, "the tunnel watches the pod");
            api.dropWatches();
            awaitTrue(() -> api.watches.get() >= 2, "the tunnel watches again");
            echoInParallel(port, 2, 10_000);
            assertTrue(tunnel.thread.isAlive(), tunnel.toString());
            assertEquals(130, tunnel.stop());
        }
    }

    @Test
    void anotherAddressWarnsThatDelveHasNoAuthentication() throws Exception {
        try (Running tunnel = new Running("web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0", "-o", "json", "--address", "127.0.0.2")) {
            int port = tunnel.port();
            assertTrue(tunnel.err().contains("WARNING: listening on 127.0.0.2, not 127.0.0.1: Delve has no authentication"), tunnel.toString());
            assertTrue(tunnel.out().contains("\"address\":\"127.0.0.2\""), tunnel.out());
            try (Socket socket = new Socket("127.0.0.2", port)) {
                socket.getOutputStream().write(1);
                assertEquals(1, socket.getInputStream().read());
            }
            assertEquals(130, tunnel.stop());
        }
    }

    @Test
    void defaultOutputSaysWhereToConnect() throws Exception {
        try (Running tunnel = new Running("web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0")) {
            awaitTrue(() -> tunnel.out().contains("dlv connect 127.0.0.1:"), "the connect line");
            assertTrue(tunnel.out().startsWith("Forwarding 127.0.0.1:"), tunnel.out());
            assertEquals(130, tunnel.stop());
        }
    }

    @Test
    void withoutDashCItPicksTheNewestRunningDebuggerOfAttachAndItsPort() throws Exception {
        api.podJson = FakeKubeApi.pod("running")
                .replace("\"ephemeralContainers\":[{\"name\":\"debugger\",\"image\":\"dbg\"}]",
                        "\"ephemeralContainers\":[{\"name\":\"kdlv-debugger-aaaaa\",\"image\":\"dbg\"},"
                                + "{\"name\":\"kdlv-debugger-bbbbb\",\"image\":\"dbg\",\"env\":[{\"name\":\"KDLV_PORT\",\"value\":\"40000\"}]},"
                                + "{\"name\":\"kdlv-debugger-ccccc\",\"image\":\"dbg\"}]")
                .replace("\"ephemeralContainerStatuses\":[{\"name\":\"debugger\"", "\"ephemeralContainerStatuses\":[{\"name\":\"kdlv-debugger-bbbbb\"");
        try (Running tunnel = new Running("web", "--kubeconfig", kubeconfig.toString(), "--local-port", "0", "-o", "json")) {
            tunnel.port();
            assertTrue(tunnel.out().contains("\"container\":\"kdlv-debugger-bbbbb\""), tunnel.toString()); // the others do not run
            assertTrue(tunnel.out().contains("\"remotePort\":40000"), tunnel.toString());
            assertEquals(130, tunnel.stop());
        }
    }

    /** The library API debug.java uses; and nothing of it is left once closed. */
    @Test
    void libraryApiLeavesNoThreadsOrFilesBehind() throws Exception {
        Kube kube = Kube.connect(kubeconfig, null, null);
        // warm up what is shared by every client of this JVM (OkHttp's task runner, the connection pool)
        try (Tunnel warm = Tunnel.open(kube, "web", null, 2345, new InetSocketAddress("127.0.0.1", 0), Tunnel.Mode.PORT_FORWARD)) {
            echoInParallel(warm.localPort(), 2, 1000);
        }
        awaitTrue(() -> tunnelThreads() == 0, "no tunnel thread left after the warm-up");
        int fdsBefore = openFiles();
        long threadsBefore = ownThreads();
        for (Tunnel.Mode mode : Tunnel.Mode.values()) {
            try (Tunnel tunnel = Tunnel.open(kube, "web", "debugger", 2345, new InetSocketAddress("127.0.0.1", 0), mode)) {
                assertTrue(tunnel.localPort() > 0);
                assertEquals("debugger", tunnel.container());
                long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(3);
                while (System.nanoTime() < end) echoInParallel(tunnel.localPort(), 20, 20_000);
                assertEquals(0, api.openStreams.get() > 0 ? awaitZero() : 0);
                assertFalse(tunnel.ended().isDone());
            }
        }
        awaitTrue(() -> tunnelThreads() == 0, "no tunnel thread left: " + threadNames());
        awaitTrue(() -> openFiles() <= fdsBefore, "file descriptors back to " + fdsBefore);
        awaitTrue(() -> ownThreads() <= threadsBefore, "threads back to " + threadsBefore + ": " + threadNames(), THREADS_SETTLE_SECONDS);
    }

    /**
     * Threads, less the idle workers of OkHttp's JVM-wide task runner (shared by every client in the JVM; they end
     * after 60 idle seconds). A worker still running a WebSocket task is counted: its name then says "WebSocket".
     */
    static long ownThreads() {
        return Thread.getAllStackTraces().keySet().stream().filter(t -> !t.getName().equals("OkHttp TaskRunner")).count();
    }

    // ---- helpers ---------------------------------------------------------------------------------------------

    int awaitZero() throws InterruptedException {
        awaitTrue(() -> api.openStreams.get() == 0, "streams closed");
        return 0;
    }

    static long tunnelThreads() {
        return Thread.getAllStackTraces().keySet().stream().filter(t -> t.getName().startsWith("kdlv-tunnel")).count();
    }

    static String threadNames() {
        return Thread.getAllStackTraces().keySet().stream().map(Thread::getName).sorted().toList().toString();
    }

    static int openFiles() {
        String[] fds = new java.io.File("/proc/self/fd").list();
        return fds == null ? 0 : fds.length;
    }

    static void assertRefused(int port) {
        try (Socket socket = new Socket("127.0.0.1", port)) {
            fail("the listener is still open on " + port);
        } catch (IOException expected) {
            // closed
        }
    }

    static void assertOneLine(TestTools.Result result, int status, String expected) {
        assertEquals(status, result.status(), result.toString());
        assertEquals(1, result.err().strip().lines().count(), "one line expected:\n" + result);
        assertTrue(result.err().contains(expected), result.toString());
        assertFalse(result.err().contains("\tat "), "no stack trace without -v:\n" + result);
    }

    interface Condition {
        boolean holds() throws Exception;
    }

    static void awaitTrue(Condition condition, String what) throws InterruptedException {
        awaitTrue(condition, what, 20);
    }

    /**
     * For counts of JVM threads: OkHttp ends a closing WebSocket's writer only after its 60 s close handshake timeout
     * when the peer never answers the close, and the JDK's "process reaper" idles 60 s before it ends.
     */
    static final int THREADS_SETTLE_SECONDS = 75;

    static void awaitTrue(Condition condition, String what, int seconds) throws InterruptedException {
        long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        while (System.nanoTime() < end) {
            try {
                if (condition.holds()) return;
            } catch (Exception retry) {
                // not yet
            }
            Thread.sleep(50);
        }
        fail("timed out waiting for: " + what);
    }

    /** {@code clients} clients at once, each sends {@code bytes} random bytes, half-closes, and must read them all back. */
    static void echoInParallel(int port, int clients, int bytes) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(clients * 2);
        try {
            List<Future<String>> results = new ArrayList<>();
            for (int i = 0; i < clients; i++) {
                long seed = i;
                results.add(pool.submit(() -> echo(pool, port, bytes, seed)));
            }
            for (Future<String> result : results) {
                String problem = result.get(60, TimeUnit.SECONDS);
                if (problem != null) fail(problem);
            }
        } finally {
            pool.shutdownNow();
        }
    }

    /** One echo round: null when every byte came back equal, else what went wrong. */
    static String echo(ExecutorService pool, int port, int bytes, long seed) throws Exception {
        byte[] data = new byte[bytes];
        new Random(seed).nextBytes(data);
        try (Socket socket = new Socket("127.0.0.1", port)) {
            socket.setSoTimeout(30_000);
            Future<?> writer = pool.submit(() -> {
                OutputStream out = socket.getOutputStream();
                for (int offset = 0; offset < data.length; offset += 8192) out.write(data, offset, Math.min(8192, data.length - offset));
                out.flush();
                socket.shutdownOutput();
                return null;
            });
            byte[] back = socket.getInputStream().readNBytes(bytes);
            writer.get(30, TimeUnit.SECONDS);
            return crc(back) == crc(data) && back.length == bytes ? null
                    : "client " + seed + ": got " + back.length + " of " + bytes + " bytes back, checksum " + (crc(back) == crc(data) ? "equal" : "differs");
        }
    }

    static long crc(byte[] data) {
        CRC32 crc = new CRC32();
        crc.update(data);
        return crc.getValue();
    }

    /** The tunnel command running in-process on its own thread, as a user runs it in a terminal. */
    static final class Running implements AutoCloseable {
        final StringWriter out = new StringWriter();
        final StringWriter err = new StringWriter();
        final Thread thread;
        volatile int status = -1;

        Running(String... args) {
            CommandLine cli = Cli.command(new TunnelCommand());
            cli.setOut(new PrintWriter(out, true));
            cli.setErr(new PrintWriter(err, true));
            thread = new Thread(() -> status = cli.execute(args), "tunnel-command");
            thread.start();
        }

        String out() {
            return out.toString();
        }

        String err() {
            return err.toString();
        }

        /** The local port from the -o json line. */
        int port() throws InterruptedException {
            Pattern json = Pattern.compile("\"localPort\":(\\d+)");
            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
            while (System.nanoTime() < end) {
                Matcher m = json.matcher(out());
                if (m.find()) return Integer.parseInt(m.group(1));
                if (!thread.isAlive()) fail("the tunnel ended before listening: " + this);
                Thread.sleep(20);
            }
            fail("the tunnel printed no port: " + this);
            return -1;
        }

        /** Stops it as Ctrl-C would, and returns its exit status. */
        int stop() throws InterruptedException {
            thread.interrupt();
            return await();
        }

        int await() throws InterruptedException {
            thread.join(30_000);
            if (thread.isAlive()) fail("the tunnel did not stop: " + this);
            return status;
        }

        @Override
        public void close() throws InterruptedException {
            if (thread.isAlive()) stop();
        }

        @Override
        public String toString() {
            return "exit " + status + "\n--- stdout\n" + out() + "--- stderr\n" + err();
        }
    }

    /**
     * A stand-in for the few API server endpoints the tunnel uses, on 127.0.0.1 over plain HTTP/1.1: read one pod,
     * SelfSubjectAccessReview, watch that pod (events pushed by the test), and the pods/portforward (v4) and pods/exec
     * (v5/v4) WebSocket streams, whose far end is an echo. Enough to test the tunnel's multiplexing, life cycle and
     * errors without a cluster; the real protocol is checked against a real cluster in TunnelClusterTest.
     */
    static final class FakeKubeApi implements Closeable {
        final ServerSocket server;
        volatile String podJson;
        volatile boolean allowed = true;
        volatile boolean refuseStreams;
        /** Text the port-forward error channel sends instead of echoing (e.g. "connection refused"). */
        volatile String portForwardError;
        final BlockingQueue<String> watchEvents = new LinkedBlockingQueue<>();
        final AtomicInteger openStreams = new AtomicInteger();
        final AtomicInteger streamsServed = new AtomicInteger();
        final AtomicInteger watches = new AtomicInteger();
        final AtomicInteger spdyRefused = new AtomicInteger();
        private final Set<Socket> sockets = ConcurrentHashMap.newKeySet();
        private final Thread acceptor;
        private volatile boolean closed;

        FakeKubeApi() throws IOException {
            server = new ServerSocket(0, 128, InetAddress.getLoopbackAddress());
            podJson = pod("running");
            acceptor = new Thread(this::acceptLoop, "fake-kube-api");
            acceptor.setDaemon(true);
            acceptor.start();
        }

        /** A pod "web" in namespace "ns" with an ephemeral container "debugger" in the given state (running, waiting, terminated). */
        static String pod(String debuggerState) {
            String state = switch (debuggerState) {
                case "running" -> "{\"running\":{}}";
                case "waiting" -> "{\"waiting\":{\"reason\":\"ContainerCreating\"}}";
                case "terminated" -> "{\"terminated\":{\"exitCode\":1,\"reason\":\"Error\",\"message\":\"could not attach to pid 1\"}}";
                default -> throw new IllegalArgumentException(debuggerState);
            };
            return "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"web\",\"namespace\":\"ns\",\"uid\":\"uid-1\",\"resourceVersion\":\"7\"},"
                    + "\"spec\":{\"containers\":[{\"name\":\"app\",\"image\":\"app\"}],\"ephemeralContainers\":[{\"name\":\"debugger\",\"image\":\"dbg\"}]},"
                    + "\"status\":{\"phase\":\"Running\",\"containerStatuses\":[{\"name\":\"app\",\"image\":\"app\",\"imageID\":\"\",\"ready\":true,\"restartCount\":0,\"state\":{\"running\":{}}}],"
                    + "\"ephemeralContainerStatuses\":[{\"name\":\"debugger\",\"image\":\"dbg\",\"imageID\":\"\",\"ready\":false,\"restartCount\":0,\"state\":" + state + "}]}}";
        }

        /** A kubeconfig for this server, namespace ns. */
        Path kubeconfig(Path dir) throws IOException {
            Path file = dir.resolve("fake-kubeconfig");
            Files.writeString(file, "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
                    + "clusters:\n- name: fake\n  cluster: {server: \"http://127.0.0.1:" + server.getLocalPort() + "\"}\n"
                    + "users:\n- name: fake\n  user: {token: fake-token}\n"
                    + "contexts:\n- name: fake\n  context: {cluster: fake, user: fake, namespace: ns}\n");
            return file;
        }

        /** Ends every open watch (as a dropped API connection would). */
        void dropWatches() {
            watchEvents.add("__DROP__");
        }

        @Override
        public void close() throws IOException {
            closed = true;
            server.close();
            for (Socket socket : sockets) socket.close();
        }

        private void acceptLoop() {
            while (!closed) {
                try {
                    Socket socket = server.accept();
                    sockets.add(socket);
                    Thread thread = new Thread(() -> serve(socket), "fake-kube-api-conn");
                    thread.setDaemon(true);
                    thread.start();
                } catch (IOException e) {
                    return;
                }
            }
        }

        private void serve(Socket socket) {
            try (socket) {
                InputStream in = socket.getInputStream();
                OutputStream out = socket.getOutputStream();
                while (true) {
                    String requestLine = line(in);
                    if (requestLine == null || requestLine.isEmpty()) return;
                    Map<String, String> headers = new HashMap<>();
                    for (String header = line(in); header != null && !header.isEmpty(); header = line(in)) {
                        int colon = header.indexOf(':');
                        headers.put(header.substring(0, colon).trim().toLowerCase(), header.substring(colon + 1).trim());
                    }
                    byte[] body = new byte[Integer.parseInt(headers.getOrDefault("content-length", "0"))];
                    new DataInputStream(in).readFully(body);
                    String[] parts = requestLine.split(" ");
                    String method = parts[0];
                    String target = parts[1];
                    String path = target.contains("?") ? target.substring(0, target.indexOf('?')) : target;
                    String query = target.contains("?") ? target.substring(target.indexOf('?') + 1) : "";
                    if (path.endsWith("/portforward") || path.endsWith("/exec")) {
                        if (headers.getOrDefault("sec-websocket-protocol", "").startsWith("SPDY/3.1+")
                                || headers.getOrDefault("upgrade", "").startsWith("SPDY/")) {
                            // a server that speaks no SPDY (neither upgraded nor tunnelled): the tunnel falls back to one v4
                            // WebSocket per connection, the path these tests cover; SPDY is covered by TunnelClusterTest
                            spdyRefused.incrementAndGet();
                            respond(out, 400, status(400, "BadRequest", "unable to upgrade: requested protocol(s) are not supported"));
                            continue;
                        }
                        if (refuseStreams || !allowed) {
                            respond(out, 403, status(403, "Forbidden", "pods \"web\" is forbidden: User \"fake\" cannot get resource \"pods/"
                                    + path.substring(path.lastIndexOf('/') + 1) + "\" in API group \"\" in the namespace \"ns\""));
                            continue;
                        }
                        webSocket(socket, in, out, headers, path.endsWith("/exec"), query);
                        return;
                    }
                    if (method.equals("POST") && path.endsWith("/selfsubjectaccessreviews")) {
                        String review = new String(body, StandardCharsets.UTF_8);
                        respond(out, 201, review.replaceFirst("\\}\\s*$", ",\"status\":{\"allowed\":" + allowed
                                + (allowed ? "" : ",\"reason\":\"no RBAC policy matched\"") + "}}"));
                    } else if (method.equals("GET") && path.equals("/api/v1/namespaces/ns/pods/web")) {
                        String pod = podJson;
                        if (pod == null) respond(out, 404, status(404, "NotFound", "pods \"web\" not found"));
                        else respond(out, 200, pod);
                    } else if (method.equals("GET") && path.startsWith("/api/v1/namespaces/ns/pods/")) {
                        respond(out, 404, status(404, "NotFound", "pods \"" + path.substring(path.lastIndexOf('/') + 1) + "\" not found"));
                    } else if (method.equals("GET") && path.equals("/api/v1/namespaces/ns/pods") && query.contains("watch=true")) {
                        watch(socket, in, out);
                        return;
                    } else {
                        respond(out, 404, status(404, "NotFound", "the server could not find the requested resource"));
                    }
                }
            } catch (IOException | InterruptedException e) {
                // the client went away
            } finally {
                sockets.remove(socket);
            }
        }

        private void watch(Socket socket, InputStream in, OutputStream out) throws IOException, InterruptedException {
            watches.incrementAndGet();
            out.write(("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n").getBytes(StandardCharsets.US_ASCII));
            out.flush();
            socket.setSoTimeout(50);
            while (!closed) {
                try {
                    if (in.read() < 0) return; // the client closed the watch
                } catch (java.net.SocketTimeoutException stillOpen) {
                    // nothing from the client, as expected
                }
                String event = watchEvents.poll(50, TimeUnit.MILLISECONDS);
                if (event == null) continue;
                if (event.equals("__DROP__")) return;
                out.write((event + "\n").getBytes(StandardCharsets.UTF_8));
                out.flush();
            }
        }

        static String status(int code, String reason, String message) {
            return "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":\"" + message.replace("\"", "\\\"")
                    + "\",\"reason\":\"" + reason + "\",\"code\":" + code + "}";
        }

        private static void respond(OutputStream out, int code, String json) throws IOException {
            byte[] body = json.getBytes(StandardCharsets.UTF_8);
            out.write(("HTTP/1.1 " + code + " X\r\nContent-Type: application/json\r\nContent-Length: " + body.length + "\r\n\r\n")
                    .getBytes(StandardCharsets.US_ASCII));
            out.write(body);
            out.flush();
        }

        private void webSocket(Socket socket, InputStream in, OutputStream out, Map<String, String> headers, boolean exec, String query)
                throws IOException {
            String offered = headers.getOrDefault("sec-websocket-protocol", "");
            String protocol = exec && offered.contains("v5.channel.k8s.io") ? "v5.channel.k8s.io" : "v4.channel.k8s.io";
            String accept;
            try {
                accept = Base64.getEncoder().encodeToString(MessageDigest.getInstance("SHA-1")
                        .digest((headers.get("sec-websocket-key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").getBytes(StandardCharsets.US_ASCII)));
            } catch (java.security.NoSuchAlgorithmException e) {
                throw new IOException(e);
            }
            out.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                    + "\r\nSec-WebSocket-Protocol: " + protocol + "\r\n\r\n").getBytes(StandardCharsets.US_ASCII));
            openStreams.incrementAndGet();
            streamsServed.incrementAndGet();
            try {
                int port = 0;
                for (String pair : query.split("&")) if (pair.startsWith("ports=")) port = Integer.parseInt(pair.substring(6));
                if (!exec) {
                    frame(out, 2, new byte[] {0, (byte) port, (byte) (port >> 8)});
                    frame(out, 2, new byte[] {1, (byte) port, (byte) (port >> 8)});
                    if (portForwardError != null) {
                        byte[] text = portForwardError.getBytes(StandardCharsets.UTF_8);
                        byte[] message = new byte[text.length + 1];
                        message[0] = 1;
                        System.arraycopy(text, 0, message, 1, text.length);
                        frame(out, 2, message);
                        frame(out, 8, new byte[] {0x03, (byte) 0xe8});
                        return;
                    }
                }
                while (true) {
                    int b0 = in.read();
                    if (b0 < 0) return;
                    int b1 = in.read();
                    long length = b1 & 0x7f;
                    DataInputStream data = new DataInputStream(in);
                    if (length == 126) length = data.readUnsignedShort();
                    else if (length == 127) length = data.readLong();
                    byte[] mask = new byte[4];
                    if ((b1 & 0x80) != 0) data.readFully(mask);
                    byte[] payload = new byte[(int) length];
                    data.readFully(payload);
                    for (int i = 0; i < payload.length; i++) payload[i] ^= mask[i % 4];
                    int opcode = b0 & 0x0f;
                    if (opcode == 8) {
                        frame(out, 8, new byte[] {0x03, (byte) 0xe8});
                        return;
                    }
                    if (opcode == 9) {
                        frame(out, 10, payload);
                        continue;
                    }
                    if (payload.length == 0) continue;
                    if (exec && (payload[0] & 0xff) == 255) { // v5 close of stdin: the "nc" ends, as it would after the echo closed
                        frame(out, 2, ("\u0003{\"metadata\":{},\"status\":\"Success\"}").getBytes(StandardCharsets.UTF_8));
                        frame(out, 8, new byte[] {0x03, (byte) 0xe8});
                        return;
                    }
                    if (payload[0] != 0) continue;
                    payload[0] = (byte) (exec ? 1 : 0); // echo: stdin -> stdout, or data -> data
                    frame(out, 2, payload);
                }
            } finally {
                openStreams.decrementAndGet();
                socket.close();
            }
        }

        private static void frame(OutputStream out, int opcode, byte[] payload) throws IOException {
            synchronized (out) {
                writeFrame(out, opcode, payload);
            }
        }

        private static void writeFrame(OutputStream out, int opcode, byte[] payload) throws IOException {
            ByteArrayOutputStream header = new ByteArrayOutputStream();
            header.write(0x80 | opcode);
            if (payload.length < 126) {
                header.write(payload.length);
            } else if (payload.length < 65536) {
                header.write(126);
                header.write(payload.length >> 8);
                header.write(payload.length);
            } else {
                header.write(127);
                for (int shift = 56; shift >= 0; shift -= 8) header.write((int) ((long) payload.length >> shift));
            }
            out.write(header.toByteArray());
            out.write(payload);
            out.flush();
        }

        private static String line(InputStream in) throws IOException {
            StringBuilder line = new StringBuilder();
            int c;
            while ((c = in.read()) >= 0) {
                if (c == '\n') return line.toString().replace("\r", "");
                line.append((char) c);
            }
            return line.length() == 0 ? null : line.toString();
        }

        InetSocketAddress address() {
            return (InetSocketAddress) server.getLocalSocketAddress();
        }
    }
}
