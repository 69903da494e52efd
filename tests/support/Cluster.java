import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.UUID;
import java.util.concurrent.TimeUnit;

/**
 * A Kubernetes cluster the end-to-end tests run against, handed out by {@link ClusterExtension}
 * (declare a {@code Cluster} parameter on a test, {@code @BeforeAll} or constructor).
 *
 * @param kubeconfig       the admin kubeconfig (cluster-admin; system:masters on the local cluster)
 * @param kubectl          the kubectl binary to use: the one built by tests/cluster/up, else kubectl on PATH
 * @param containerdSocket the node's containerd socket for {@code ctr -a SOCK -n k8s.io images import}; present
 *                         only for the local cluster (tests/cluster/up)
 * @param source           where the cluster came from: "KDLV_KUBECONFIG", "local" or "k3s"
 * @param repoRoot         the repository root (for tests/fixtures, tests/cluster/image, scripts/)
 */
public record Cluster(Path kubeconfig, Path kubectl, Optional<Path> containerdSocket, String source, Path repoRoot) {

    /** Default timeout of {@link #kubectl(String...)}. */
    public static final Duration DEFAULT_TIMEOUT = Duration.ofSeconds(60);

    /** What a command printed and its exit code; 124 (as with timeout(1)) when it was killed at its timeout. */
    public record Result(int exitCode, String stdout, String stderr) {
        public boolean ok() {
            return exitCode == 0;
        }

        /** Returns stdout when the command succeeded, else throws with everything it printed. */
        public String stdoutOrThrow() {
            if (!ok()) throw new AssertionError("command failed: " + this);
            return stdout;
        }

        @Override
        public String toString() {
            return "exit " + exitCode + "\n--- stdout\n" + stdout + "\n--- stderr\n" + stderr;
        }
    }

    /** Runs {@code kubectl --kubeconfig KUBECONFIG ARGS...} with a 60 s timeout and no stdin. */
    public Result kubectl(String... args) {
        return kubectl(DEFAULT_TIMEOUT, args);
    }

    /** Runs {@code kubectl --kubeconfig KUBECONFIG ARGS...} with the given timeout and no stdin. */
    public Result kubectl(Duration timeout, String... args) {
        return kubectlWithInput(null, timeout, args);
    }

    /** Runs kubectl with {@code stdin} piped in (then closed), e.g. for {@code exec -i} or {@code apply -f -}. */
    public Result kubectlWithInput(byte[] stdin, Duration timeout, String... args) {
        return run(kubectlCommand(args), stdin, timeout, env());
    }

    /** Starts a long-running kubectl (port-forward, logs -f, ...); the caller reads its streams and destroys it. */
    public Process startKubectl(String... args) {
        try {
            ProcessBuilder pb = new ProcessBuilder(kubectlCommand(args));
            pb.environment().putAll(env());
            return pb.start();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** The kubectl command line for {@code args}, with {@code --kubeconfig}. */
    public List<String> kubectlCommand(String... args) {
        List<String> command = new ArrayList<>(List.of(kubectl.toString(), "--kubeconfig", kubeconfig.toString()));
        command.addAll(List.of(args));
        return command;
    }

    /** Environment for child processes (scripts under test): KUBECONFIG and a PATH with this kubectl first. */
    public Map<String, String> env() {
        Map<String, String> env = new HashMap<>();
        env.put("KUBECONFIG", kubeconfig.toString());
        String path = System.getenv().getOrDefault("PATH", "/usr/bin:/bin");
        env.put("PATH", kubectl.getParent() + ":" + path);
        return env;
    }

    /** A file under tests/fixtures (e.g. "demo-service.yaml"). */
    public Path fixture(String name) {
        return repoRoot.resolve("tests").resolve("fixtures").resolve(name);
    }

    /** Creates a namespace {@code PREFIX-RANDOM} with the given labels (key=value) and returns its name. */
    public String createNamespace(String prefix, String... labels) {
        String name = prefix + "-" + UUID.randomUUID().toString().substring(0, 8);
        kubectl("create", "namespace", name).stdoutOrThrow();
        if (labels.length > 0) {
            List<String> args = new ArrayList<>(List.of("label", "namespace", name, "--overwrite"));
            args.addAll(List.of(labels));
            kubectl(args.toArray(String[]::new)).stdoutOrThrow();
        }
        return name;
    }

    /** Deletes a namespace without waiting for its pods to go. */
    public void deleteNamespace(String name) {
        kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found");
    }

    /**
     * Applies a fixture manifest in {@code namespace}, waits for the rollout of {@code deployment} and returns
     * the name of its (first) pod.
     */
    public String deploy(String namespace, String fixtureYaml, String deployment, Duration timeout) {
        kubectl("apply", "-n", namespace, "-f", fixture(fixtureYaml).toString()).stdoutOrThrow();
        Result rollout = kubectl(timeout.plusSeconds(10), "rollout", "status", "-n", namespace, "deployment/" + deployment,
                "--timeout=" + timeout.toSeconds() + "s");
        if (!rollout.ok()) {
            throw new AssertionError("deployment " + namespace + "/" + deployment + " not ready: " + rollout
                    + "\n--- pods\n" + kubectl("get", "pods", "-n", namespace, "-o", "wide").stdout()
                    + "\n--- events\n" + kubectl("get", "events", "-n", namespace).stdout());
        }
        return kubectl("get", "pods", "-n", namespace, "-l", "app=" + deployment,
                "--field-selector=status.phase=Running", "-o", "jsonpath={.items[0].metadata.name}").stdoutOrThrow().trim();
    }

    /**
     * Imports a docker-archive/OCI tarball into the node's containerd (local cluster only), for pods with
     * {@code imagePullPolicy: Never}. Build one with {@code tests/cluster/image --no-import --out FILE NAME DIR}.
     */
    public Result importImage(Path archive) {
        Path socket = containerdSocket.orElseThrow(() -> new IllegalStateException(
                "image import needs the local cluster's containerd socket; this cluster is " + source));
        return run(List.of("ctr", "-a", socket.toString(), "-n", "k8s.io", "images", "import", archive.toString()),
                null, Duration.ofMinutes(2), Map.of());
    }

    /** Runs a command (stdin piped in then closed, or none), collecting both streams; 124 on timeout. */
    public static Result run(List<String> command, byte[] stdin, Duration timeout, Map<String, String> env) {
        Process process;
        try {
            ProcessBuilder pb = new ProcessBuilder(command);
            pb.environment().putAll(env);
            if (stdin == null) pb.redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")));
            process = pb.start();
        } catch (IOException e) {
            return new Result(127, "", "cannot run " + command.get(0) + ": " + e.getMessage());
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        Thread outPump = pump(process.getInputStream(), out);
        Thread errPump = pump(process.getErrorStream(), err);
        if (stdin != null) {
            try (OutputStream in = process.getOutputStream()) {
                in.write(stdin);
            } catch (IOException ignored) {
                // the command exited before reading all of it: its output and exit code tell why
            }
        }
        boolean finished;
        try {
            finished = process.waitFor(timeout.toMillis(), TimeUnit.MILLISECONDS);
            if (!finished) {
                process.destroyForcibly().waitFor(10, TimeUnit.SECONDS);
            }
            outPump.join(5000);
            errPump.join(5000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            process.destroyForcibly();
            return new Result(130, out.toString(StandardCharsets.UTF_8), "interrupted");
        }
        String stderr = err.toString(StandardCharsets.UTF_8);
        if (!finished) {
            return new Result(124, out.toString(StandardCharsets.UTF_8),
                    stderr + "\n[timed out after " + timeout.toSeconds() + "s: " + String.join(" ", command) + "]");
        }
        return new Result(process.exitValue(), out.toString(StandardCharsets.UTF_8), stderr);
    }

    private static Thread pump(InputStream in, ByteArrayOutputStream sink) {
        Thread t = new Thread(() -> {
            try (in) {
                in.transferTo(sink);
            } catch (IOException ignored) {
                // stream closed when the process was killed
            }
        }, "cluster-pump");
        t.setDaemon(true);
        t.start();
        return t;
    }

    /** Reads a small text file, or empty. */
    static Optional<String> read(Path file) {
        try {
            return Files.isRegularFile(file) ? Optional.of(Files.readString(file)) : Optional.empty();
        } catch (IOException e) {
            return Optional.empty();
        }
    }
}
