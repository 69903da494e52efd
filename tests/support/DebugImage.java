import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;

/**
 * The debug image the e2e tests attach with: Delve, kdlv-attach and a netcat, built from local files and
 * imported into the test cluster's containerd once per test run (imagePullPolicy IfNotPresent finds it).
 */
final class DebugImage {
    static final String NAME = "kdlv.local/debug:test";
    private static boolean loaded;

    private DebugImage() {}

    /** Builds and imports the image into the cluster once; returns its name. */
    static synchronized String loadInto(Cluster cluster) throws IOException {
        if (loaded) return NAME;
        Path dlv = TestTools.dlv().orElseThrow(() -> new IllegalStateException("no dlv: run tests/setup"));
        Path root = Files.createTempDirectory("kdlv-debug-image");
        Path bin = Files.createDirectories(root.resolve("usr/local/bin"));
        Files.copy(dlv, bin.resolve("dlv"));
        goBuild(cluster.repoRoot().resolve("debug-image/kdlv-attach"), bin.resolve("kdlv-attach"));
        goBuild(cluster.repoRoot().resolve("debug-image/nc"), bin.resolve("nc"));
        Path archive = root.resolveSibling(root.getFileName() + ".tar");
        Cluster.Result built = Cluster.run(List.of(cluster.repoRoot().resolve("tests/cluster/image").toString(),
                "--no-import", "--out", archive.toString(), NAME, root.toString()), null, Duration.ofMinutes(2), Map.of());
        if (!built.ok()) throw new IllegalStateException("cannot build the debug image: " + built);
        Cluster.Result imported = cluster.importImage(archive);
        if (!imported.ok()) throw new IllegalStateException("cannot import the debug image: " + imported);
        loaded = true;
        return NAME;
    }

    private static void goBuild(Path module, Path output) {
        Map<String, String> env = Map.of("CGO_ENABLED", "0", "PATH", System.getenv("PATH") + ":/usr/local/go/bin");
        Cluster.Result result = Cluster.run(List.of("go", "-C", module.toString(), "build", "-trimpath", "-o", output.toString(), "."),
                null, Duration.ofMinutes(5), env);
        if (!result.ok()) throw new IllegalStateException("cannot build " + module + ": " + result);
    }
}
