import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * The debug image the e2e tests attach with, made by build-image itself (Delve from tests/setup, nc and
 * kdlv-attach built from debug-image/) and imported into the test cluster's containerd once per test run.
 */
final class DebugImage {
    static final String NAME = "kdlv.local/debug:test";
    private static boolean loaded;

    private DebugImage() {}

    /** Builds the image with build-image --tar and imports it into the cluster once; returns its name. */
    static synchronized String loadInto(Cluster cluster) throws IOException {
        if (loaded) return NAME;
        Path dlv = TestTools.dlv().orElseThrow(() -> new IllegalStateException("no dlv: run tests/setup"));
        Path archive = Files.createTempDirectory("kdlv-debug-image").resolve("debug.tar");
        String arch = System.getProperty("os.arch").equals("aarch64") ? "arm64" : "amd64";
        TestTools.Result built = TestTools.run(new BuildImage(), "--arch", arch, "--dlv-binary", dlv.toString(),
                "--tar", archive.toString(), "--image", NAME);
        if (built.status() != 0) throw new IllegalStateException("build-image could not build the debug image: " + built);
        Cluster.Result imported = cluster.importImage(archive);
        if (!imported.ok()) throw new IllegalStateException("cannot import the debug image: " + imported);
        loaded = true;
        return NAME;
    }
}
