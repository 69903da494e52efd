///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//SOURCES lib/*.java
//DESCRIPTION Debug the Go process of a pod in one command: attach Delve, tunnel it to 127.0.0.1, write the IDE configuration.
//SOURCES attach.java
//SOURCES connect.java
//MAIN Debug

import java.io.IOException;
import java.io.PrintWriter;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.Objects;
import java.util.concurrent.Callable;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/**
 * The whole recipe in one process: attach (the ephemeral Delve), tunnel (Delve on 127.0.0.1 here), connect (check it
 * answers, write the IDE configuration); then keep the tunnel until Ctrl-C and detach, leaving the target running.
 */
@Command(name = "debug", mixinStandardHelpOptions = true, version = Cli.VERSION, sortOptions = false,
        description = "Debug the Go process of a pod in one command: attach Delve, tunnel it to 127.0.0.1, write the IDE configuration.",
        footer = {"", "Examples:",
                "  debug deploy/web --image=registry.example.com/kdlv-debug:1.27.2 --ide vscode",
                "  debug my-pod app --local-port 0 --keep     any free local port; leave the debugger running at the end",
                "  debug -l app=web --dry-run                 the kubectl and dlv steps, changing nothing"})
class Debug implements Callable<Integer> {
    @Parameters(index = "0", arity = "0..1", paramLabel = "POD", description = "The target: a pod, pod/NAME, or deploy|sts|ds|rs/NAME.")
    String target;

    @Parameters(index = "1", arity = "0..1", paramLabel = "CONTAINER", description = "The target container (default: as kubectl picks it).")
    String container;

    @Option(names = {"-l", "--selector"}, paramLabel = "SELECTOR", description = "Pick a running pod by label selector.")
    String selector;

    @Option(names = "--image", paramLabel = "IMAGE", defaultValue = "${env:KDLV_IMAGE}", description = "The debug image (default: $KDLV_IMAGE).")
    String image;

    @Option(names = {"-c", "--name"}, paramLabel = "NAME", description = "Name of the debugger container (default: kdlv-debugger-xxxxx).")
    String name;

    @Option(names = "--pid", paramLabel = "N", description = "Attach to this PID instead of finding the Go process.")
    Integer pid;

    @Option(names = "--port", paramLabel = "PORT", defaultValue = "2345", description = "Delve's port on the pod's loopback (default: ${DEFAULT-VALUE}).")
    int port;

    @Option(names = "--local-port", paramLabel = "PORT", defaultValue = "2345", description = "Local port of the tunnel; 0 picks a free one (default: ${DEFAULT-VALUE}).")
    int localPort;

    @Option(names = "--address", paramLabel = "ADDR", defaultValue = "127.0.0.1",
            description = "Local address of the tunnel (default: ${DEFAULT-VALUE}; Delve has no authentication: think before you widen it).")
    String address;

    @Option(names = "--mode", paramLabel = "MODE", defaultValue = "port-forward", description = "port-forward (default) or exec (nc in the debugger, as the article).")
    String mode;

    @Option(names = "--ide", paramLabel = "IDE", split = ",", description = "goland and/or vscode: write the run configuration (see connect).")
    List<String> ides = new ArrayList<>();

    @Option(names = "--project", paramLabel = "DIR", description = "Where .run/ and .vscode/ are (default: the current directory).")
    Path project;

    @Option(names = "--local-root", paramLabel = "DIR", description = "Local source root for substitutePath (default: the Go module here).")
    Path localRoot;

    @Option(names = "--remote-root", paramLabel = "PATH", description = "The sources' path in the binary (default: computed).")
    String remoteRoot;

    @Option(names = "--keep", description = "On Ctrl-C, leave the debugger running (a later attach or debug reuses it) instead of detaching.")
    boolean keep;

    @Option(names = "--grace", paramLabel = "DURATION", converter = Durations.class,
            description = "With no client connected, resume a halted target after this long (default and upper bound: the liveness-probe budget, else 30s).")
    Duration grace;

    @Option(names = "--timeout", paramLabel = "DURATION", defaultValue = "2m", converter = Durations.class,
            description = "How long attach may wait for the debugger (default: ${DEFAULT-VALUE}).")
    Duration timeout;

    @Option(names = "--dry-run", description = "Change nothing: print the kubectl and dlv steps.")
    boolean dryRun;

    @Mixin KubeOptions kubeOptions;
    @Mixin VerboseOption verboseOption;
    @Spec CommandSpec spec;

    static final Duration DELVE_TIMEOUT = Duration.ofSeconds(15);
    /** Set when Ctrl-C started the shutdown: the main thread then only waits for the detach to finish. */
    private volatile boolean ending;
    private final CountDownLatch ended = new CountDownLatch(1);

    public static void main(String... args) {
        Kube.warmUp();
        Cli.main(new Debug(), args);
    }

    @Override
    public Integer call() throws Exception {
        Tunnel.Mode tunnelMode = parseMode();
        if (localPort < 0 || localPort > 65535) throw new ExitException(ExitCode.USAGE, "--local-port " + localPort + " is not a TCP port; use 0-65535");
        for (String ide : ides) {
            if (!ide.equals("goland") && !ide.equals("vscode")) throw new ExitException(ExitCode.USAGE, "--ide takes goland or vscode, not '" + ide + "'");
        }
        Path projectDir = (project != null ? project : Path.of("")).toAbsolutePath().normalize();
        if (ides.contains("vscode")) Connect.readLaunchJson(projectDir.resolve(".vscode").resolve("launch.json")); // refuse before any change
        InetSocketAddress local = new InetSocketAddress(InetAddress.getByName(address), localPort);
        PrintWriter out = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        if (!local.getAddress().isLoopbackAddress()) {
            err.println(Cli.yellow("warning: the tunnel listens on " + address + ": anyone who reaches it controls the target (Delve has no authentication)"));
        }

        // 1. attach's plan: the target, and the debugger to add (or the one of ours that still answers).
        Attach attach = new Attach();
        CommandLine attachCommand = Cli.command(attach);
        attachCommand.setOut(out);
        attachCommand.setErr(err);
        attachCommand.parseArgs(attachArgs().toArray(String[]::new));
        Attach.Plan plan = attach.plan();
        if (plan == null) { // --dry-run: attach printed its steps
            printManualSteps(out, tunnelMode);
            return ExitCode.OK;
        }
        Consumer<String> tunnelLog = line -> err.println("tunnel: " + line);
        Tunnel tunnel;
        Attach.Attached attached;
        if (plan.reused() != null) {
            attached = plan.reused();
            tunnel = Tunnel.open(plan.kube(), attached.pod(), attached.debugger(), attached.port(), local, tunnelMode, tunnelLog, verboseOption.verbose);
        } else {
            // 2. the tunnel opens its API session while attach's pre-flight asks its questions, then attach adds the
            // debugger and we ask Delve through the tunnel until it answers (3).
            tunnel = openBeside(plan, attach, local, tunnelMode, tunnelLog);
            try {
                attached = start(attach, plan, tunnel);
            } catch (RuntimeException | IOException | InterruptedException e) {
                tunnel.close();
                throw e;
            }
        }
        InetSocketAddress delve = new InetSocketAddress(tunnel.localAddress().getAddress(), tunnel.localPort());
        Thread shutdown = new Thread(() -> end(tunnel, delve, attached, err), "kdlv-debug-shutdown");
        Runtime.getRuntime().addShutdownHook(shutdown);
        try {
            // 3. connect: Delve answers through the tunnel and the target runs; the IDE configurations.
            if (attached.reused()) Connect.awaitRunning(delve, DELVE_TIMEOUT);
            // The IDE's substitutePath needs the binary's source paths, which Delve lists only while the target is halted:
            // peek halts it for a few milliseconds.
            boolean mapping = !ides.isEmpty();
            Connect.Report report = Connect.describe(delve, DELVE_TIMEOUT, mapping && remoteRoot == null, localRoot, remoteRoot, mapping);
            List<Path> written = new ArrayList<>();
            // Named after the target as given (deploy/web stays the same across pod restarts): a later debug updates it.
            String configuration = "kdlv " + attached.namespace() + "/" + (target != null ? target : selector != null ? selector : attached.pod());
            report.mapping().ifPresent(m -> err.println("source mapping (substitutePath): " + m.from() + " -> " + m.to() + " (" + m.how() + ")"));
            for (String ide : ides) {
                written.add(ide.equals("goland") ? Connect.writeGoland(projectDir, configuration, delve)
                        : Connect.writeVscode(projectDir, configuration, delve, report.mapping().orElse(null)));
            }
            out.printf("Delve %s on %s/%s (%s%s) listens on %s:%d%s; Ctrl-C %s.%n", report.delve().delveVersion(),
                    attached.namespace(), attached.pod(), attached.pid() == null ? "" : "PID " + attached.pid() + ", ",
                    attached.goVersion() != null ? attached.goVersion() : report.goVersion().isEmpty() ? "Go version not known yet" : report.goVersion(),
                    delve.getHostString(), delve.getPort(),
                    written.isEmpty() ? "" : ", wrote " + String.join(" and ", written.stream().map(p -> projectDir.relativize(p).toString()).toList()),
                    keep ? "closes the tunnel and leaves the debugger running" : "detaches and leaves the target running");
            out.flush();

            // 4. Until Ctrl-C or the debugger goes away; resume a target nobody looks at any more.
            Duration resumeAfter = resumeGrace(attached.livenessBudget());
            ExitException gone = watch(tunnel, delve, resumeAfter, err);
            if (ending) {
                ended.await(DELVE_TIMEOUT.toSeconds() * 2, TimeUnit.SECONDS);
                return ExitCode.OK;
            }
            Runtime.getRuntime().removeShutdownHook(shutdown);
            tunnel.close();
            throw gone;
        } catch (RuntimeException | IOException e) {
            if (!ending && Runtime.getRuntime().removeShutdownHook(shutdown)) end(tunnel, delve, attached, err);
            throw e;
        }
    }

    /**
     * Opens the tunnel while attach's pre-flight runs: both are round trips to the API server. Refuses a pod where a
     * Delve already answers on the port (one kdlv did not start): ours could not listen there.
     */
    Tunnel openBeside(Attach.Plan plan, Attach attach, InetSocketAddress local, Tunnel.Mode tunnelMode, Consumer<String> log) {
        CompletableFuture<Tunnel> opening = Attach.ask(() ->
                Tunnel.openBeforeDebugger(plan.kube(), plan.pod(), plan.debugger(), plan.port(), local, tunnelMode, log, verboseOption.verbose));
        CompletableFuture<Boolean> taken = Attach.ask(() -> Attach.delveAnswers(plan.kube(), plan.podName(), plan.port(), Duration.ofSeconds(2)));
        try {
            attach.preflight(plan);
            if (attach.portForwardAllowed && Attach.answer(taken)) {
                throw new ExitException(ExitCode.STATE, "a Delve already answers on 127.0.0.1:" + plan.port() + " in pod " + plan.podName()
                        + ", and kdlv did not start it: reach it with tunnel " + plan.podName() + " -n " + plan.kube().namespace
                        + " -c DEBUGGER --remote-port " + plan.port() + ", or give this debugger another --port");
            }
        } catch (RuntimeException e) {
            opening.thenAccept(Tunnel::close);
            throw e;
        }
        return Attach.answer(opening);
    }

    /**
     * Adds the debugger and waits until its Delve answers. Asking Delve is quicker than waiting for the kubelet, which
     * reports a started container up to a second late (its relist period): each question is a port-forward of its own,
     * not the tunnel's, whose API session a refused stream would end. Meanwhile attach's own wait (watch, then log)
     * reports a debugger that cannot start, with Delve's reason.
     */
    Attach.Attached start(Attach attach, Attach.Plan plan, Tunnel tunnel) throws IOException, InterruptedException {
        Thread interrupted = attach.add(plan);
        CompletableFuture<Attach.Found> waiting = Attach.ask(() -> {
            try {
                return attach.waitForDelve(plan.kube(), plan.core(), plan.podName(), plan.debugger());
            } catch (RuntimeException e) {
                throw e;
            } catch (Exception e) {
                throw new ExitException(ExitCode.FAILURE, "waiting for debugger " + plan.debugger() + ": " + e.getMessage(), e);
            }
        });
        long deadline = System.nanoTime() + timeout.toNanos();
        try {
            // Without pods/portforward (--mode exec), attach's wait is the only way to know.
            boolean answers = !attach.portForwardAllowed && Attach.answer(waiting) != null;
            while (!answers) {
                if (waiting.isCompletedExceptionally()) Attach.answer(waiting); // the debugger cannot start: attach's reason
                if (tunnel.ended().isDone()) { // the debugger ended: attach's wait has its reason in a moment
                    awaitReason(waiting);
                    throw Objects.requireNonNullElseGet(tunnel.ended().getNow(null), () -> new ExitException(ExitCode.GONE, "the tunnel closed"));
                }
                if (System.nanoTime() > deadline) throw attach.timedOut(plan.podName(), plan.debugger(), "Delve did not answer yet");
                answers = Attach.delveAnswers(plan.kube(), plan.podName(), plan.port(), PROBE_TIMEOUT);
                if (!answers) Thread.sleep(PROBE_INTERVAL_MILLIS);
            }
        } finally {
            Runtime.getRuntime().removeShutdownHook(interrupted);
        }
        tunnel.accept();
        // Through the tunnel now, until the target runs (dlv attach --continue resumes it just after it listens). Delve
        // can listen and then fail to attach: then attach's wait has the reason.
        try {
            Connect.awaitRunning(new InetSocketAddress(tunnel.localAddress().getAddress(), tunnel.localPort()), DELVE_TIMEOUT);
        } catch (ExitException | IOException e) {
            if (!awaitReason(waiting)) throw e;
            throw attach.delveFailed(plan.core(), plan.kube().namespace, plan.podName(), plan.debugger(), null);
        }
        // The PID comes from the debugger's log, which the kubelet serves a little later (Delve tells it only while the
        // target is halted): known here when the kubelet was quick.
        attach.quiet = true;
        return plan.attached(Objects.requireNonNullElse(waiting.getNow(null), new Attach.Found(null, null)));
    }

    /**
     * Gives attach's wait up to 10 s to end: throws its failure (the debugger's reason), returns true when it ended
     * without one (Delve said it listens), false when it is still waiting.
     */
    static boolean awaitReason(CompletableFuture<Attach.Found> waiting) throws InterruptedException {
        try {
            waiting.get(10, TimeUnit.SECONDS);
            return true;
        } catch (java.util.concurrent.ExecutionException e) {
            if (e.getCause() instanceof RuntimeException reason) throw reason;
            throw new ExitException(ExitCode.FAILURE, "waiting for the debugger: " + e.getCause(), e.getCause());
        } catch (java.util.concurrent.TimeoutException e) {
            return false;
        }
    }

    static final Duration PROBE_TIMEOUT = Duration.ofSeconds(3);
    static final long PROBE_INTERVAL_MILLIS = 20;

    /** attach's arguments, from the options debug shares with it. */
    List<String> attachArgs() {
        List<String> args = new ArrayList<>();
        if (target != null) args.add(target);
        if (container != null) args.add(container);
        if (selector != null) args.addAll(List.of("-l", selector));
        if (image != null) args.addAll(List.of("--image", image));
        if (name != null) args.addAll(List.of("-c", name));
        if (pid != null) args.addAll(List.of("--pid", pid.toString()));
        args.addAll(List.of("--port", Integer.toString(port), "--timeout", timeout.toMillis() + "ms"));
        if (dryRun) args.add("--dry-run");
        if (kubeOptions.kubeconfig != null) args.addAll(List.of("--kubeconfig", kubeOptions.kubeconfig.toString()));
        if (kubeOptions.context != null) args.addAll(List.of("--context", kubeOptions.context));
        if (kubeOptions.namespace != null) args.addAll(List.of("-n", kubeOptions.namespace));
        if (verboseOption.verbose) args.add("-v");
        return args;
    }

    Tunnel.Mode parseMode() {
        try {
            return Tunnel.Mode.parse(mode);
        } catch (IllegalArgumentException e) {
            throw new ExitException(ExitCode.USAGE, "--mode " + mode + " is unknown: use port-forward or exec");
        }
    }

    /** The grace period before a halted, unwatched target is resumed: never longer than the liveness-probe budget. */
    Duration resumeGrace(Optional<Integer> livenessBudget) {
        Duration ceiling = livenessBudget.map(seconds -> Duration.ofSeconds(Math.max(1, seconds - 2))).orElse(Duration.ofSeconds(30));
        if (grace == null || grace.compareTo(ceiling) > 0) return ceiling;
        return grace;
    }

    /**
     * Holds one Delve connection of its own and looks once a second: when the target is halted and no other client is
     * connected for {@code resumeAfter}, it resumes the target. Returns when the tunnel ends (the debugger went away).
     */
    ExitException watch(Tunnel tunnel, InetSocketAddress delveAddress, Duration resumeAfter, PrintWriter err) throws IOException {
        long unwatchedSince = 0;
        try (Delve delve = Connect.open(delveAddress, DELVE_TIMEOUT)) {
            while (true) {
                try {
                    ExitException gone = tunnel.ended().get(1, TimeUnit.SECONDS);
                    return gone != null ? gone : new ExitException(ExitCode.GONE, "the tunnel closed");
                } catch (java.util.concurrent.TimeoutException stillOpen) {
                    // look at the target
                } catch (InterruptedException | java.util.concurrent.ExecutionException e) {
                    return new ExitException(ExitCode.INTERNAL, "the tunnel's end could not be read: " + e);
                }
                if (ending) return null;
                Delve.State state = delve.state();
                boolean unwatched = !state.running() && !state.exited() && tunnel.activeConnections() <= 1;
                if (!unwatched) {
                    unwatchedSince = 0;
                } else if (unwatchedSince == 0) {
                    unwatchedSince = System.nanoTime();
                } else if (System.nanoTime() - unwatchedSince >= resumeAfter.toNanos()) {
                    err.println(Cli.yellow("the target stayed halted with no client connected for " + Durations.format(resumeAfter)
                            + ": resuming it before its liveness probe restarts it"));
                    err.flush();
                    delve.resume();
                    unwatchedSince = 0;
                }
            }
        }
    }

    /** Ctrl-C (or a failure after attach): detach safely unless --keep, then close the tunnel. Runs once. */
    void end(Tunnel tunnel, InetSocketAddress delve, Attach.Attached attached, PrintWriter err) {
        ending = true;
        try {
            if (keep) {
                err.println("debugger " + attached.debugger() + " keeps running in pod " + attached.pod() + "; attach or debug reuses it");
            } else {
                int pid = ConnectDetach.detach(delve, DELVE_TIMEOUT);
                err.println("detached: PID " + pid + " of " + attached.pod() + " runs on, untraced; debugger " + attached.debugger() + " exits");
            }
        } catch (RuntimeException e) {
            err.println(Cli.red("could not detach (" + Cli.firstLine(e.getMessage()) + "); the debugger may still hold the target: run"
                    + " connect detach --address " + delve.getHostString() + ":" + delve.getPort() + " through a tunnel"));
        } finally {
            tunnel.close();
            err.flush();
            ended.countDown();
        }
    }

    void printManualSteps(PrintWriter out, Tunnel.Mode tunnelMode) {
        out.println("# then the tunnel, as the article (one kubectl per connection) or with kubectl port-forward:");
        out.println("tcpserver 127.0.0.1 " + localPort + " kubectl exec -i -c DEBUGGER POD -- nc 127.0.0.1 " + port
                + (tunnelMode == Tunnel.Mode.EXEC ? "    # what --mode exec does" : ""));
        out.println("kubectl port-forward pod/POD " + localPort + ":" + port + (tunnelMode == Tunnel.Mode.PORT_FORWARD ? "    # what --mode port-forward does" : ""));
        out.println("# and the client; quit it with `exit -c` (its default answers kill the target):");
        out.println("dlv connect 127.0.0.1:" + localPort);
        out.println("# at the end, detach: halt, then Detach with Kill=false (connect detach --address 127.0.0.1:" + localPort + ")");
    }
}
