import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.io.TempDir;

/**
 * connect against a real headless Delve attached to the fixture service running as a local process (the same
 * `dlv attach PID --headless --accept-multiclient --continue` the debugger container runs), and the real dlv client:
 * a breakpoint hit by an HTTP request, a local variable printed, and every way of quitting leaves the service serving.
 */
@Tag("delve")
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class ConnectTest {
    static final ObjectMapper JSON = new ObjectMapper();
    static final Pattern LISTENING = Pattern.compile("API server listening at: (\\S+)");
    static final HttpClient HTTP = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(3)).build();

    @TempDir Path dir;
    Path buildDir;
    Path plain;
    Path trimpath;
    final List<Process> processes = new ArrayList<>();

    @BeforeAll
    void build(@TempDir Path work) throws Exception {
        Path go = TestTools.tool("go").or(() -> Optional.of(Path.of("/usr/local/go/bin/go")).filter(Files::isExecutable))
                .orElse(null);
        Assumptions.assumeTrue(go != null, "no Go toolchain to build the fixture service");
        // Built from a copy, so that the binary's source paths differ from the checkout the IDE files point at.
        buildDir = work.resolve("build/demo-service");
        copy(TestTools.repoRoot().resolve("tests/fixtures/demo-service"), buildDir);
        plain = work.resolve("demo-plain");
        trimpath = work.resolve("demo-trimpath");
        goBuild(go, buildDir, plain, false);
        goBuild(go, buildDir, trimpath, true);
    }

    static void copy(Path from, Path to) throws IOException {
        Files.createDirectories(to);
        try (Stream<Path> files = Files.list(from)) {
            for (Path file : files.toList()) Files.copy(file, to.resolve(file.getFileName()));
        }
    }

    static void goBuild(Path go, Path source, Path output, boolean trim) throws Exception {
        List<String> command = new ArrayList<>(List.of(go.toString(), "build", "-gcflags=all=-N -l", "-o", output.toString()));
        if (trim) command.add("-trimpath");
        command.add(".");
        Process build = new ProcessBuilder(command).directory(source.toFile()).redirectErrorStream(true).start();
        String log = new String(build.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(build.waitFor(300, TimeUnit.SECONDS) && build.exitValue() == 0, "go build failed:\n" + log);
    }

    @AfterEach
    void stopAll() {
        for (Process process : processes) {
            process.descendants().forEach(ProcessHandle::destroyForcibly);
            process.destroyForcibly();
        }
    }

    /** The fixture service with a headless Delve attached, as in the debugger container. */
    record Target(Process service, Process delve, int httpPort, String address) {
        long pid() {
            return service.pid();
        }
    }

    Target start(Path binary) throws Exception {
        int httpPort;
        try (ServerSocket free = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            httpPort = free.getLocalPort();
        }
        Process service = new ProcessBuilder(binary.toString(), "-addr", "127.0.0.1:" + httpPort)
                .redirectErrorStream(true).redirectOutput(dir.resolve("service.log").toFile()).start();
        processes.add(service);
        long deadline = System.nanoTime() + 10_000_000_000L;
        while (get(httpPort, "/healthz", Duration.ofSeconds(1)).isEmpty()) {
            assertTrue(System.nanoTime() < deadline, "the fixture service did not come up");
            Thread.sleep(50);
        }
        Process delve = new ProcessBuilder(TestTools.dlv().orElseThrow().toString(), "attach", Long.toString(service.pid()), "--headless",
                "--listen=127.0.0.1:0", "--api-version=2", "--accept-multiclient", "--continue")
                .redirectErrorStream(true).start();
        processes.add(delve);
        BufferedReader lines = new BufferedReader(new InputStreamReader(delve.getInputStream(), StandardCharsets.UTF_8));
        String line;
        String address = null;
        while ((line = lines.readLine()) != null) {
            Matcher listening = LISTENING.matcher(line);
            if (listening.find()) {
                address = listening.group(1);
                break;
            }
        }
        assertTrue(address != null, "dlv attach did not say where it listens");
        Thread drain = new Thread(() -> {
            try {
                lines.transferTo(java.io.Writer.nullWriter());
            } catch (IOException e) {
                // ended
            }
        });
        drain.setDaemon(true);
        drain.start();
        // "listening" comes before --continue resumes the target (Delve's own client sends continue just after):
        // wait for it, as a test that connects at once would otherwise find the target halted (or race dlv connect).
        String[] hostPort = address.split(":");
        try (Delve client = Delve.connect(new InetSocketAddress(hostPort[0], Integer.parseInt(hostPort[1])), 5_000)) {
            while (!client.state().running()) {
                assertTrue(System.nanoTime() < deadline + 10_000_000_000L, "the target did not run after dlv attach --continue");
                Thread.sleep(20);
            }
        }
        return new Target(service, delve, httpPort, address);
    }

    static Optional<String> get(int port, String path, Duration timeout) {
        try {
            HttpResponse<String> response = HTTP.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + path))
                    .timeout(timeout).build(), HttpResponse.BodyHandlers.ofString());
            return response.statusCode() == 200 ? Optional.of(response.body()) : Optional.empty();
        } catch (IOException e) {
            return Optional.empty();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return Optional.empty();
        }
    }

    static void assertServes(Target target) {
        Optional<String> hello = get(target.httpPort(), "/hello?name=after", Duration.ofSeconds(5));
        assertTrue(hello.isPresent() && hello.get().contains("Hello, after!"), "the service answers /hello within 5 s: " + hello);
        assertTrue(target.service().isAlive(), "the service process lives");
    }

    static String tracerPid(long pid) throws IOException {
        return Files.readAllLines(Path.of("/proc/" + pid + "/status")).stream().filter(l -> l.startsWith("TracerPid:"))
                .map(l -> l.substring("TracerPid:".length()).strip()).findFirst().orElse("?");
    }

    /** Runs the connect command as its own program (java -cp <the tests' class path> Connect ...), stdin piped. */
    Process connectProcess(String... args) throws IOException {
        List<String> command = new ArrayList<>(List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                "-cp", System.getProperty("java.class.path"), "Connect"));
        command.addAll(List.of(args));
        ProcessBuilder builder = new ProcessBuilder(command).redirectErrorStream(true);
        builder.environment().put("NO_COLOR", "1");
        Process process = builder.start();
        processes.add(process);
        return process;
    }

    /** Collects a process's output lines as they come. */
    static LinkedBlockingQueue<String> lines(Process process, StringBuffer all) {
        LinkedBlockingQueue<String> queue = new LinkedBlockingQueue<>();
        Thread reader = new Thread(() -> {
            try (BufferedReader in = new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))) {
                String line;
                while ((line = in.readLine()) != null) {
                    all.append(line).append('\n');
                    queue.add(line);
                }
            } catch (IOException e) {
                // ended
            }
        });
        reader.setDaemon(true);
        reader.start();
        return queue;
    }

    static String await(LinkedBlockingQueue<String> lines, Pattern pattern, Duration timeout, StringBuffer all) throws InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (System.nanoTime() < deadline) {
            String line = lines.poll(100, TimeUnit.MILLISECONDS);
            if (line != null && pattern.matcher(line).find()) return line;
        }
        fail("no line matching " + pattern + " within " + timeout + "; output so far:\n" + all);
        return null;
    }

    @Test
    void reportsARunningTargetWithoutHaltingIt() throws Exception {
        Target target = start(plain);
        TestTools.Result result = TestTools.run(new Connect(), "--address", target.address());
        assertEquals(0, result.status(), result.toString());
        assertTrue(result.out().contains("Delve 1.") && result.out().contains("(API 2)"), result.out());
        assertTrue(result.out().contains("target: running"), result.out());
        assertServes(target);

        TestTools.Result peek = TestTools.run(new Connect(), "--address", target.address(), "--peek", "-o", "json");
        assertEquals(0, peek.status(), peek.toString());
        JsonNode json = JSON.readTree(peek.out());
        assertTrue(json.path("targetGoVersion").asText().startsWith("go1."), json.toString());
        assertEquals(2, json.path("apiVersion").asInt());
        assertEquals(target.pid(), json.path("pid").asLong());
        assertTrue(json.path("running").asBoolean(), "--peek resumes the target");
        assertServes(target);
    }

    @Test
    void ideFilesCarryTheComputedSubstitutePathWithoutTrimpath() throws Exception {
        assertIdeFiles(start(plain), buildDir.toString());
    }

    @Test
    void ideFilesCarryTheComputedSubstitutePathWithTrimpath() throws Exception {
        assertIdeFiles(start(trimpath), "example.com/demo-service");
    }

    void assertIdeFiles(Target target, String remoteRoot) throws Exception {
        Path checkout = dir.resolve("checkout");
        copy(TestTools.repoRoot().resolve("tests/fixtures/demo-service"), checkout);
        Path launch = checkout.resolve(".vscode/launch.json");
        Files.createDirectories(launch.getParent());
        Files.writeString(launch, "{\"version\":\"0.2.0\",\"configurations\":[{\"name\":\"mine\",\"type\":\"go\",\"request\":\"launch\"}]}");
        TestTools.Result result = TestTools.run(new Connect(), "--address", target.address(), "--ide", "vscode,goland",
                "--project", checkout.toString(), "--local-root", checkout.toString(), "--name", "demo");
        assertEquals(0, result.status(), result.toString());
        assertTrue(result.out().contains("substitutePath: " + checkout + " -> " + remoteRoot), result.out());
        JsonNode configurations = JSON.readTree(launch.toFile()).get("configurations");
        assertEquals(2, configurations.size(), configurations.toString());
        assertEquals("mine", configurations.get(0).path("name").asText());
        JsonNode ours = ConnectFilesTest.assertValidRemoteAttach(configurations.get(1));
        String[] hostPort = target.address().split(":");
        assertEquals(hostPort[0], ours.path("host").asText());
        assertEquals(Integer.parseInt(hostPort[1]), ours.path("port").asInt());
        assertEquals("${workspaceFolder}", ours.at("/substitutePath/0/from").asText());
        assertEquals(remoteRoot, ours.at("/substitutePath/0/to").asText());
        ConnectFilesTest.assertGolandFile(checkout.resolve(".run/demo.run.xml"), "demo", hostPort[0], Integer.parseInt(hostPort[1]));
        assertServes(target);
    }

    /**
     * The written VS Code configuration, used as the Go extension uses it: DAP on Delve's port (`"mode": "remote"`),
     * its substitutePath passed in attach. A breakpoint on the checkout's file binds in the binary built elsewhere,
     * the stop comes back with the checkout's path, and a local variable evaluates.
     */
    @Test
    void theVscodeConfigurationWorksOverDapWithItsSubstitutePath() throws Exception {
        Target target = start(plain);
        Path checkout = dir.resolve("checkout");
        copy(TestTools.repoRoot().resolve("tests/fixtures/demo-service"), checkout);
        TestTools.Result result = TestTools.run(new Connect(), "--address", target.address(), "--ide", "vscode",
                "--project", checkout.toString(), "--local-root", checkout.toString());
        assertEquals(0, result.status(), result.toString());
        JsonNode configuration = JSON.readTree(checkout.resolve(".vscode/launch.json").toFile()).at("/configurations/0");
        ObjectNode attach = configuration.deepCopy();
        for (JsonNode entry : attach.withArray("substitutePath")) {
            ((ObjectNode) entry).put("from", entry.path("from").asText().replace("${workspaceFolder}", checkout.toString()));
        }
        Path local = checkout.resolve("main.go");
        int line = lineOf(local, "greeting := fmt.Sprintf");
        try (Dap dap = new Dap(configuration.path("host").asText(), configuration.path("port").asInt())) {
            dap.request("initialize", JSON.createObjectNode().put("clientID", "kdlv-test").put("adapterID", "go")
                    .put("pathFormat", "path").put("linesStartAt1", true).put("columnsStartAt1", true));
            assertTrue(dap.request("attach", attach).path("success").asBoolean(), "attach");
            ObjectNode breakpoints = JSON.createObjectNode();
            breakpoints.putObject("source").put("path", local.toString());
            breakpoints.putArray("breakpoints").addObject().put("line", line);
            JsonNode set = dap.request("setBreakpoints", breakpoints);
            assertTrue(set.at("/body/breakpoints/0/verified").asBoolean(), "the breakpoint on the checkout's file binds: " + set);
            dap.request("configurationDone", JSON.createObjectNode());
            CompletableFuture<Optional<String>> request = CompletableFuture.supplyAsync(
                    () -> get(target.httpPort(), "/hello?name=dap-test", Duration.ofSeconds(60)));
            JsonNode stopped = dap.event("stopped");
            int thread = stopped.at("/body/threadId").asInt();
            JsonNode frame = dap.request("stackTrace", JSON.createObjectNode().put("threadId", thread).put("levels", 1))
                    .at("/body/stackFrames/0");
            assertEquals(local.toString(), frame.at("/source/path").asText(), "the stop maps back to the checkout: " + frame);
            assertEquals(line, frame.path("line").asInt());
            JsonNode name = dap.request("evaluate", JSON.createObjectNode().put("expression", "name")
                    .put("frameId", frame.path("id").asInt()).put("context", "repl"));
            assertEquals("\"dap-test\"", name.at("/body/result").asText(), name.toString());
            breakpoints.putArray("breakpoints");
            dap.request("setBreakpoints", breakpoints);
            dap.request("continue", JSON.createObjectNode().put("threadId", thread));
            dap.request("disconnect", JSON.createObjectNode().put("terminateDebuggee", false));
            Optional<String> answer = request.get(10, TimeUnit.SECONDS);
            assertTrue(answer.isPresent() && answer.get().contains("Hello, dap-test!"), "the held request completes: " + answer);
        }
        assertServes(target);
    }

    static int lineOf(Path file, String text) throws IOException {
        List<String> lines = Files.readAllLines(file);
        for (int i = 0; i < lines.size(); i++) if (lines.get(i).contains(text)) return i + 1;
        throw new AssertionError(text + " not in " + file);
    }

    /** The least of a Debug Adapter Protocol client: Content-Length framed JSON over TCP, as VS Code speaks to dlv-dap. */
    static final class Dap implements AutoCloseable {
        final java.net.Socket socket;
        final java.io.InputStream in;
        int seq;

        Dap(String host, int port) throws IOException {
            socket = new java.net.Socket(host, port);
            socket.setSoTimeout(60_000);
            in = new java.io.BufferedInputStream(socket.getInputStream());
        }

        JsonNode request(String command, ObjectNode arguments) throws IOException {
            ObjectNode message = JSON.createObjectNode().put("seq", ++seq).put("type", "request").put("command", command);
            message.set("arguments", arguments);
            byte[] body = JSON.writeValueAsBytes(message);
            OutputStream out = socket.getOutputStream();
            out.write(("Content-Length: " + body.length + "\r\n\r\n").getBytes(StandardCharsets.US_ASCII));
            out.write(body);
            out.flush();
            int id = seq;
            while (true) {
                JsonNode answer = read();
                if (answer.path("type").asText().equals("response") && answer.path("request_seq").asInt() == id) {
                    assertTrue(answer.path("success").asBoolean(), command + " failed: " + answer);
                    return answer;
                }
            }
        }

        JsonNode event(String name) throws IOException {
            while (true) {
                JsonNode message = read();
                if (message.path("type").asText().equals("event") && message.path("event").asText().equals(name)) return message;
            }
        }

        JsonNode read() throws IOException {
            int length = -1;
            StringBuilder header = new StringBuilder();
            while (true) {
                int c = in.read();
                if (c < 0) throw new IOException("the DAP server closed the connection");
                if (c == '\n') {
                    String line = header.toString().strip();
                    header.setLength(0);
                    if (line.isEmpty()) break;
                    if (line.toLowerCase().startsWith("content-length:")) length = Integer.parseInt(line.substring(15).strip());
                } else {
                    header.append((char) c);
                }
            }
            return JSON.readTree(in.readNBytes(length));
        }

        @Override
        public void close() throws IOException {
            socket.close();
        }
    }

    @Test
    void dlvClientHitsABreakpointPrintsALocalAndQuitsWithTheDefaultAnswersLeavingTheServiceServingUntraced() throws Exception {
        Target target = start(plain);
        Path init = dir.resolve("init.dlv");
        Files.writeString(init, "break main.greet\ncontinue\nprint name\nprint count\n");
        Process connect = connectProcess("--address", target.address(), "--client", "dlv", "--init", init.toString());
        StringBuffer all = new StringBuffer();
        LinkedBlockingQueue<String> lines = lines(connect, all);
        await(lines, Pattern.compile("Breakpoint \\d+ set at"), Duration.ofSeconds(60), all);
        CompletableFuture<Optional<String>> request = CompletableFuture.supplyAsync(
                () -> get(target.httpPort(), "/hello?name=kdlv-test", Duration.ofSeconds(60)));
        await(lines, Pattern.compile("^\"kdlv-test\"$"), Duration.ofSeconds(30), all);
        await(lines, Pattern.compile("^\\d+$"), Duration.ofSeconds(10), all); // print count
        assertFalse(request.isDone(), "the request waits at the breakpoint");
        try (OutputStream stdin = connect.getOutputStream()) {
            stdin.write("quit\n\n\n".getBytes(StandardCharsets.UTF_8)); // the default answers: Y, Y
        }
        assertTrue(connect.waitFor(30, TimeUnit.SECONDS), "dlv ends:\n" + all);
        Thread.sleep(300); // the reader catches up with the last lines
        assertEquals(0, connect.exitValue(), all.toString());
        assertTrue(all.toString().contains("kill the process?"), "dlv asked its question:\n" + all);
        assertTrue(all.toString().contains("refused the kill") && all.toString().contains("Detached"), all.toString());
        Optional<String> answer = request.get(10, TimeUnit.SECONDS);
        assertTrue(answer.isPresent() && answer.get().contains("Hello, kdlv-test!"), "the held request completes: " + answer);
        assertTrue(target.delve().waitFor(10, TimeUnit.SECONDS), "Delve ended, as \"kill the headless instance? Y\" asked");
        assertEquals("0", tracerPid(target.pid()), "TracerPid: 0");
        assertServes(target);
    }

    @Test
    void quittingAtOnceWithTheDefaultAnswersLeavesTheTargetAlive() throws Exception {
        Target target = start(plain);
        Process connect = connectProcess("--address", target.address(), "--client", "dlv");
        StringBuffer all = new StringBuffer();
        LinkedBlockingQueue<String> lines = lines(connect, all);
        await(lines, Pattern.compile("Type 'help'"), Duration.ofSeconds(60), all);
        try (OutputStream stdin = connect.getOutputStream()) {
            stdin.write("quit\n\n\n".getBytes(StandardCharsets.UTF_8));
        }
        assertTrue(connect.waitFor(30, TimeUnit.SECONDS), "dlv ends:\n" + all);
        Thread.sleep(300); // the reader catches up with the last lines
        assertTrue(all.toString().contains("Detached"), all.toString());
        assertTrue(target.delve().waitFor(10, TimeUnit.SECONDS), "Delve ended");
        assertEquals("0", tracerPid(target.pid()), "TracerPid: 0");
        assertServes(target);
    }

    @Test
    void answeringNoToEndingDelveResumesTheTargetAndKeepsDelve() throws Exception {
        Target target = start(plain);
        Process connect = connectProcess("--address", target.address(), "--client", "dlv");
        StringBuffer all = new StringBuffer();
        LinkedBlockingQueue<String> lines = lines(connect, all);
        await(lines, Pattern.compile("Type 'help'"), Duration.ofSeconds(60), all);
        try (OutputStream stdin = connect.getOutputStream()) {
            stdin.write("quit\nn\n".getBytes(StandardCharsets.UTF_8)); // "kill the headless instance? n"
        }
        assertTrue(connect.waitFor(30, TimeUnit.SECONDS), "dlv ends:\n" + all);
        Thread.sleep(300);
        assertTrue(all.toString().contains("resumed the target"), all.toString());
        assertServes(target); // dlv connect halted it; left like that it would not answer
        assertTrue(target.delve().isAlive(), "Delve keeps running for the next session");
        TestTools.Result after = TestTools.run(new Connect(), "--address", target.address());
        assertTrue(after.out().contains("target: running"), after.toString());
    }

    @Test
    void exitDashCWithABreakpointSetClearsItSoThatNoLaterRequestHaltsTheTarget() throws Exception {
        Target target = start(plain);
        Path init = dir.resolve("init.dlv");
        Files.writeString(init, "break main.greet\nexit -c\n"); // dlv asks whether to quit without clearing breakpoints
        Process connect = connectProcess("--address", target.address(), "--client", "dlv", "--init", init.toString());
        StringBuffer all = new StringBuffer();
        lines(connect, all);
        try (OutputStream stdin = connect.getOutputStream()) {
            stdin.write("\n".getBytes(StandardCharsets.UTF_8)); // the default answer: quit and continue, breakpoints kept
        }
        assertTrue(connect.waitFor(60, TimeUnit.SECONDS), "dlv ends:\n" + all);
        Thread.sleep(300);
        assertTrue(all.toString().contains("cleared 1 breakpoint(s)"), all.toString());
        assertServes(target); // a breakpoint left in main.greet would hold this request
    }

    @Test
    void endOfInputAtThePromptResumesTheTarget() throws Exception {
        Target target = start(plain);
        Process connect = connectProcess("--address", target.address(), "--client", "dlv");
        StringBuffer all = new StringBuffer();
        LinkedBlockingQueue<String> lines = lines(connect, all);
        await(lines, Pattern.compile("Type 'help'"), Duration.ofSeconds(60), all);
        connect.getOutputStream().close(); // Ctrl-D: dlv leaves without detaching and the halted target would stay halted
        assertTrue(connect.waitFor(30, TimeUnit.SECONDS), "dlv ends:\n" + all);
        Thread.sleep(300); // the reader catches up with the last lines
        assertServes(target);
    }

    /** The hazard the guard removes: plain `dlv connect`, `quit` and the default answers kill the target. */
    @Test
    void plainDlvConnectWithTheDefaultAnswersKillsTheTarget() throws Exception {
        Target target = start(plain);
        Process dlv = new ProcessBuilder(TestTools.dlv().orElseThrow().toString(), "connect", target.address())
                .redirectErrorStream(true).start();
        processes.add(dlv);
        StringBuffer all = new StringBuffer();
        LinkedBlockingQueue<String> lines = lines(dlv, all);
        await(lines, Pattern.compile("Type 'help'"), Duration.ofSeconds(30), all);
        try (OutputStream stdin = dlv.getOutputStream()) {
            stdin.write("quit\n\n\n".getBytes(StandardCharsets.UTF_8));
        }
        assertTrue(dlv.waitFor(30, TimeUnit.SECONDS), all.toString());
        assertTrue(target.service().waitFor(10, TimeUnit.SECONDS), "the service was killed");
    }

    @Test
    void detachLeavesTheServiceRunningAndUntraced() throws Exception {
        Target target = start(plain);
        assertFalse(tracerPid(target.pid()).equals("0"), "traced while Delve is attached: pid " + target.pid() + " delve pid "
                + target.delve().pid() + " alive " + target.delve().isAlive() + "\n" + Files.readString(Path.of("/proc/" + target.pid() + "/status")));
        TestTools.Result result = TestTools.run(new Connect(), "detach", "--address", target.address(), "-o", "json");
        assertEquals(0, result.status(), result.toString());
        assertEquals(target.pid(), JSON.readTree(result.out()).path("pid").asLong());
        assertTrue(target.delve().waitFor(10, TimeUnit.SECONDS), "Delve exits after the detach");
        assertEquals("0", tracerPid(target.pid()), "TracerPid: 0");
        assertServes(target);
    }
}
