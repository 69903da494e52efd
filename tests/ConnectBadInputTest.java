import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * connect's bad input, each one line with its own exit code and no stack trace: nothing listening, an HTTP server, a
 * server that never answers, a Delve speaking API 1 (a stand-in: Delve 1.27 refuses --api-version=1 with "unknown API
 * version", so no real one can be started), launch.json with comments or invalid JSON, bad options.
 */
class ConnectBadInputTest {
    @TempDir Path dir;
    final List<AutoCloseable> servers = new ArrayList<>();

    @AfterEach
    void stop() throws Exception {
        for (AutoCloseable server : servers) server.close();
    }

    static void assertOneLine(TestTools.Result result, int status, String contains) {
        assertEquals(status, result.status(), result.toString());
        assertEquals(1, result.err().strip().lines().count(), "one line:\n" + result);
        assertTrue(result.err().contains(contains), result.toString());
        assertFalse(result.err().contains("\tat "), "no stack trace:\n" + result);
    }

    int freePort() throws IOException {
        try (ServerSocket socket = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            return socket.getLocalPort();
        }
    }

    @Test
    void nothingListening() throws Exception {
        int port = freePort();
        assertOneLine(TestTools.run(new Connect(), "--address", "127.0.0.1:" + port), ExitCode.UNREACHABLE, "nothing listens on 127.0.0.1:" + port);
        assertOneLine(TestTools.run(new Connect(), "detach", "--address", "127.0.0.1:" + port), ExitCode.UNREACHABLE, "nothing listens");
    }

    @Test
    void anHttpServerIsNotDelve() throws Exception {
        HttpServer http = HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 0);
        http.createContext("/", exchange -> {
            exchange.sendResponseHeaders(404, -1);
            exchange.close();
        });
        http.start();
        servers.add(() -> http.stop(0));
        long start = System.nanoTime();
        TestTools.Result result = TestTools.run(new Connect(), "--address", "127.0.0.1:" + http.getAddress().getPort(), "--timeout", "3s");
        assertOneLine(result, ExitCode.NOT_DELVE, "not Delve");
        assertTrue(System.nanoTime() - start < 10_000_000_000L, "does not hang");
    }

    @Test
    void aServerThatNeverAnswersTimesOut() throws Exception {
        ServerSocket silent = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
        servers.add(silent);
        List<Socket> accepted = new ArrayList<>();
        Thread acceptor = new Thread(() -> {
            try {
                while (true) accepted.add(silent.accept());
            } catch (IOException e) {
                // closed
            }
        });
        acceptor.setDaemon(true);
        acceptor.start();
        long start = System.nanoTime();
        TestTools.Result result = TestTools.run(new Connect(), "--address", "127.0.0.1:" + silent.getLocalPort(), "--timeout", "1s");
        long millis = (System.nanoTime() - start) / 1_000_000;
        assertOneLine(result, ExitCode.NOT_DELVE, "sent no JSON-RPC answer within 1s");
        assertTrue(millis < 5_000, "gave up after " + millis + " ms");
    }

    @Test
    void delveOfAnotherApiVersion() throws Exception {
        ServerSocket apiOne = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
        servers.add(apiOne);
        Thread server = new Thread(() -> {
            while (!apiOne.isClosed()) {
                try (Socket socket = apiOne.accept()) {
                    InputStream in = socket.getInputStream();
                    byte[] buffer = new byte[4096];
                    int n = in.read(buffer);
                    String request = new String(buffer, 0, Math.max(n, 0), StandardCharsets.UTF_8);
                    String id = request.replaceAll("(?s).*\"id\"\\s*:\\s*(\\d+).*", "$1");
                    OutputStream out = socket.getOutputStream();
                    out.write(("{\"id\":" + id + ",\"result\":{\"DelveVersion\":\"Version: 1.7.0\\nBuild: $Id: x $\",\"APIVersion\":1,"
                            + "\"Backend\":\"native\",\"TargetGoVersion\":\"\",\"MinSupportedVersionOfGo\":\"1.14.0\","
                            + "\"MaxSupportedVersionOfGo\":\"1.17.0\"},\"error\":null}").getBytes(StandardCharsets.UTF_8));
                    out.flush();
                    in.read(buffer); // until the client closes
                } catch (IOException e) {
                    // next
                }
            }
        });
        server.setDaemon(true);
        server.start();
        assertOneLine(TestTools.run(new Connect(), "--address", "127.0.0.1:" + apiOne.getLocalPort()), ExitCode.UNSUPPORTED,
                "serves API version 1");
    }

    @Test
    void launchJsonWithCommentsIsLeftUntouched() throws Exception {
        Path launch = dir.resolve(".vscode/launch.json");
        Files.createDirectories(launch.getParent());
        String text = "{\n  // Use IntelliSense to learn about possible attributes.\n  \"version\": \"0.2.0\",\n  \"configurations\": []\n}\n";
        Files.writeString(launch, text);
        TestTools.Result result = TestTools.run(new Connect(), "--ide", "vscode", "--project", dir.toString(), "--address", "127.0.0.1:1");
        assertOneLine(result, ExitCode.LOCAL_FILE, launch.toString());
        assertTrue(result.err().contains("comments"), result.toString());
        assertEquals(text, Files.readString(launch), "left untouched");
    }

    @Test
    void invalidLaunchJsonIsLeftUntouched() throws Exception {
        Path launch = dir.resolve(".vscode/launch.json");
        Files.createDirectories(launch.getParent());
        String text = "{\"configurations\": [ {\"name\": \"x\" ";
        Files.writeString(launch, text);
        TestTools.Result result = TestTools.run(new Connect(), "--ide", "vscode", "--project", dir.toString(), "--address", "127.0.0.1:1");
        assertOneLine(result, ExitCode.LOCAL_FILE, "not valid JSON");
        assertEquals(text, Files.readString(launch), "left untouched");
        Files.writeString(launch, "[]");
        assertOneLine(TestTools.run(new Connect(), "--ide", "vscode", "--project", dir.toString(), "--address", "127.0.0.1:1"),
                ExitCode.LOCAL_FILE, "not a launch.json");
    }

    @Test
    void badOptions() {
        assertEquals(ExitCode.USAGE, TestTools.run(new Connect(), "--client", "gdb").status());
        assertEquals(ExitCode.USAGE, TestTools.run(new Connect(), "--ide", "emacs").status());
        assertEquals(ExitCode.USAGE, TestTools.run(new Connect(), "-o", "yaml").status());
        assertEquals(ExitCode.USAGE, TestTools.run(new Connect(), "--init", "x.dlv").status());
        assertEquals(ExitCode.USAGE, TestTools.run(new Connect(), "--address", "localhost:http").status());
        assertEquals(ExitCode.USAGE, TestTools.run(new Connect(), "--address", "127.0.0.1:70000").status());
        assertEquals(ExitCode.USAGE, TestTools.run(new Connect(), "--timeout", "soon").status());
    }
}
