import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * build-image against real components: Debian's docker-registry on loopback (one open, one with htpasswd
 * auth), skopeo reading the images back, Delve built with the local Go for amd64 and arm64, and
 * optionally containerd's ctr importing the archive.
 */
@Tag("registry")
class BuildImageRegistryTest {
    static final String USER = "kdlv";
    static final String PASSWORD = "s3cret-for-tests";

    @TempDir static Path dir;
    static Registry open;
    static Registry withAuth;

    /** Why this group cannot run here, or empty. */
    static Optional<String> unavailable() {
        for (String tool : List.of("docker-registry", "skopeo", "htpasswd")) {
            if (TestTools.onPath(tool).isEmpty()) return Optional.of("no " + tool + " on PATH (tests/setup installs docker-registry, skopeo, apache2-utils)");
        }
        if (BuildImage.Go.find().isEmpty()) return Optional.of("no Go toolchain to build Delve (tests/setup)");
        return Optional.empty();
    }

    @BeforeAll
    static void startRegistries() throws Exception {
        open = Registry.start(dir.resolve("open"), null);
        Path htpasswd = dir.resolve("htpasswd");
        run("htpasswd", "-Bbc", htpasswd.toString(), USER, PASSWORD);
        withAuth = Registry.start(dir.resolve("auth"), htpasswd);
    }

    @AfterAll
    static void stopRegistries() {
        if (open != null) open.close();
        if (withAuth != null) withAuth.close();
    }

    @Test
    void pushesAMultiPlatformIndexWhoseDelveRuns() throws Exception {
        String ref = open.address + "/kdlv/debugger:multi";
        TestTools.Result result = TestTools.run(new BuildImage(), "--arch", "amd64,arm64", "--insecure", "--push", ref);
        assertEquals(0, result.status(), result::toString);
        String first = result.out().lines().findFirst().orElseThrow();
        assertTrue(first.matches(Pattern.quote(ref) + "@sha256:[0-9a-f]{64}"), result::toString);
        assertTrue(result.out().contains("platforms: linux/amd64,linux/arm64"), result::toString);

        String index = run("skopeo", "inspect", "--raw", "--tls-verify=false", "docker://" + ref);
        assertTrue(index.contains("manifest.list.v2+json") && index.contains("\"arm64\"") && index.contains("\"amd64\""), index);
        assertTrue(first.endsWith(sha256(index.getBytes(StandardCharsets.UTF_8))), "the printed digest is the index's: " + first);

        Path amd64 = layerFile(ref + "-amd64", "usr/local/bin/dlv");
        String version = run(amd64.toString(), "version");
        assertTrue(version.contains("Version: 1.27.2"), version);
        assertEquals(62, elfMachine(layerFile(ref + "-amd64", "usr/local/bin/nc")));
        assertEquals(183, elfMachine(layerFile(ref + "-arm64", "usr/local/bin/dlv")), "aarch64 ELF");
        assertEquals(183, elfMachine(layerFile(ref + "-arm64", "usr/local/bin/nc")), "aarch64 ELF");

        TestTools.Result again = TestTools.run(new BuildImage(), "--arch", "amd64,arm64", "--insecure", "--push", ref);
        assertEquals(first, again.out().lines().findFirst().orElseThrow(), "same inputs, same digest");
    }

    @Test
    void pushesOneArchitectureWithCredentials() throws Exception {
        Path auth = dir.resolve("auth.json");
        String token = Base64.getEncoder().encodeToString((USER + ":" + PASSWORD).getBytes(StandardCharsets.UTF_8));
        Files.writeString(auth, "{\"auths\":{\"" + withAuth.address + "\":{\"auth\":\"" + token + "\"}}}");
        String ref = withAuth.address + "/team/debugger:v1";
        TestTools.Result result = TestTools.run(new BuildImage(), "--insecure", "--registry-auth", auth.toString(), "--push", ref);
        assertEquals(0, result.status(), result::toString);
        String inspected = run("skopeo", "inspect", "--tls-verify=false", "--creds", USER + ":" + PASSWORD, "docker://" + ref);
        assertTrue(inspected.contains("\"Architecture\": \"amd64\"") && inspected.contains("io.kdlv.delve.version"), inspected);
        String digest = result.out().lines().findFirst().orElseThrow().replaceFirst(".*@", "");
        assertTrue(inspected.contains("\"Digest\": \"" + digest + "\""), "printed " + digest + ", registry has:\n" + inspected);
    }

    @Test
    void aRegistryThatRefusesTheCredentials() throws IOException {
        Path auth = dir.resolve("wrong.json");
        String token = Base64.getEncoder().encodeToString((USER + ":wrong").getBytes(StandardCharsets.UTF_8));
        Files.writeString(auth, "{\"auths\":{\"" + withAuth.address + "\":{\"auth\":\"" + token + "\"}}}");
        TestTools.Result result = BuildImageTest.fails(ExitCode.FORBIDDEN, "--insecure", "--registry-auth", auth.toString(),
                "--push", withAuth.address + "/team/debugger:refused");
        assertTrue(result.err().contains("refused the credentials"), result::toString);
        assertTrue(result.out().isEmpty(), "nothing claimed as pushed:\n" + result);
    }

    @Test
    void aRegistryThatRefusesTheConnection() throws IOException {
        int closed;
        try (ServerSocket socket = new ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
            closed = socket.getLocalPort();
        }
        TestTools.Result result = BuildImageTest.fails(ExitCode.UNREACHABLE, "--insecure", "--push", "127.0.0.1:" + closed + "/kdlv/debugger:x");
        assertTrue(result.err().contains("cannot connect to the registry"), result::toString);
        assertTrue(result.out().isEmpty(), result::toString);
    }

    @Test
    void aDelveVersionThatDoesNotExist() {
        TestTools.Result result = BuildImageTest.fails(ExitCode.NOT_FOUND, "--delve-version", "v1.99.0", "--tar", dir.resolve("nope.tar").toString());
        assertTrue(result.err().contains("Delve v1.99.0 does not exist"), result::toString);
        assertFalse(Files.exists(dir.resolve("nope.tar")));
    }

    /** The archive reads back with skopeo, and imports into containerd when a containerd socket is at hand. */
    @Test
    void anArchiveThatLoadersRead() throws Exception {
        Path tar = dir.resolve("debugger.tar");
        TestTools.Result result = TestTools.run(new BuildImage(), "--arch", "amd64", "--tar", tar.toString(), "--image", "kdlv.test/debugger:archive");
        assertEquals(0, result.status(), result::toString);
        String inspected = run("skopeo", "inspect", "docker-archive:" + tar);
        assertTrue(inspected.contains("\"Architecture\": \"amd64\""), inspected);
        assertTrue(run("tar", "tf", tar.toString()).contains("manifest.json"));

        Optional<Path> socket = containerdSocket();
        assumeTrue(socket.isPresent() && TestTools.onPath("ctr").isPresent(), "no containerd socket for ctr images import");
        String namespace = "kdlv-build-image-test";
        try {
            String imported = run("ctr", "--address", socket.get().toString(), "-n", namespace, "images", "import", tar.toString());
            assertTrue(imported.contains("kdlv.test/debugger:archive"), imported);
            assertTrue(run("ctr", "--address", socket.get().toString(), "-n", namespace, "images", "ls", "-q").contains("kdlv.test/debugger:archive"));
        } finally {
            runQuietly("ctr", "--address", socket.get().toString(), "-n", namespace, "images", "rm", "kdlv.test/debugger:archive");
        }
    }

    /** Several architectures in one archive: an OCI image layout with an image index, reproducible. */
    @Test
    void aMultiPlatformArchive() throws Exception {
        Path first = dir.resolve("multi-1.tar");
        Path second = dir.resolve("multi-2.tar");
        for (Path tar : List.of(first, second)) {
            TestTools.Result result = TestTools.run(new BuildImage(), "--arch", "amd64,arm64", "--tar", tar.toString(), "--image", "kdlv.test/debugger:multi");
            assertEquals(0, result.status(), result::toString);
            assertTrue(result.out().contains("OCI image index sha256:"), result::toString);
        }
        assertTrue(java.util.Arrays.equals(Files.readAllBytes(first), Files.readAllBytes(second)), "same inputs, same archive");
        String index = run("skopeo", "inspect", "--raw", "oci-archive:" + first);
        assertTrue(index.contains("\"architecture\":\"amd64\"") && index.contains("\"architecture\":\"arm64\""), index);
        assertTrue(run("skopeo", "inspect", "--override-arch", "arm64", "oci-archive:" + first).contains("\"Architecture\": \"arm64\""));

        Optional<Path> socket = containerdSocket();
        assumeTrue(socket.isPresent() && TestTools.onPath("ctr").isPresent(), "no containerd socket for ctr images import");
        String namespace = "kdlv-build-image-test";
        try {
            run("ctr", "--address", socket.get().toString(), "-n", namespace, "images", "import", "--all-platforms", first.toString());
            String listed = run("ctr", "--address", socket.get().toString(), "-n", namespace, "images", "ls");
            assertTrue(listed.contains("docker.io/kdlv.test/debugger:multi") || listed.contains("kdlv.test/debugger:multi"), listed);
            assertTrue(listed.contains("linux/amd64,linux/arm64"), listed);
        } finally {
            runQuietly("ctr", "--address", socket.get().toString(), "-n", namespace, "images", "rm", "kdlv.test/debugger:multi");
        }
    }

    static Optional<Path> containerdSocket() {
        for (Path candidate : List.of(TestTools.cacheDir().resolve("cluster/containerd/containerd.sock"), Path.of("/run/containerd/containerd.sock"))) {
            if (Files.exists(candidate)) return Optional.of(candidate);
        }
        return Optional.empty();
    }

    /** Copies IMAGE out of the registry with skopeo and extracts FILE from its (only) layer. */
    static Path layerFile(String image, String file) throws Exception {
        Path copy = Files.createTempDirectory(dir, "image");
        run("skopeo", "copy", "--src-tls-verify=false", "docker://" + image, "dir:" + copy);
        String manifest = Files.readString(copy.resolve("manifest.json"));
        Matcher layers = Pattern.compile("\"layers\"\\s*:\\s*\\[.*?\"digest\"\\s*:\\s*\"sha256:([0-9a-f]{64})\"", Pattern.DOTALL).matcher(manifest);
        assertTrue(layers.find(), manifest);
        Path root = Files.createDirectories(copy.resolve("root"));
        run("tar", "-xzf", copy.resolve(layers.group(1)).toString(), "-C", root.toString(), file);
        return root.resolve(file);
    }

    static int elfMachine(Path file) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "r")) {
            byte[] header = new byte[20];
            f.readFully(header);
            assertEquals(0x7f, header[0]);
            return (header[18] & 0xff) | (header[19] & 0xff) << 8;
        }
    }

    static String sha256(byte[] bytes) throws Exception {
        return java.util.HexFormat.of().formatHex(java.security.MessageDigest.getInstance("SHA-256").digest(bytes));
    }

    static String run(String... command) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(command).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), String.join(" ", command) + " hung");
        assertEquals(0, p.exitValue(), () -> String.join(" ", command) + ":\n" + out);
        return out;
    }

    static void runQuietly(String... command) {
        try {
            new ProcessBuilder(command).redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.DISCARD).start().waitFor(30, TimeUnit.SECONDS);
        } catch (IOException | InterruptedException ignored) {
            // best effort cleanup
        }
    }

    /** Debian's docker-registry serving plain HTTP on a free loopback port, storage in a temp dir. */
    static final class Registry implements AutoCloseable {
        final Process process;
        final String address;

        private Registry(Process process, String address) {
            this.process = process;
            this.address = address;
        }

        static Registry start(Path home, Path htpasswd) throws Exception {
            Files.createDirectories(home);
            int port;
            try (ServerSocket socket = new ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
                port = socket.getLocalPort();
            }
            List<String> config = new ArrayList<>(List.of(
                    "version: 0.1",
                    "log: {level: warn}",
                    "storage: {filesystem: {rootdirectory: " + home.resolve("storage") + "}}",
                    "http: {addr: 127.0.0.1:" + port + "}"));
            if (htpasswd != null) config.add("auth: {htpasswd: {realm: kdlv-test, path: " + htpasswd + "}}");
            Path file = Files.write(home.resolve("config.yml"), config);
            Process process = new ProcessBuilder("docker-registry", "serve", file.toString()).redirectErrorStream(true)
                    .redirectOutput(home.resolve("registry.log").toFile()).start();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
            while (System.nanoTime() < deadline) {
                if (!process.isAlive()) throw new IllegalStateException("docker-registry exited: " + Files.readString(home.resolve("registry.log")));
                try (Socket s = new Socket()) {
                    s.connect(new InetSocketAddress("127.0.0.1", port), 200);
                    return new Registry(process, "127.0.0.1:" + port);
                } catch (IOException notYet) {
                    Thread.sleep(100);
                }
            }
            process.destroyForcibly();
            throw new IllegalStateException("docker-registry did not listen on 127.0.0.1:" + port + " within 20 s");
        }

        @Override
        public void close() {
            process.destroy();
            try {
                if (!process.waitFor(5, TimeUnit.SECONDS)) process.destroyForcibly();
            } catch (InterruptedException e) {
                process.destroyForcibly();
                Thread.currentThread().interrupt();
            }
        }
    }
}
