import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * build-image without a Go build: its choices (architecture, Delve for a Go version), its dry run, its bad
 * input, and a real Jib build from given binaries into an archive.
 */
class BuildImageTest {
    @TempDir Path dir;

    @AfterEach
    void forgetGoHook() {
        System.clearProperty("kdlv.go");
    }

    /** One line of error on stderr (besides "build-image: " progress lines), the expected status, no stack trace. */
    static TestTools.Result fails(int status, String... args) {
        TestTools.Result result = TestTools.run(new BuildImage(), args);
        assertEquals(status, result.status(), result::toString);
        List<String> lines = result.err().lines()
                .filter(l -> !l.isBlank() && !l.startsWith("Try '") && !l.startsWith("build-image: ")).toList();
        assertEquals(1, lines.size(), () -> "expected one line of error:\n" + result);
        assertFalse(result.err().contains("\tat "), result::toString);
        return result;
    }

    @Test
    void unknownArchitectureIsBadInput() {
        TestTools.Result result = fails(ExitCode.USAGE, "--arch", "sparc", "--tar", dir.resolve("x.tar").toString());
        assertTrue(result.err().contains("unknown architecture 'sparc'") && result.err().contains("amd64, arm64"), result::toString);
        assertFalse(Files.exists(dir.resolve("x.tar")));
    }

    @Test
    void nodeArchitectureNamesAreAccepted() {
        assertEquals("amd64", BuildImage.normalizeArch("x86_64"));
        assertEquals("arm64", BuildImage.normalizeArch("aarch64"));
        assertEquals("arm64", BuildImage.normalizeArch("linux/arm64"));
    }

    @Test
    void needsExactlyOneOutput() {
        fails(ExitCode.USAGE);
        fails(ExitCode.USAGE, "--tar", dir.resolve("x.tar").toString(), "--push", "127.0.0.1:5000/x:y");
    }

    @Test
    void goVersionPicksTheNewestDelveThatSupportsIt() {
        TestTools.Result result = TestTools.run(new BuildImage(), "--dry-run", "--go-version", "1.23", "--arch", "arm64");
        assertEquals(0, result.status(), result::toString);
        assertTrue(result.out().contains("Delve v1.25.2") && result.out().contains("supports Go 1.22 to 1.25"), result::toString);
        assertTrue(result.out().contains("--platform linux/arm64 --build-arg DELVE_VERSION=v1.25.2"), result::toString);
        assertTrue(result.out().contains("GOARCH=arm64") && result.out().contains("cmd/dlv@v1.25.2"), result::toString);

        result = TestTools.run(new BuildImage(), "--dry-run", "--go-version", "go1.18.3");
        assertTrue(result.out().contains("Delve v1.21.0"), result::toString);
    }

    @Test
    void anUnsupportedPairIsRefusedWithTheRange() {
        TestTools.Result result = fails(ExitCode.UNSUPPORTED, "--dry-run", "--delve-version", "v1.20.2", "--go-version", "1.25");
        assertTrue(result.err().contains("Delve v1.20.2 supports Go 1.18 to 1.20, not Go 1.25")
                && result.err().contains("--delve-version v1.27.2"), result::toString);
        result = fails(ExitCode.UNSUPPORTED, "--dry-run", "--go-version", "1.12");
        assertTrue(result.err().contains("no Delve release supports Go 1.12"), result::toString);
        fails(ExitCode.USAGE, "--dry-run", "--go-version", "one-point-twenty");
        fails(ExitCode.USAGE, "--dry-run", "--delve-version", "latest");
    }

    @Test
    void dryRunShowsThePlanAndTheManualCommands() {
        TestTools.Result result = TestTools.run(new BuildImage(), "--dry-run", "--arch", "amd64,arm64", "--push", "registry.example/team/dbg:1");
        assertEquals(0, result.status(), result::toString);
        assertTrue(result.out().contains("would build registry.example/team/dbg:1 for linux/amd64, linux/arm64"), result::toString);
        assertTrue(result.out().contains("docker buildx build --platform linux/amd64,linux/arm64"), result::toString);
        assertTrue(result.out().contains("/usr/local/bin/nc"), result::toString);
    }

    @Test
    void noGoToolchainAndNoDlvBinary() {
        System.setProperty("kdlv.go", dir.resolve("no-such-go").toString());
        TestTools.Result result = fails(ExitCode.TOOL_MISSING, "--tar", dir.resolve("x.tar").toString());
        assertTrue(result.err().contains("no Go toolchain") && result.err().contains("--dlv-binary"), result::toString);
        assertFalse(Files.exists(dir.resolve("x.tar")));
    }

    @Test
    void unwritableArchivePaths() throws IOException {
        TestTools.Result result = fails(ExitCode.LOCAL_FILE, "--tar", dir.resolve("missing/x.tar").toString());
        assertTrue(result.err().contains("does not exist"), result::toString);
        Path file = Files.writeString(dir.resolve("a-file"), "x");
        fails(ExitCode.LOCAL_FILE, "--tar", file.resolve("x.tar").toString());
        fails(ExitCode.LOCAL_FILE, "--tar", dir.toString());
    }

    @Test
    void aBinaryForAnotherArchitectureIsRefused() throws IOException {
        Path arm = fakeElf("dlv", 183);
        TestTools.Result result = fails(ExitCode.USAGE, "--arch", "amd64", "--dlv-binary", arm.toString(), "--tar", dir.resolve("x.tar").toString());
        assertTrue(result.err().contains("is a arm64 binary, not linux/amd64") && result.err().contains("exec format error"), result::toString);
        fails(ExitCode.LOCAL_FILE, "--dlv-binary", dir.resolve("nothing").toString(), "--tar", dir.resolve("x.tar").toString());
    }

    /** Given binaries, Jib needs neither Go nor a daemon; the archive is reproducible and complete. */
    @Test
    void buildsAReproducibleArchiveFromGivenBinaries() throws IOException {
        Path dlv = fakeElf("dlv", 62);
        Path nc = fakeElf("nc", 62);
        Path out = dir.resolve("out");
        Files.createDirectories(out);
        String[] args = {"--arch", "amd64", "--dlv-binary", dlv.toString(), "--nc-binary", nc.toString(), "--image", "kdlv.test/debugger:1"};
        TestTools.Result first = TestTools.run(new BuildImage(), concat(args, "--tar", out.resolve("a.tar").toString()));
        assertEquals(0, first.status(), first::toString);
        assertTrue(first.out().startsWith("kdlv.test/debugger:1\n"), first::toString);
        assertTrue(first.out().contains("image id sha256:"), first::toString);
        TestTools.Result second = TestTools.run(new BuildImage(), concat(args, "--tar", out.resolve("b.tar").toString()));
        assertEquals(0, second.status(), second::toString);
        assertArrayEquals(Files.readAllBytes(out.resolve("a.tar")), Files.readAllBytes(out.resolve("b.tar")), "same inputs, same archive");
        try (Stream<Path> files = Files.list(out)) {
            assertEquals(List.of("a.tar", "b.tar"), files.map(p -> p.getFileName().toString()).sorted().toList(), "no partial files left");
        }
    }

    /** --base tar:FILE puts the tools on top of a local image archive (here one with busybox), offline. */
    @Test
    void buildsOnALocalBaseArchive() throws Exception {
        Path busybox = Path.of("/bin/busybox");
        org.junit.jupiter.api.Assumptions.assumeTrue(Files.isExecutable(busybox), "no /bin/busybox (Debian busybox-static)");
        Path base = dir.resolve("base.tar");
        com.google.cloud.tools.jib.api.Jib.fromScratch()
                .addFileEntriesLayer(com.google.cloud.tools.jib.api.buildplan.FileEntriesLayer.builder()
                        .addEntry(busybox, com.google.cloud.tools.jib.api.buildplan.AbsoluteUnixPath.get("/bin/busybox")).build())
                .setEnvironment(java.util.Map.of("BASE", "busybox"))
                .containerize(com.google.cloud.tools.jib.api.Containerizer.to(
                        com.google.cloud.tools.jib.api.TarImage.at(base).named("kdlv.test/busybox:base")));
        Path dlv = fakeElf("dlv", 62);
        Path out = dir.resolve("on-busybox.tar");
        TestTools.Result result = TestTools.run(new BuildImage(), "--base", "tar:" + base, "--dlv-binary", dlv.toString(),
                "--nc-binary", dlv.toString(), "--tar", out.toString());
        assertEquals(0, result.status(), result::toString);
        String manifest = entry(out, "manifest.json");
        assertEquals(2, manifest.split("\\.tar\\.gz").length - 1, "base layer + tools layer: " + manifest);
        String config = entry(out, "config.json");
        assertTrue(config.contains("\"Cmd\":[\"dlv\",\"version\"]") && config.contains("PATH=/usr/local/sbin:/usr/local/bin"), config);
    }

    static String entry(Path tar, String name) throws IOException, InterruptedException {
        Process p = new ProcessBuilder("tar", "-xOf", tar.toString(), name).start();
        String text = new String(p.getInputStream().readAllBytes(), java.nio.charset.StandardCharsets.UTF_8);
        assertEquals(0, p.waitFor(), "tar -xOf " + tar + " " + name);
        return text;
    }

    /** A build that fails half-way leaves neither the archive nor a partial file. */
    @Test
    void aFailedBuildLeavesNoArchive() throws IOException {
        Path dlv = fakeElf("dlv", 62);
        Path notAnImage = Files.writeString(dir.resolve("base.tar"), "not an image archive");
        Path out = Files.createDirectories(dir.resolve("out"));
        TestTools.Result result = TestTools.run(new BuildImage(), "--dlv-binary", dlv.toString(), "--nc-binary", dlv.toString(),
                "--base", "tar:" + notAnImage, "--tar", out.resolve("x.tar").toString());
        assertTrue(result.status() != 0, result::toString);
        assertFalse(result.err().contains("\tat "), result::toString);
        try (Stream<Path> files = Files.list(out)) {
            assertEquals(0, files.count(), "nothing left in " + out);
        }
    }

    @Test
    void anUnknownOrMissingBuilder() {
        fails(ExitCode.USAGE, "--builder", "kaniko", "--tar", dir.resolve("x.tar").toString());
        System.setProperty("kdlv.path", dir.toString());
        try {
            TestTools.Result result = fails(ExitCode.TOOL_MISSING, "--builder", "podman", "--tar", dir.resolve("x.tar").toString());
            assertTrue(result.err().contains("no 'podman' on PATH"), result::toString);
        } finally {
            System.clearProperty("kdlv.path");
        }
    }

    /** --builder podman runs the article's way with debug-image/Dockerfile (a stand-in podman records the calls). */
    @Test
    void podmanBuildsTheDockerfileAndSavesAnArchive() throws Exception {
        Path bin = Files.createDirectories(dir.resolve("bin"));
        Path log = dir.resolve("podman.log");
        Path podman = Files.writeString(bin.resolve("podman"), String.join("\n",
                "#!/bin/sh",
                "echo \"$*\" >> '" + log + "'",
                "prev=; for a in \"$@\"; do [ \"$prev\" = -o ] && echo archive > \"$a\"; prev=$a; done",
                "exit 0", ""));
        podman.toFile().setExecutable(true);
        System.setProperty("kdlv.path", bin.toString());
        try {
            Path tar = dir.resolve("podman.tar");
            TestTools.Result result = TestTools.run(new BuildImage(), "--builder", "podman", "--arch", "arm64", "--go-version", "1.24", "--tar", tar.toString());
            assertEquals(0, result.status(), result::toString);
            String calls = Files.readString(log);
            assertTrue(calls.contains("build --platform linux/arm64 --build-arg DELVE_VERSION=v1.26.3 -t kdlv/debugger:v1.26.3 "), calls);
            assertTrue(calls.contains("save --format docker-archive -o " + dir.resolve(".podman.tar.partial") + " kdlv/debugger:v1.26.3"), calls);
            String context = calls.lines().findFirst().orElseThrow().replaceFirst(".* ", "");
            assertTrue(Files.isRegularFile(Path.of(context, "Dockerfile")) && Files.isRegularFile(Path.of(context, "nc/main.go")), context);
            assertEquals("archive\n", Files.readString(tar));
            assertFalse(Files.exists(dir.resolve(".podman.tar.partial")));
        } finally {
            System.clearProperty("kdlv.path");
        }
    }

    /** A minimal little-endian ELF header with the given e_machine (62 x86-64, 183 aarch64). */
    Path fakeElf(String name, int machine) throws IOException {
        byte[] elf = new byte[64];
        elf[0] = 0x7f;
        elf[1] = 'E';
        elf[2] = 'L';
        elf[3] = 'F';
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = (byte) machine;
        elf[19] = (byte) (machine >> 8);
        return Files.write(dir.resolve(name + "-" + machine), elf);
    }

    static String[] concat(String[] first, String... more) {
        return Stream.concat(Stream.of(first), Stream.of(more)).toArray(String[]::new);
    }
}
