import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.extension.BeforeAllCallback;
import org.junit.jupiter.api.extension.ExtensionConfigurationException;
import org.junit.jupiter.api.extension.ExtensionContext;
import org.junit.jupiter.api.extension.ParameterContext;
import org.junit.jupiter.api.extension.ParameterResolver;

/**
 * Gives end-to-end tests a Kubernetes cluster ({@link Cluster}: kubeconfig, kubectl, containerd socket):
 * <pre>
 * &#64;Tag("cluster")
 * &#64;ExtendWith(ClusterExtension.class)
 * class MyTest {
 *     &#64;Test void works(Cluster cluster) { cluster.kubectl("get", "nodes").stdoutOrThrow(); }
 * }
 * </pre>
 * Where the cluster comes from, first match wins, resolved once per JVM:
 * <ol>
 * <li>env {@code KDLV_KUBECONFIG}: an existing cluster (kubectl: the one tests/cluster/up built, else PATH);</li>
 * <li>the local cluster: {@code tests/cluster/up} (builds Kubernetes once, starts it or reuses a running one;
 *     output in {@code $KDLV_CACHE/logs/cluster-up.log}; timeout env {@code KDLV_CLUSTER_UP_TIMEOUT_MINUTES},
 *     default 80). It is left running for the next run: stop it with {@code tests/cluster/down}, or set
 *     {@code KDLV_CLUSTER_STOP=true} to stop it at JVM exit when this run started it;</li>
 * <li>k3s through Testcontainers' k3s module, only when that module is on the class path (it is not a
 *     dependency of the runner) and a Docker engine answers; image env {@code KDLV_K3S_IMAGE}.</li>
 * </ol>
 * When none is possible the tests are aborted (skipped) with the reason, except with {@code CI=true}, where
 * they fail. A prerequisite that is present but a cluster that does not come up is always a failure.
 */
public final class ClusterExtension implements BeforeAllCallback, ParameterResolver {

    private static final Object LOCK = new Object();
    private static Cluster cluster;        // resolved once per JVM
    private static Throwable failure;      // ... or why it cannot be (abort, configuration error, failure)

    @Override
    public void beforeAll(ExtensionContext context) {
        get();
    }

    @Override
    public boolean supportsParameter(ParameterContext parameter, ExtensionContext context) {
        return parameter.getParameter().getType() == Cluster.class;
    }

    @Override
    public Object resolveParameter(ParameterContext parameter, ExtensionContext context) {
        return get();
    }

    /** The cluster, starting it on first use; aborts (or fails on CI) when there can be none. */
    public static Cluster get() {
        synchronized (LOCK) {
            if (cluster == null && failure == null) {
                try {
                    cluster = resolve();
                } catch (RuntimeException | Error e) {
                    failure = e;
                }
            }
            if (failure instanceof RuntimeException e) throw e;
            if (failure instanceof Error e) throw e;
            return cluster;
        }
    }

    /**
     * Why no cluster can be had here, cheaply (no process started, nothing built), or empty when one can:
     * KDLV_KUBECONFIG names a readable file, or the local cluster's prerequisites are present, or
     * Testcontainers' k3s module and a Docker engine are there.
     */
    public static Optional<String> unavailableReason() {
        String env = System.getenv("KDLV_KUBECONFIG");
        if (env != null && !env.isBlank()) {
            return Files.isReadable(Path.of(env)) ? Optional.empty()
                    : Optional.of("KDLV_KUBECONFIG=" + env + " is not a readable file");
        }
        Optional<String> local = localUnavailableReason();
        if (local.isEmpty()) return Optional.empty();
        Optional<String> k3s = k3sUnavailableReason();
        if (k3s.isEmpty()) return Optional.empty();
        return Optional.of("no Kubernetes cluster for the e2e tests: KDLV_KUBECONFIG is not set; local cluster: "
                + local.get() + "; k3s: " + k3s.get());
    }

    // ---- resolution ------------------------------------------------------------------------------------------

    private static Cluster resolve() {
        Path root = repoRoot();
        String env = System.getenv("KDLV_KUBECONFIG");
        if (env != null && !env.isBlank()) {
            Path kubeconfig = Path.of(env).toAbsolutePath();
            if (!Files.isReadable(kubeconfig)) unavailable("KDLV_KUBECONFIG=" + env + " is not a readable file");
            return new Cluster(kubeconfig, kubectl(root), Optional.empty(), "KDLV_KUBECONFIG", root);
        }
        Optional<String> local = localUnavailableReason();
        if (local.isEmpty()) return startLocal(root);
        Optional<String> k3s = k3sUnavailableReason();
        if (k3s.isEmpty()) return startK3s(root);
        unavailable("no Kubernetes cluster for the e2e tests: KDLV_KUBECONFIG is not set; local cluster: "
                + local.get() + "; k3s: " + k3s.get());
        throw new AssertionError("unreachable");
    }

    /** Skips, loudly; on CI (CI=true) fails instead. */
    private static void unavailable(String reason) {
        String message = "E2E CLUSTER UNAVAILABLE: " + reason;
        System.err.println(message);
        if ("true".equalsIgnoreCase(System.getenv("CI"))) {
            throw new ExtensionConfigurationException(message + " (CI=true: cluster tests must run; run tests/setup)");
        }
        Assumptions.abort(message);
    }

    private static Cluster startLocal(Path root) {
        Path log = cacheDir().resolve("logs").resolve("cluster-up.log");
        long timeoutMinutes = Long.parseLong(System.getenv().getOrDefault("KDLV_CLUSTER_UP_TIMEOUT_MINUTES", "80"));
        boolean wasRunning = localRunning();
        System.err.println("ClusterExtension: tests/cluster/up (" + (wasRunning ? "reusing the running cluster"
                : "starting; a first run builds Kubernetes, ~30-40 min on 2 cores") + "), log: " + log);
        Instant start = Instant.now();
        Cluster.Result result;
        try {
            Files.createDirectories(log.getParent());
            ProcessBuilder pb = new ProcessBuilder(root.resolve("tests/cluster/up").toString())
                    .directory(root.toFile())
                    .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")))
                    .redirectError(log.toFile());
            Process process = pb.start();
            String stdout;
            try (var in = process.getInputStream()) {
                // stdout is short (the kubeconfig path); read it fully while the process runs
                var reader = new Thread[1];
                var buffer = new java.io.ByteArrayOutputStream();
                reader[0] = new Thread(() -> {
                    try {
                        in.transferTo(buffer);
                    } catch (IOException ignored) {
                        // killed
                    }
                });
                reader[0].setDaemon(true);
                reader[0].start();
                if (!process.waitFor(timeoutMinutes, TimeUnit.MINUTES)) {
                    process.descendants().forEach(ProcessHandle::destroy);
                    process.destroy();
                    process.waitFor(60, TimeUnit.SECONDS);
                    process.destroyForcibly();
                    throw new AssertionError("tests/cluster/up did not finish within " + timeoutMinutes
                            + " min (KDLV_CLUSTER_UP_TIMEOUT_MINUTES); log " + log + ":\n" + tail(log, 40));
                }
                reader[0].join(5000);
                stdout = buffer.toString(StandardCharsets.UTF_8);
            }
            result = new Cluster.Result(process.exitValue(), stdout, "");
        } catch (IOException e) {
            throw new AssertionError("cannot run tests/cluster/up: " + e, e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new AssertionError("interrupted while waiting for tests/cluster/up", e);
        }
        if (!result.ok()) {
            throw new AssertionError("tests/cluster/up failed (exit " + result.exitCode() + "); log " + log + ":\n"
                    + tail(log, 60));
        }
        String[] lines = result.stdout().strip().split("\n");
        Path kubeconfig = Path.of(lines[lines.length - 1].strip());
        if (!Files.isReadable(kubeconfig)) {
            throw new AssertionError("tests/cluster/up printed no readable kubeconfig path: " + result.stdout());
        }
        System.err.printf("ClusterExtension: local cluster ready in %ds: KUBECONFIG=%s%n",
                Duration.between(start, Instant.now()).toSeconds(), kubeconfig);
        if (!wasRunning && "true".equalsIgnoreCase(System.getenv("KDLV_CLUSTER_STOP"))) {
            Runtime.getRuntime().addShutdownHook(new Thread(() -> Cluster.run(
                    List.of(root.resolve("tests/cluster/down").toString()), null, Duration.ofMinutes(2), Map.of())));
        }
        Path clusterEnv = stateDir().resolve("cluster.env");
        Optional<Path> socket = envValue(clusterEnv, "CONTAINERD_SOCKET").map(Path::of);
        Path kubectl = envValue(clusterEnv, "BIN").map(b -> Path.of(b, "kubectl")).filter(Files::isExecutable)
                .orElseGet(() -> kubectl(root));
        return new Cluster(kubeconfig, kubectl, socket, "local", root);
    }

    /** Testcontainers' k3s, reflectively: the module is optional (not on the runner's class path by default). */
    private static Cluster startK3s(Path root) {
        String image = System.getenv().getOrDefault("KDLV_K3S_IMAGE", "rancher/k3s:v1.34.1-k3s1");
        try {
            Class<?> imageName = Class.forName("org.testcontainers.utility.DockerImageName");
            Object parsed = imageName.getMethod("parse", String.class).invoke(null, image);
            Class<?> k3sClass = Class.forName("org.testcontainers.k3s.K3sContainer");
            Object k3s = k3sClass.getConstructor(imageName).newInstance(parsed);
            k3sClass.getMethod("start").invoke(k3s);
            Runtime.getRuntime().addShutdownHook(new Thread(() -> {
                try {
                    k3sClass.getMethod("stop").invoke(k3s);
                } catch (ReflectiveOperationException ignored) {
                    // Testcontainers' own reaper removes it
                }
            }));
            String yaml = (String) k3sClass.getMethod("getKubeConfigYaml").invoke(k3s);
            Path kubeconfig = Files.createTempFile("kdlv-k3s-", ".kubeconfig");
            Files.writeString(kubeconfig, yaml);
            kubeconfig.toFile().deleteOnExit();
            return new Cluster(kubeconfig, kubectl(root), Optional.empty(), "k3s", root);
        } catch (ReflectiveOperationException | IOException e) {
            Throwable cause = e instanceof java.lang.reflect.InvocationTargetException ite ? ite.getCause() : e;
            throw new AssertionError("k3s (" + image + ") through Testcontainers failed: " + cause, cause);
        }
    }

    // ---- cheap checks ----------------------------------------------------------------------------------------

    private static Optional<String> localUnavailableReason() {
        if (!System.getProperty("os.name", "").toLowerCase().contains("linux")) return Optional.of("needs Linux");
        Path root;
        try {
            root = repoRoot();
        } catch (IllegalStateException e) {
            return Optional.of(e.getMessage());
        }
        if (!Files.isExecutable(root.resolve("tests/cluster/up"))) return Optional.of("tests/cluster/up missing");
        if (!isRoot()) return Optional.of("needs root (kubelet/containerd/runc)");
        List<String> missing = new ArrayList<>();
        String[][] needs = {{"containerd", "containerd"}, {"ctr", "containerd"}, {"runc", "runc"},
            {"etcd", "etcd-server"}, {"openssl", "openssl"}, {"iptables", "iptables"}, {"conntrack", "conntrack"},
            {"socat", "socat"}, {"busybox", "busybox-static"}, {"curl", "curl"}};
        for (String[] need : needs) {
            if (onPath(need[0]).isEmpty()) missing.add(need[0] + " (apt-get install " + need[1] + ")");
        }
        if (!Files.isExecutable(Path.of("/usr/lib/cni/bridge"))) {
            missing.add("CNI plugins (apt-get install containernetworking-plugins)");
        }
        if (!localBinariesBuilt() && onPath("go").isEmpty() && !Files.isExecutable(Path.of("/usr/local/go/bin/go"))) {
            missing.add("go (to build Kubernetes once)");
        }
        return missing.isEmpty() ? Optional.empty()
                : Optional.of("missing " + String.join(", ", missing) + " - run tests/setup");
    }

    private static Optional<String> k3sUnavailableReason() {
        try {
            Class.forName("org.testcontainers.k3s.K3sContainer");
        } catch (ClassNotFoundException e) {
            return Optional.of("Testcontainers' k3s module is not on the class path");
        }
        try {
            Class<?> factory = Class.forName("org.testcontainers.DockerClientFactory");
            Object instance = factory.getMethod("instance").invoke(null);
            boolean docker = (boolean) factory.getMethod("isDockerAvailable").invoke(instance);
            return docker ? Optional.empty() : Optional.of("no Docker engine for Testcontainers");
        } catch (ReflectiveOperationException | RuntimeException e) {
            return Optional.of("Testcontainers cannot check for Docker: " + e);
        }
    }

    private static boolean localRunning() {
        return stateDir().resolve("cluster.env").toFile().isFile()
                && Cluster.read(stateDir().resolve("pids/kube-apiserver.pid")).isPresent();
    }

    private static boolean localBinariesBuilt() {
        try (var versions = Files.list(cacheDir().resolve("k8s"))) {
            return versions.anyMatch(v -> Files.isRegularFile(v.resolve("bin/.complete")));
        } catch (IOException e) {
            return false;
        }
    }

    private static boolean isRoot() {
        return Cluster.read(Path.of("/proc/self/status")).map(s -> s.lines()
                .filter(l -> l.startsWith("Uid:")).anyMatch(l -> l.split("\\s+")[1].equals("0"))).orElse(false);
    }

    // ---- paths -----------------------------------------------------------------------------------------------

    /** The repository root: system property kdlv.root, else the first parent of the working dir with tests/cluster. */
    static Path repoRoot() {
        String property = System.getProperty("kdlv.root");
        if (property != null && !property.isBlank()) return Path.of(property).toAbsolutePath();
        for (Path dir = Path.of("").toAbsolutePath(); dir != null; dir = dir.getParent()) {
            if (Files.isDirectory(dir.resolve("tests/cluster"))) return dir;
        }
        throw new IllegalStateException("cannot find the repository root (no tests/cluster above "
                + Path.of("").toAbsolutePath() + "); set -Dkdlv.root=...");
    }

    static Path cacheDir() {
        String env = System.getenv("KDLV_CACHE");
        return env != null && !env.isBlank() ? Path.of(env) : Path.of(System.getProperty("user.home"), ".cache", "kdlv");
    }

    static Path stateDir() {
        String env = System.getenv("KDLV_CLUSTER_DIR");
        return env != null && !env.isBlank() ? Path.of(env) : cacheDir().resolve("cluster");
    }

    /** kubectl: $KDLV_CACHE/bin/kubectl (linked by tests/cluster/up --build-only), else the PATH's. */
    private static Path kubectl(Path root) {
        Path cached = cacheDir().resolve("bin/kubectl");
        if (Files.isExecutable(cached)) return cached;
        return onPath("kubectl").orElse(Path.of("kubectl"));
    }

    /** A command on PATH, or in /usr/sbin or /sbin (root's tools, not always on a user's PATH). */
    private static Optional<Path> onPath(String name) {
        for (String dir : (System.getenv().getOrDefault("PATH", "") + ":/usr/sbin:/sbin").split(":")) {
            if (dir.isEmpty()) continue;
            Path candidate = Path.of(dir, name);
            if (Files.isExecutable(candidate)) return Optional.of(candidate);
        }
        return Optional.empty();
    }

    private static Optional<String> envValue(Path file, String key) {
        return Cluster.read(file).flatMap(s -> s.lines().filter(l -> l.startsWith(key + "="))
                .map(l -> l.substring(key.length() + 1).replace("\"", "")).findFirst());
    }

    private static String tail(Path file, int lines) {
        List<String> all = Cluster.read(file).map(s -> s.lines().toList()).orElse(List.of());
        return String.join("\n", all.subList(Math.max(0, all.size() - lines), all.size()));
    }
}
