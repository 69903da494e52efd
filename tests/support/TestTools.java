import java.io.IOException;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Optional;
import java.util.concurrent.TimeUnit;
import picocli.CommandLine;

/** Small helpers the tests share: where the tools are, and running a script's command in-process. */
final class TestTools {
    private TestTools() {}

    /** What a command printed and the status it ended with. */
    record Result(int status, String out, String err) {
        @Override
        public String toString() {
            return "exit " + status + "\n--- stdout\n" + out + "--- stderr\n" + err;
        }
    }

    /** Runs a script's command in-process, as its main would, but without System.exit. */
    static Result run(Object command, String... args) {
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        CommandLine cli = Cli.command(command);
        cli.setOut(new PrintWriter(out, true));
        cli.setErr(new PrintWriter(err, true));
        int status = cli.execute(args);
        return new Result(status, out.toString(), err.toString());
    }

    /** The cache directory tests/setup fills: $KDLV_CACHE, else ~/.cache/kdlv. */
    static Path cacheDir() {
        String env = System.getenv("KDLV_CACHE");
        return env != null && !env.isBlank() ? Path.of(env) : Path.of(System.getProperty("user.home"), ".cache", "kdlv");
    }

    /** Where tests/setup puts the binaries it builds (dlv, ...). */
    static Path binDir() {
        return cacheDir().resolve("bin");
    }

    /** A tool on PATH or in {@link #binDir()}. */
    static Optional<Path> tool(String name) {
        Path cached = binDir().resolve(name);
        return Files.isExecutable(cached) ? Optional.of(cached) : onPath(name);
    }

    static Optional<Path> dlv() {
        return tool("dlv");
    }

    static Optional<Path> onPath(String name) {
        String path = System.getenv("PATH");
        if (path == null) return Optional.empty();
        for (String dir : path.split(":")) {
            Path candidate = Path.of(dir, name);
            if (Files.isExecutable(candidate)) return Optional.of(candidate);
        }
        return Optional.empty();
    }

    /** True when the command exits 0 within 20 seconds. */
    static boolean succeeds(String... command) {
        try {
            Process process = new ProcessBuilder(command).redirectErrorStream(true)
                    .redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
            if (!process.waitFor(20, TimeUnit.SECONDS)) {
                process.destroyForcibly();
                return false;
            }
            return process.exitValue() == 0;
        } catch (IOException e) {
            return false;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return false;
        }
    }

    /** The repository's root: the system property kdlv.root, else the nearest directory up with jbang-catalog.json. */
    static Path repoRoot() {
        String property = System.getProperty("kdlv.root");
        if (property != null) return Path.of(property);
        for (Path dir = Path.of("").toAbsolutePath(); dir != null; dir = dir.getParent()) {
            if (Files.isRegularFile(dir.resolve("jbang-catalog.json"))) return dir;
        }
        throw new IllegalStateException("run the tests from inside the kdlv repository (no jbang-catalog.json found upwards)");
    }
}
