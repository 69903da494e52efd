///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//SOURCES lib/*.java
//DESCRIPTION Attach a headless Delve to the Go process of a running pod, through an ephemeral container.

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.google.gson.reflect.TypeToken;
import io.kubernetes.client.PodLogs;
import io.kubernetes.client.PortForward;
import io.kubernetes.client.custom.V1Patch;
import io.kubernetes.client.openapi.ApiException;
import io.kubernetes.client.openapi.apis.AppsV1Api;
import io.kubernetes.client.openapi.apis.CoreV1Api;
import io.kubernetes.client.openapi.models.V1APIResource;
import io.kubernetes.client.openapi.models.V1Container;
import io.kubernetes.client.openapi.models.V1ContainerState;
import io.kubernetes.client.openapi.models.V1ContainerStatus;
import io.kubernetes.client.openapi.models.V1EnvVar;
import io.kubernetes.client.openapi.models.V1EphemeralContainer;
import io.kubernetes.client.openapi.models.V1LabelSelector;
import io.kubernetes.client.openapi.models.V1Pod;
import io.kubernetes.client.openapi.models.V1PodCondition;
import io.kubernetes.client.openapi.models.V1Probe;
import io.kubernetes.client.openapi.models.V1SecurityContext;
import io.kubernetes.client.util.PatchUtils;
import io.kubernetes.client.util.Watch;
import java.io.BufferedReader;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.Callable;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/**
 * The article's "Ephemeral Debug Container" step: `kubectl debug --target ... -- dlv attach 1 ...`, done
 * through the API and without its sharp edges: Delve listens on pod loopback only, the Go process is found
 * rather than assumed to be PID 1, a running debugger of ours is reused, and nothing is changed before the
 * checks that can fail have passed.
 */
@Command(name = "attach", mixinStandardHelpOptions = true, version = Cli.VERSION, sortOptions = false,
        description = "Attach a headless Delve to the Go process of a running pod, through an ephemeral container.",
        footer = {"", "Examples:",
                "  attach my-pod                      the pod's default (or only) container",
                "  attach my-pod app --image=registry.example.com/kdlv-debug:1.27.2",
                "  attach deploy/web -n shop          a running pod of the deployment",
                "  attach -l app=web --dry-run        print the kubectl steps, change nothing"})
class Attach implements Callable<Integer> {
    static final String ENV_TARGET = "KDLV_TARGET";
    static final String ENV_PORT = "KDLV_PORT";
    static final Pattern LISTENING = Pattern.compile("API server listening at: (\\S+)");
    static final Pattern FOUND = Pattern.compile("kdlv-attach: pid=(\\d+) go=(\\S+)");

    @Parameters(index = "0", arity = "0..1", paramLabel = "POD",
            description = "The target: a pod name, pod/NAME, or deploy|sts|ds|rs/NAME for one of its running pods.")
    String target;

    @Parameters(index = "1", arity = "0..1", paramLabel = "CONTAINER",
            description = "The target container (default: the pod's kubectl.kubernetes.io/default-container, else its only container).")
    String container;

    @Option(names = {"-l", "--selector"}, paramLabel = "SELECTOR", description = "Pick a running pod by label selector instead of naming it.")
    String selector;

    @Option(names = "--image", paramLabel = "IMAGE", defaultValue = "${env:KDLV_IMAGE}",
            description = "The debug image with dlv and kdlv-attach (see build-image; default: $KDLV_IMAGE).")
    String image;

    @Option(names = {"-c", "--name"}, paramLabel = "NAME", description = "Name of the debugger container (default: kdlv-debugger-xxxxx).")
    String name;

    @Option(names = "--port", paramLabel = "PORT", defaultValue = "2345", description = "Port Delve listens on, on the pod's loopback (default: ${DEFAULT-VALUE}).")
    int port;

    @Option(names = "--pid", paramLabel = "N", description = "Attach to this PID instead of finding the Go process.")
    Integer pid;

    @Option(names = "--timeout", paramLabel = "DURATION", defaultValue = "2m", converter = Durations.class,
            description = "How long to wait for the debugger to run and Delve to listen (default: ${DEFAULT-VALUE}).")
    Duration timeout;

    @Option(names = "--dry-run", description = "Change nothing; print the equivalent kubectl steps and the patch.")
    boolean dryRun;

    @Option(names = {"-o", "--output"}, paramLabel = "FORMAT", description = "json: print pod, namespace, container, debugger, pid, port and Go version as JSON.")
    String output;

    @Mixin KubeOptions kubeOptions;
    @Mixin VerboseOption verboseOption;
    @Spec CommandSpec spec;

    /** Set by the pre-flight: whether this user may open a port-forward to ask Delve whether it answers. */
    boolean portForwardAllowed;
    /** Set by debug.java once Delve answers through its tunnel: a wait still running in the background says nothing more. */
    volatile boolean quiet;

    public static void main(String... args) {
        Kube.warmUp();
        Cli.main(new Attach(), args);
    }

    /** What attach did, for the summary and for -o json. */
    record Attached(String namespace, String pod, String container, String debugger, Integer pid, int port,
                    String goVersion, String image, boolean reused, Optional<Integer> livenessBudget) {}

    @Override
    public Integer call() throws Exception {
        Attached attached = attach();
        return attached == null ? ExitCode.OK : report(attached);
    }

    /** Attaches (or finds the debugger to reuse) and says what it did; null after --dry-run. */
    Attached attach() throws Exception {
        Plan plan = plan();
        if (plan == null) return null;
        if (plan.reused() != null) return plan.reused();
        preflight(plan);
        Thread interrupted = add(plan);
        try {
            Found found = waitForDelve(plan.kube(), plan.core(), plan.podName(), plan.debugger());
            // Delve may say it listens and then fail to attach (its error comes after): ask it, where RBAC lets us.
            if (portForwardAllowed && !delveAnswers(plan.kube(), plan.podName(), port)) {
                throw delveFailed(plan.core(), plan.kube().namespace, plan.podName(), plan.debugger(), null);
            }
            return plan.attached(found);
        } finally {
            Runtime.getRuntime().removeShutdownHook(interrupted);
        }
    }

    /**
     * What attach is about to do: the target pod and container, and the debugger to add (its name and patch), or the
     * running debugger of ours it reuses ({@code reused}). debug.java goes through the same steps with its tunnel
     * opened beside them.
     */
    record Plan(Kube kube, CoreV1Api core, V1Pod pod, V1Container app, String debugger, String patch, boolean asRoot,
                String image, int port, Attached reused) {
        String podName() {
            return pod.getMetadata().getName();
        }

        Attached attached(Found found) {
            return new Attached(kube.namespace, podName(), app.getName(), debugger, found.pid(), port, found.goVersion(), image, false, livenessBudget(app));
        }
    }

    /** Steps 1 to 3: the target, a debugger to reuse, or the one to add; null after --dry-run (the steps are printed). */
    Plan plan() throws Exception {
        if (output != null && !output.equals("json")) throw new ExitException(ExitCode.USAGE, "unknown output format '" + output + "'; the only one is -o json");
        if (port < 1 || port > 65535) throw new ExitException(ExitCode.USAGE, "--port " + port + " is not a TCP port; use 1-65535");
        Kube kube = kubeOptions.kube();
        CoreV1Api core = new CoreV1Api(kube.client);

        // 1. The target: a running pod and one of its containers.
        V1Pod pod = findPod(kube, core);
        String podName = pod.getMetadata().getName();
        V1Container app = targetContainer(pod);
        requireRunning(pod, app.getName());

        // 2. A debugger of ours that still answers is reused: ephemeral containers can never be removed.
        Optional<V1ContainerStatus> ours = runningDebuggerOf(pod, app.getName());
        if (ours.isPresent() && !dryRun) {
            String debugger = ours.get().getName();
            int debuggerPort = debuggerPort(pod, debugger).orElse(port);
            if (delveAnswers(kube, podName, debuggerPort)) {
                Found found = foundInLog(core, kube.namespace, podName, debugger);
                progress("reusing debugger %s: its Delve still answers on 127.0.0.1:%d in the pod", debugger, debuggerPort);
                Attached reused = new Attached(kube.namespace, podName, app.getName(), debugger, found.pid, debuggerPort,
                        found.goVersion, ours.get().getImage(), true, livenessBudget(app));
                return new Plan(kube, core, pod, app, debugger, null, false, ours.get().getImage(), debuggerPort, reused);
            }
            throw new ExitException(ExitCode.DEBUGGER_FAILED, "debugger " + debugger + " still runs in pod " + podName
                    + " but its Delve does not answer on 127.0.0.1:" + debuggerPort + " through a port-forward, and a second Delve cannot"
                    + " attach while it holds the process; see kubectl logs -n " + kube.namespace + " " + podName + " -c " + debugger);
        }

        // 3. The debugger: an ephemeral container in the target's PID namespace running a headless Delve.
        String debugger = name != null ? name : "kdlv-debugger-" + randomSuffix();
        requireImage();
        requireNameFree(pod, debugger);
        boolean asRoot = runsAsNonRoot(pod, app);
        Map<String, Object> container = debuggerContainer(debugger, app.getName(), asRoot);
        String patch = patchBody(container);
        if (dryRun) {
            printManualSteps(kube, podName, app.getName(), container, patch);
            return null;
        }
        return new Plan(kube, core, pod, app, debugger, patch, asRoot, image, port, null);
    }

    /**
     * Step 5: adds the debugger. Returns the shutdown hook that tells, on Ctrl-C, that the debugger may still start;
     * the caller removes it once the debugger answers or has failed.
     */
    Thread add(Plan plan) {
        if (plan.asRoot()) progress("pod %s runs as non-root: the debugger runs as uid 0 with SYS_PTRACE, which ptrace needs", plan.podName());
        progress("adding debugger %s (image %s) to pod %s, targeting container %s", plan.debugger(), image, plan.podName(), plan.app().getName());
        Thread interrupted = onInterrupt(plan.podName(), plan.debugger());
        try {
            applyPatch(plan.kube(), plan.core(), plan.podName(), plan.patch());
        } catch (RuntimeException e) {
            Runtime.getRuntime().removeShutdownHook(interrupted);
            throw e;
        }
        return interrupted;
    }

    // ---- 1. the target ----------------------------------------------------------------------------------------

    V1Pod findPod(Kube kube, CoreV1Api core) throws ApiException {
        if (target != null && selector != null) throw new ExitException(ExitCode.USAGE, "name a pod or give -l SELECTOR, not both");
        if (target == null && selector == null) throw new ExitException(ExitCode.USAGE, "no target: name a pod (attach POD [CONTAINER]), deploy/NAME, or give -l SELECTOR");
        if (selector != null) return choosePod(kube, core, selector, "selector " + selector);
        String[] kindAndName = target.split("/", 2);
        if (kindAndName.length == 1 || kindAndName[0].equals("pod") || kindAndName[0].equals("pods") || kindAndName[0].equals("po")) {
            String podName = kindAndName[kindAndName.length - 1];
            try {
                return core.readNamespacedPod(podName, kube.namespace).execute();
            } catch (ApiException e) {
                if (e.getCode() == 404) throw notFound("pod", podName, kube, core);
                throw Kube.failure("cannot read pod " + podName, e);
            }
        }
        return choosePod(kube, core, workloadSelector(kube, kindAndName[0], kindAndName[1]), target);
    }

    /** The label selector of a workload, as kubectl would turn it into a list query. */
    String workloadSelector(Kube kube, String kind, String workload) {
        AppsV1Api apps = new AppsV1Api(kube.client);
        try {
            V1LabelSelector labels = switch (kind) {
                case "deploy", "deployment", "deployments" -> apps.readNamespacedDeployment(workload, kube.namespace).execute().getSpec().getSelector();
                case "sts", "statefulset", "statefulsets" -> apps.readNamespacedStatefulSet(workload, kube.namespace).execute().getSpec().getSelector();
                case "ds", "daemonset", "daemonsets" -> apps.readNamespacedDaemonSet(workload, kube.namespace).execute().getSpec().getSelector();
                case "rs", "replicaset", "replicasets" -> apps.readNamespacedReplicaSet(workload, kube.namespace).execute().getSpec().getSelector();
                default -> throw new ExitException(ExitCode.USAGE, "unknown kind '" + kind + "' in " + target + "; use pod/, deploy/, sts/, ds/ or rs/");
            };
            return Selectors.toQuery(labels);
        } catch (ApiException e) {
            if (e.getCode() == 404) throw new ExitException(ExitCode.NOT_FOUND, target + " not found in namespace " + kube.namespace + "; check the name and -n");
            throw Kube.failure("cannot read " + target, e);
        }
    }

    /** Among the pods a selector matches, the running ones, ready first, then by name: the same pod every time. */
    V1Pod choosePod(Kube kube, CoreV1Api core, String labelSelector, String what) throws ApiException {
        List<V1Pod> pods;
        try {
            pods = core.listNamespacedPod(kube.namespace).labelSelector(labelSelector).execute().getItems();
        } catch (ApiException e) {
            throw Kube.failure("cannot list pods of " + what, e);
        }
        List<V1Pod> running = pods.stream()
                .filter(p -> "Running".equals(p.getStatus().getPhase()) && p.getMetadata().getDeletionTimestamp() == null)
                .sorted(Comparator.comparing((V1Pod p) -> !ready(p)).thenComparing(p -> p.getMetadata().getName()))
                .toList();
        if (running.isEmpty()) {
            throw new ExitException(pods.isEmpty() ? ExitCode.NOT_FOUND : ExitCode.STATE, pods.isEmpty()
                    ? "no pod matches " + what + " in namespace " + kube.namespace + "; check the labels and -n"
                    : "none of the " + pods.size() + " pods of " + what + " is running; see kubectl get pods -n " + kube.namespace + " -l '" + labelSelector + "'");
        }
        progress("chose pod %s (%d running of %d matching %s)", running.get(0).getMetadata().getName(), running.size(), pods.size(), what);
        return running.get(0);
    }

    static boolean ready(V1Pod pod) {
        List<V1PodCondition> conditions = pod.getStatus().getConditions();
        return conditions != null && conditions.stream().anyMatch(c -> "Ready".equals(c.getType()) && "True".equals(c.getStatus()));
    }

    /** A 404 on a pod: say whether the namespace or the pod is missing. */
    ExitException notFound(String kind, String objectName, Kube kube, CoreV1Api core) {
        try {
            core.readNamespace(kube.namespace).execute();
        } catch (ApiException e) {
            if (e.getCode() == 404) return new ExitException(ExitCode.NOT_FOUND, "namespace " + kube.namespace + " does not exist; check -n or the context's namespace");
        }
        return new ExitException(ExitCode.NOT_FOUND, kind + " " + objectName + " not found in namespace " + kube.namespace + "; list them with kubectl get pods -n " + kube.namespace);
    }

    V1Container targetContainer(V1Pod pod) {
        List<V1Container> containers = pod.getSpec().getContainers();
        List<String> names = containers.stream().map(V1Container::getName).toList();
        String wanted = container;
        if (wanted == null) {
            Map<String, String> annotations = pod.getMetadata().getAnnotations();
            wanted = annotations == null ? null : annotations.get("kubectl.kubernetes.io/default-container");
        }
        if (wanted == null && containers.size() == 1) wanted = names.get(0);
        if (wanted == null) {
            throw new ExitException(ExitCode.USAGE, "pod " + pod.getMetadata().getName() + " has " + containers.size()
                    + " containers; name the target: attach " + pod.getMetadata().getName() + " <" + String.join("|", names) + ">");
        }
        String chosen = wanted;
        return containers.stream().filter(c -> c.getName().equals(chosen)).findFirst()
                .orElseThrow(() -> new ExitException(ExitCode.NOT_FOUND, "pod " + pod.getMetadata().getName() + " has no container '" + chosen
                        + "'; its containers are " + String.join(", ", names)));
    }

    static void requireRunning(V1Pod pod, String containerName) {
        String podName = pod.getMetadata().getName();
        if (!"Running".equals(pod.getStatus().getPhase())) {
            throw new ExitException(ExitCode.STATE, "pod " + podName + " is " + pod.getStatus().getPhase()
                    + ", not Running: a debugger can only attach to a running process; pick a running pod");
        }
        V1ContainerStatus status = statuses(pod.getStatus().getContainerStatuses()).filter(s -> s.getName().equals(containerName)).findFirst().orElse(null);
        if (status == null || status.getState() == null || status.getState().getRunning() == null) {
            throw new ExitException(ExitCode.STATE, "container " + containerName + " of pod " + podName + " is not running"
                    + (status == null || status.getState() == null ? "" : " (" + describe(status.getState()) + ")") + "; wait until it runs");
        }
    }

    // ---- 2. reuse -----------------------------------------------------------------------------------------------

    /** A running ephemeral container of ours that targets this container. */
    static Optional<V1ContainerStatus> runningDebuggerOf(V1Pod pod, String targetName) {
        List<String> ours = ephemeralContainers(pod)
                .filter(c -> targetName.equals(c.getTargetContainerName()) && env(c, ENV_TARGET).isPresent())
                .map(V1EphemeralContainer::getName).toList();
        return statuses(pod.getStatus().getEphemeralContainerStatuses())
                .filter(s -> ours.contains(s.getName()) && s.getState() != null && s.getState().getRunning() != null)
                .findFirst();
    }

    static Optional<Integer> debuggerPort(V1Pod pod, String debugger) {
        return ephemeralContainers(pod).filter(c -> c.getName().equals(debugger)).findFirst()
                .flatMap(c -> env(c, ENV_PORT)).map(Integer::valueOf);
    }

    /** True when Delve answers GetVersion through a port-forward to the pod's loopback port. */
    static boolean delveAnswers(Kube kube, String podName, int delvePort) {
        return delveAnswers(kube, podName, delvePort, Duration.ofSeconds(15));
    }

    /**
     * The same within {@code timeout}. Each call is a port-forward of its own (one WebSocket), which fails in a few
     * milliseconds while nothing listens: debug.java asks this until Delve answers.
     */
    static boolean delveAnswers(Kube kube, String podName, int delvePort, Duration timeout) {
        CompletableFuture<Boolean> answer = ask(() -> {
            try {
                PortForward.PortForwardResult forward = new PortForward(kube.client).forward(kube.namespace, podName, List.of(delvePort));
                try (Delve delve = new Delve(forward.getInputStream(delvePort), forward.getOutboundStream(delvePort), () -> {})) {
                    return delve.version().apiVersion() == 2;
                }
            } catch (Exception e) {
                return false;
            }
        });
        try {
            return answer.get(timeout.toMillis(), TimeUnit.MILLISECONDS);
        } catch (InterruptedException | ExecutionException | TimeoutException e) {
            answer.cancel(true);
            return false;
        }
    }

    // ---- 3. the debugger container ------------------------------------------------------------------------------

    void requireImage() {
        if (image == null || image.isBlank()) {
            throw new ExitException(ExitCode.USAGE, "no debug image: pass --image IMAGE or set KDLV_IMAGE (build one with: build-image --push REGISTRY/kdlv-debug:TAG)");
        }
    }

    static void requireNameFree(V1Pod pod, String debugger) {
        if (!debugger.matches("[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")) {
            throw new ExitException(ExitCode.USAGE, "'" + debugger + "' is not a valid container name: lower-case letters, digits and '-', at most 63");
        }
        boolean taken = Stream.of(
                        pod.getSpec().getContainers().stream().map(V1Container::getName),
                        Optional.ofNullable(pod.getSpec().getInitContainers()).orElse(List.of()).stream().map(V1Container::getName),
                        ephemeralContainers(pod).map(V1EphemeralContainer::getName))
                .flatMap(s -> s).anyMatch(debugger::equals);
        if (taken) {
            throw new ExitException(ExitCode.NAME_TAKEN, "pod " + pod.getMetadata().getName() + " already has a container named " + debugger
                    + ", and ephemeral container names can never be reused in a pod; choose another -c NAME or leave -c out");
        }
    }

    /** The target runs as a non-root user: then ptrace needs the debugger to run as uid 0. */
    static boolean runsAsNonRoot(V1Pod pod, V1Container app) {
        V1SecurityContext container = app.getSecurityContext();
        var podContext = pod.getSpec().getSecurityContext();
        Long uid = container != null && container.getRunAsUser() != null ? container.getRunAsUser()
                : podContext != null ? podContext.getRunAsUser() : null;
        Boolean nonRoot = container != null && container.getRunAsNonRoot() != null ? container.getRunAsNonRoot()
                : podContext != null ? podContext.getRunAsNonRoot() : null;
        return (uid != null && uid != 0) || Boolean.TRUE.equals(nonRoot);
    }

    /**
     * The article's `dlv attach 1 --listen=:2345 --headless=true --api-version=2 --accept-multiclient --continue`,
     * on loopback, as the ephemeral container the patch adds. Written as plain JSON: the client's models would
     * also send empty ports and resizePolicy lists, which the API server refuses for ephemeral containers.
     */
    Map<String, Object> debuggerContainer(String debugger, String targetName, boolean asRoot) {
        List<String> command = new ArrayList<>(pid != null ? List.of("dlv", "attach", pid.toString()) : List.of("kdlv-attach", "--"));
        command.addAll(List.of("--listen=127.0.0.1:" + port, "--headless=true", "--api-version=2",
                "--accept-multiclient", "--continue", "--only-same-user=false"));
        Map<String, Object> security = new LinkedHashMap<>();
        security.put("capabilities", Map.of("add", List.of("SYS_PTRACE")));
        if (asRoot) {
            security.put("runAsUser", 0);
            security.put("runAsNonRoot", false);
        }
        Map<String, Object> container = new LinkedHashMap<>();
        container.put("name", debugger);
        container.put("image", image);
        container.put("targetContainerName", targetName);
        container.put("command", command);
        container.put("env", List.of(Map.of("name", ENV_TARGET, "value", targetName), Map.of("name", ENV_PORT, "value", Integer.toString(port))));
        container.put("securityContext", security);
        container.put("terminationMessagePolicy", "FallbackToLogsOnError");
        return container;
    }

    /**
     * The strategic-merge patch that adds the container (merged by name into spec.ephemeralContainers). Written with
     * Gson, which the Kubernetes client has loaded already: Jackson's ObjectMapper would load some 450 classes more.
     */
    static String patchBody(Map<String, Object> container) {
        return new com.google.gson.GsonBuilder().disableHtmlEscaping().create()
                .toJson(Map.of("spec", Map.of("ephemeralContainers", List.of(container))));
    }

    // ---- 4. pre-flight ------------------------------------------------------------------------------------------

    /**
     * Step 4: everything that can refuse us, asked before anything changes. The questions are independent round trips
     * to the API server: all are asked at once, and the first refusal in this order is the one reported.
     */
    void preflight(Plan plan) {
        Kube kube = plan.kube();
        CoreV1Api core = plan.core();
        String podName = plan.podName();
        CompletableFuture<Boolean> served = ask(() -> requireEphemeralContainersServed(core));
        CompletableFuture<Boolean> mayPatch = ask(() -> allowed(kube, "patch", "ephemeralcontainers"));
        CompletableFuture<Boolean> portForward = ask(() -> Tunnel.allowed(kube, podName, Tunnel.Mode.PORT_FORWARD));
        CompletableFuture<Boolean> exec = ask(() -> Tunnel.allowed(kube, podName, Tunnel.Mode.EXEC));
        CompletableFuture<Boolean> podSecurity = ask(() -> requirePodSecurity(kube, core));
        // A server-side dry run: admission (PodSecurity, webhooks) and validation answer without a change.
        CompletableFuture<Boolean> admitted = ask(() -> {
            try {
                PatchUtils.patch(V1Pod.class, () -> core.patchNamespacedPodEphemeralcontainers(podName, kube.namespace, new V1Patch(plan.patch()))
                        .dryRun("All").buildCall(null), V1Patch.PATCH_FORMAT_STRATEGIC_MERGE_PATCH, kube.client);
                return true;
            } catch (ApiException e) {
                throw admissionFailure(e);
            }
        });
        answer(served);
        if (!answer(mayPatch)) {
            throw new ExitException(ExitCode.FORBIDDEN, "RBAC does not let you patch pods/ephemeralcontainers in namespace " + kube.namespace
                    + ", which is what it takes to add a debugger (an ephemeral container) to pods; ask an admin for a Role with that rule (see README, RBAC)");
        }
        portForwardAllowed = answer(portForward);
        if (!portForwardAllowed && !answer(exec)) {
            throw new ExitException(ExitCode.FORBIDDEN, "RBAC lets you add a debugger in namespace " + kube.namespace
                    + " but not reach it: you may open neither pods/portforward nor pods/exec; ask for one of them (see README, RBAC)");
        }
        if (!portForwardAllowed) progress("note: RBAC denies pods/portforward here; tunnel with --mode exec");
        answer(podSecurity);
        answer(admitted);
    }

    private static final java.util.concurrent.ExecutorService QUESTIONS = java.util.concurrent.Executors.newCachedThreadPool(task -> {
        Thread thread = new Thread(task, "kdlv-preflight");
        thread.setDaemon(true);
        return thread;
    });

    /** Asks on a thread of its own (the common pool has one thread on a 2-core machine). */
    static <T> CompletableFuture<T> ask(java.util.function.Supplier<T> question) {
        return CompletableFuture.supplyAsync(question, QUESTIONS);
    }

    /** The answer, or the ExitException the question threw. */
    static <T> T answer(CompletableFuture<T> question) {
        try {
            return question.join();
        } catch (java.util.concurrent.CompletionException e) {
            if (e.getCause() instanceof RuntimeException cause) throw cause;
            throw e;
        }
    }

    static boolean requireEphemeralContainersServed(CoreV1Api core) {
        try {
            List<V1APIResource> resources = core.getAPIResources().execute().getResources();
            if (resources.stream().noneMatch(r -> "pods/ephemeralcontainers".equals(r.getName()))) {
                throw new ExitException(ExitCode.UNSUPPORTED, "this cluster does not serve pods/ephemeralcontainers: ephemeral containers need Kubernetes 1.23+"
                        + " (or the EphemeralContainers feature gate on 1.16-1.22); upgrade or enable it");
            }
            return true;
        } catch (ApiException e) {
            throw Kube.failure("cannot list the API server's core resources", e);
        }
    }

    static boolean allowed(Kube kube, String verb, String subresource) {
        try {
            var status = kube.access(verb, subresource, null);
            return status != null && Boolean.TRUE.equals(status.getAllowed());
        } catch (ApiException e) {
            throw Kube.failure("cannot ask the API server what you may do (SelfSubjectAccessReview)", e);
        }
    }

    /** SYS_PTRACE is outside the baseline and restricted PodSecurity levels: say so before the server does. */
    static boolean requirePodSecurity(Kube kube, CoreV1Api core) {
        Map<String, String> labels;
        try {
            labels = core.readNamespace(kube.namespace).execute().getMetadata().getLabels();
        } catch (ApiException e) {
            if (e.getCode() == 403) return true; // may not read namespaces: the dry run still asks admission
            throw Kube.failure("cannot read namespace " + kube.namespace, e);
        }
        String level = labels == null ? null : labels.get("pod-security.kubernetes.io/enforce");
        if ("baseline".equals(level) || "restricted".equals(level)) {
            throw new ExitException(ExitCode.POLICY, "namespace " + kube.namespace + " enforces PodSecurity '" + level
                    + "', which forbids the SYS_PTRACE capability Delve needs to attach; debug where the level is privileged,"
                    + " or ask an admin to label the namespace pod-security.kubernetes.io/enforce=privileged while you debug");
        }
        return true;
    }

    ExitException admissionFailure(ApiException e) {
        String message = Kube.statusMessage(e).orElse("HTTP " + e.getCode());
        if (e.getCode() == 403 && message.contains("PodSecurity")) {
            return new ExitException(ExitCode.POLICY, "admission refused the debugger: " + message
                    + "; debug in a namespace whose PodSecurity level is privileged");
        }
        if (e.getCode() == 404) {
            return new ExitException(ExitCode.UNSUPPORTED, "the API server has no ephemeralcontainers subresource for this pod (" + message
                    + "); ephemeral containers need Kubernetes 1.23+");
        }
        return Kube.failure("the API server refused the debugger container", e);
    }

    // ---- 5. add and wait ----------------------------------------------------------------------------------------

    void applyPatch(Kube kube, CoreV1Api core, String podName, String patch) {
        try {
            PatchUtils.patch(V1Pod.class, () -> core.patchNamespacedPodEphemeralcontainers(podName, kube.namespace, new V1Patch(patch))
                    .fieldManager("kdlv").buildCall(null), V1Patch.PATCH_FORMAT_STRATEGIC_MERGE_PATCH, kube.client);
        } catch (ApiException e) {
            throw admissionFailure(e);
        }
    }

    /** What kdlv-attach logged: the PID it chose and the target's Go version (empty with --pid). */
    record Found(Integer pid, String goVersion) {}

    /** Watches the pod until the debugger runs, then follows its log until Delve listens. */
    Found waitForDelve(Kube kube, CoreV1Api core, String podName, String debugger) throws Exception {
        Instant deadline = Instant.now().plus(timeout);
        String lastPhase = "";
        boolean running = false;
        while (!running) {
            long seconds = Math.max(1, Duration.between(Instant.now(), deadline).toSeconds());
            if (Instant.now().isAfter(deadline)) throw timedOut(podName, debugger, lastPhase);
            try (Watch<V1Pod> watch = Watch.createWatch(kube.client,
                    core.listNamespacedPod(kube.namespace).fieldSelector("metadata.name=" + podName)
                            .watch(true).timeoutSeconds((int) seconds).buildCall(null),
                    new TypeToken<Watch.Response<V1Pod>>() {}.getType())) {
                for (Watch.Response<V1Pod> event : watch) {
                    if ("DELETED".equals(event.type)) throw new ExitException(ExitCode.STATE, "pod " + podName + " was deleted while the debugger started");
                    if (event.object == null || event.object.getStatus() == null) continue;
                    V1ContainerStatus status = statuses(event.object.getStatus().getEphemeralContainerStatuses())
                            .filter(s -> s.getName().equals(debugger)).findFirst().orElse(null);
                    String phase = status == null || status.getState() == null ? "waiting for the kubelet" : describe(status.getState());
                    if (!phase.equals(lastPhase)) progress("debugger %s: %s", debugger, phase);
                    lastPhase = phase;
                    if (status == null || status.getState() == null) continue;
                    V1ContainerState state = status.getState();
                    if (state.getWaiting() != null) failOnImageError(state.getWaiting().getReason(), state.getWaiting().getMessage(), debugger);
                    if (state.getTerminated() != null) throw delveFailed(core, kube.namespace, podName, debugger, state.getTerminated().getExitCode());
                    if (state.getRunning() != null) {
                        running = true;
                        break;
                    }
                }
            }
        }
        return followLogUntilListening(core, kube.namespace, podName, debugger, deadline);
    }

    static void failOnImageError(String reason, String message, String debugger) {
        if (reason != null && Set.of("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull").contains(reason)) {
            throw new ExitException(ExitCode.IMAGE, "debugger " + debugger + " cannot start: " + reason + ": " + Cli.firstLine(String.valueOf(message))
                    + "; check --image is pullable by the node (or pushed, see build-image). The container stays in the pod, not running;"
                    + " ephemeral containers cannot be removed");
        }
        if (reason != null && (reason.equals("CreateContainerError") || reason.equals("RunContainerError") || reason.equals("CreateContainerConfigError"))) {
            throw new ExitException(ExitCode.DEBUGGER_FAILED, "debugger " + debugger + " cannot start: " + reason + ": " + Cli.firstLine(String.valueOf(message)));
        }
    }

    /** Reads the debugger's log as it is written, until Delve says it listens, the container ends, or time runs out. */
    Found followLogUntilListening(CoreV1Api core, String namespace, String podName, String debugger, Instant deadline) throws Exception {
        PodLogs logs = new io.kubernetes.client.PodLogs(core.getApiClient());
        CompletableFuture<Found> listening = new CompletableFuture<>();
        Thread reader = new Thread(() -> {
            Integer foundPid = pid;
            String goVersion = null;
            try (BufferedReader log = new BufferedReader(new InputStreamReader(
                    logs.streamNamespacedPodLog(namespace, podName, debugger, null, null, false), StandardCharsets.UTF_8))) {
                for (String line; (line = log.readLine()) != null; ) {
                    Matcher found = FOUND.matcher(line);
                    if (found.find()) {
                        foundPid = Integer.valueOf(found.group(1));
                        goVersion = found.group(2).equals("none") ? null : found.group(2);
                        progress("found the Go process: PID %s (%s)", foundPid, goVersion == null ? "Go version unknown" : goVersion);
                    }
                    if (LISTENING.matcher(line).find()) {
                        listening.complete(new Found(foundPid, goVersion));
                        return;
                    }
                }
                listening.complete(null); // the log ended: the container terminated
            } catch (Exception e) {
                listening.completeExceptionally(e);
            }
        }, "debugger-log");
        reader.setDaemon(true);
        reader.start();
        Found found;
        try {
            found = listening.get(Math.max(1, Duration.between(Instant.now(), deadline).toMillis()), TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            reader.interrupt();
            throw timedOut(podName, debugger, "running, but Delve did not say it listens");
        }
        if (found == null) throw delveFailed(core, namespace, podName, debugger, null);
        progress("Delve listens on 127.0.0.1:%d in pod %s", port, podName);
        return found;
    }

    ExitException timedOut(String podName, String debugger, String phase) {
        return new ExitException(ExitCode.TIMEOUT, "debugger " + debugger + " in pod " + podName + " was not ready within " + Durations.format(timeout)
                + " (last seen: " + phase + "); see kubectl describe pod " + podName + ", or raise --timeout");
    }

    /** The container ended: its last log lines say why (Delve refusing the Go version, ptrace denied, ...). */
    ExitException delveFailed(CoreV1Api core, String namespace, String podName, String debugger, Integer exitCode) {
        List<String> tail = logTail(core, namespace, podName, debugger, 10);
        // Delve's error and its "API server listening" line go to different streams, in either order: the reason is
        // the last line that says what went wrong, else the last line.
        List<String> lines = tail.stream().filter(l -> !l.isBlank() && !LISTENING.matcher(l).find() && !FOUND.matcher(l).find()).toList();
        String why = lines.stream().filter(l -> l.matches("(?i).*(error|could not|couldn't|cannot|denied|not permitted|too old|no such).*"))
                .reduce((a, b) -> b).orElse(lines.isEmpty() ? "no log output" : lines.get(lines.size() - 1));
        String all = String.join(" ", tail);
        String exit = exitCode == null ? "" : " (exit code " + exitCode + ")";
        if (all.contains("too old for this version of Delve") || all.contains("Version of Delve is too old")) {
            Matcher go = FOUND.matcher(all);
            String goVersion = go.find() ? go.group(2).replaceFirst("^go", "").replaceFirst("^(\\d+\\.\\d+).*", "$1") : "X.Y";
            return new ExitException(ExitCode.UNSUPPORTED, "Delve in " + image + " does not support the target's Go version: " + why
                    + "; build a matching image with: build-image --go-version " + goVersion);
        }
        if (all.contains("executable file not found") && all.contains("kdlv-attach")) {
            return new ExitException(ExitCode.IMAGE, "image " + image + " has no kdlv-attach to find the Go process: build it with build-image, or pass --pid N");
        }
        return new ExitException(ExitCode.DEBUGGER_FAILED, "Delve did not start in debugger " + debugger + exit + ": " + why
                + "; the container stays in the pod, terminated (ephemeral containers cannot be removed)");
    }

    static List<String> logTail(CoreV1Api core, String namespace, String podName, String debugger, int lines) {
        try {
            String log = core.readNamespacedPodLog(podName, namespace).container(debugger).tailLines(lines).execute();
            return log == null ? List.of() : log.lines().toList();
        } catch (ApiException e) {
            return List.of("(cannot read its log: " + Kube.statusMessage(e).orElse("HTTP " + e.getCode()) + ")");
        }
    }

    /** For a reused debugger: the PID and Go version kdlv-attach logged when it started. */
    static Found foundInLog(CoreV1Api core, String namespace, String podName, String debugger) {
        for (String line : logTail(core, namespace, podName, debugger, 50)) {
            Matcher found = FOUND.matcher(line);
            if (found.find()) return new Found(Integer.valueOf(found.group(1)), found.group(2).equals("none") ? null : found.group(2));
        }
        return new Found(null, null);
    }

    /** Ctrl-C after the patch: the debugger may still start, and it cannot be removed; say so. */
    Thread onInterrupt(String podName, String debugger) {
        PrintWriter err = spec.commandLine().getErr();
        Thread hook = new Thread(() -> {
            err.println(Cli.yellow("interrupted: debugger " + debugger + " may have been added to pod " + podName
                    + " and may still start; ephemeral containers cannot be removed. Check with: kubectl get pod " + podName
                    + " -o jsonpath='{.status.ephemeralContainerStatuses}'; a later attach reuses it if its Delve answers"));
            err.flush();
        });
        Runtime.getRuntime().addShutdownHook(hook);
        return hook;
    }

    // ---- the result ---------------------------------------------------------------------------------------------

    int report(Attached attached) throws Exception {
        PrintWriter out = spec.commandLine().getOut();
        if ("json".equals(output)) {
            Map<String, Object> json = new LinkedHashMap<>();
            json.put("namespace", attached.namespace());
            json.put("pod", attached.pod());
            json.put("container", attached.container());
            json.put("debugger", attached.debugger());
            json.put("pid", attached.pid());
            json.put("port", attached.port());
            json.put("goVersion", attached.goVersion());
            json.put("image", attached.image());
            json.put("reused", attached.reused());
            out.println(new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT).writeValueAsString(json));
            return ExitCode.OK;
        }
        attached.livenessBudget().ifPresent(seconds -> progress(Cli.yellow(String.format(
                "container %s has a liveness probe: a breakpoint may hold the process about %d s before the kubelet restarts it", attached.container(), seconds))));
        out.printf("Delve %s PID %s (%s) of %s/%s, container %s: debugger %s listens on 127.0.0.1:%d in the pod.%n",
                attached.reused() ? "is already attached to" : "attached to", attached.pid() == null ? "?" : attached.pid(),
                attached.goVersion() == null ? "Go version unknown" : attached.goVersion(), attached.namespace(), attached.pod(),
                attached.container(), attached.debugger(), attached.port());
        out.printf("Next: tunnel %s -n %s -c %s --remote-port %d   (or: kubectl port-forward -n %s pod/%s %d:%d)%n",
                attached.pod(), attached.namespace(), attached.debugger(), attached.port(), attached.namespace(), attached.pod(), attached.port(), attached.port());
        return ExitCode.OK;
    }

    /** How long the liveness probe tolerates a stopped process: periodSeconds x failureThreshold. */
    static Optional<Integer> livenessBudget(V1Container app) {
        V1Probe probe = app.getLivenessProbe();
        if (probe == null) return Optional.empty();
        int period = Objects.requireNonNullElse(probe.getPeriodSeconds(), 10);
        int failures = Objects.requireNonNullElse(probe.getFailureThreshold(), 3);
        return Optional.of(period * failures);
    }

    @SuppressWarnings("unchecked")
    void printManualSteps(Kube kube, String podName, String targetName, Map<String, Object> container, String patch) {
        String debugger = (String) container.get("name");
        List<String> command = (List<String>) container.get("command");
        PrintWriter out = spec.commandLine().getOut();
        String ns = kube.namespace;
        out.println("# dry run: nothing was changed. The same steps with kubectl:");
        out.println("# 1. add the debugger, an ephemeral container running a headless Delve in the target's PID namespace");
        out.println("kubectl patch pod " + podName + " -n " + ns + " --subresource=ephemeralcontainers --type=strategic -p '" + patch + "'");
        out.println("#    (about the same as: kubectl debug " + podName + " -n " + ns + " --target=" + targetName + " -c " + debugger
                + " --image=" + image + " --profile=general -- " + String.join(" ", command) + ")");
        out.println("# 2. wait until it runs and Delve says \"API server listening at: 127.0.0.1:" + port + "\"");
        out.println("kubectl logs " + podName + " -n " + ns + " -c " + debugger + " -f");
        out.println("# 3. reach it from this machine");
        out.println("kubectl port-forward -n " + ns + " pod/" + podName + " " + port + ":" + port);
    }

    // ---- small helpers ------------------------------------------------------------------------------------------

    void progress(String format, Object... args) {
        if (quiet) return;
        PrintWriter err = spec.commandLine().getErr();
        err.println(String.format(format, args));
        err.flush();
    }

    static Stream<V1ContainerStatus> statuses(List<V1ContainerStatus> list) {
        return list == null ? Stream.empty() : list.stream();
    }

    static Stream<V1EphemeralContainer> ephemeralContainers(V1Pod pod) {
        return pod.getSpec().getEphemeralContainers() == null ? Stream.empty() : pod.getSpec().getEphemeralContainers().stream();
    }

    static Optional<String> env(V1EphemeralContainer container, String variable) {
        return container.getEnv() == null ? Optional.empty()
                : container.getEnv().stream().filter(e -> variable.equals(e.getName())).map(V1EnvVar::getValue).filter(Objects::nonNull).findFirst();
    }

    static String describe(V1ContainerState state) {
        if (state.getRunning() != null) return "running";
        if (state.getTerminated() != null) return "terminated, exit code " + state.getTerminated().getExitCode()
                + (state.getTerminated().getReason() == null ? "" : " (" + state.getTerminated().getReason() + ")");
        if (state.getWaiting() != null) {
            String reason = state.getWaiting().getReason();
            return "waiting" + (reason == null ? "" : ": " + ("ContainerCreating".equals(reason) ? "ContainerCreating (pulling the image, starting)" : reason));
        }
        return "unknown";
    }

    static String randomSuffix() {
        String alphabet = "bcdfghjklmnpqrstvwxz2456789"; // kubectl's: no vowels, no look-alikes
        SecureRandom random = new SecureRandom();
        StringBuilder suffix = new StringBuilder();
        for (int i = 0; i < 5; i++) suffix.append(alphabet.charAt(random.nextInt(alphabet.length())));
        return suffix.toString();
    }
}

/** Turns a LabelSelector into the string form of a list query, as kubectl does. */
final class Selectors {
    private Selectors() {}

    static String toQuery(V1LabelSelector selector) {
        List<String> parts = new ArrayList<>();
        if (selector != null && selector.getMatchLabels() != null) {
            selector.getMatchLabels().entrySet().stream().sorted(Map.Entry.comparingByKey()).forEach(e -> parts.add(e.getKey() + "=" + e.getValue()));
        }
        if (selector != null && selector.getMatchExpressions() != null) {
            selector.getMatchExpressions().forEach(e -> parts.add(switch (e.getOperator()) {
                case "In" -> e.getKey() + " in (" + String.join(",", e.getValues()) + ")";
                case "NotIn" -> e.getKey() + " notin (" + String.join(",", e.getValues()) + ")";
                case "Exists" -> e.getKey();
                case "DoesNotExist" -> "!" + e.getKey();
                default -> throw new ExitException(ExitCode.UNSUPPORTED, "unknown selector operator " + e.getOperator());
            }));
        }
        if (parts.isEmpty()) throw new ExitException(ExitCode.USAGE, "the workload has an empty selector; name a pod instead");
        return parts.stream().collect(Collectors.joining(","));
    }
}
