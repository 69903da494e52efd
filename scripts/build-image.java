///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//SOURCES lib/*.java
//FILES kdlv/debug-image/Dockerfile=../debug-image/Dockerfile
//FILES kdlv/debug-image/nc/go.mod=../debug-image/nc/go.mod
//FILES kdlv/debug-image/nc/main.go=../debug-image/nc/main.go
//FILES kdlv/debug-image/kdlv-attach/go.mod=../debug-image/kdlv-attach/go.mod
//FILES kdlv/debug-image/kdlv-attach/main.go=../debug-image/kdlv-attach/main.go
//DESCRIPTION Build the debug image (Delve + netcat) for the target's CPU architecture and Go version, without a Docker daemon.

import com.google.cloud.tools.jib.api.Containerizer;
import com.google.cloud.tools.jib.api.Credential;
import com.google.cloud.tools.jib.api.CredentialRetriever;
import com.google.cloud.tools.jib.api.DescriptorDigest;
import com.google.cloud.tools.jib.api.ImageReference;
import com.google.cloud.tools.jib.api.InsecureRegistryException;
import com.google.cloud.tools.jib.api.InvalidImageReferenceException;
import com.google.cloud.tools.jib.api.Jib;
import com.google.cloud.tools.jib.api.JibContainer;
import com.google.cloud.tools.jib.api.JibContainerBuilder;
import com.google.cloud.tools.jib.api.LogEvent;
import com.google.cloud.tools.jib.api.RegistryAuthenticationFailedException;
import com.google.cloud.tools.jib.api.RegistryException;
import com.google.cloud.tools.jib.api.RegistryImage;
import com.google.cloud.tools.jib.api.RegistryUnauthorizedException;
import com.google.cloud.tools.jib.api.TarImage;
import com.google.cloud.tools.jib.api.buildplan.AbsoluteUnixPath;
import com.google.cloud.tools.jib.api.buildplan.FileEntriesLayer;
import com.google.cloud.tools.jib.api.buildplan.FilePermissions;
import com.google.cloud.tools.jib.api.buildplan.ImageFormat;
import com.google.cloud.tools.jib.api.buildplan.Platform;
import com.google.cloud.tools.jib.event.EventHandlers;
import com.google.cloud.tools.jib.frontend.CredentialRetrieverFactory;
import com.google.cloud.tools.jib.hash.Digests;
import com.google.cloud.tools.jib.http.FailoverHttpClient;
import com.google.cloud.tools.jib.image.json.BuildableManifestTemplate;
import com.google.cloud.tools.jib.image.json.ManifestTemplate;
import com.google.cloud.tools.jib.image.json.V22ManifestListTemplate;
import com.google.cloud.tools.jib.registry.ManifestAndDigest;
import com.google.cloud.tools.jib.registry.RegistryClient;
import io.kubernetes.client.openapi.ApiException;
import io.kubernetes.client.openapi.apis.CoreV1Api;
import io.kubernetes.client.openapi.models.V1Node;
import io.kubernetes.client.openapi.models.V1Pod;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintWriter;
import java.io.RandomAccessFile;
import java.net.ConnectException;
import java.net.InetAddress;
import java.net.NoRouteToHostException;
import java.net.SocketTimeoutException;
import java.net.UnknownHostException;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.FileSystemException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import javax.net.ssl.SSLException;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

/**
 * The article's "Debug image" step: an image holding Delve and netcat, built for the target node's CPU
 * architecture with a Delve that supports the target's Go version. By default Jib assembles it from a
 * statically built Delve and nc on top of scratch, with no Docker daemon; --builder runs the article's way.
 */
@Command(name = "build-image", mixinStandardHelpOptions = true, sortOptions = false,
        description = {"Build the debug image (Delve + netcat) for the target's CPU architecture and Go version, without a Docker daemon.",
                "",
                "Delve and nc are built statically with your Go toolchain (cached in ${KDLV_CACHE:-~/.cache/kdlv})"
                        + " and put in /usr/local/bin of a scratch image; Jib writes it to a registry (--push) or an archive (--tar)."},
        footer = {"", "Examples:",
                "  build-image --tar debugger.tar            (amd64, newest Delve, kdlv/debugger:v1.27.2)",
                "  build-image --for-pod web-7f9 --go-version 1.25 --push registry.example.com/team/debugger:1",
                "  build-image --arch amd64,arm64 --insecure --push 127.0.0.1:5000/kdlv/debugger:v1",
                "  build-image --dry-run --arch arm64        (what would be built, and the manual commands)",
                "",
                "Exit codes: 0 ok, 2 bad input, 5 Delve version not found, 6 registry refused the credentials,"
                        + " 8 registry unreachable, 9 unsupported Go/Delve pair, 16 Go toolchain (or builder) missing, 17 file not writable."})
class BuildImage implements Callable<Integer> {
    static final String DEFAULT_IMAGE = "kdlv/debugger";
    static final String DELVE_MODULE = "github.com/go-delve/delve";
    static final String BIN_DIR = "/usr/local/bin";
    static final String PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    /**
     * Which Go versions each Delve release supports: MinSupportedVersionOfGoMinor and
     * MaxSupportedVersionOfGoMinor (Go 1.x) in pkg/goversion/compat.go of each release tag of
     * github.com/go-delve/delve (read for v1.20.0 to v1.27.2). Newest first. Used to pick a Delve for
     * --go-version; the compat.go of the module actually downloaded has the last word.
     */
    static final List<DelveRelease> DELVE_RELEASES = List.of(
            new DelveRelease("v1.27.2", 25, 27), new DelveRelease("v1.27.1", 25, 27), new DelveRelease("v1.27.0", 25, 27),
            new DelveRelease("v1.26.3", 24, 26), new DelveRelease("v1.26.2", 24, 26), new DelveRelease("v1.26.1", 24, 26),
            new DelveRelease("v1.26.0", 24, 26),
            new DelveRelease("v1.25.2", 22, 25), new DelveRelease("v1.25.1", 22, 25), new DelveRelease("v1.25.0", 21, 24),
            new DelveRelease("v1.24.2", 21, 24), new DelveRelease("v1.24.1", 21, 24), new DelveRelease("v1.24.0", 21, 24),
            new DelveRelease("v1.23.1", 21, 23), new DelveRelease("v1.23.0", 21, 23),
            new DelveRelease("v1.22.1", 19, 22), new DelveRelease("v1.22.0", 19, 22),
            new DelveRelease("v1.21.2", 19, 21), new DelveRelease("v1.21.1", 19, 21), new DelveRelease("v1.21.0", 18, 21),
            new DelveRelease("v1.20.2", 18, 20), new DelveRelease("v1.20.1", 18, 20), new DelveRelease("v1.20.0", 18, 20));

    /** CPU architectures (GOARCH names) Delve runs on under Linux, with the ELF e_machine of each. */
    static final Map<String, Integer> ARCHES = Map.of("amd64", 62, "arm64", 183, "ppc64le", 21);

    @Option(names = "--arch", split = ",", paramLabel = "ARCH",
            description = "Target CPU architecture(s): amd64, arm64, ppc64le; several (--arch amd64,arm64) give a multi-platform image index. Default: --for-pod's node, else amd64.")
    List<String> arch = new ArrayList<>();

    @Option(names = "--for-pod", paramLabel = "POD", description = "Build for the CPU architecture of the node that runs POD (reads node.status.nodeInfo.architecture).")
    String forPod;

    @Mixin KubeOptions kube;

    @Option(names = "--delve-version", paramLabel = "VERSION", description = "The Delve release to build, e.g. v1.27.2 (default: the newest that supports --go-version, else the newest: v1.27.2).")
    String delveVersion;

    @Option(names = "--go-version", paramLabel = "1.N", description = "The Go version the target was built with: picks the newest Delve that supports it, and refuses a --delve-version that does not.")
    String goVersion;

    @Option(names = "--dlv-binary", paramLabel = "FILE", description = "Use this static Linux dlv instead of building one (no Go toolchain needed for Delve). One --arch only.")
    Path dlvBinary;

    @Option(names = "--nc-binary", paramLabel = "FILE", description = "Use this static Linux nc instead of building debug-image/nc. One --arch only.")
    Path ncBinary;

    @Option(names = "--add", paramLabel = "FILE", description = "Also put FILE in /usr/local/bin (repeatable), e.g. a helper binary for the target architecture.")
    List<Path> add = new ArrayList<>();

    @Option(names = "--base", paramLabel = "IMAGE", defaultValue = "scratch",
            description = "Base image: scratch (default), a registry image (e.g. gcr.io/distroless/static-debian12), or tar:FILE (an image archive).")
    String base;

    @Option(names = "--push", paramLabel = "REGISTRY/REPO:TAG", description = "Push the image to a registry, with the credentials of your docker config and credential helpers.")
    String push;

    @Option(names = "--tar", paramLabel = "FILE", description = "Write an image archive: for one --arch a docker-archive (docker load, podman load, kind load image-archive, ctr images import); for several an OCI archive with an image index (ctr images import --all-platforms, podman load, skopeo).")
    Path tar;

    @Option(names = "--image", paramLabel = "NAME:TAG", description = "The image name recorded in the --tar archive (default: " + DEFAULT_IMAGE + ":<delve version>).")
    String image;

    @Option(names = "--insecure", description = "Allow a plain-HTTP or self-signed registry; credentials go over plain HTTP only to a loopback registry.")
    boolean insecure;

    @Option(names = "--registry-auth", paramLabel = "FILE", description = "Registry credentials file (docker config.json or containers auth.json format); default: $REGISTRY_AUTH_FILE, then the docker config and credential helpers.")
    Path registryAuth;

    @Option(names = "--builder", paramLabel = "BUILDER", defaultValue = "jib",
            description = "jib (default, no daemon), or docker, podman, buildah: build debug-image/Dockerfile with that tool, as the article does.")
    String builder;

    @Option(names = "--dry-run", description = "Print what would be built and the equivalent manual commands, and build nothing.")
    boolean dryRun;

    @Mixin VerboseOption verbose;

    @Spec CommandSpec spec;

    record DelveRelease(String version, int minGo, int maxGo) {
        boolean supports(int goMinor) {
            return goMinor >= minGo && goMinor <= maxGo;
        }

        String range() {
            return "Go 1." + minGo + " to 1." + maxGo;
        }
    }

    /** The binaries of one architecture's image. */
    record Binaries(String arch, Path dlv, Optional<Path> nc, Optional<Path> kdlvAttach) {}

    public static void main(String... args) {
        Cli.main(new BuildImage(), args);
    }

    @Override
    public Integer call() throws Exception {
        checkOutputs();
        List<String> arches = targetArches();
        String delve = pickDelve();
        String name = imageName(delve);
        if (dryRun) {
            printPlan(arches, delve, name);
            return ExitCode.OK;
        }
        if (!builder.equals("jib")) return new ToolBuilder(builder, this).build(arches, delve, name);

        for (Path extra : add) if (isElf(extra)) checkElf(extra, arches.get(0), "--add");
        if (push != null) checkRegistry(parseReference(name, "--push"));
        List<Binaries> binaries = new ArrayList<>();
        for (String a : arches) binaries.add(new Binaries(a, dlvFor(a, delve), ncFor(a), kdlvAttachFor(a)));
        Result result = tar != null ? writeTar(binaries, delve, name) : push(binaries, delve, name);
        PrintWriter out = spec.commandLine().getOut();
        out.println(result.reference);
        out.printf("platforms: %s%n", arches.stream().map(a -> "linux/" + a).collect(Collectors.joining(",")));
        out.printf("size: %s uncompressed%s, %s compressed%s%n", megabytes(result.uncompressed),
                base.equals("scratch") ? "" : " (without the base image)", megabytes(result.compressed),
                result.where == null ? "" : " (" + result.where + ")");
        out.flush();
        return ExitCode.OK;
    }

    // ---- What to build -------------------------------------------------------------------------------------

    private void checkOutputs() {
        if (!List.of("jib", "docker", "podman", "buildah").contains(builder)) {
            throw new ExitException(ExitCode.USAGE, "unknown builder '" + builder + "': use jib (default), docker, podman or buildah");
        }
        if (!dryRun && (push == null) == (tar == null)) {
            throw new ExitException(ExitCode.USAGE, "say where the image goes: --push REGISTRY/REPO:TAG or --tar FILE (exactly one of them), or --dry-run");
        }
        if (push != null) parseReference(push, "--push");
        if (image != null) parseReference(image, "--image");
        if (image != null && push != null) {
            throw new ExitException(ExitCode.USAGE, "--image names the image inside a --tar archive; with --push the name is the --push reference: drop --image");
        }
        if (forPod != null && !arch.isEmpty()) {
            throw new ExitException(ExitCode.USAGE, "--for-pod and --arch both choose the architecture: pass only one of them");
        }
        List<Path> inputs = new ArrayList<>(add);
        if (dlvBinary != null) inputs.add(dlvBinary);
        if (ncBinary != null) inputs.add(ncBinary);
        for (Path file : inputs) {
            if (!Files.isRegularFile(file)) {
                throw new ExitException(ExitCode.LOCAL_FILE, file + " does not exist or is not a file; check the --dlv-binary/--nc-binary/--add path");
            }
        }
        if (tar != null && !dryRun) checkWritable(tar);
    }

    private List<String> targetArches() {
        List<String> wanted = new ArrayList<>();
        if (forPod != null) wanted.add(nodeArchitecture(forPod));
        for (String a : arch) wanted.add(normalizeArch(a));
        if (wanted.isEmpty()) wanted.add("amd64");
        List<String> arches = new ArrayList<>(new LinkedHashSet<>(wanted));
        if (arches.size() > 1 && (dlvBinary != null || ncBinary != null || !add.isEmpty())) {
            throw new ExitException(ExitCode.USAGE, "--dlv-binary/--nc-binary/--add hold one architecture: pass one --arch");
        }
        return arches;
    }

    static String normalizeArch(String a) {
        String arch = a.strip().toLowerCase(Locale.ROOT);
        arch = switch (arch) {
            case "x86_64", "x86-64", "linux/amd64" -> "amd64";
            case "aarch64", "arm64/v8", "linux/arm64", "linux/arm64/v8" -> "arm64";
            case "linux/ppc64le" -> "ppc64le";
            default -> arch;
        };
        if (!ARCHES.containsKey(arch)) {
            throw new ExitException(ExitCode.USAGE, "unknown architecture '" + a + "': Delve runs on linux "
                    + String.join(", ", new java.util.TreeSet<>(ARCHES.keySet())) + "; pass one of them to --arch");
        }
        return arch;
    }

    /** pod -> spec.nodeName -> node.status.nodeInfo.architecture, as the kubelet reports it (a GOARCH name). */
    private String nodeArchitecture(String pod) {
        Kube cluster = kube.kube();
        CoreV1Api core = new CoreV1Api(cluster.client);
        V1Pod target;
        try {
            target = core.readNamespacedPod(pod, cluster.namespace).execute();
        } catch (ApiException e) {
            throw Kube.failure("reading pod " + cluster.namespace + "/" + pod, e);
        }
        String nodeName = target.getSpec() == null ? null : target.getSpec().getNodeName();
        if (nodeName == null || nodeName.isEmpty()) {
            throw new ExitException(ExitCode.STATE, "pod " + cluster.namespace + "/" + pod + " is not scheduled on a node yet;"
                    + " wait until it runs, or pass --arch");
        }
        V1Node node;
        try {
            node = core.readNode(nodeName).execute();
        } catch (ApiException e) {
            if (e.getCode() == 403) {
                throw new ExitException(ExitCode.FORBIDDEN, "reading node " + nodeName + " of pod " + pod
                        + " is forbidden (RBAC: get nodes); pass --arch (kubectl get node " + nodeName + " -o jsonpath='{.status.nodeInfo.architecture}')", e);
            }
            throw Kube.failure("reading node " + nodeName, e);
        }
        String arch = node.getStatus() == null || node.getStatus().getNodeInfo() == null ? null
                : node.getStatus().getNodeInfo().getArchitecture();
        if (arch == null) throw new ExitException(ExitCode.STATE, "node " + nodeName + " reports no architecture; pass --arch");
        progress("pod " + pod + " runs on node " + nodeName + ": linux/" + arch);
        return normalizeArch(arch);
    }

    /** --delve-version, else the newest release that supports --go-version, else the newest release. */
    private String pickDelve() {
        Integer goMinor = goVersion == null ? null : goMinor(goVersion);
        if (delveVersion != null) {
            String version = delveVersion.startsWith("v") ? delveVersion : "v" + delveVersion;
            if (!version.matches("v\\d+\\.\\d+\\.\\d+(-[0-9A-Za-z.-]+)?")) {
                throw new ExitException(ExitCode.USAGE, "--delve-version " + delveVersion + " is not a release version like v1.27.2");
            }
            if (goMinor != null) {
                release(version).ifPresent(r -> {
                    if (!r.supports(goMinor)) throw unsupportedPair(version, r, goMinor);
                });
            }
            return version;
        }
        if (goMinor == null) return DELVE_RELEASES.get(0).version();
        for (DelveRelease r : DELVE_RELEASES) {
            if (r.supports(goMinor)) return r.version();
        }
        DelveRelease newest = DELVE_RELEASES.get(0);
        DelveRelease oldest = DELVE_RELEASES.get(DELVE_RELEASES.size() - 1);
        throw new ExitException(ExitCode.UNSUPPORTED, "no Delve release supports Go 1." + goMinor + ": Delve " + oldest.version()
                + " to " + newest.version() + " cover Go 1." + oldest.minGo() + " to 1." + newest.maxGo()
                + (goMinor > newest.maxGo() ? "; a newer Delve may: pass --delve-version" : "; rebuild the target with a newer Go"));
    }

    static Optional<DelveRelease> release(String version) {
        return DELVE_RELEASES.stream().filter(r -> r.version().equals(version)).findFirst();
    }

    static ExitException unsupportedPair(String version, DelveRelease r, int goMinor) {
        String better = DELVE_RELEASES.stream().filter(x -> x.supports(goMinor)).map(DelveRelease::version).findFirst()
                .map(v -> "; use --delve-version " + v + " (or drop --delve-version)").orElse("; no Delve release supports it");
        return new ExitException(ExitCode.UNSUPPORTED, "Delve " + version + " supports " + r.range() + ", not Go 1." + goMinor + better);
    }

    static int goMinor(String goVersion) {
        Matcher m = Pattern.compile("(?:go)?1\\.(\\d+)(?:\\.\\d+|rc\\d+|beta\\d+)?").matcher(goVersion.strip());
        if (!m.matches()) throw new ExitException(ExitCode.USAGE, "--go-version " + goVersion + " is not a Go version like 1.25 or 1.25.3");
        return Integer.parseInt(m.group(1));
    }

    private String imageName(String delve) {
        if (push != null) return push;
        return image != null ? image : DEFAULT_IMAGE + ":" + delve;
    }

    // ---- Delve and nc ----------------------------------------------------------------------------------------

    /** A static Linux dlv for one architecture: --dlv-binary, else `go install` into the cache (built once). */
    private Path dlvFor(String arch, String delve) throws IOException, InterruptedException {
        if (dlvBinary != null) {
            checkElf(dlvBinary, arch, "--dlv-binary");
            return dlvBinary;
        }
        Go go = Go.find().orElseThrow(() -> new ExitException(ExitCode.TOOL_MISSING, "no Go toolchain to build Delve (no 'go' on PATH"
                + " or in /usr/local/go/bin): install Go, or pass --dlv-binary FILE with a static linux/" + arch + " dlv"));
        Path gopath = cache().resolve("delve").resolve(delve).resolve(go.version()).resolve("linux_" + arch + "-stripped");
        Path built = gopath.resolve("bin").resolve("dlv");
        Path cross = gopath.resolve("bin").resolve("linux_" + arch).resolve("dlv");
        if (goVersion == null || release(delve).isPresent()) {
            Optional<Path> cached = Files.isRegularFile(cross) ? Optional.of(cross) : Files.isRegularFile(built) ? Optional.of(built) : Optional.empty();
            if (cached.isPresent()) {
                progress("Delve " + delve + " linux/" + arch + ": cached " + cached.get());
                return cached.get();
            }
        }
        Path module = go.download(DELVE_MODULE + "@" + delve, cache());
        checkCompat(module, delve);
        progress("building Delve " + delve + " for linux/" + arch + " with " + go.version() + " ...");
        long start = System.nanoTime();
        go.run(Map.of("GOPATH", gopath.toString(), "GOARCH", arch), cache(), "install", "-trimpath", "-ldflags=-s -w", DELVE_MODULE + "/cmd/dlv@" + delve);
        Path result = Files.isRegularFile(cross) ? cross : built;
        if (!Files.isRegularFile(result)) throw new ExitException(ExitCode.FAILURE, "go install reported success but left no dlv in " + gopath.resolve("bin"));
        progress(String.format(Locale.ROOT, "built %s in %.1f s", result, (System.nanoTime() - start) / 1e9));
        return result;
    }

    /** The downloaded module's pkg/goversion/compat.go has the last word on the Go versions it supports. */
    private void checkCompat(Path module, String delve) throws IOException {
        if (goVersion == null) return;
        Path compat = module.resolve("pkg/goversion/compat.go");
        if (!Files.isRegularFile(compat)) return;
        String text = Files.readString(compat);
        Matcher min = Pattern.compile("MinSupportedVersionOfGoMinor\\s*=\\s*(\\d+)").matcher(text);
        Matcher max = Pattern.compile("MaxSupportedVersionOfGoMinor\\s*=\\s*(\\d+)").matcher(text);
        if (!min.find() || !max.find()) return;
        DelveRelease r = new DelveRelease(delve, Integer.parseInt(min.group(1)), Integer.parseInt(max.group(1)));
        int goMinor = goMinor(goVersion);
        if (!r.supports(goMinor)) throw unsupportedPair(delve, r, goMinor);
    }

    /** A static Linux nc for one architecture: --nc-binary, else debug-image/nc built with Go, else none. */
    private Optional<Path> ncFor(String arch) throws IOException, InterruptedException {
        if (ncBinary != null) {
            checkElf(ncBinary, arch, "--nc-binary");
            return Optional.of(ncBinary);
        }
        Optional<Path> nc = ownTool("nc", arch);
        if (nc.isEmpty()) {
            progress(Cli.yellow("warning: no Go toolchain to build nc: the image has no nc. The article's exec tunnel needs it"
                    + " (port-forward does not); pass --nc-binary FILE to add one"));
        }
        return nc;
    }

    /** kdlv-attach (debug-image/kdlv-attach), which finds the target's Go process for attach; none without Go. */
    private Optional<Path> kdlvAttachFor(String arch) throws IOException, InterruptedException {
        if (dlvBinary != null && ncBinary != null) return Optional.empty(); // no Go build wanted: --add FILE brings it
        Optional<Path> tool = ownTool("kdlv-attach", arch);
        if (tool.isEmpty()) {
            progress(Cli.yellow("warning: no Go toolchain to build kdlv-attach: with this image, attach needs --pid N"));
        }
        return tool;
    }

    /** One of kdlv's own Go programs under debug-image/, built static for one architecture and cached; none without Go. */
    private Optional<Path> ownTool(String tool, String arch) throws IOException, InterruptedException {
        Optional<Go> go = Go.find();
        if (go.isEmpty()) return Optional.empty();
        Path source = DebugImageSources.extract(cache());
        Path out = cache().resolve(tool).resolve(source.getFileName().toString()).resolve(go.get().version()).resolve("linux_" + arch + "-stripped").resolve(tool);
        if (Files.isRegularFile(out)) return Optional.of(out);
        go.get().run(Map.of("GOARCH", arch), cache(), source.resolve(tool),
                "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", out.toString(), ".");
        return Optional.of(out);
    }

    static boolean isElf(Path file) throws IOException {
        try (InputStream in = Files.newInputStream(file)) {
            byte[] magic = in.readNBytes(4);
            return magic.length == 4 && magic[0] == 0x7f && magic[1] == 'E' && magic[2] == 'L' && magic[3] == 'F';
        }
    }

    /** Refuses a binary for another CPU: the pod would fail with "exec format error". */
    static void checkElf(Path file, String arch, String option) throws IOException {
        byte[] header = new byte[20];
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "r")) {
            if (f.read(header) < header.length || header[0] != 0x7f || header[1] != 'E' || header[2] != 'L' || header[3] != 'F') {
                throw new ExitException(ExitCode.USAGE, option + " " + file + " is not a Linux executable (no ELF header)");
            }
        }
        int machine = (header[18] & 0xff) | (header[19] & 0xff) << 8;
        if (machine != ARCHES.get(arch)) {
            String actual = ARCHES.entrySet().stream().filter(e -> e.getValue() == machine).map(Map.Entry::getKey).findFirst().orElse("ELF machine " + machine);
            throw new ExitException(ExitCode.USAGE, option + " " + file + " is a " + actual + " binary, not linux/" + arch
                    + " (the pod would fail with 'exec format error'); pass a " + arch + " binary or --arch " + actual);
        }
    }

    // ---- The image -----------------------------------------------------------------------------------------

    /** One architecture's image: the base plus a layer with dlv and nc in /usr/local/bin, no entrypoint. */
    private JibContainerBuilder container(Binaries b, String delve) throws IOException {
        JibContainerBuilder container = baseImage();
        FilePermissions executable = FilePermissions.fromOctalString("755");
        FileEntriesLayer.Builder tools = FileEntriesLayer.builder().setName("delve and nc")
                .addEntry(b.dlv(), AbsoluteUnixPath.get(BIN_DIR + "/dlv"), executable);
        b.nc().ifPresent(nc -> tools.addEntry(nc, AbsoluteUnixPath.get(BIN_DIR + "/nc"), executable));
        b.kdlvAttach().ifPresent(tool -> tools.addEntry(tool, AbsoluteUnixPath.get(BIN_DIR + "/kdlv-attach"), executable));
        for (Path extra : add) tools.addEntry(extra, AbsoluteUnixPath.get(BIN_DIR + "/" + extra.getFileName()), executable);
        return container
                .setPlatforms(Set.of(new Platform(b.arch(), "linux")))
                .setFormat(ImageFormat.Docker)
                .addFileEntriesLayer(tools.build())
                .setEnvironment(Map.of("PATH", PATH_ENV))
                .setProgramArguments("dlv", "version")
                .setLabels(new java.util.TreeMap<>(Map.of(
                        "org.opencontainers.image.title", "kdlv debugger",
                        "org.opencontainers.image.description", "Delve " + delve + ", nc and kdlv-attach for kubectl debug; run dlv attach or kdlv-attach explicitly",
                        "io.kdlv.delve.version", delve)));
    }

    private JibContainerBuilder baseImage() {
        if (base.equals("scratch")) return Jib.fromScratch();
        try {
            if (base.startsWith("tar:")) {
                Path file = Path.of(base.substring(4));
                if (!Files.isRegularFile(file)) throw new ExitException(ExitCode.LOCAL_FILE, "base image archive " + file + " does not exist");
                return Jib.from(TarImage.at(file));
            }
            ImageReference reference = ImageReference.parse(base);
            RegistryImage image = RegistryImage.named(reference);
            credentials(reference).forEach(image::addCredentialRetriever);
            return Jib.from(image);
        } catch (InvalidImageReferenceException e) {
            throw new ExitException(ExitCode.USAGE, "--base " + base + " is not an image reference: use scratch, REGISTRY/REPO:TAG or tar:FILE");
        }
    }

    record Result(String reference, long uncompressed, long compressed, String where) {}

    /**
     * Writes the archive next to FILE and moves it into place only when complete: a docker-archive for one
     * architecture, an OCI image layout with an image index for several.
     */
    private Result writeTar(List<Binaries> binaries, String delve, String name) throws Exception {
        Path target = tar.toAbsolutePath();
        Path temp = partialFile(target);
        List<Path> parts = new ArrayList<>();
        try {
            String where;
            if (binaries.size() == 1) {
                JibContainer built = containerize(container(binaries.get(0), delve), Containerizer.to(TarImage.at(temp).named(name)), "writing " + target);
                // A loader (docker load, ctr import) writes its own manifest, so the image id (the config's digest) is what stays.
                where = target + ", image id " + built.getImageId();
            } else {
                Map<String, Path> perArch = new LinkedHashMap<>();
                for (Binaries b : binaries) {
                    Path part = partialFile(target);
                    parts.add(part);
                    containerize(container(b, delve).setFormat(ImageFormat.OCI), Containerizer.to(TarImage.at(part).named(name)),
                            "writing linux/" + b.arch() + " of " + target);
                    perArch.put(b.arch(), part);
                }
                where = target + ", OCI image index " + OciArchive.merge(perArch, parseReference(name, "--image"), temp);
            }
            try {
                Files.move(temp, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            } catch (IOException e) {
                throw notWritable(target, e);
            }
            long uncompressed = binaries.stream().mapToLong(this::contentSize).sum();
            return new Result(parseReference(name, "--image").toString(), uncompressed, Files.size(target), where);
        } finally {
            Files.deleteIfExists(temp);
            for (Path part : parts) Files.deleteIfExists(part);
        }
    }

    private static Path partialFile(Path target) {
        try {
            return Files.createTempFile(target.getParent(), "." + target.getFileName(), ".partial",
                    java.nio.file.attribute.PosixFilePermissions.asFileAttribute(java.nio.file.attribute.PosixFilePermissions.fromString("rw-r--r--")));
        } catch (IOException e) {
            throw notWritable(target, e);
        }
    }

    /** Fails fast, before a minute of building, when the registry cannot be reached or refuses the credentials. */
    private void checkRegistry(ImageReference target) {
        if (insecure && isLoopback(target.getRegistry())) System.setProperty("sendCredentialsOverHttp", "true");
        try {
            registryClient(target, credentials(target)).checkManifest(target.getQualifier());
        } catch (ExitException e) {
            throw e;
        } catch (Exception e) {
            throw registryFailure("checking " + target.getRegistry() + "/" + target.getRepository(), e);
        }
    }

    private Result push(List<Binaries> binaries, String delve, String name) throws Exception {
        ImageReference target = parseReference(name, "--push");
        List<CredentialRetriever> credentials = credentials(target);
        if (insecure && isLoopback(target.getRegistry())) System.setProperty("sendCredentialsOverHttp", "true");
        boolean index = binaries.size() > 1;
        Map<String, JibContainer> pushed = new LinkedHashMap<>();
        for (Binaries b : binaries) {
            // Jib puts the same layers on every platform, so each architecture is an image of its own: tagged TAG-ARCH,
            // then an image index under TAG points at them.
            String tag = index ? target.getQualifier() + "-" + b.arch() : target.getQualifier();
            RegistryImage to = RegistryImage.named(target.withQualifier(tag));
            credentials.forEach(to::addCredentialRetriever);
            pushed.put(b.arch(), containerize(container(b, delve), Containerizer.to(to), "pushing " + target.withQualifier(tag)));
        }
        RegistryClient registry = registryClient(target, credentials);
        long compressed = 0;
        V22ManifestListTemplate list = new V22ManifestListTemplate();
        for (Map.Entry<String, JibContainer> entry : pushed.entrySet()) {
            ManifestAndDigest<ManifestTemplate> manifest = registry.pullManifest(entry.getValue().getDigest().toString());
            if (manifest.getManifest() instanceof BuildableManifestTemplate image) {
                compressed += image.getContainerConfiguration().getSize();
                for (var layer : image.getLayers()) compressed += layer.getSize();
            }
            V22ManifestListTemplate.ManifestDescriptorTemplate descriptor = new V22ManifestListTemplate.ManifestDescriptorTemplate();
            descriptor.setMediaType(manifest.getManifest().getManifestMediaType());
            descriptor.setDigest(manifest.getDigest().toString());
            descriptor.setSize(Digests.computeDigest(manifest.getManifest()).getSize());
            descriptor.setPlatform(entry.getKey(), "linux");
            list.addManifest(descriptor);
        }
        DescriptorDigest digest = pushed.values().iterator().next().getDigest();
        if (index) digest = registry.pushManifest(list, target.getQualifier());
        long uncompressed = binaries.stream().mapToLong(this::contentSize).sum();
        return new Result(target.withQualifier(target.getQualifier()) + "@" + digest, uncompressed, compressed,
                index ? "image index of " + pushed.size() + " images" : null);
    }

    private JibContainer containerize(JibContainerBuilder container, Containerizer to, String doing) throws Exception {
        to.setApplicationLayersCache(cache().resolve("jib/layers"))
                .setBaseImageLayersCache(cache().resolve("jib/base"))
                .setAllowInsecureRegistries(insecure)
                .setToolName("kdlv-build-image")
                .addEventHandler(LogEvent.class, this::log);
        progress(doing + " ...");
        try {
            return container.containerize(to);
        } catch (ExecutionException | RegistryException | IOException e) {
            throw registryFailure(doing, e);
        }
    }

    /** One line for a failed push or pull: refused connection, refused credentials, no HTTPS. */
    private ExitException registryFailure(String doing, Exception e) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t instanceof ExitException exit) return exit;
            if (t instanceof RegistryUnauthorizedException unauthorized) {
                return new ExitException(ExitCode.FORBIDDEN, doing + ": the registry refused the credentials for " + unauthorized.getImageReference()
                        + " (HTTP " + unauthorized.getHttpResponseException().getStatusCode() + "); log in (docker login / podman login) or pass --registry-auth FILE", e);
            }
            if (t instanceof RegistryAuthenticationFailedException) {
                return new ExitException(ExitCode.FORBIDDEN, doing + ": registry authentication failed: " + Cli.firstLine(t.getMessage())
                        + "; check your registry login", e);
            }
            if (t.getClass().getSimpleName().equals("RegistryCredentialsNotSentException")) {
                return new ExitException(ExitCode.FORBIDDEN, doing + ": the registry wants credentials, which are not sent over plain HTTP"
                        + " (only to loopback registries with --insecure); serve the registry over HTTPS", e);
            }
            if (t instanceof InsecureRegistryException) {
                return new ExitException(ExitCode.UNREACHABLE, doing + ": the registry does not speak verified HTTPS; for a trusted local registry add --insecure", e);
            }
            if (t instanceof ConnectException || t instanceof NoRouteToHostException) {
                return new ExitException(ExitCode.UNREACHABLE, doing + ": cannot connect to the registry (" + Cli.firstLine(String.valueOf(t.getMessage()))
                        + "); check the registry is up and the address in the reference", e);
            }
            if (t instanceof UnknownHostException) {
                return new ExitException(ExitCode.UNREACHABLE, doing + ": unknown registry host " + t.getMessage() + "; check the reference", e);
            }
            if (t instanceof SocketTimeoutException) {
                return new ExitException(ExitCode.UNREACHABLE, doing + ": the registry did not answer in time; check the address", e);
            }
            if (t instanceof SSLException) {
                return new ExitException(ExitCode.UNREACHABLE, doing + ": TLS with the registry failed (" + Cli.firstLine(String.valueOf(t.getMessage()))
                        + "); for a trusted local registry add --insecure", e);
            }
            if (t instanceof FileSystemException file) {
                String why = t instanceof AccessDeniedException ? "permission denied" : t instanceof java.nio.file.NoSuchFileException ? "no such file"
                        : Cli.firstLine(String.valueOf(file.getReason()));
                return new ExitException(ExitCode.LOCAL_FILE, doing + ": " + file.getFile() + ": " + why
                        + (base.startsWith("tar:") ? "; is --base " + base + " an image archive (docker save / podman save)?" : "; check the paths and the cache " + cache()), e);
            }
        }
        Throwable root = e instanceof ExecutionException && e.getCause() != null ? e.getCause() : e;
        return new ExitException(ExitCode.FAILURE, doing + " failed: " + Cli.firstLine(String.valueOf(root.getMessage()))
                + (verbose.verbose ? "" : " (rerun with -v for details)"), e);
    }

    private RegistryClient registryClient(ImageReference target, List<CredentialRetriever> retrievers) throws Exception {
        EventHandlers events = EventHandlers.builder().add(LogEvent.class, this::log).build();
        FailoverHttpClient http = new FailoverHttpClient(insecure, insecure && isLoopback(target.getRegistry()), this::log);
        Credential credential = null;
        for (CredentialRetriever retriever : retrievers) {
            Optional<Credential> found = retriever.retrieve();
            if (found.isPresent()) {
                credential = found.get();
                break;
            }
        }
        RegistryClient client = RegistryClient.factory(events, target.getRegistry(), target.getRepository(), http)
                .setCredential(credential).newRegistryClient();
        if (!client.doPushBearerAuth() && credential != null && !credential.isOAuth2RefreshToken()) client.configureBasicAuth();
        return client;
    }

    /** --registry-auth, else $REGISTRY_AUTH_FILE, then what docker and Jib use: the docker config and credential helpers. */
    private List<CredentialRetriever> credentials(ImageReference reference) {
        CredentialRetrieverFactory factory = CredentialRetrieverFactory.forImage(reference, this::log);
        List<CredentialRetriever> retrievers = new ArrayList<>();
        Path file = registryAuth;
        String env = System.getenv("REGISTRY_AUTH_FILE");
        if (file == null && env != null && !env.isBlank()) file = Path.of(env);
        if (file != null) {
            if (!Files.isRegularFile(file)) throw new ExitException(ExitCode.LOCAL_FILE, "registry credentials file " + file + " does not exist");
            retrievers.add(factory.dockerConfig(file));
        }
        retrievers.add(factory.dockerConfig());
        retrievers.add(factory.wellKnownCredentialHelpers());
        return retrievers;
    }

    static boolean isLoopback(String registry) {
        String host = registry.startsWith("[") ? registry.substring(1, registry.indexOf(']')) : registry.replaceFirst(":\\d+$", "");
        if (host.equals("localhost")) return true;
        try {
            return host.matches("[0-9.:]+") && InetAddress.getByName(host).isLoopbackAddress();
        } catch (UnknownHostException e) {
            return false;
        }
    }

    static ImageReference parseReference(String reference, String option) {
        try {
            ImageReference parsed = ImageReference.parse(reference);
            if (parsed.getDigest().isPresent()) {
                throw new ExitException(ExitCode.USAGE, option + " " + reference + " names a digest: give a tag (REGISTRY/REPO:TAG)");
            }
            return parsed;
        } catch (InvalidImageReferenceException e) {
            throw new ExitException(ExitCode.USAGE, option + " " + reference + " is not an image reference like registry.example.com/team/debugger:v1");
        }
    }

    private long contentSize(Binaries b) {
        try {
            long size = Files.size(b.dlv()) + (b.nc().isPresent() ? Files.size(b.nc().get()) : 0)
                    + (b.kdlvAttach().isPresent() ? Files.size(b.kdlvAttach().get()) : 0);
            for (Path extra : add) size += Files.size(extra);
            return size;
        } catch (IOException e) {
            return 0;
        }
    }

    // ---- Files, cache, output ------------------------------------------------------------------------------

    static void checkWritable(Path file) {
        Path dir = file.toAbsolutePath().getParent();
        if (Files.isDirectory(file)) throw new ExitException(ExitCode.LOCAL_FILE, "cannot write the image archive " + file + ": it is a directory; name a file");
        if (dir == null || !Files.isDirectory(dir)) {
            throw new ExitException(ExitCode.LOCAL_FILE, "cannot write the image archive " + file + ": directory " + dir + " does not exist; create it or pick another --tar path");
        }
        if (!Files.isWritable(dir)) {
            throw new ExitException(ExitCode.LOCAL_FILE, "cannot write the image archive " + file + ": directory " + dir + " is not writable; pick another --tar path");
        }
    }

    static ExitException notWritable(Path file, IOException e) {
        return new ExitException(ExitCode.LOCAL_FILE, "cannot write the image archive " + file + ": "
                + (e instanceof AccessDeniedException ? "permission denied" : Cli.firstLine(String.valueOf(e.getMessage()))) + "; pick another --tar path", e);
    }

    /** ${KDLV_CACHE:-~/.cache/kdlv}: Delve builds, nc builds, Jib's layer cache. */
    static Path cache() {
        String env = System.getProperty("kdlv.cache", System.getenv("KDLV_CACHE"));
        return env != null && !env.isBlank() ? Path.of(env) : Path.of(System.getProperty("user.home"), ".cache", "kdlv");
    }

    private void log(LogEvent event) {
        if (verbose.verbose && event.getLevel().ordinal() <= LogEvent.Level.INFO.ordinal()) progress("jib: " + event.getMessage());
    }

    /** What the build is doing, on stderr; every such line starts with "build-image: ", errors do not. */
    private void progress(String line) {
        err().println("build-image: " + line);
        err().flush();
    }

    private PrintWriter err() {
        return spec.commandLine().getErr();
    }

    static String megabytes(long bytes) {
        return String.format(Locale.ROOT, "%.1f MB", bytes / 1e6);
    }

    /** --dry-run: the plan, and the commands that do the same by hand (the article's way, with the Dockerfile). */
    private void printPlan(List<String> arches, String delve, String name) {
        PrintWriter out = spec.commandLine().getOut();
        Optional<Go> go = dlvBinary == null ? Go.find() : Optional.empty();
        out.println("would build " + name + " for " + arches.stream().map(a -> "linux/" + a).collect(Collectors.joining(", "))
                + " with " + builder + (tar != null ? " into " + tar : push != null ? " and push it" + (arches.size() > 1 ? " as an image index" : "") : ""));
        out.println("  base:   " + base);
        out.println("  layer:  " + BIN_DIR + "/dlv  " + (dlvBinary != null ? dlvBinary : "Delve " + delve + " built with "
                + go.map(Go::version).orElse("Go (none found: pass --dlv-binary)")) + release(delve).map(r -> " (supports " + r.range() + ")").orElse(""));
        out.println("          " + BIN_DIR + "/nc   " + (ncBinary != null ? ncBinary : "debug-image/nc (kdlv's netcat, exits when either side ends)"));
        out.println("          " + BIN_DIR + "/kdlv-attach  debug-image/kdlv-attach (finds the target's Go process for attach)");
        out.println("  config: PATH=" + PATH_ENV + ", no entrypoint, cmd [dlv version]");
        out.println();
        out.println("manual equivalent (the article's way, with debug-image/Dockerfile):");
        String platforms = arches.stream().map(a -> "linux/" + a).collect(Collectors.joining(","));
        out.println("  docker buildx build --platform " + platforms + " --build-arg DELVE_VERSION=" + delve
                + " -t " + name + (push != null ? " --push" : tar != null ? " --output type=docker,dest=" + tar : " --load") + " debug-image");
        out.println("or without buildx, per architecture:");
        for (String a : arches) {
            out.println("  (cd debug-image && CGO_ENABLED=0 GOOS=linux GOARCH=" + a + " GOPATH=$PWD/.go go install -trimpath -ldflags='-s -w' " + DELVE_MODULE + "/cmd/dlv@" + delve
                    + " && cd nc && CGO_ENABLED=0 GOOS=linux GOARCH=" + a + " go build -trimpath -ldflags='-s -w' -o ../nc-" + a + " ."
                    + " && cd ../kdlv-attach && CGO_ENABLED=0 GOOS=linux GOARCH=" + a + " go build -trimpath -ldflags='-s -w' -o ../kdlv-attach-" + a + " .)");
        }
        out.println("  podman build --platform linux/" + arches.get(0) + " --build-arg DELVE_VERSION=" + delve + " -t " + name + " debug-image");
        if (push != null) out.println("  podman push " + name);
        if (tar != null) out.println("  podman save --format docker-archive -o " + tar + " " + name);
        out.flush();
    }

    /** The Go toolchain that builds Delve and nc: $KDLV_GO (a test hook), else go on PATH, else /usr/local/go/bin/go. */
    record Go(Path binary, String version) {
        static Optional<Go> find() {
            String hook = System.getProperty("kdlv.go", System.getenv("KDLV_GO"));
            List<Path> candidates = new ArrayList<>();
            if (hook != null) {
                candidates.add(Path.of(hook));
            } else {
                String path = System.getenv("PATH");
                if (path != null) for (String dir : path.split(":")) if (!dir.isEmpty()) candidates.add(Path.of(dir, "go"));
                candidates.add(Path.of("/usr/local/go/bin/go"));
            }
            for (Path candidate : candidates) {
                if (Files.isExecutable(candidate) && !Files.isDirectory(candidate)) {
                    try {
                        Process p = new ProcessBuilder(candidate.toString(), "env", "GOVERSION").redirectErrorStream(true).start();
                        String version = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8).strip();
                        if (p.waitFor() == 0 && version.startsWith("go")) return Optional.of(new Go(candidate, version));
                    } catch (IOException e) {
                        // not a working Go: try the next
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        return Optional.empty();
                    }
                }
            }
            return Optional.empty();
        }

        /** `go mod download` of MODULE@VERSION into the cache; the directory of its source. */
        Path download(String moduleAtVersion, Path cache) throws IOException, InterruptedException {
            Output o = exec(Map.of(), cache, null, "mod", "download", "-json", moduleAtVersion);
            Matcher error = Pattern.compile("\"Error\":\\s*\"((?:[^\"\\\\]|\\\\.)*)\"").matcher(o.out);
            if (error.find()) {
                String message = error.group(1).replace("\\n", " ").replace("\\t", " ").replace("\\\"", "\"");
                String version = moduleAtVersion.substring(moduleAtVersion.indexOf('@') + 1);
                if (message.contains("not available") || message.contains("unknown revision") || message.contains("invalid version")
                        || message.contains("404") || message.contains("410")) {
                    throw new ExitException(ExitCode.NOT_FOUND, "Delve " + version + " does not exist on the Go module proxy;"
                            + " pick a release from https://github.com/go-delve/delve/releases (e.g. " + BuildImage.DELVE_RELEASES.get(0).version() + ")");
                }
                if (message.contains("dial tcp") || message.contains("no such host") || message.contains("timeout") || message.contains("connection refused")) {
                    throw new ExitException(ExitCode.UNREACHABLE, "cannot download Delve " + version + " from the Go module proxy (" + message
                            + "); check GOPROXY and the network, or pass --dlv-binary FILE");
                }
                throw new ExitException(ExitCode.FAILURE, "go mod download " + moduleAtVersion + " failed: " + message);
            }
            if (o.status != 0) throw new ExitException(ExitCode.FAILURE, "go mod download " + moduleAtVersion + " failed: " + Cli.firstLine(o.out));
            Matcher dir = Pattern.compile("\"Dir\":\\s*\"([^\"]+)\"").matcher(o.out);
            if (!dir.find()) throw new ExitException(ExitCode.FAILURE, "go mod download " + moduleAtVersion + " printed no directory");
            return Path.of(dir.group(1));
        }

        /** Runs go for a static linux build (CGO_ENABLED=0 GOOS=linux plus env) with caches under the kdlv cache. */
        void run(Map<String, String> env, Path cache, String... args) throws IOException, InterruptedException {
            run(env, cache, null, args);
        }

        void run(Map<String, String> env, Path cache, Path dir, String... args) throws IOException, InterruptedException {
            Output o = exec(env, cache, dir, args);
            if (o.status != 0) {
                String last = o.out.lines().filter(l -> !l.isBlank()).reduce((a, b) -> b).orElse("exit " + o.status);
                throw new ExitException(ExitCode.FAILURE, "go " + String.join(" ", args) + " failed: " + last.strip() + " (rerun with -v for the output)",
                        new IOException(o.out));
            }
        }

        record Output(int status, String out) {}

        private Output exec(Map<String, String> env, Path cache, Path dir, String... args) throws IOException, InterruptedException {
            List<String> command = new ArrayList<>(List.of(binary.toString()));
            command.addAll(List.of(args));
            ProcessBuilder pb = new ProcessBuilder(command).redirectErrorStream(true);
            if (dir != null) pb.directory(dir.toFile());
            Map<String, String> e = pb.environment();
            e.put("CGO_ENABLED", "0");
            e.put("GOOS", "linux");
            e.put("GOTOOLCHAIN", "local");
            e.put("GOFLAGS", "-modcacherw");
            e.put("GOMODCACHE", cache.resolve("go/mod").toString());
            e.put("GOCACHE", cache.resolve("go/build").toString());
            e.remove("GOBIN");
            if (!env.containsKey("GOPATH")) e.put("GOPATH", cache.resolve("go/path").toString());
            e.putAll(env);
            Process p = pb.start();
            String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            if (!p.waitFor(30, TimeUnit.MINUTES)) {
                p.destroyForcibly();
                throw new ExitException(ExitCode.TIMEOUT, "go " + String.join(" ", args) + " ran for 30 minutes; giving up");
            }
            return new Output(p.exitValue(), out);
        }
    }

    /**
     * debug-image/Dockerfile and debug-image/nc, as bundled into the script by JBang's //FILES (or read from the
     * repository when run from its sources), copied into the cache under a directory named by their hash.
     */
    static final class DebugImageSources {
        static final List<String> FILES = List.of("Dockerfile", "nc/go.mod", "nc/main.go", "kdlv-attach/go.mod", "kdlv-attach/main.go");

        private DebugImageSources() {}

        static Path extract(Path cache) throws IOException {
            Map<String, byte[]> contents = new LinkedHashMap<>();
            for (String file : FILES) contents.put(file, read(file));
            MessageDigest sha;
            try {
                sha = MessageDigest.getInstance("SHA-256");
            } catch (java.security.NoSuchAlgorithmException e) {
                throw new IllegalStateException(e);
            }
            contents.forEach((file, bytes) -> {
                sha.update(file.getBytes(StandardCharsets.UTF_8));
                sha.update(bytes);
            });
            Path dir = cache.resolve("debug-image").resolve(HexFormat.of().formatHex(sha.digest()).substring(0, 16));
            for (Map.Entry<String, byte[]> entry : contents.entrySet()) {
                Path file = dir.resolve(entry.getKey());
                if (!Files.isRegularFile(file)) {
                    Files.createDirectories(file.getParent());
                    Path temp = Files.createTempFile(file.getParent(), ".", ".partial");
                    Files.write(temp, entry.getValue());
                    Files.move(temp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
                }
            }
            return dir;
        }

        private static byte[] read(String file) throws IOException {
            try (InputStream in = BuildImage.class.getClassLoader().getResourceAsStream("kdlv/debug-image/" + file)) {
                if (in != null) return in.readAllBytes();
            }
            for (Path dir = Path.of("").toAbsolutePath(); dir != null; dir = dir.getParent()) {
                Path candidate = dir.resolve("debug-image").resolve(file);
                if (Files.isRegularFile(candidate)) return Files.readAllBytes(candidate);
            }
            throw new ExitException(ExitCode.INTERNAL, "debug-image/" + file + " is neither bundled in the script nor found above "
                    + Path.of("").toAbsolutePath() + "; run build-image from the kdlv repository");
        }
    }

    /**
     * Several single-platform OCI archives (as Jib writes them) merged into one OCI image layout whose
     * index.json names one image index with a manifest per platform, as `docker buildx --output type=oci`
     * does: `ctr images import --all-platforms` and `skopeo` read it. Deterministic: sorted entries, fixed times.
     */
    static final class OciArchive {
        static final String INDEX = "application/vnd.oci.image.index.v1+json";
        static final java.util.Date TIME = new java.util.Date(1000);

        private OciArchive() {}

        /** Writes the merged archive to OUT; returns the digest of the image index. */
        static String merge(Map<String, Path> perArch, ImageReference name, Path out) throws IOException {
            var json = new com.fasterxml.jackson.databind.ObjectMapper();
            java.util.TreeMap<String, byte[]> blobs = new java.util.TreeMap<>();
            List<Map<String, Object>> manifests = new ArrayList<>();
            for (Map.Entry<String, Path> part : perArch.entrySet()) {
                byte[] index = null;
                try (var in = new org.apache.commons.compress.archivers.tar.TarArchiveInputStream(Files.newInputStream(part.getValue()))) {
                    for (var entry = in.getNextEntry(); entry != null; entry = in.getNextEntry()) {
                        if (entry.getName().startsWith("blobs/")) blobs.put(entry.getName(), in.readAllBytes());
                        if (entry.getName().equals("index.json")) index = in.readAllBytes();
                    }
                }
                if (index == null) throw new IOException(part.getValue() + " has no index.json");
                var descriptor = json.readTree(index).get("manifests").get(0);
                Map<String, Object> manifest = new LinkedHashMap<>();
                manifest.put("mediaType", descriptor.get("mediaType").asText());
                manifest.put("digest", descriptor.get("digest").asText());
                manifest.put("size", descriptor.get("size").asLong());
                Map<String, String> platform = new LinkedHashMap<>(); // fixed key order: the index's digest must not vary
                platform.put("architecture", part.getKey());
                platform.put("os", "linux");
                manifest.put("platform", platform);
                manifests.add(manifest);
            }
            Map<String, Object> imageIndex = new LinkedHashMap<>();
            imageIndex.put("schemaVersion", 2);
            imageIndex.put("mediaType", INDEX);
            imageIndex.put("manifests", manifests);
            byte[] indexBytes = json.writeValueAsBytes(imageIndex);
            String indexHash = sha256(indexBytes);
            blobs.put("blobs/sha256/" + indexHash, indexBytes);

            Map<String, Object> ref = new LinkedHashMap<>();
            ref.put("mediaType", INDEX);
            ref.put("digest", "sha256:" + indexHash);
            ref.put("size", indexBytes.length);
            Map<String, String> annotations = new LinkedHashMap<>();
            annotations.put("io.containerd.image.name", name.getRegistry().equals("registry-1.docker.io")
                    ? "docker.io/" + name.getRepository() + ":" + name.getQualifier() : name.toString());
            annotations.put("org.opencontainers.image.ref.name", name.toString());
            ref.put("annotations", annotations);
            Map<String, Object> top = new LinkedHashMap<>();
            top.put("schemaVersion", 2);
            top.put("mediaType", INDEX);
            top.put("manifests", List.of(ref));

            try (var tarOut = new org.apache.commons.compress.archivers.tar.TarArchiveOutputStream(Files.newOutputStream(out))) {
                tarOut.setLongFileMode(org.apache.commons.compress.archivers.tar.TarArchiveOutputStream.LONGFILE_POSIX);
                write(tarOut, "oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}".getBytes(StandardCharsets.UTF_8));
                write(tarOut, "index.json", json.writeValueAsBytes(top));
                for (Map.Entry<String, byte[]> blob : blobs.entrySet()) write(tarOut, blob.getKey(), blob.getValue());
            }
            return "sha256:" + indexHash;
        }

        private static void write(org.apache.commons.compress.archivers.tar.TarArchiveOutputStream out, String name, byte[] bytes) throws IOException {
            var entry = new org.apache.commons.compress.archivers.tar.TarArchiveEntry(name);
            entry.setSize(bytes.length);
            entry.setModTime(TIME);
            entry.setMode(0644);
            out.putArchiveEntry(entry);
            out.write(bytes);
            out.closeArchiveEntry();
        }

        private static String sha256(byte[] bytes) {
            try {
                return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(bytes));
            } catch (java.security.NoSuchAlgorithmException e) {
                throw new IllegalStateException(e);
            }
        }
    }

    /** --builder docker|podman|buildah: the article's way, with debug-image/Dockerfile. */
    static final class ToolBuilder {
        private final String tool;
        private final BuildImage options;

        ToolBuilder(String tool, BuildImage options) {
            this.tool = tool;
            this.options = options;
        }

        int build(List<String> arches, String delve, String name) throws IOException, InterruptedException {
            Path executable = onPath(tool).orElse(null);
            if (executable == null) {
                throw new ExitException(ExitCode.TOOL_MISSING, "--builder " + tool + ": no '" + tool + "' on PATH; install it, or use the default builder (jib), which needs no daemon");
            }
            if (options.dlvBinary != null || options.ncBinary != null || !options.add.isEmpty() || !options.base.equals("scratch")) {
                throw new ExitException(ExitCode.USAGE, "--dlv-binary, --nc-binary, --add and --base go with the jib builder only; edit debug-image/Dockerfile instead");
            }
            Path context = DebugImageSources.extract(BuildImage.cache());
            String platforms = arches.stream().map(a -> "linux/" + a).collect(Collectors.joining(","));
            List<List<String>> steps = new ArrayList<>();
            List<String> build = new ArrayList<>(switch (tool) {
                case "docker" -> List.of("docker", "buildx", "build");
                case "buildah" -> List.of("buildah", "build");
                default -> List.of("podman", "build");
            });
            build.addAll(List.of("--platform", platforms, "--build-arg", "DELVE_VERSION=" + delve, "-t", name));
            // An archive is written next to its final path and moved there only when complete.
            Path target = options.tar == null ? null : options.tar.toAbsolutePath();
            Path temp = target == null ? null : target.resolveSibling("." + target.getFileName() + ".partial");
            if (tool.equals("docker")) {
                build.add(options.push != null ? "--push" : "--output=type=docker,dest=" + temp);
            } else if (arches.size() > 1) {
                build.addAll(List.of("--manifest", name));
            }
            build.add(context.toString());
            steps.add(build);
            if (!tool.equals("docker") && options.push != null) {
                List<String> push = new ArrayList<>(arches.size() > 1 ? List.of(tool, "manifest", "push", "--all", name, "docker://" + name)
                        : List.of(tool, "push", name));
                if (options.insecure) push.add(push.indexOf("push") + 1, "--tls-verify=false");
                steps.add(push);
            } else if (!tool.equals("docker")) {
                steps.add(tool.equals("podman") ? List.of("podman", "save", "--format", "docker-archive", "-o", temp.toString(), name)
                        : List.of("buildah", "push", name, "docker-archive:" + temp + ":" + name));
            }
            PrintWriter err = options.spec.commandLine().getErr();
            try {
                for (List<String> step : steps) {
                    err.println("build-image: + " + String.join(" ", step));
                    List<String> command = new ArrayList<>(step);
                    command.set(0, executable.toString());
                    Process p = new ProcessBuilder(command).redirectErrorStream(true).redirectInput(ProcessBuilder.Redirect.INHERIT).start();
                    try (var lines = new java.io.BufferedReader(new java.io.InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
                        for (String line; (line = lines.readLine()) != null; ) err.println("build-image: " + tool + ": " + line);
                    }
                    if (p.waitFor() != 0) {
                        throw new ExitException(ExitCode.FAILURE, String.join(" ", step.subList(0, Math.min(3, step.size()))) + " failed with exit "
                                + p.exitValue() + " (its output is above); or use the default builder (jib), which needs no daemon");
                    }
                }
                if (target != null) {
                    if (!Files.isRegularFile(temp)) throw new ExitException(ExitCode.FAILURE, tool + " reported success but wrote no archive " + temp);
                    Files.move(temp, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
                }
            } finally {
                if (temp != null) Files.deleteIfExists(temp);
            }
            options.spec.commandLine().getOut().println(name);
            return ExitCode.OK;
        }
    }

    /** A program on PATH. */
    static Optional<Path> onPath(String name) {
        String path = System.getProperty("kdlv.path", System.getenv("PATH")); // kdlv.path: a test hook
        if (path == null) return Optional.empty();
        for (String dir : path.split(":")) {
            if (dir.isEmpty()) continue;
            Path candidate = Path.of(dir, name);
            if (Files.isExecutable(candidate) && !Files.isDirectory(candidate)) return Optional.of(candidate);
        }
        return Optional.empty();
    }
}
