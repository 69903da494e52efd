///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//SOURCES lib/*.java
//DESCRIPTION Check the Delve behind a tunnel and debug with a quit-safe dlv, GoLand or VS Code (substitutePath computed); detach safely.

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.Closeable;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.net.ConnectException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.net.UnknownHostException;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.Callable;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import javax.xml.parsers.DocumentBuilderFactory;
import javax.xml.transform.OutputKeys;
import javax.xml.transform.TransformerFactory;
import javax.xml.transform.dom.DOMSource;
import javax.xml.transform.stream.StreamResult;
import org.w3c.dom.Document;
import org.w3c.dom.Element;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

/**
 * The article's "Debug Session" step: `dlv connect 127.0.0.1:2345` or a GoLand "Go Remote" configuration, made
 * safe and complete. It checks that Delve answers and says where the target is; starts dlv so that quitting it
 * never kills the target; writes the IDE's configuration with the substitutePath the binary needs; and detaches
 * (`connect detach`) leaving the target running and untraced. debug.java calls the static methods.
 */
@Command(name = "connect", mixinStandardHelpOptions = true, version = Cli.VERSION, sortOptions = false,
        subcommands = ConnectDetach.class,
        description = {"Check the Delve behind a tunnel and debug with a quit-safe dlv, GoLand or VS Code (substitutePath computed); detach safely.",
                "",
                "Without --client or --ide it only reports: Delve's version and supported Go range, the target's Go version, "
                        + "whether it runs or is halted and where. It never halts the target unless asked (--peek, or --ide "
                        + "without --remote-root, which halts it for a few milliseconds to read its source paths)."},
        footer = {"", "Examples:",
                "  connect                      does Delve answer? where is the target?",
                "  connect --client dlv         dlv connect that can never kill the target",
                "  connect --ide vscode,goland  IDE files with substitutePath computed",
                "  connect detach               end Delve; the target runs on, untraced",
                "  connect --dry-run --ide vscode   the manual steps, change nothing"},
        exitCodeListHeading = "%nExit codes:%n",
        exitCodeList = {"0:done", "2:bad options", "5:no source file of the binary matches the local module",
                "8:nothing listens on the address", "9:Delve speaks an API version other than 2",
                "16:dlv is not installed (--client dlv)", "17:a local file cannot be read, parsed or written (launch.json)",
                "18:something answers on the address, but it is not Delve"})
class Connect implements Callable<Integer> {
    static final String DEFAULT_ADDRESS = "127.0.0.1:2345";
    /** Jackson, for launch.json and -o json: made on first use (debug reaches Delve, with Gson, before it needs any). */
    static final class Json {
        static final ObjectMapper MAPPER = JsonMapper.builder().enable(SerializationFeature.INDENT_OUTPUT).build();
    }

    @Option(names = "--address", paramLabel = "HOST:PORT", defaultValue = DEFAULT_ADDRESS,
            description = "Where Delve (or the tunnel to it) listens (default: ${DEFAULT-VALUE}).")
    String address;

    @Option(names = "--timeout", paramLabel = "DURATION", defaultValue = "10s", converter = Durations.class,
            description = "How long to wait for Delve to accept and to answer (default: ${DEFAULT-VALUE}).")
    Duration timeout;

    @Option(names = "--client", paramLabel = "dlv",
            description = "Start `dlv connect` (from PATH or $KDLV_CACHE/bin) through a guard that never lets it kill the target: "
                    + "quitting with \"kill the headless instance? Y\" (the default) ends Delve and leaves the target running, "
                    + "untraced; with n (or exit -c, Ctrl-D) it clears the session's breakpoints, resumes the target and leaves Delve running.")
    String client;

    @Option(names = "--keep-delve", description = "With --client dlv: every quit leaves Delve running (as if you answered n).")
    boolean keepDelve;

    @Option(names = "--init", paramLabel = "FILE", description = "With --client dlv: a dlv command file to run first (dlv connect --init).")
    Path init;

    @Option(names = "--keep-breakpoints",
            description = "With --client dlv: leave the session's breakpoints set when it ends (a hit with no client attached "
                    + "halts the target until someone connects).")
    boolean keepBreakpoints;

    @Option(names = "--ide", paramLabel = "IDE", split = ",",
            description = "goland: write .run/NAME.run.xml (Go Remote); vscode: add or update configuration NAME in .vscode/launch.json.")
    List<String> ides = new ArrayList<>();

    @Option(names = "--name", paramLabel = "NAME", defaultValue = "kdlv", description = "Name of the IDE configuration (default: ${DEFAULT-VALUE}).")
    String name;

    @Option(names = "--project", paramLabel = "DIR", description = "Where .run/ and .vscode/ are (default: the current directory).")
    Path project;

    @Option(names = "--local-root", paramLabel = "DIR",
            description = "Local source root for substitutePath (default: the Go module around the current directory).")
    Path localRoot;

    @Option(names = "--remote-root", paramLabel = "PATH",
            description = "The same sources' path as the binary knows it (default: computed from Delve's list of source files).")
    String remoteRoot;

    @Option(names = "--peek", description = "If the target runs, halt it for a moment to read what Delve tells only while it is halted (its Go version), then resume it.")
    boolean peek;

    @Option(names = "--dry-run", description = "Change nothing and contact nothing: print the manual dlv steps and the IDE configuration.")
    boolean dryRun;

    @Option(names = {"-o", "--output"}, paramLabel = "FORMAT", description = "json: print the report as one JSON object.")
    String output;

    @Mixin VerboseOption verboseOption;
    @Spec CommandSpec spec;

    public static void main(String... args) {
        Cli.main(new Connect(), args);
    }

    /** What connect found out: Delve, the target, the source mapping, the files written. */
    record Report(String address, Delve.Version delve, Delve.State state, String goVersion, Optional<SourceMapping> mapping,
                  List<Path> written) {}

    @Override
    public Integer call() throws Exception {
        if (output != null && !output.equals("json")) throw usage("-o supports only json, not '" + output + "'");
        if (client != null && !client.equals("dlv")) throw usage("--client supports only dlv, not '" + client + "'");
        if (init != null && client == null) throw usage("--init needs --client dlv");
        if (init != null && !Files.isReadable(init)) throw new ExitException(ExitCode.LOCAL_FILE, "cannot read the init file " + init);
        for (String ide : ides) {
            if (!ide.equals("goland") && !ide.equals("vscode")) throw usage("--ide supports goland and vscode, not '" + ide + "'");
        }
        if (name.isBlank()) throw usage("--name must not be empty");
        InetSocketAddress delveAddress = parseAddress(address);
        Path projectDir = (project != null ? project : Path.of("")).toAbsolutePath().normalize();
        // A launch.json we could not keep intact fails before anything else happens.
        if (ides.contains("vscode")) readLaunchJson(projectDir.resolve(".vscode").resolve("launch.json"));
        Path dlv = client != null ? findDlv().orElseThrow(() -> new ExitException(ExitCode.TOOL_MISSING,
                "dlv is not on PATH nor in " + cacheBin() + ": install Delve (go install github.com/go-delve/delve/cmd/dlv@latest)"
                        + " or use --ide")) : null;
        if (dryRun) {
            printManualSteps(projectDir);
            return ExitCode.OK;
        }
        PrintWriter out = spec.commandLine().getOut();
        Report report = describe(delveAddress, timeout, peek || (!ides.isEmpty() && remoteRoot == null), localRoot, remoteRoot,
                !ides.isEmpty());
        List<Path> written = new ArrayList<>();
        for (String ide : ides) {
            SourceMapping mapping = report.mapping().orElse(null);
            written.add(ide.equals("goland") ? writeGoland(projectDir, name, delveAddress)
                    : writeVscode(projectDir, name, delveAddress, mapping));
        }
        report = new Report(report.address(), report.delve(), report.state(), report.goVersion(), report.mapping(), written);
        if ("json".equals(output)) {
            out.println(Json.MAPPER.writeValueAsString(toJson(report)));
        } else {
            print(report, out);
        }
        out.flush();
        if (dlv != null) return runDlv(dlv, delveAddress, timeout, init, report.mapping(), keepBreakpoints, keepDelve, out);
        return ExitCode.OK;
    }

    // ---- Talking to Delve -------------------------------------------------------------------------------------------

    /**
     * Connects and checks that this is Delve speaking API 2; every failure is an ExitException with its own code:
     * UNREACHABLE (nothing listens), NOT_DELVE (something else answers, or nothing answers in time), UNSUPPORTED (API 1).
     */
    static Delve open(InetSocketAddress address, Duration timeout) {
        String where = address.getHostString() + ":" + address.getPort();
        Delve delve;
        try {
            delve = Delve.connect(address, (int) Math.max(1, timeout.toMillis()));
        } catch (ConnectException e) {
            throw new ExitException(ExitCode.UNREACHABLE, "nothing listens on " + where + " (connection refused): start the tunnel"
                    + " (tunnel POD) or Delve first, or pass --address");
        } catch (SocketTimeoutException e) {
            throw new ExitException(ExitCode.UNREACHABLE, where + " did not accept a connection within " + Durations.format(timeout)
                    + ": check the address, or raise --timeout");
        } catch (IOException e) {
            throw new ExitException(ExitCode.UNREACHABLE, "cannot connect to " + where + ": " + e.getMessage());
        }
        try {
            Delve.Version version = delve.version();
            if (version.apiVersion() != 2) {
                throw new ExitException(ExitCode.UNSUPPORTED, "Delve " + version.delveVersion() + " at " + where + " serves API version "
                        + version.apiVersion() + "; kdlv and current dlv clients speak version 2: restart it with --api-version=2");
            }
            return delve;
        } catch (IOException e) {
            closeQuietly(delve);
            throw notDelve(where, timeout, e);
        } catch (RuntimeException e) {
            closeQuietly(delve);
            throw e;
        }
    }

    static ExitException notDelve(String where, Duration timeout, IOException e) {
        if (e.getMessage() != null && e.getMessage().startsWith("Delve answered")) {
            return new ExitException(ExitCode.FAILURE, "Delve at " + where + " refused: " + Cli.firstLine(e.getMessage().substring(14).strip()));
        }
        if (e instanceof SocketTimeoutException) {
            return new ExitException(ExitCode.NOT_DELVE, where + " accepted the connection but sent no JSON-RPC answer within "
                    + Durations.format(timeout) + ": it is not Delve (or the tunnel's far end does not answer); check the port");
        }
        return new ExitException(ExitCode.NOT_DELVE, where + " answered, but it is not Delve's JSON-RPC API: " + Cli.firstLine(e.getMessage())
                + "; point --address at a headless Delve (dlv ... --headless --api-version=2)");
    }

    /**
     * Reports on the Delve at the address. With {@code peek}, a running target is halted for a moment to read its Go version
     * and (when a mapping is asked for) its source paths, then resumed. {@code wantMapping} computes the substitutePath:
     * only when the target is halted or peeked, unless {@code remoteRoot} is given.
     */
    static Report describe(InetSocketAddress address, Duration timeout, boolean peek, Path localRoot, String remoteRoot, boolean wantMapping)
            throws IOException {
        String where = address.getHostString() + ":" + address.getPort();
        boolean mapping = wantMapping || localRoot != null || remoteRoot != null;
        try (Delve delve = open(address, timeout)) {
            try {
                Delve.Version version = delve.version();
                Delve.State state = delve.state();
                String goVersion = goVersion(version.targetGoVersion());
                Optional<SourceMapping> sources = Optional.empty();
                if (state.running() && peek) {
                    Delve.State halted = delve.halt();
                    try {
                        goVersion = goVersion(delve.version().targetGoVersion());
                        if (mapping) sources = SourceMapping.compute(localRoot, remoteRoot, () -> delve.sources(""));
                    } finally {
                        delve.resume();
                    }
                    state = new Delve.State(true, false, halted.pid(), "", 0, "", 0);
                } else if (!state.exited() && (!state.running() || remoteRoot != null) && mapping) {
                    sources = SourceMapping.compute(localRoot, remoteRoot, () -> delve.sources(""));
                } else if (remoteRoot != null || localRoot != null) {
                    sources = SourceMapping.compute(localRoot, remoteRoot, List::of);
                }
                return new Report(where, version, state, goVersion, sources, List.of());
            } catch (IOException e) {
                throw notDelve(where, timeout, e);
            }
        }
    }

    /**
     * Waits until the target runs. `dlv attach --continue` says it listens before its own client has resumed the
     * target; a `dlv connect` in that window finds it halted, skips its halt and then blocks. debug.java calls this
     * after attach; it returns the last state (halted when time ran out or another client holds it).
     */
    static Delve.State awaitRunning(InetSocketAddress address, Duration timeout) throws IOException, InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        try (Delve delve = open(address, timeout)) {
            Delve.State state = delve.state();
            while (!state.running() && !state.exited() && System.nanoTime() < deadline) {
                Thread.sleep(20);
                state = delve.state();
            }
            return state;
        }
    }

    static String goVersion(String producer) {
        Matcher version = Pattern.compile("go\\d+(\\.\\d+)*").matcher(producer == null ? "" : producer);
        return version.find() ? version.group() : "";
    }

    static InetSocketAddress parseAddress(String text) {
        String value = text.strip();
        int colon = value.lastIndexOf(':');
        String host = colon < 0 ? "127.0.0.1" : value.substring(0, colon);
        String port = colon < 0 ? value : value.substring(colon + 1);
        if (host.startsWith("[") && host.endsWith("]")) host = host.substring(1, host.length() - 1);
        if (host.isEmpty()) host = "127.0.0.1";
        int number;
        try {
            number = Integer.parseInt(port);
        } catch (NumberFormatException e) {
            throw usage("--address '" + text + "' is not HOST:PORT (e.g. " + DEFAULT_ADDRESS + ")");
        }
        if (number < 1 || number > 65535) throw usage("--address '" + text + "': the port must be 1-65535");
        try {
            return new InetSocketAddress(InetAddress.getByName(host), number);
        } catch (UnknownHostException e) {
            throw usage("--address '" + text + "': unknown host " + host);
        }
    }

    // ---- Reporting --------------------------------------------------------------------------------------------------

    static void print(Report report, PrintWriter out) {
        Delve.Version v = report.delve();
        out.printf("Delve %s (API %d) answers on %s; it supports Go %s to %s.%n", v.delveVersion(), v.apiVersion(), report.address(),
                v.minGo(), v.maxGo());
        Delve.State state = report.state();
        String go = report.goVersion().isEmpty() ? "Go version unknown while it runs (--peek reads it)" : "built with " + report.goVersion()
                + supportNote(report.goVersion(), v);
        if (state.exited()) {
            out.println("target: exited.");
        } else if (state.running()) {
            out.println("target: running" + (state.pid() > 0 ? ", PID " + state.pid() : "") + ", " + go + ".");
        } else {
            out.println("target: PID " + state.pid() + ", " + go + ", HALTED at " + state.where() + ".");
            out.println("  A halted target answers no request and fails its liveness probe: resume it (dlv `continue`, or"
                    + " connect --client dlv and quit).");
        }
        report.mapping().ifPresent(m -> out.println("substitutePath: " + m.from() + " -> " + m.to() + " (" + m.how() + ")"));
        for (Path file : report.written()) out.println("wrote " + file);
    }

    static String supportNote(String goVersion, Delve.Version delve) {
        int[] target = minor(goVersion);
        int[] min = minor(delve.minGo());
        int[] max = minor(delve.maxGo());
        if (target == null || min == null || max == null) return "";
        if (compare(target, min) < 0 || compare(target, max) > 0) return " (OUTSIDE the range this Delve supports: expect wrong values)";
        return "";
    }

    private static int[] minor(String version) {
        Matcher m = Pattern.compile("(\\d+)\\.(\\d+)").matcher(version == null ? "" : version);
        return m.find() ? new int[] {Integer.parseInt(m.group(1)), Integer.parseInt(m.group(2))} : null;
    }

    private static int compare(int[] a, int[] b) {
        return a[0] != b[0] ? Integer.compare(a[0], b[0]) : Integer.compare(a[1], b[1]);
    }

    static ObjectNode toJson(Report report) {
        ObjectNode json = Json.MAPPER.createObjectNode();
        json.put("address", report.address());
        json.put("delveVersion", report.delve().delveVersion());
        json.put("apiVersion", report.delve().apiVersion());
        json.put("minGo", report.delve().minGo());
        json.put("maxGo", report.delve().maxGo());
        json.put("targetGoVersion", report.goVersion());
        Delve.State state = report.state();
        json.put("running", state.running());
        json.put("exited", state.exited());
        if (state.pid() > 0) json.put("pid", state.pid());
        if (!state.running() && !state.exited()) {
            ObjectNode halted = json.putObject("halted");
            halted.put("file", state.file());
            halted.put("line", state.line());
            halted.put("function", state.function());
            halted.put("goroutine", state.goroutine());
        }
        report.mapping().ifPresent(m -> {
            ObjectNode mapping = json.putArray("substitutePath").addObject();
            mapping.put("from", m.from());
            mapping.put("to", m.to());
        });
        ArrayNode files = json.putArray("written");
        report.written().forEach(f -> files.add(f.toString()));
        return json;
    }

    void printManualSteps(Path projectDir) throws IOException {
        PrintWriter out = spec.commandLine().getOut();
        InetSocketAddress delve = parseAddress(address);
        String where = delve.getHostString() + ":" + delve.getPort();
        out.println("# 1. check that Delve answers (connect does this with JSON-RPC GetVersion and a non-blocking State):");
        out.println("dlv connect " + where + (init != null ? " --init " + init : ""));
        out.println("#    dlv connect HALTS a running target as it connects. At its prompt:");
        out.println("#    (dlv) sources main.go      the binary's path of your sources, for substitutePath");
        out.println("#    (dlv) clearall             remove your breakpoints before leaving (a hit with no client halts the target)");
        out.println("#    (dlv) exit -c              disconnect and resume; plain `exit` with the default answers KILLS the target");
        SourceMapping mapping = remoteRoot != null ? SourceMapping.compute(localRoot, remoteRoot, List::of).orElse(null) : null;
        for (String ide : ides) {
            if (ide.equals("goland")) {
                out.println("# write " + projectDir.resolve(".run").resolve(fileName(name) + ".run.xml") + ":");
                out.print(golandXml(name, delve));
            } else {
                out.println("# add to \"configurations\" in " + projectDir.resolve(".vscode").resolve("launch.json")
                        + (mapping == null ? " (substitutePath: from your checkout to the path `sources` shows)" : "") + ":");
                out.println(Json.MAPPER.writeValueAsString(vscodeConfiguration(name, delve, mapping, projectDir)));
            }
        }
        out.println("# to end the debugger and leave the target running, untraced (connect detach does this):");
        out.println("#    (dlv) halt   then   (dlv) exit -d   and answer Y to \"kill the headless instance?\"");
    }

    // ---- The IDEs ---------------------------------------------------------------------------------------------------

    /** Writes .run/NAME.run.xml, a GoLand "Go Remote" configuration that leaves Delve running on disconnect. */
    static Path writeGoland(Path projectDir, String name, InetSocketAddress delve) {
        Path file = projectDir.resolve(".run").resolve(fileName(name) + ".run.xml");
        writeAtomically(file, golandXml(name, delve));
        return file;
    }

    static String golandXml(String name, InetSocketAddress delve) {
        try {
            Document doc = DocumentBuilderFactory.newInstance().newDocumentBuilder().newDocument();
            Element component = doc.createElement("component");
            component.setAttribute("name", "ProjectRunConfigurationManager");
            doc.appendChild(component);
            Element configuration = doc.createElement("configuration");
            configuration.setAttribute("default", "false");
            configuration.setAttribute("name", name);
            configuration.setAttribute("type", "GoRemoteDebugConfigurationType");
            configuration.setAttribute("factoryName", "Go Remote");
            configuration.setAttribute("host", delve.getHostString());
            configuration.setAttribute("port", Integer.toString(delve.getPort()));
            component.appendChild(configuration);
            Element option = doc.createElement("option");
            option.setAttribute("name", "disconnectOption");
            option.setAttribute("value", "LEAVE");
            configuration.appendChild(option);
            Element disconnect = doc.createElement("disconnect");
            disconnect.setAttribute("value", "LEAVE");
            configuration.appendChild(disconnect);
            Element method = doc.createElement("method");
            method.setAttribute("v", "2");
            configuration.appendChild(method);
            var transformer = TransformerFactory.newInstance().newTransformer();
            transformer.setOutputProperty(OutputKeys.OMIT_XML_DECLARATION, "yes");
            transformer.setOutputProperty(OutputKeys.INDENT, "yes");
            transformer.setOutputProperty("{http://xml.apache.org/xslt}indent-amount", "2");
            StringWriter text = new StringWriter();
            transformer.transform(new DOMSource(doc), new StreamResult(text));
            String xml = text.toString().strip();
            return xml + "\n";
        } catch (Exception e) {
            throw new IllegalStateException("cannot build the GoLand XML", e);
        }
    }

    /**
     * Adds configuration NAME to .vscode/launch.json, or replaces the one of that name in place, keeping every other
     * configuration. A file that is not plain JSON (VS Code allows comments, which kdlv could not keep) is left as it is.
     */
    static Path writeVscode(Path projectDir, String name, InetSocketAddress delve, SourceMapping mapping) {
        Path file = projectDir.resolve(".vscode").resolve("launch.json");
        ObjectNode launch = readLaunchJson(file).orElseGet(() -> {
            ObjectNode fresh = Json.MAPPER.createObjectNode();
            fresh.put("version", "0.2.0");
            fresh.putArray("configurations");
            return fresh;
        });
        ArrayNode configurations = launch.has("configurations") ? (ArrayNode) launch.get("configurations") : launch.putArray("configurations");
        ObjectNode ours = vscodeConfiguration(name, delve, mapping, projectDir);
        boolean replaced = false;
        for (int i = 0; i < configurations.size(); i++) {
            if (name.equals(configurations.get(i).path("name").asText(null))) {
                configurations.set(i, ours);
                replaced = true;
                break;
            }
        }
        if (!replaced) configurations.add(ours);
        try {
            writeAtomically(file, launchJsonWriter().writeValueAsString(launch) + "\n");
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
        return file;
    }

    /** Formatted as VS Code writes launch.json: four spaces, "key": value, one array item per line. */
    static com.fasterxml.jackson.databind.ObjectWriter launchJsonWriter() {
        var indenter = new com.fasterxml.jackson.core.util.DefaultIndenter("    ", "\n");
        var printer = new com.fasterxml.jackson.core.util.DefaultPrettyPrinter()
                .withSeparators(com.fasterxml.jackson.core.util.Separators.createDefaultInstance()
                        .withObjectFieldValueSpacing(com.fasterxml.jackson.core.util.Separators.Spacing.AFTER))
                .withObjectIndenter(indenter);
        printer.indentArraysWith(indenter);
        return Json.MAPPER.writer(printer);
    }

    static ObjectNode vscodeConfiguration(String name, InetSocketAddress delve, SourceMapping mapping, Path projectDir) {
        ObjectNode configuration = Json.MAPPER.createObjectNode();
        configuration.put("name", name);
        configuration.put("type", "go");
        configuration.put("request", "attach");
        configuration.put("mode", "remote");
        configuration.put("host", delve.getHostString());
        configuration.put("port", delve.getPort());
        if (mapping != null) {
            ObjectNode entry = configuration.putArray("substitutePath").addObject();
            entry.put("from", workspaceRelative(mapping.from(), projectDir));
            entry.put("to", mapping.to());
        }
        return configuration;
    }

    /** ${workspaceFolder} for the project directory itself or below it, so that the file works in every checkout. */
    static String workspaceRelative(String local, Path projectDir) {
        Path path = Path.of(local).toAbsolutePath().normalize();
        if (path.equals(projectDir)) return "${workspaceFolder}";
        if (path.startsWith(projectDir)) return "${workspaceFolder}/" + projectDir.relativize(path).toString().replace('\\', '/');
        return path.toString();
    }

    /** The launch.json as a tree, empty when there is none; LOCAL_FILE when it exists but is not plain JSON we can keep. */
    static Optional<ObjectNode> readLaunchJson(Path file) {
        if (!Files.exists(file)) return Optional.empty();
        String text;
        try {
            text = Files.readString(file, StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new ExitException(ExitCode.LOCAL_FILE, "cannot read " + file + ": " + e.getMessage());
        }
        if (text.isBlank()) return Optional.empty();
        JsonNode tree;
        try {
            tree = Json.MAPPER.readTree(text);
        } catch (JsonProcessingException strict) {
            boolean lenientOk;
            try {
                JsonMapper.builder().enable(com.fasterxml.jackson.core.json.JsonReadFeature.ALLOW_JAVA_COMMENTS,
                        com.fasterxml.jackson.core.json.JsonReadFeature.ALLOW_TRAILING_COMMA).build().readTree(text);
                lenientOk = true;
            } catch (JsonProcessingException e) {
                lenientOk = false;
            }
            String why = lenientOk ? "it has comments or trailing commas, which kdlv would lose"
                    : "it is not valid JSON (line " + strict.getLocation().getLineNr() + ", column " + strict.getLocation().getColumnNr() + ")";
            throw new ExitException(ExitCode.LOCAL_FILE, file + " left untouched: " + why
                    + "; add the configuration by hand (connect --dry-run --ide vscode prints it) or fix the file");
        }
        if (!tree.isObject() || (tree.has("configurations") && !tree.get("configurations").isArray())) {
            throw new ExitException(ExitCode.LOCAL_FILE, file + " left untouched: it is not a launch.json (an object with a"
                    + " \"configurations\" array); fix it or pass --project");
        }
        return Optional.of((ObjectNode) tree);
    }

    static String fileName(String name) {
        return name.replaceAll("[^A-Za-z0-9._ -]", "_");
    }

    static void writeAtomically(Path file, String text) {
        try {
            Files.createDirectories(file.getParent());
            Path temp = Files.createTempFile(file.getParent(), "." + file.getFileName(), ".tmp");
            try {
                Files.writeString(temp, text, StandardCharsets.UTF_8);
                try {
                    Files.move(temp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
                } catch (AtomicMoveNotSupportedException e) {
                    Files.move(temp, file, StandardCopyOption.REPLACE_EXISTING);
                }
            } finally {
                Files.deleteIfExists(temp);
            }
        } catch (IOException e) {
            throw new ExitException(ExitCode.LOCAL_FILE, "cannot write " + file + ": " + e.getMessage());
        }
    }

    // ---- dlv, quit-safe ---------------------------------------------------------------------------------------------

    static Path cacheBin() {
        String env = System.getenv("KDLV_CACHE");
        Path cache = env != null && !env.isBlank() ? Path.of(env) : Path.of(System.getProperty("user.home"), ".cache", "kdlv");
        return cache.resolve("bin");
    }

    static Optional<Path> findDlv() {
        String path = System.getenv("PATH");
        if (path != null) {
            for (String dir : path.split(java.io.File.pathSeparator)) {
                if (dir.isEmpty()) continue;
                Path candidate = Path.of(dir, "dlv");
                if (Files.isExecutable(candidate)) return Optional.of(candidate);
            }
        }
        Path cached = cacheBin().resolve("dlv");
        return Files.isExecutable(cached) ? Optional.of(cached) : Optional.empty();
    }

    /**
     * Runs `dlv connect` with the terminal, pointed at a {@link QuitGuard} in front of Delve: however dlv ends (quit with
     * any answers, exit -c, EOF, killed), the guard clears the breakpoints the session set, resumes the target and leaves
     * Delve running. Ctrl-C belongs to dlv (it halts the target) while it runs. Returns dlv's exit status.
     */
    static int runDlv(Path dlv, InetSocketAddress delve, Duration timeout, Path init, Optional<SourceMapping> mapping,
                      boolean keepBreakpoints, boolean keepDelve, PrintWriter out) throws IOException, InterruptedException {
        try (QuitGuard guard = new QuitGuard(delve, timeout, keepBreakpoints, keepDelve)) {
            InetSocketAddress local = guard.start();
            List<String> command = new ArrayList<>(List.of(dlv.toString(), "connect", local.getAddress().getHostAddress() + ":" + local.getPort()));
            Path initFile = initFile(init, mapping);
            if (initFile != null) command.addAll(List.of("--init", initFile.toString()));
            out.println("kdlv: starting " + String.join(" ", command.subList(0, 3)) + " (a guard in front of " + delve.getHostString()
                    + ":" + delve.getPort() + "). Quitting never kills the target: "
                    + (keepDelve ? "" : "\"kill the headless instance? Y\" ends Delve and leaves the target running, untraced; otherwise ")
                    + "kdlv " + (keepBreakpoints ? "" : "clears this session's breakpoints, ") + "resumes the target and leaves Delve running.");
            out.flush();
            Process process = new ProcessBuilder(command).inheritIO().start();
            Object previous = ignoreInterrupts();
            try {
                int status = process.waitFor();
                guard.awaitSessions(timeout.plusSeconds(5));
                out.println("kdlv: " + guard.summary());
                out.flush();
                return status;
            } finally {
                restoreInterrupts(previous);
                if (process.isAlive()) process.destroy();
                if (initFile != null && !initFile.equals(init)) Files.deleteIfExists(initFile);
            }
        }
    }

    /** The user's init file, preceded by `config substitute-path` when the mapping is known (so `list` shows local sources). */
    static Path initFile(Path init, Optional<SourceMapping> mapping) throws IOException {
        if (mapping.isEmpty() || mapping.get().from().equals(mapping.get().to())) return init;
        Path file = Files.createTempFile("kdlv-init", ".dlv");
        StringBuilder commands = new StringBuilder();
        commands.append("config substitute-path ").append(quoteForDlv(mapping.get().to())).append(' ')
                .append(quoteForDlv(mapping.get().from())).append('\n');
        if (init != null) commands.append("source ").append(quoteForDlv(init.toAbsolutePath().toString())).append('\n');
        Files.writeString(file, commands.toString());
        return file;
    }

    private static String quoteForDlv(String path) {
        return path.contains(" ") ? "\"" + path + "\"" : path;
    }

    /**
     * Ctrl-C goes to the whole foreground process group: dlv halts the target on it, and this JVM must not die of it.
     * sun.misc.Signal through reflection, so that the build stays free of internal-API warnings.
     */
    private static Object ignoreInterrupts() {
        try {
            Class<?> signal = Class.forName("sun.misc.Signal");
            Class<?> handler = Class.forName("sun.misc.SignalHandler");
            Object ignore = java.lang.reflect.Proxy.newProxyInstance(handler.getClassLoader(), new Class<?>[] {handler}, (p, m, a) -> null);
            return signal.getMethod("handle", signal, handler).invoke(null, signal.getConstructor(String.class).newInstance("INT"), ignore);
        } catch (ReflectiveOperationException | RuntimeException | LinkageError e) {
            return null;
        }
    }

    private static void restoreInterrupts(Object previous) {
        if (previous == null) return;
        try {
            Class<?> signal = Class.forName("sun.misc.Signal");
            Class<?> handler = Class.forName("sun.misc.SignalHandler");
            signal.getMethod("handle", signal, handler).invoke(null, signal.getConstructor(String.class).newInstance("INT"), previous);
        } catch (ReflectiveOperationException | RuntimeException | LinkageError e) {
            // nothing to restore on this JVM
        }
    }

    static ExitException usage(String message) {
        return new ExitException(ExitCode.USAGE, message);
    }

    static void closeQuietly(Closeable closeable) {
        try {
            closeable.close();
        } catch (IOException | RuntimeException e) {
            // already failing
        }
    }
}

/** `connect detach`: halt, then Detach with Kill=false; Delve exits, the target keeps running and is no longer traced. */
@Command(name = "detach", mixinStandardHelpOptions = true, version = Cli.VERSION, sortOptions = false,
        description = {"End the debugger and leave the target running, untraced: halt (Detach hangs while the target runs), then "
                + "Detach with Kill=false. Delve exits; in a pod, the debugger container terminates."},
        exitCodeListHeading = "%nExit codes:%n",
        exitCodeList = {"0:detached", "2:bad options", "3:the target has already exited", "8:nothing listens on the address",
                "9:Delve speaks an API version other than 2", "18:something answers on the address, but it is not Delve"})
class ConnectDetach implements Callable<Integer> {
    @Option(names = "--address", paramLabel = "HOST:PORT", defaultValue = Connect.DEFAULT_ADDRESS,
            description = "Where Delve (or the tunnel to it) listens (default: ${DEFAULT-VALUE}).")
    String address;

    @Option(names = "--timeout", paramLabel = "DURATION", defaultValue = "10s", converter = Durations.class,
            description = "How long to wait for Delve to accept and to answer (default: ${DEFAULT-VALUE}).")
    Duration timeout;

    @Option(names = "--dry-run", description = "Change nothing: print the manual dlv steps.")
    boolean dryRun;

    @Option(names = {"-o", "--output"}, paramLabel = "FORMAT", description = "json: print the detached PID as JSON.")
    String output;

    @Mixin VerboseOption verboseOption;
    @Spec CommandSpec spec;

    @Override
    public Integer call() throws Exception {
        if (output != null && !output.equals("json")) throw Connect.usage("-o supports only json, not '" + output + "'");
        InetSocketAddress delve = Connect.parseAddress(address);
        String where = delve.getHostString() + ":" + delve.getPort();
        PrintWriter out = spec.commandLine().getOut();
        if (dryRun) {
            out.println("dlv connect " + where);
            out.println("#    (dlv) clearall     breakpoints would halt the target again before the detach");
            out.println("#    (dlv) exit -d      then answer Y to \"Would you like to kill the headless instance?\"");
            out.println("# Delve halts the target, detaches without killing it and exits; check: grep TracerPid /proc/PID/status -> 0");
            return ExitCode.OK;
        }
        int pid = detach(delve, timeout);
        if ("json".equals(output)) {
            ObjectNode json = Connect.Json.MAPPER.createObjectNode();
            json.put("address", where);
            json.put("pid", pid);
            json.put("detached", true);
            out.println(Connect.Json.MAPPER.writeValueAsString(json));
        } else {
            out.println("detached: Delve at " + where + " let go of PID " + pid + " and exited; the target keeps running, untraced.");
        }
        return ExitCode.OK;
    }

    /** Detaches safely and returns the target's PID; debug.java calls this on Ctrl-C unless --keep. */
    static int detach(InetSocketAddress address, Duration timeout) {
        String where = address.getHostString() + ":" + address.getPort();
        Delve delve = Connect.open(address, timeout);
        try {
            if (delve.state().exited()) throw new ExitException(ExitCode.STATE, "the target behind " + where + " has exited: nothing to detach from");
            return delve.detachSafely().pid();
        } catch (IOException e) {
            throw Connect.notDelve(where, timeout, e);
        } finally {
            Connect.closeQuietly(delve);
        }
    }
}

/**
 * The local path of the sources and the path the binary knows them by: what VS Code's substitutePath ("from" local,
 * "to" remote) and dlv's `config substitute-path` (remote first) need.
 */
record SourceMapping(String from, String to, String how) {
    interface Sources {
        List<String> list() throws IOException;
    }

    /** The Go module around a directory: where its go.mod is and the module path it declares. */
    record GoModule(Path dir, String path) {
        static Optional<GoModule> around(Path start) {
            for (Path dir = start.toAbsolutePath().normalize(); dir != null; dir = dir.getParent()) {
                Path goMod = dir.resolve("go.mod");
                if (Files.isRegularFile(goMod)) {
                    try {
                        for (String line : Files.readAllLines(goMod)) {
                            Matcher m = Pattern.compile("^\\s*module\\s+\"?([^\"\\s]+)\"?").matcher(line);
                            if (m.find()) return Optional.of(new GoModule(dir, m.group(1)));
                        }
                    } catch (IOException e) {
                        return Optional.empty();
                    }
                    return Optional.of(new GoModule(dir, ""));
                }
            }
            return Optional.empty();
        }
    }

    /**
     * The mapping for a local root (default: the module around the current directory) against the binary's source list:
     * overrides win; otherwise each local .go file is looked up by its path relative to the module, and the remote prefix
     * that most files share is the remote root (a -trimpath binary names them module/path/file.go, others by the absolute
     * build path).
     */
    static Optional<SourceMapping> compute(Path localRoot, String remoteRoot, Sources sources) throws IOException {
        Path start = localRoot != null ? localRoot : Path.of("");
        Optional<GoModule> module = GoModule.around(start);
        Path local = localRoot != null ? localRoot.toAbsolutePath().normalize() : module.map(GoModule::dir).orElse(null);
        if (remoteRoot != null) {
            Path from = local != null ? local : Path.of("").toAbsolutePath();
            return Optional.of(new SourceMapping(from.toString(), stripSlash(remoteRoot), "--remote-root"));
        }
        if (local == null) return Optional.empty();
        List<String> remote = sources.list();
        if (remote.isEmpty()) return Optional.empty();
        String modulePath = module.filter(m -> m.dir().equals(local)).map(GoModule::path).orElse("");
        Optional<SourceMapping> found = match(local, localFiles(local), modulePath, remote);
        if (found.isEmpty()) {
            throw new ExitException(ExitCode.NOT_FOUND, "none of the " + remote.size() + " source files of the target's binary is a file of "
                    + local + (modulePath.isEmpty() ? "" : " (module " + modulePath + ")") + ": run connect in your checkout of the"
                    + " target's sources, or pass --local-root and --remote-root");
        }
        return found;
    }

    /** Pure matching, for tests: local files relative to {@code local} ('/' separated) against the binary's source paths. */
    static Optional<SourceMapping> match(Path local, List<String> localFiles, String modulePath, List<String> remote) {
        Map<String, List<String>> byName = new HashMap<>();
        for (String file : localFiles) byName.computeIfAbsent(file.substring(file.lastIndexOf('/') + 1), k -> new ArrayList<>()).add(file);
        Map<String, Integer> prefixes = new LinkedHashMap<>();
        for (String source : remote) {
            String path = source.replace('\\', '/');
            String base = path.substring(path.lastIndexOf('/') + 1);
            for (String file : byName.getOrDefault(base, List.of())) {
                if (path.endsWith("/" + file)) prefixes.merge(path.substring(0, path.length() - file.length() - 1), 1, Integer::sum);
            }
        }
        if (prefixes.isEmpty()) {
            if (!modulePath.isEmpty() && remote.stream().anyMatch(s -> s.startsWith(modulePath + "/"))) {
                return Optional.of(new SourceMapping(local.toString(), modulePath, "module path, -trimpath binary"));
            }
            return Optional.empty();
        }
        String lastElement = local.getFileName() == null ? "" : local.getFileName().toString();
        Map.Entry<String, Integer> best = prefixes.entrySet().stream()
                .max(Comparator.<Map.Entry<String, Integer>>comparingInt(Map.Entry::getValue)
                        .thenComparing(e -> e.getKey().equals(modulePath))
                        .thenComparing(e -> e.getKey().endsWith("/" + lastElement)))
                .orElseThrow();
        String remoteRoot = best.getKey();
        String how = best.getValue() + " of " + localFiles.size() + " local .go files found in the binary"
                + (remoteRoot.equals(modulePath) ? ", a -trimpath build" : "");
        return Optional.of(new SourceMapping(local.toString(), remoteRoot, how));
    }

    /** The module's .go files relative to its root, skipping vendor/, testdata/, hidden directories and nested modules. */
    static List<String> localFiles(Path root) throws IOException {
        List<String> files = new ArrayList<>();
        try (Stream<Path> walk = Files.walk(root)) {
            walk.filter(p -> p.toString().endsWith(".go") && Files.isRegularFile(p)).forEach(p -> {
                Path relative = root.relativize(p);
                for (int i = 0; i < relative.getNameCount() - 1; i++) {
                    String part = relative.getName(i).toString();
                    if (part.equals("vendor") || part.equals("testdata") || part.startsWith(".") || part.startsWith("_")) return;
                    if (Files.isRegularFile(root.resolve(relative.subpath(0, i + 1)).resolve("go.mod"))) return;
                }
                files.add(relative.toString().replace('\\', '/'));
            });
        }
        files.sort(null);
        return files;
    }

    private static String stripSlash(String path) {
        return path.length() > 1 && path.endsWith("/") ? path.substring(0, path.length() - 1) : path;
    }
}

/**
 * A local JSON-RPC relay in front of Delve for `dlv connect`: passes everything through except the client's
 * `RPCServer.Detach`, which dlv sends when you quit and answer Y to "kill the headless instance?", with Kill=true when
 * you also answer Y to "kill the process?". The guard answers it itself, and when the client's connection ends:
 * after a Detach it detaches safely (halt, Detach Kill=false: Delve exits, the target runs on untraced), unless
 * keepDelve; otherwise (answer n, exit -c, EOF, dlv killed) it clears the breakpoints that client created (unless
 * keepBreakpoints) and resumes the target, and Delve keeps running for the next session.
 */
final class QuitGuard implements Closeable {
    private static final ObjectMapper JSON = new ObjectMapper();
    private final InetSocketAddress delve;
    private final Duration timeout;
    private final boolean keepBreakpoints;
    private final boolean keepDelve;
    private final List<Thread> sessions = new CopyOnWriteArrayList<>();
    private final List<String> outcomes = new CopyOnWriteArrayList<>();
    private ServerSocket server;

    QuitGuard(InetSocketAddress delve, Duration timeout, boolean keepBreakpoints, boolean keepDelve) {
        this.delve = delve;
        this.timeout = timeout;
        this.keepBreakpoints = keepBreakpoints;
        this.keepDelve = keepDelve;
    }

    /** Listens on a free loopback port and returns it; dlv connects there. */
    InetSocketAddress start() throws IOException {
        server = new ServerSocket(0, 8, InetAddress.getLoopbackAddress());
        Thread acceptor = new Thread(this::accept, "kdlv-guard-accept");
        acceptor.setDaemon(true);
        acceptor.start();
        return new InetSocketAddress(server.getInetAddress(), server.getLocalPort());
    }

    private void accept() {
        while (!server.isClosed()) {
            try {
                Socket client = server.accept();
                Thread session = new Thread(() -> session(client), "kdlv-guard-session");
                session.setDaemon(true);
                sessions.add(session);
                session.start();
            } catch (IOException e) {
                return; // closed
            }
        }
    }

    private void session(Socket client) {
        Set<String> createRequests = ConcurrentHashMap.newKeySet();
        Set<Integer> created = ConcurrentHashMap.newKeySet();
        boolean detachAsked = false;
        boolean killAsked = false;
        try (client; Socket upstream = new Socket()) {
            upstream.connect(delve, (int) timeout.toMillis());
            OutputStream toClient = client.getOutputStream();
            OutputStream toDelve = upstream.getOutputStream();
            Thread answers = new Thread(() -> relayAnswers(upstream, toClient, createRequests, created), "kdlv-guard-answers");
            answers.setDaemon(true);
            answers.start();
            JsonParser requests = JSON.getFactory().createParser(client.getInputStream());
            JsonNode request;
            while ((request = readTree(requests)) != null) {
                String method = request.path("method").asText("");
                if (method.equals("RPCServer.Detach")) {
                    detachAsked = true;
                    killAsked = request.path("params").path(0).path("Kill").asBoolean();
                    ObjectNode answer = JSON.createObjectNode();
                    answer.set("id", request.get("id"));
                    answer.putObject("result");
                    answer.putNull("error");
                    synchronized (toClient) {
                        toClient.write(JSON.writeValueAsBytes(answer));
                        toClient.flush();
                    }
                    break;
                }
                if (method.equals("RPCServer.CreateBreakpoint") || method.equals("RPCServer.CreateWatchpoint")) {
                    createRequests.add(String.valueOf(request.get("id")));
                }
                toDelve.write(JSON.writeValueAsBytes(request));
                toDelve.flush();
            }
        } catch (IOException e) {
            // the client or Delve went away: end the session safely all the same
        }
        outcomes.add(detachAsked && !keepDelve ? detach(killAsked) : endSafely(created, detachAsked, killAsked));
    }

    private void relayAnswers(Socket upstream, OutputStream toClient, Set<String> createRequests, Set<Integer> created) {
        try {
            JsonParser answers = JSON.getFactory().createParser(upstream.getInputStream());
            JsonNode answer;
            while ((answer = readTree(answers)) != null) {
                if (createRequests.remove(String.valueOf(answer.get("id")))) {
                    int id = answer.path("result").path("Breakpoint").path("id").asInt();
                    if (id > 0) created.add(id);
                }
                synchronized (toClient) {
                    toClient.write(JSON.writeValueAsBytes(answer));
                    toClient.flush();
                }
            }
        } catch (IOException e) {
            // either side closed
        }
    }

    private static JsonNode readTree(JsonParser parser) throws IOException {
        if (parser.nextToken() == null) return null;
        return JSON.readTree(parser);
    }

    /** What dlv asked for at quit: Detach, with Kill=true or false. */
    private static String asked(boolean killAsked) {
        return "dlv asked to end Delve" + (killAsked ? " and kill the target: refused the kill. " : ". ");
    }

    /** Halt, then Detach with Kill=false: Delve exits, the target keeps running, untraced; says what it did. */
    private String detach(boolean killAsked) {
        try (Delve control = Delve.connect(delve, (int) timeout.toMillis())) {
            if (control.state().exited()) return asked(killAsked) + "The target has exited.";
            Delve.State detached = control.detachSafely();
            return asked(killAsked) + "Detached: Delve ended, the target (PID " + detached.pid() + ") keeps running, untraced.";
        } catch (IOException e) {
            return asked(killAsked) + "Could not detach (" + e.getMessage() + "): check with `connect --address "
                    + delve.getHostString() + ":" + delve.getPort() + "`.";
        }
    }

    /** Clears the session's breakpoints (halting a running target for it) and resumes the target; says what it did. */
    private String endSafely(Set<Integer> created, boolean detachAsked, boolean killAsked) {
        String asked = detachAsked ? asked(killAsked) + "Kept Delve (--keep-delve): " : "";
        try (Delve control = Delve.connect(delve, (int) timeout.toMillis())) {
            Delve.State state = control.state();
            if (state.exited()) return asked + "the target has exited.";
            List<Integer> toClear = new ArrayList<>();
            if (!keepBreakpoints && !created.isEmpty()) {
                if (state.running()) state = control.halt();
                List<Integer> existing = control.breakpoints();
                for (int id : created) if (existing.contains(id)) toClear.add(id);
                for (int id : toClear) control.clearBreakpoint(id);
            }
            String cleared = toClear.isEmpty() ? "" : "cleared " + toClear.size() + " breakpoint(s) the session set, ";
            if (!state.running()) {
                control.resume();
                return asked + cleared + "resumed the target; Delve still listens on " + delve.getHostString() + ":" + delve.getPort() + ".";
            }
            return asked + cleared + "the target runs; Delve still listens on " + delve.getHostString() + ":" + delve.getPort() + ".";
        } catch (IOException e) {
            return asked + "could not make sure the target runs (" + e.getMessage() + "): check with `connect --address "
                    + delve.getHostString() + ":" + delve.getPort() + "`.";
        }
    }

    /** Waits until every session that started has ended safely. */
    void awaitSessions(Duration limit) throws InterruptedException {
        long deadline = System.nanoTime() + limit.toNanos();
        for (Thread session : sessions) {
            session.join(Math.max(1, TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime())));
        }
    }

    String summary() {
        return outcomes.isEmpty() ? "dlv did not connect." : String.join(" ", outcomes);
    }

    @Override
    public void close() throws IOException {
        if (server != null) server.close();
    }
}
