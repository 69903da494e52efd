import com.google.gson.reflect.TypeToken;
import io.kubernetes.client.openapi.ApiException;
import io.kubernetes.client.openapi.Pair;
import io.kubernetes.client.openapi.apis.CoreV1Api;
import io.kubernetes.client.openapi.models.V1ContainerState;
import io.kubernetes.client.openapi.models.V1ContainerStateTerminated;
import io.kubernetes.client.openapi.models.V1ContainerStateWaiting;
import io.kubernetes.client.openapi.models.V1ContainerStatus;
import io.kubernetes.client.openapi.models.V1EphemeralContainer;
import io.kubernetes.client.openapi.models.V1Pod;
import io.kubernetes.client.openapi.models.V1SubjectAccessReviewStatus;
import io.kubernetes.client.util.Watch;
import java.io.Closeable;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.BindException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.SynchronousQueue;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;
import java.util.function.Consumer;
import okhttp3.Dispatcher;
import okhttp3.OkHttpClient;
import okhttp3.Request;
import okhttp3.Response;
import okhttp3.WebSocket;
import okhttp3.WebSocketListener;
import okio.ByteString;

/**
 * Exposes a port on the loopback of a pod (Delve in the debugger container) on a local address, every accepted
 * connection on its own stream: in port-forward mode two SPDY/3.1 streams on one shared connection to
 * pods/portforward (as kubectl port-forward), in exec mode `nc 127.0.0.1 PORT` run in the debugger container over its
 * own pods/exec WebSocket (the article's plumbing, in one process). Watches the pod and ends when the debugger
 * container or the pod goes away; {@link #close()} stops everything.
 */
final class Tunnel implements Closeable {
    /** How each connection reaches the pod. */
    enum Mode {
        /** pods/portforward: the kubelet dials 127.0.0.1:PORT in the pod's network namespace; needs nothing in the image. */
        PORT_FORWARD("port-forward", "portforward"),
        /** pods/exec of `nc 127.0.0.1 PORT` in the debugger container, as the article does; needs nc in the image. */
        EXEC("exec", "exec");

        final String flag;
        /** The pods subresource this mode uses. */
        final String subresource;

        Mode(String flag, String subresource) {
            this.flag = flag;
            this.subresource = subresource;
        }

        static Mode parse(String flag) {
            for (Mode mode : values()) if (mode.flag.equals(flag)) return mode;
            throw new IllegalArgumentException("unknown mode '" + flag + "' (port-forward or exec)");
        }

        @Override
        public String toString() {
            return flag;
        }
    }

    /** Default name of the debugger container, as in the article (`kubectl debug -c debugger`). */
    static final String DEFAULT_CONTAINER = "debugger";
    static final int DEFAULT_PORT = 2345;
    /** attach names its debugger containers kdlv-debugger-xxxxx and records Delve's port in their env KDLV_PORT. */
    static final String ATTACH_PREFIX = "kdlv-debugger-";

    /** Delve's port for a debugger container: its KDLV_PORT (set by attach), else 2345. */
    static int defaultPort(V1Pod pod, String container) {
        if (pod.getSpec().getEphemeralContainers() != null) {
            for (V1EphemeralContainer c : pod.getSpec().getEphemeralContainers()) {
                if (!container.equals(c.getName()) || c.getEnv() == null) continue;
                for (var env : c.getEnv()) {
                    if ("KDLV_PORT".equals(env.getName()) && env.getValue() != null && env.getValue().matches("\\d{1,5}")) {
                        return Integer.parseInt(env.getValue());
                    }
                }
            }
        }
        return DEFAULT_PORT;
    }

    private static final int CHUNK = 64 * 1024;
    /** Bytes queued in OkHttp's WebSocket writer before the reading side waits (OkHttp fails a socket at 16 MiB). */
    private static final long MAX_QUEUED = 1 << 20;
    private static final AtomicInteger TUNNELS = new AtomicInteger();

    private final Kube kube;
    private final String pod;
    private final String container;
    private final int remotePort;
    private final Mode mode;
    private final Consumer<String> log;
    private final boolean verbose;
    private final String podUid;
    private final ServerSocket server;
    private final OkHttpClient http;
    private final ThreadPoolExecutor streams;
    private final Set<Client> connections = ConcurrentHashMap.newKeySet();
    private final AtomicInteger connectionIds = new AtomicInteger();
    private final AtomicBoolean closed = new AtomicBoolean();
    private final CompletableFuture<ExitException> ended = new CompletableFuture<>();
    private final String name;
    private volatile Watch<V1Pod> watch;
    private Thread acceptor;
    private Thread watcher;
    private Thread watchdog;

    private Tunnel(Kube kube, String pod, String container, int remotePort, Mode mode, Consumer<String> log, boolean verbose,
                   String podUid, ServerSocket server) {
        this.kube = kube;
        this.pod = pod;
        this.container = container;
        this.remotePort = remotePort;
        this.mode = mode;
        this.log = log;
        this.verbose = verbose;
        this.podUid = podUid;
        this.server = server;
        this.name = "kdlv-tunnel-" + TUNNELS.incrementAndGet();
        AtomicInteger threads = new AtomicInteger();
        // Every open WebSocket holds one thread (OkHttp's reader loop) for its lifetime: an own dispatcher without
        // OkHttp's limit of 5 calls per host, whose idle threads go away quickly once clients disconnect.
        this.streams = new ThreadPoolExecutor(0, Integer.MAX_VALUE, 2, TimeUnit.SECONDS, new SynchronousQueue<>(), r -> {
            Thread thread = new Thread(r, name + "-ws-" + threads.incrementAndGet());
            thread.setDaemon(true);
            return thread;
        });
        Dispatcher dispatcher = new Dispatcher(streams);
        dispatcher.setMaxRequests(Integer.MAX_VALUE);
        dispatcher.setMaxRequestsPerHost(Integer.MAX_VALUE);
        // TCP_NODELAY: a stream's small frames (a SYN_STREAM, a Delve request) must not wait for the previous one's ACK
        this.http = kube.client.getHttpClient().newBuilder().dispatcher(dispatcher).socketFactory(new NoDelaySocketFactory()).build();
    }

    /** Opens a tunnel that logs nothing; see {@link #open(Kube, String, String, int, InetSocketAddress, Mode, Consumer, boolean)}. */
    static Tunnel open(Kube kube, String pod, String container, int remotePort, InetSocketAddress local, Mode mode) {
        return open(kube, pod, container, remotePort, local, mode, line -> {}, false);
    }

    /**
     * Binds {@code local} (port 0 picks a free one), checks that {@code container} of {@code pod} runs and that this
     * user may open the streams, then accepts connections until closed or until the debugger goes away.
     *
     * @param container  the debugger container, or null for "debugger", else the newest running one attach made
     *                   (kdlv-debugger-*), else the newest running ephemeral container
     * @param remotePort Delve's port on the pod's loopback, or 0 for the container's KDLV_PORT (attach sets it), else 2345
     * @param log       receives one line per event worth telling (lost API server, failed stream); with
     *                  {@code verbose} also one per connection opened and closed
     * @throws ExitException with ExitCode LOCAL_PORT, NOT_FOUND, STATE, FORBIDDEN or UNREACHABLE, one line each
     */
    static Tunnel open(Kube kube, String pod, String container, int remotePort, InetSocketAddress local, Mode mode,
                       Consumer<String> log, boolean verbose) {
        Objects.requireNonNull(mode, "mode");
        ServerSocket server = bind(local);
        try {
            V1Pod target = readPod(kube, pod);
            String debugger = pickContainer(target, container);
            checkRunning(target, debugger);
            checkAllowed(kube, pod, mode);
            int port = remotePort > 0 ? remotePort : defaultPort(target, debugger);
            return start(kube, target, debugger, port, server, mode, log, verbose, true);
        } catch (RuntimeException e) {
            closeQuietly(server);
            throw e;
        }
    }

    /**
     * Opens a tunnel to a debugger that is about to be added to {@code target}: debug.java opens it while attach adds the
     * container, so that its API session is ready when Delve listens. The caller has checked access, and calls
     * {@link #accept()} once Delve answers; clients that connect before wait.
     */
    static Tunnel openBeforeDebugger(Kube kube, V1Pod target, String debugger, int remotePort, InetSocketAddress local, Mode mode,
                                     Consumer<String> log, boolean verbose) {
        Objects.requireNonNull(mode, "mode");
        ServerSocket server = bind(local);
        try {
            return start(kube, target, debugger, remotePort, server, mode, log, verbose, false);
        } catch (RuntimeException e) {
            closeQuietly(server);
            throw e;
        }
    }

    private static Tunnel start(Kube kube, V1Pod target, String debugger, int port, ServerSocket server, Mode mode,
                                Consumer<String> log, boolean verbose, boolean accept) {
        Tunnel tunnel = new Tunnel(kube, target.getMetadata().getName(), debugger, port, mode, log, verbose, target.getMetadata().getUid(), server);
        try {
            tunnel.start(target, accept);
        } catch (RuntimeException e) {
            tunnel.close();
            throw e;
        }
        return tunnel;
    }

    /** The local port clients connect to (the chosen one when asked for port 0). */
    int localPort() {
        return server.getLocalPort();
    }

    /** The local address clients connect to. */
    InetSocketAddress localAddress() {
        return (InetSocketAddress) server.getLocalSocketAddress();
    }

    /** The debugger container the tunnel reaches (the one picked when none was named). */
    String container() {
        return container;
    }

    String pod() {
        return pod;
    }

    String namespace() {
        return kube.namespace;
    }

    int remotePort() {
        return remotePort;
    }

    Mode mode() {
        return mode;
    }

    /** Connections open right now. */
    int activeConnections() {
        return connections.size();
    }

    /**
     * Completes when the tunnel stops: with the reason (ExitCode.GONE) when the debugger container or the pod went
     * away, with null when {@link #close()} was called.
     */
    CompletableFuture<ExitException> ended() {
        return ended;
    }

    /** Stops accepting, closes every connection and its stream, stops watching the pod. Idempotent. */
    @Override
    public void close() {
        stop(null);
    }

    private void stop(ExitException reason) {
        if (!closed.compareAndSet(false, true)) return;
        closeQuietly(server);
        Watch<V1Pod> current = watch;
        if (current != null) closeQuietly(current);
        for (Client connection : List.copyOf(connections)) connection.close(null);
        SpdySession session = spdy;
        if (session != null) session.close();
        if (watcher != null) watcher.interrupt();
        if (watchdog != null) watchdog.interrupt();
        join(acceptor);
        join(watcher);
        join(watchdog);
        streams.shutdown();
        try {
            if (!streams.awaitTermination(5, TimeUnit.SECONDS)) streams.shutdownNow();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        http.connectionPool().evictAll();
        ended.complete(reason);
    }

    private static void join(Thread thread) {
        if (thread == null || thread == Thread.currentThread()) return;
        try {
            thread.join(5000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    // ---- preflight -------------------------------------------------------------------------------------------------

    private static ServerSocket bind(InetSocketAddress local) {
        ServerSocket server = null;
        try {
            server = new ServerSocket();
            server.setReuseAddress(true);
            server.bind(local, 128);
            return server;
        } catch (BindException e) {
            closeQuietly(server);
            String where = (local.getAddress() != null ? local.getAddress().getHostAddress() : local.getHostString()) + ":" + local.getPort();
            String why = String.valueOf(e.getMessage());
            if (why.toLowerCase().contains("in use")) {
                throw new ExitException(ExitCode.LOCAL_PORT, "local port " + where + " is in use (another tunnel or a local dlv?); "
                        + "pick another with --local-port, or --local-port 0 for a free one", e);
            }
            throw new ExitException(ExitCode.LOCAL_PORT, "cannot listen on " + where + ": " + why
                    + "; use an address of this machine (--address 127.0.0.1)", e);
        } catch (IOException | SecurityException e) {
            closeQuietly(server);
            throw new ExitException(ExitCode.LOCAL_PORT, "cannot listen on " + local + ": " + e.getMessage(), e);
        }
    }

    private static V1Pod readPod(Kube kube, String pod) {
        try {
            return new CoreV1Api(kube.client).readNamespacedPod(pod, kube.namespace).execute();
        } catch (ApiException e) {
            if (e.getCode() == 404) {
                throw new ExitException(ExitCode.NOT_FOUND, "pod " + pod + " not found in namespace " + kube.namespace
                        + "; check the name (kubectl get pods -n " + kube.namespace + ") or pass -n NAMESPACE", e);
            }
            throw Kube.failure("cannot read pod " + pod + " in namespace " + kube.namespace, e);
        }
    }

    /** The named container, or "debugger", or the newest running ephemeral container. */
    static String pickContainer(V1Pod pod, String wanted) {
        String podName = pod.getMetadata().getName();
        List<String> ephemeral = new ArrayList<>();
        if (pod.getSpec().getEphemeralContainers() != null) {
            for (V1EphemeralContainer c : pod.getSpec().getEphemeralContainers()) ephemeral.add(c.getName());
        }
        List<String> all = new ArrayList<>(ephemeral);
        if (pod.getSpec().getContainers() != null) pod.getSpec().getContainers().forEach(c -> all.add(c.getName()));
        if (wanted != null) {
            if (all.contains(wanted)) return wanted;
            throw new ExitException(ExitCode.NOT_FOUND, "pod " + podName + " has no container '" + wanted + "' ("
                    + (ephemeral.isEmpty() ? "no ephemeral containers" : "ephemeral containers: " + String.join(", ", ephemeral))
                    + "); start Delve with attach, or pass -c with one of those");
        }
        if (ephemeral.contains(DEFAULT_CONTAINER)) return DEFAULT_CONTAINER;
        if (ephemeral.isEmpty()) {
            throw new ExitException(ExitCode.NOT_FOUND, "pod " + podName + " has no debugger container (no ephemeral containers); "
                    + "start Delve with attach first, or pass -c CONTAINER");
        }
        for (String prefix : List.of(ATTACH_PREFIX, "")) { // attach's debuggers first, newest first
            for (int i = ephemeral.size() - 1; i >= 0; i--) {
                if (ephemeral.get(i).startsWith(prefix) && state(pod, ephemeral.get(i)).map(s -> s.getRunning() != null).orElse(false)) {
                    return ephemeral.get(i);
                }
            }
        }
        return ephemeral.get(ephemeral.size() - 1); // none runs: checkRunning says why
    }

    static Optional<V1ContainerState> state(V1Pod pod, String container) {
        List<V1ContainerStatus> statuses = new ArrayList<>();
        if (pod.getStatus() != null) {
            if (pod.getStatus().getEphemeralContainerStatuses() != null) statuses.addAll(pod.getStatus().getEphemeralContainerStatuses());
            if (pod.getStatus().getContainerStatuses() != null) statuses.addAll(pod.getStatus().getContainerStatuses());
        }
        return statuses.stream().filter(s -> container.equals(s.getName())).findFirst().map(V1ContainerStatus::getState);
    }

    static void checkRunning(V1Pod pod, String container) {
        String podName = pod.getMetadata().getName();
        String phase = pod.getStatus() != null ? pod.getStatus().getPhase() : null;
        if (pod.getMetadata().getDeletionTimestamp() != null) {
            throw new ExitException(ExitCode.STATE, "pod " + podName + " is being deleted; pick a running pod");
        }
        if (!"Running".equals(phase)) {
            throw new ExitException(ExitCode.STATE, "pod " + podName + " is " + (phase == null ? "not running" : phase)
                    + ", not Running; wait for it (kubectl get pod " + podName + ") or pick a running pod");
        }
        Optional<V1ContainerState> state = state(pod, container);
        if (state.isPresent() && state.get().getRunning() != null) return;
        String what = state.map(Tunnel::describe).orElse("has no status yet");
        boolean terminated = state.map(s -> s.getTerminated() != null).orElse(false);
        throw new ExitException(ExitCode.STATE, "debugger container '" + container + "' of pod " + podName + " is not running ("
                + what + "); " + (terminated
                ? "ephemeral containers cannot restart: run attach again (a new container name), then the tunnel"
                : "wait until it runs (kubectl get pod " + podName + " -o wide), then retry"));
    }

    static String describe(V1ContainerState state) {
        V1ContainerStateTerminated terminated = state.getTerminated();
        if (terminated != null) {
            return "terminated with exit code " + terminated.getExitCode()
                    + (terminated.getReason() != null ? ", " + terminated.getReason() : "")
                    + (terminated.getMessage() != null && !terminated.getMessage().isBlank() ? ": " + Cli.firstLine(terminated.getMessage()) : "");
        }
        V1ContainerStateWaiting waiting = state.getWaiting();
        if (waiting != null) {
            return "waiting" + (waiting.getReason() != null ? ": " + waiting.getReason() : "")
                    + (waiting.getMessage() != null && !waiting.getMessage().isBlank() ? " (" + Cli.firstLine(waiting.getMessage()) + ")" : "");
        }
        return state.getRunning() != null ? "running" : "unknown state";
    }

    /**
     * Asks the API server whether this user may open the streams. port-forward speaks SPDY on an upgraded POST
     * (authorized as verb create) or, failing that, inside a WebSocket, a GET (verb get): either verb will do. exec
     * opens a WebSocket: verb get.
     */
    private static void checkAllowed(Kube kube, String pod, Mode mode) {
        Optional<String> denied = denial(kube, pod, mode);
        if (denied.isPresent()) {
            throw new ExitException(ExitCode.FORBIDDEN, forbidden(kube, pod, mode) + (denied.get().isEmpty() ? "" : " (" + denied.get() + ")"));
        }
    }

    /** Whether RBAC lets this user open the mode's streams to the pod (true when it may not even ask); attach asks this too. */
    static boolean allowed(Kube kube, String pod, Mode mode) {
        return denial(kube, pod, mode).isEmpty();
    }

    /** Empty when allowed, else RBAC's reason ("" when it gives none). port-forward takes create or get; exec's WebSocket, get. */
    private static Optional<String> denial(Kube kube, String pod, Mode mode) {
        List<String> verbs = mode == Mode.PORT_FORWARD ? List.of("create", "get") : List.of("get");
        String reason = null;
        for (String verb : verbs) {
            V1SubjectAccessReviewStatus status;
            try {
                status = kube.access(verb, mode.subresource, pod);
            } catch (ApiException e) {
                if (e.getCode() == 403 || e.getCode() == 404) return Optional.empty(); // cannot ask: the stream itself will tell
                throw Kube.failure("cannot check access to pods/" + mode.subresource, e);
            }
            if (status == null || Boolean.TRUE.equals(status.getAllowed())) return Optional.empty();
            if (reason == null && status.getReason() != null && !status.getReason().isBlank()) reason = Cli.firstLine(status.getReason());
        }
        return Optional.of(reason == null ? "" : reason);
    }

    private static String forbidden(Kube kube, String pod, Mode mode) {
        String other = mode == Mode.EXEC ? "port-forward" : "exec";
        return "not allowed to open pods/" + mode.subresource + " on pod " + pod + " in namespace " + kube.namespace
                + ": ask for " + (mode == Mode.EXEC ? "get and create" : "create (or get)") + " on pods/" + mode.subresource
                + " in a Role, or try --mode " + other;
    }

    // ---- running ---------------------------------------------------------------------------------------------------

    private void start(V1Pod target, boolean accept) {
        if (mode == Mode.PORT_FORWARD) openSpdy();
        if (spdySupported && mode == Mode.PORT_FORWARD) {
            watchdog = new Thread(this::watchdogLoop, name + "-watchdog");
            watchdog.setDaemon(true);
            watchdog.start();
        }
        if (accept) accept();
        watcher = new Thread(() -> watchLoop(target), name + "-watch");
        watcher.setDaemon(true);
        watcher.start();
    }

    /**
     * Starts taking connections. Until then, clients that connect wait in the listener's backlog: a stream to a port
     * where nothing listens yet fails, and such failures can leave the API session unusable.
     */
    synchronized void accept() {
        if (acceptor != null || closed.get()) return;
        acceptor = new Thread(this::acceptLoop, name + "-accept");
        acceptor.setDaemon(true);
        acceptor.start();
    }

    private void acceptLoop() {
        while (!closed.get()) {
            Socket socket;
            try {
                socket = server.accept();
            } catch (IOException e) {
                if (closed.get()) return;
                stop(new ExitException(ExitCode.FAILURE, "the local listener failed: " + e.getMessage()));
                return;
            }
            try {
                socket.setTcpNoDelay(true);
            } catch (SocketException ignored) {
                // a socket that is already gone fails later, in its own thread
            }
            int id = connectionIds.incrementAndGet();
            Client connection = mode == Mode.PORT_FORWARD && spdySupported ? new SpdyClient(id, socket) : new Connection(id, socket);
            connections.add(connection);
            if (closed.get()) {
                connection.close(null);
                return;
            }
            connection.start();
        }
    }

    /** Watches the pod; ends the tunnel when the debugger goes away; survives a lost API server by retrying. */
    private void watchLoop(V1Pod first) {
        CoreV1Api core = new CoreV1Api(kube.client);
        V1Pod pod = first;
        boolean apiDown = false;
        long backoff = 1000;
        while (!closed.get()) {
            try {
                if (pod == null) {
                    try {
                        pod = core.readNamespacedPod(this.pod, kube.namespace).execute();
                    } catch (ApiException e) {
                        if (e.getCode() == 404) {
                            gone("pod " + this.pod + " was deleted");
                            return;
                        }
                        throw e;
                    }
                }
                if (apiDown) {
                    log.accept("the API server answers again; new connections go through");
                    apiDown = false;
                }
                backoff = 1000;
                if (check(pod)) return;
                Watch<V1Pod> current = Watch.createWatch(kube.client,
                        core.listNamespacedPod(kube.namespace).fieldSelector("metadata.name=" + this.pod)
                                .resourceVersion(pod.getMetadata().getResourceVersion()).timeoutSeconds(300).watch(true).buildCall(null),
                        new TypeToken<Watch.Response<V1Pod>>() {}.getType());
                watch = current;
                if (closed.get()) {
                    closeQuietly(current);
                    return;
                }
                try (current) {
                    for (Watch.Response<V1Pod> event : current) {
                        if ("DELETED".equals(event.type)) {
                            gone("pod " + this.pod + " was deleted");
                            return;
                        }
                        if (("ADDED".equals(event.type) || "MODIFIED".equals(event.type)) && event.object != null && check(event.object)) return;
                        // ERROR (for example 410 Gone, an expired resourceVersion) or BOOKMARK: read the pod afresh below
                        if ("ERROR".equals(event.type)) break;
                    }
                }
                pod = null;
            } catch (ApiException | RuntimeException | IOException e) {
                if (closed.get()) return;
                pod = null;
                if (!apiDown) {
                    String why = e instanceof ApiException api ? Kube.failure("watching pod " + this.pod, api).getMessage()
                            : "watching pod " + this.pod + ": " + Cli.firstLine(String.valueOf(e.getMessage()));
                    log.accept("lost the API server (" + why + "); the listener stays up and retries");
                    apiDown = true;
                }
                try {
                    Thread.sleep(backoff);
                } catch (InterruptedException interrupted) {
                    return;
                }
                backoff = Math.min(backoff * 2, 10_000);
            }
        }
    }

    /** True (and the tunnel stopped) when the pod no longer runs the debugger. */
    private boolean check(V1Pod pod) {
        if (podUid != null && !podUid.equals(pod.getMetadata().getUid())) {
            gone("pod " + this.pod + " was replaced by a new pod of the same name (the debugger was in the old one)");
            return true;
        }
        if (pod.getMetadata().getDeletionTimestamp() != null) {
            gone("pod " + this.pod + " is being deleted");
            return true;
        }
        String phase = pod.getStatus() != null ? pod.getStatus().getPhase() : null;
        if ("Succeeded".equals(phase) || "Failed".equals(phase)) {
            gone("pod " + this.pod + " has stopped (" + phase + ")");
            return true;
        }
        Optional<V1ContainerState> state = state(pod, container);
        if (state.isPresent() && state.get().getTerminated() != null) {
            gone("debugger container '" + container + "' of pod " + this.pod + " " + describe(state.get())
                    + "; Delve is gone, so the tunnel stops (run attach again for a new debugger)");
            return true;
        }
        return false;
    }

    private void gone(String why) {
        if (closed.get()) return;
        ExitException reason = new ExitException(ExitCode.GONE, why);
        Thread stopper = new Thread(() -> stop(reason), name + "-stop");
        stopper.setDaemon(true);
        stopper.start();
    }

    // ---- one connection --------------------------------------------------------------------------------------------

    /** One local client and its WebSocket stream to the pod. */
    private final class Connection extends WebSocketListener implements Client {
        private final int id;
        private final Socket socket;
        private final CountDownLatch opened = new CountDownLatch(1);
        private final AtomicBoolean done = new AtomicBoolean();
        private final AtomicLong sent = new AtomicLong();
        private final AtomicLong received = new AtomicLong();
        private final StringBuilder remoteErrors = new StringBuilder();
        /** Port prefix bytes still to strip per channel (port-forward: 2 on each of channel 0 and 1). */
        private final int[] prefix = {2, 2};
        private volatile WebSocket webSocket;
        private volatile String protocol;
        private volatile String openFailure;
        private volatile int openFailureCode;
        private OutputStream toClient;
        private Thread pump;

        Connection(int id, Socket socket) {
            this.id = id;
            this.socket = socket;
        }

        private void run() {
            try {
                toClient = socket.getOutputStream();
                InputStream fromClient = socket.getInputStream();
                long started = System.nanoTime();
                webSocket = http.newWebSocket(request(), this);
                if (!opened.await(30, TimeUnit.SECONDS)) {
                    close("no answer from the API server within 30 s");
                    return;
                }
                if (openFailure != null) {
                    close(openFailure);
                    return;
                }
                if (verbose) {
                    log.accept("connection " + id + " from " + socket.getRemoteSocketAddress() + " opened in "
                            + TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started) + " ms (" + mode + ", " + protocol + ")");
                }
                byte[] buffer = new byte[CHUNK + 1];
                byte channel = 0; // port-forward data, or exec stdin
                while (!done.get()) {
                    int n = fromClient.read(buffer, 1, CHUNK);
                    if (n < 0) {
                        clientFinished();
                        return;
                    }
                    buffer[0] = channel;
                    WebSocket ws = webSocket;
                    while (ws.queueSize() > MAX_QUEUED && !done.get()) LockSupport.parkNanos(200_000);
                    if (!ws.send(ByteString.of(buffer, 0, n + 1))) {
                        close(null);
                        return;
                    }
                    sent.addAndGet(n);
                }
            } catch (InterruptedException e) {
                close(null);
            } catch (IOException e) {
                if (verbose && !done.get()) log.accept("connection " + id + ": the client went away (" + e.getMessage() + ")");
                close(null); // the client went away (reset): nothing more to tell
            } catch (ApiException | RuntimeException e) {
                if (verbose) {
                    java.io.StringWriter trace = new java.io.StringWriter();
                    e.printStackTrace(new java.io.PrintWriter(trace));
                    log.accept(trace.toString().strip());
                }
                close("cannot open a stream: " + e);
            }
        }

        /** The client closed its side: let the pod side finish, then close. */
        private void clientFinished() {
            WebSocket ws = webSocket;
            if (mode == Mode.EXEC && "v5.channel.k8s.io".equals(protocol)) {
                ws.send(ByteString.of((byte) 255, (byte) 0)); // v5 CLOSE of stdin: nc half-closes towards Delve
            } else {
                ws.close(1000, null);
            }
        }

        private Request request() throws ApiException {
            List<Pair> query = new ArrayList<>();
            if (mode == Mode.PORT_FORWARD) {
                query.add(new Pair("ports", Integer.toString(remotePort)));
                return Tunnel.this.request(query, "v4.channel.k8s.io");
            }
            query.add(new Pair("container", container));
            for (String word : List.of("nc", "127.0.0.1", Integer.toString(remotePort))) query.add(new Pair("command", word));
            query.add(new Pair("stdin", "true"));
            query.add(new Pair("stdout", "true"));
            query.add(new Pair("stderr", "true"));
            return Tunnel.this.request(query, "v5.channel.k8s.io, v4.channel.k8s.io");
        }

        @Override
        public void onOpen(WebSocket webSocket, Response response) {
            protocol = response.header("Sec-WebSocket-Protocol", "");
            opened.countDown();
        }

        @Override
        public void onMessage(WebSocket webSocket, ByteString bytes) {
            if (bytes.size() == 0) return;
            int channel = bytes.getByte(0) & 0xff;
            int offset = 1;
            try {
                if (mode == Mode.PORT_FORWARD) {
                    if (channel > 1) return;
                    int skip = Math.min(prefix[channel], bytes.size() - offset);
                    prefix[channel] -= skip;
                    offset += skip;
                    if (offset >= bytes.size()) return;
                    if (channel == 0) toClient(bytes, offset);
                    else remoteErrors.append(bytes.substring(offset).string(StandardCharsets.UTF_8));
                } else {
                    switch (channel) {
                        case 1 -> toClient(bytes, offset);
                        case 2 -> remoteErrors.append(bytes.substring(offset).string(StandardCharsets.UTF_8));
                        case 3 -> status(bytes.substring(offset).string(StandardCharsets.UTF_8));
                        default -> { }
                    }
                }
            } catch (IOException e) {
                close(null); // the client is gone
            }
        }

        private void toClient(ByteString bytes, int offset) throws IOException {
            byte[] all = bytes.toByteArray();
            toClient.write(all, offset, all.length - offset);
            received.addAndGet(all.length - offset);
        }

        /** The exec status (channel 3): Success, or Failure with a message (nc missing, nc exited non-zero). */
        private void status(String json) {
            if (json.contains("\"Success\"")) return;
            String message = json.replaceAll("(?s).*\"message\":\"((?:[^\"\\\\]|\\\\.)*)\".*", "$1");
            if (message.equals(json)) message = json;
            remoteErrors.append(remoteErrors.length() > 0 ? "; " : "").append(message.replace("\\\"", "\"").replace("\\n", " "));
        }

        @Override
        public void onMessage(WebSocket webSocket, String text) {
            // only the base64 protocols send text; we never ask for them
        }

        @Override
        public void onClosing(WebSocket webSocket, int code, String reason) {
            webSocket.close(1000, null);
            close(remoteError());
        }

        @Override
        public void onClosed(WebSocket webSocket, int code, String reason) {
            close(remoteError());
        }

        @Override
        public void onFailure(WebSocket webSocket, Throwable t, Response response) {
            if (opened.getCount() > 0) {
                openFailureCode = response != null ? response.code() : 0;
                openFailure = upgradeFailure(t, response);
                opened.countDown();
                return;
            }
            close(done.get() ? null : Optional.ofNullable(remoteError()).orElse("the stream broke: " + Cli.firstLine(String.valueOf(t.getMessage()))));
        }

        private String remoteError() {
            return explain(remoteErrors.toString());
        }

        /** Closes the client and the stream once; logs {@code why} when it is worth telling. */
        @Override
        public void start() {
            pump = new Thread(this::run, name + "-conn-" + id);
            pump.setDaemon(true);
            pump.start();
        }

        @Override
        public void close(String why) {
            if (!done.compareAndSet(false, true)) return;
            opened.countDown();
            WebSocket ws = webSocket;
            if (ws != null) ws.cancel(); // no close handshake to wait for: OkHttp would keep a timer thread for up to 60 s
            closeQuietly(socket);
            connections.remove(this);
            if (why != null && !closed.get()) log.accept("connection " + id + ": " + why);
            else if (verbose) log.accept("connection " + id + " closed (" + sent.get() + " bytes sent, " + received.get() + " received)");
        }
    }

    // ---- port-forward: SPDY streams tunnelled over one WebSocket ---------------------------------------------------

    /** A local client and what carries its bytes to the pod. */
    private interface Client {
        void start();

        /** Closes the client and its streams once; logs {@code why} when it is worth telling. */
        void close(String why);
    }

    private static final String SPDY_TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io";
    /** Seconds a client may block the shared session by not reading before it is cut off. */
    private static final int STUCK_CLIENT_SECONDS = 10;
    /** The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1). */
    private static final byte[] SPDY_DICTIONARY = java.util.Base64.getDecoder().decode(
            "AAAAB29wdGlvbnMAAAAEaGVhZAAAAARwb3N0AAAAA3B1dAAAAAZkZWxldGUAAAAFdHJhY2UAAAAGYWNjZXB0AAAADmFjY2VwdC1j" +
            "aGFyc2V0AAAAD2FjY2VwdC1lbmNvZGluZwAAAA9hY2NlcHQtbGFuZ3VhZ2UAAAANYWNjZXB0LXJhbmdlcwAAAANhZ2UAAAAFYWxs" +
            "b3cAAAANYXV0aG9yaXphdGlvbgAAAA1jYWNoZS1jb250cm9sAAAACmNvbm5lY3Rpb24AAAAMY29udGVudC1iYXNlAAAAEGNvbnRl" +
            "bnQtZW5jb2RpbmcAAAAQY29udGVudC1sYW5ndWFnZQAAAA5jb250ZW50LWxlbmd0aAAAABBjb250ZW50LWxvY2F0aW9uAAAAC2Nv" +
            "bnRlbnQtbWQ1AAAADWNvbnRlbnQtcmFuZ2UAAAAMY29udGVudC10eXBlAAAABGRhdGUAAAAEZXRhZwAAAAZleHBlY3QAAAAHZXhw" +
            "aXJlcwAAAARmcm9tAAAABGhvc3QAAAAIaWYtbWF0Y2gAAAARaWYtbW9kaWZpZWQtc2luY2UAAAANaWYtbm9uZS1tYXRjaAAAAAhp" +
            "Zi1yYW5nZQAAABNpZi11bm1vZGlmaWVkLXNpbmNlAAAADWxhc3QtbW9kaWZpZWQAAAAIbG9jYXRpb24AAAAMbWF4LWZvcndhcmRz" +
            "AAAABnByYWdtYQAAABJwcm94eS1hdXRoZW50aWNhdGUAAAATcHJveHktYXV0aG9yaXphdGlvbgAAAAVyYW5nZQAAAAdyZWZlcmVy" +
            "AAAAC3JldHJ5LWFmdGVyAAAABnNlcnZlcgAAAAJ0ZQAAAAd0cmFpbGVyAAAAEXRyYW5zZmVyLWVuY29kaW5nAAAAB3VwZ3JhZGUA" +
            "AAAKdXNlci1hZ2VudAAAAAR2YXJ5AAAAA3ZpYQAAAAd3YXJuaW5nAAAAEHd3dy1hdXRoZW50aWNhdGUAAAAGbWV0aG9kAAAAA2dl" +
            "dAAAAAZzdGF0dXMAAAAGMjAwIE9LAAAAB3ZlcnNpb24AAAAISFRUUC8xLjEAAAADdXJsAAAABnB1YmxpYwAAAApzZXQtY29va2ll" +
            "AAAACmtlZXAtYWxpdmUAAAAGb3JpZ2luMTAwMTAxMjAxMjAyMjA1MjA2MzAwMzAyMzAzMzA0MzA1MzA2MzA3NDAyNDA1NDA2NDA3" +
            "NDA4NDA5NDEwNDExNDEyNDEzNDE0NDE1NDE2NDE3NTAyNTA0NTA1MjAzIE5vbi1BdXRob3JpdGF0aXZlIEluZm9ybWF0aW9uMjA0" +
            "IE5vIENvbnRlbnQzMDEgTW92ZWQgUGVybWFuZW50bHk0MDAgQmFkIFJlcXVlc3Q0MDEgVW5hdXRob3JpemVkNDAzIEZvcmJpZGRl" +
            "bjQwNCBOb3QgRm91bmQ1MDAgSW50ZXJuYWwgU2VydmVyIEVycm9yNTAxIE5vdCBJbXBsZW1lbnRlZDUwMyBTZXJ2aWNlIFVuYXZh" +
            "aWxhYmxlSmFuIEZlYiBNYXIgQXByIE1heSBKdW4gSnVsIEF1ZyBTZXB0IE9jdCBOb3YgRGVjIDAwOjAwOjAwIE1vbiwgVHVlLCBX" +
            "ZWQsIFRodSwgRnJpLCBTYXQsIFN1biwgR01UY2h1bmtlZCx0ZXh0L2h0bWwsaW1hZ2UvcG5nLGltYWdlL2pwZyxpbWFnZS9naWYs" +
            "YXBwbGljYXRpb24veG1sLGFwcGxpY2F0aW9uL3hodG1sK3htbCx0ZXh0L3BsYWluLHRleHQvamF2YXNjcmlwdCxwdWJsaWNwcml2" +
            "YXRlbWF4LWFnZT1nemlwLGRlZmxhdGUsc2RjaGNoYXJzZXQ9dXRmLThjaGFyc2V0PWlzby04ODU5LTEsdXRmLSwqLGVucT0wLg==");
    /** False once the API server turned the tunnelled protocol down: then one v4 WebSocket per connection. */
    private volatile boolean spdySupported = true;
    private volatile SpdySession spdy;
    private volatile SpdyTransport spdyTransport = SpdyTransport.UNKNOWN;
    private final Object spdyLock = new Object();

    /**
     * Opens the shared SPDY session when none is open. Like kubectl port-forward (1.31+), the SPDY/3.1 port-forward
     * protocol rides in binary WebSocket messages (subprotocol SPDY/3.1+portforward.k8s.io); a new client costs two
     * new streams on it, not a new TLS connection and upgrade through the API server, the kubelet and the runtime.
     */
    private SpdySession spdySession() {
        synchronized (spdyLock) {
            SpdySession current = spdy;
            if (current != null && !current.dead) return current;
            if (closed.get()) throw new IllegalStateException("the tunnel is closed");
            SpdySession next = new SpdySession();
            next.connect();
            spdy = next;
            return next;
        }
    }

    /** Probes the tunnelled protocol at open: a 403 is final; any other refusal falls back to v4 per connection. */
    private void openSpdy() {
        try {
            spdySession();
        } catch (SpdyUnsupported e) {
            spdySupported = false;
            if (verbose) log.accept("the API server does not tunnel SPDY over WebSocket (" + e.getMessage() + "): one WebSocket per connection");
        } catch (ExitException e) {
            if (e.status == ExitCode.FORBIDDEN) throw e;
            spdySupported = false;
            if (verbose) log.accept(e.getMessage() + ": one WebSocket per connection");
        }
    }

    private static final class SpdyUnsupported extends RuntimeException {
        SpdyUnsupported(String message) {
            super(message);
        }
    }

    /** One WebSocket to pods/portforward carrying a SPDY/3.1 client session; streams for every client. */
    private final class SpdySession {
        private final Map<Integer, SpdyClient> streams = new ConcurrentHashMap<>();
        private final java.util.zip.Deflater deflater = new java.util.zip.Deflater(java.util.zip.Deflater.BEST_COMPRESSION);
        private final java.util.zip.Inflater inflater = new java.util.zip.Inflater();
        /** Orders stream ids and header compression: SYN_STREAMs must reach the server in id order. */
        private final Object streamLock = new Object();
        private byte[] input = new byte[64 * 1024];
        private int inputLength;
        private int nextStreamId = 1;
        private int nextRequestId;
        private volatile SpdyPipe webSocket;
        private Thread reader;
        volatile boolean dead;

        SpdySession() {
            deflater.setDictionary(SPDY_DICTIONARY);
        }

        void connect() {
            SpdyPipe pipe;
            try {
                pipe = openPipe();
            } catch (ApiException e) {
                throw Kube.failure("cannot open pods/portforward", e);
            } catch (IOException e) {
                dead = true;
                throw new ExitException(ExitCode.UNREACHABLE, "cannot reach the API server for pods/portforward ("
                        + Cli.firstLine(String.valueOf(e.getMessage())) + "); the listener stays up, the next connection tries again", e);
            }
            webSocket = pipe;
            reader = new Thread(this::readLoop, name + "-spdy");
            reader.setDaemon(true);
            reader.start();
        }

        /**
         * SPDY/3.1 straight on the upgraded connection (a POST, authorized as create pods/portforward; what kubectl
         * did before 1.31 and still falls back to), else tunnelled in WebSocket frames (a GET, authorized as get;
         * kubectl 1.31+). The transport that worked is kept for later sessions.
         */
        private SpdyPipe openPipe() throws ApiException, IOException {
            String message = null;
            int code = 0;
            if (spdyTransport != SpdyTransport.WEBSOCKET) {
                try {
                    SpdyPipe pipe = RawUpgrade.open(http, spdyRequest());
                    spdyTransport = SpdyTransport.UPGRADE;
                    return pipe;
                } catch (RawWebSocket.Refused e) {
                    code = e.code;
                    message = refusal(e);
                    if (verbose) log.accept("pods/portforward over SPDY refused (" + message + "), trying SPDY over WebSocket");
                }
            }
            try {
                RawWebSocket ws = RawWebSocket.open(http, request(List.of(), SPDY_TUNNEL_PROTOCOL));
                if (!SPDY_TUNNEL_PROTOCOL.equals(ws.protocol)) {
                    ws.cancel();
                    dead = true;
                    throw new SpdyUnsupported("it answered with subprotocol '" + ws.protocol + "'");
                }
                spdyTransport = SpdyTransport.WEBSOCKET;
                return ws;
            } catch (RawWebSocket.Refused e) {
                dead = true;
                if (e.code == 403 && (code == 403 || code == 0)) {
                    throw new ExitException(ExitCode.FORBIDDEN, forbidden(kube, pod, mode) + " (" + refusal(e) + ")");
                }
                throw new SpdyUnsupported(refusal(e) + (message != null ? "; over SPDY: " + message : ""));
            }
        }

        private String refusal(RawWebSocket.Refused e) {
            return e.body.isBlank() ? "HTTP " + e.code
                    : Kube.statusMessage(new ApiException(e.code, Map.of(), e.body)).orElse("HTTP " + e.code);
        }

        /** Registers a client and opens its error and data streams, as kubectl port-forward does. */
        int[] openStreams(SpdyClient client) throws IOException {
            synchronized (streamLock) {
                if (dead) throw new IOException("the API connection closed");
                int requestId = nextRequestId++;
                int errorStream = nextStreamId;
                int dataStream = nextStreamId + 2;
                nextStreamId += 4;
                client.dataStream = dataStream; // before the first frame: the reply can come back at once
                client.errorStream = errorStream;
                streams.put(errorStream, client);
                streams.put(dataStream, client);
                String port = Integer.toString(remotePort);
                String request = Integer.toString(requestId);
                byte[] error = synStream(errorStream, "error", port, request);
                byte[] finish = dataFrame(errorStream, 0x01, null, 0, 0); // we never write to the error stream: half-close it
                byte[] data = synStream(dataStream, "data", port, request);
                java.nio.ByteBuffer frames = java.nio.ByteBuffer.allocate(error.length + finish.length + data.length);
                send(frames.put(error).put(finish).put(data).array()); // one WebSocket frame, one TLS record
                return new int[] {dataStream, errorStream};
            }
        }

        void forget(int... streamIds) {
            for (int id : streamIds) streams.remove(id);
        }

        void send(byte[] frame) throws IOException {
            send(frame, 0, frame.length);
        }

        /** Writes SPDY bytes in one WebSocket frame, on the calling thread (blocking is the backpressure). */
        void send(byte[] bytes, int offset, int length) throws IOException {
            SpdyPipe ws = webSocket;
            if (dead || ws == null) throw new IOException("the API connection closed");
            try {
                ws.write(bytes, offset, length);
            } catch (IOException e) {
                fail("lost the port-forward connection to the API server (" + Cli.firstLine(String.valueOf(e.getMessage()))
                        + "); the listener stays up, the next connection opens a new one");
                throw e;
            }
        }

        private byte[] synStream(int streamId, String type, String port, String requestId) {
            java.io.ByteArrayOutputStream block = new java.io.ByteArrayOutputStream();
            java.io.DataOutputStream out = new java.io.DataOutputStream(block);
            try {
                out.writeInt(3);
                for (String[] header : new String[][] {{"streamtype", type}, {"port", port}, {"requestid", requestId}}) {
                    for (String part : header) {
                        byte[] bytes = part.getBytes(StandardCharsets.UTF_8);
                        out.writeInt(bytes.length);
                        out.write(bytes);
                    }
                }
            } catch (IOException impossible) {
                throw new IllegalStateException(impossible);
            }
            byte[] compressed = compress(block.toByteArray());
            java.nio.ByteBuffer frame = java.nio.ByteBuffer.allocate(18 + compressed.length);
            frame.putShort((short) 0x8003).putShort((short) 1).putInt(10 + compressed.length); // control, version 3, SYN_STREAM, no flags
            frame.putInt(streamId).putInt(0).putShort((short) 0).put(compressed);
            return frame.array();
        }

        /** Header blocks share one zlib stream per direction, flushed after each block (SPDY/3). Under streamLock. */
        private byte[] compress(byte[] block) {
            deflater.setInput(block);
            java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
            byte[] buffer = new byte[1024];
            int n;
            do {
                n = deflater.deflate(buffer, 0, buffer.length, java.util.zip.Deflater.SYNC_FLUSH);
                out.write(buffer, 0, n);
            } while (n == buffer.length || !deflater.needsInput());
            return out.toByteArray();
        }

        /** Keeps the inflater in step with the server's header blocks; their content does not matter here. */
        private void skipHeaderBlock(byte[] bytes, int offset, int length) throws IOException {
            inflater.setInput(bytes, offset, length);
            byte[] sink = new byte[1024];
            try {
                while (true) {
                    int n = inflater.inflate(sink);
                    if (n == 0) {
                        if (inflater.needsDictionary()) inflater.setDictionary(SPDY_DICTIONARY);
                        else if (inflater.needsInput() || inflater.finished()) return;
                    }
                }
            } catch (java.util.zip.DataFormatException e) {
                throw new IOException("the server sent a SPDY header block that does not decompress: " + e.getMessage());
            }
        }

        void close() {
            dead = true;
            SpdyPipe ws = webSocket;
            if (ws != null) ws.close();
            if (reader != null && reader != Thread.currentThread()) {
                try {
                    reader.join(2000);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
        }

        private void readLoop() {
            SpdyPipe ws = webSocket;
            String why = "the API server closed the port-forward connection";
            try {
                byte[] buffer = new byte[64 * 1024];
                while (true) {
                    int n = ws.read(buffer);
                    if (n < 0) break;
                    received(buffer, n);
                }
            } catch (IOException e) {
                why = "lost the port-forward connection to the API server (" + Cli.firstLine(String.valueOf(e.getMessage())) + ")";
            }
            fail(why + "; the listener stays up, the next connection opens a new one");
        }

        /** SPDY bytes from the server, in any chunking: parses whole frames, keeps the rest. */
        private void received(byte[] bytes, int size) throws IOException {
            if (inputLength + size > input.length) input = java.util.Arrays.copyOf(input, Math.max(input.length * 2, inputLength + size));
            System.arraycopy(bytes, 0, input, inputLength, size);
            inputLength += size;
            int offset = 0;
            while (inputLength - offset >= 8) {
                int length = ((input[offset + 5] & 0xff) << 16) | ((input[offset + 6] & 0xff) << 8) | (input[offset + 7] & 0xff);
                if (inputLength - offset < 8 + length) break;
                frame(input, offset, length);
                offset += 8 + length;
            }
            System.arraycopy(input, offset, input, 0, inputLength - offset);
            inputLength -= offset;
        }

        private void frame(byte[] b, int at, int length) throws IOException {
            int flags = b[at + 4] & 0xff;
            boolean control = (b[at] & 0x80) != 0;
            if (!control) {
                int streamId = int32(b, at) & 0x7fffffff;
                SpdyClient client = streams.get(streamId);
                if (client != null) client.fromPod(streamId, b, at + 8, length, (flags & 0x01) != 0);
                return;
            }
            int type = ((b[at + 2] & 0xff) << 8) | (b[at + 3] & 0xff);
            switch (type) {
                case 1 -> skipHeaderBlock(b, at + 18, length - 10); // SYN_STREAM from the server: not used by port-forward
                case 2 -> { // SYN_REPLY
                    int streamId = int32(b, at + 8) & 0x7fffffff;
                    skipHeaderBlock(b, at + 12, length - 4);
                    SpdyClient client = streams.get(streamId);
                    if (client != null) client.replied(streamId, (flags & 0x01) != 0);
                }
                case 3 -> { // RST_STREAM
                    int streamId = int32(b, at + 8) & 0x7fffffff;
                    SpdyClient client = streams.get(streamId);
                    if (client != null) client.reset(streamId, int32(b, at + 12));
                }
                case 6 -> send(java.util.Arrays.copyOfRange(b, at, at + 8 + length)); // PING: answer with the same id
                case 7 -> dead = true; // GOAWAY: no new streams here; the next client opens a new session
                case 8 -> skipHeaderBlock(b, at + 12, length - 4); // HEADERS
                default -> { } // SETTINGS, WINDOW_UPDATE (spdystream has no flow control), NOOP
            }
        }

        private int int32(byte[] b, int at) {
            return ((b[at] & 0xff) << 24) | ((b[at + 1] & 0xff) << 16) | ((b[at + 2] & 0xff) << 8) | (b[at + 3] & 0xff);
        }

        /** The session is gone: every client on it ends with {@code why}. */
        private void fail(String why) {
            dead = true;
            for (SpdyClient client : List.copyOf(streams.values())) client.close(closed.get() ? null : why);
            streams.clear();
            SpdyPipe ws = webSocket;
            if (ws != null) ws.cancel();
        }
    }

    /**
     * A client WebSocket (RFC 6455) on a connection OkHttp upgraded (OkHttp 5 hands out the socket of a 101 response):
     * binary frames written on the caller's thread, frames read by one reader. For the SPDY session, where OkHttp's
     * own WebSocket would add a writer-thread hop and a send queue to every frame.
     */
    /** A byte pipe to the SPDY server: a plain upgraded connection, or binary WebSocket frames. */
    private interface SpdyPipe {
        /** Reads some bytes; -1 at the end. Called by one reader thread. */
        int read(byte[] buffer) throws IOException;

        /** Writes and flushes; thread-safe. */
        void write(byte[] bytes, int offset, int length) throws IOException;

        void close();

        void cancel();
    }

    private enum SpdyTransport { UNKNOWN, UPGRADE, WEBSOCKET }

    /** Plain SPDY/3.1 on a connection upgraded by a POST (Upgrade: SPDY/3.1, X-Stream-Protocol-Version). */
    private static final class RawUpgrade implements SpdyPipe {
        private final okio.Socket socket;
        private final okio.BufferedSource in;
        private final okio.BufferedSink out;

        private RawUpgrade(okio.Socket socket) {
            this.socket = socket;
            this.in = okio.Okio.buffer(socket.getSource());
            this.out = okio.Okio.buffer(socket.getSink());
        }

        static RawUpgrade open(OkHttpClient http, Request request) throws IOException {
            OkHttpClient http1 = http.newBuilder().protocols(List.of(okhttp3.Protocol.HTTP_1_1)).build();
            Response response = http1.newCall(request).execute();
            if (response.code() != 101 || response.socket() == null) {
                String body;
                try (response) {
                    body = response.body() != null ? response.body().string() : "";
                }
                throw new RawWebSocket.Refused(response.code(), body);
            }
            return new RawUpgrade(response.socket());
        }

        @Override
        public int read(byte[] buffer) throws IOException {
            return in.read(buffer, 0, buffer.length);
        }

        @Override
        public synchronized void write(byte[] bytes, int offset, int length) throws IOException {
            out.write(bytes, offset, length);
            out.flush();
        }

        @Override
        public void close() {
            socket.cancel();
        }

        @Override
        public void cancel() {
            socket.cancel();
        }
    }

    private static final class RawWebSocket implements SpdyPipe {
        /** The server answered the upgrade with another status. */
        static final class Refused extends IOException {
            final int code;
            final String body;

            Refused(int code, String body) {
                super("HTTP " + code);
                this.code = code;
                this.body = body;
            }
        }

        final String protocol;
        private final okio.Socket socket;
        private final okio.BufferedSource in;
        private final okio.BufferedSink out;
        private final java.util.Random masks = new java.security.SecureRandom();
        private final byte[] header = new byte[14];
        private byte[] masked = new byte[8 + CHUNK];
        private long remaining;
        private final AtomicBoolean closing = new AtomicBoolean();

        private RawWebSocket(okio.Socket socket, String protocol) {
            this.socket = socket;
            this.protocol = protocol;
            this.in = okio.Okio.buffer(socket.getSource());
            this.out = okio.Okio.buffer(socket.getSink());
        }

        static RawWebSocket open(OkHttpClient http, Request request) throws IOException {
            byte[] nonce = new byte[16];
            new java.security.SecureRandom().nextBytes(nonce);
            String key = java.util.Base64.getEncoder().encodeToString(nonce);
            Request upgrade = request.newBuilder().header("Connection", "Upgrade").header("Upgrade", "websocket")
                    .header("Sec-WebSocket-Version", "13").header("Sec-WebSocket-Key", key).build();
            OkHttpClient http1 = http.newBuilder().protocols(List.of(okhttp3.Protocol.HTTP_1_1)).build();
            Response response = http1.newCall(upgrade).execute();
            if (response.code() != 101) {
                String body;
                try (response) {
                    body = response.body() != null ? response.body().string() : "";
                }
                throw new Refused(response.code(), body);
            }
            String accept;
            try {
                accept = java.util.Base64.getEncoder().encodeToString(java.security.MessageDigest.getInstance("SHA-1")
                        .digest((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").getBytes(StandardCharsets.US_ASCII)));
            } catch (java.security.NoSuchAlgorithmException e) {
                throw new IOException(e);
            }
            okio.Socket socket = response.socket();
            if (socket == null || !accept.equals(response.header("Sec-WebSocket-Accept"))) {
                if (socket != null) socket.cancel();
                throw new IOException("the API server's WebSocket upgrade is not valid");
            }
            return new RawWebSocket(socket, response.header("Sec-WebSocket-Protocol", ""));
        }

        /** One masked binary frame. */
        @Override
        public synchronized void write(byte[] bytes, int offset, int length) throws IOException {
            writeFrame(0x2, bytes, offset, length);
        }

        private void writeFrame(int opcode, byte[] bytes, int offset, int length) throws IOException {
            int n = 0;
            header[n++] = (byte) (0x80 | opcode);
            if (length < 126) {
                header[n++] = (byte) (0x80 | length);
            } else if (length < 65536) {
                header[n++] = (byte) (0x80 | 126);
                header[n++] = (byte) (length >>> 8);
                header[n++] = (byte) length;
            } else {
                header[n++] = (byte) (0x80 | 127);
                for (int shift = 56; shift >= 0; shift -= 8) header[n++] = (byte) ((long) length >>> shift);
            }
            int mask = masks.nextInt();
            header[n++] = (byte) (mask >>> 24);
            header[n++] = (byte) (mask >>> 16);
            header[n++] = (byte) (mask >>> 8);
            header[n++] = (byte) mask;
            out.write(header, 0, n);
            if (masked.length < length) masked = new byte[Math.max(length, 2 * masked.length)];
            byte m0 = header[n - 4], m1 = header[n - 3], m2 = header[n - 2], m3 = header[n - 1];
            int i = 0;
            for (; i + 3 < length; i += 4) {
                masked[i] = (byte) (bytes[offset + i] ^ m0);
                masked[i + 1] = (byte) (bytes[offset + i + 1] ^ m1);
                masked[i + 2] = (byte) (bytes[offset + i + 2] ^ m2);
                masked[i + 3] = (byte) (bytes[offset + i + 3] ^ m3);
            }
            for (; i < length; i++) masked[i] = (byte) (bytes[offset + i] ^ header[n - 4 + (i & 3)]);
            out.write(masked, 0, length);
            out.flush();
        }

        /**
         * Reads payload bytes of the next data frames (message boundaries do not matter to a byte stream); answers
         * pings; -1 once the server closed.
         */
        @Override
        public int read(byte[] buffer) throws IOException {
            while (remaining == 0) {
                int b0 = in.readByte() & 0xff;
                int b1 = in.readByte() & 0xff;
                long length = b1 & 0x7f;
                if (length == 126) length = in.readShort() & 0xffff;
                else if (length == 127) length = in.readLong();
                if ((b1 & 0x80) != 0) throw new IOException("the server masked a frame");
                int opcode = b0 & 0x0f;
                if (opcode >= 0x8) { // control frames: close, ping, pong (never fragmented, at most 125 bytes)
                    byte[] payload = in.readByteArray(length);
                    if (opcode == 0x8) {
                        close();
                        return -1;
                    }
                    if (opcode == 0x9) {
                        synchronized (this) {
                            writeFrame(0xA, payload, 0, payload.length);
                        }
                    }
                    continue;
                }
                if (opcode == 0x1) throw new IOException("the server sent a text frame on a binary protocol");
                remaining = length;
            }
            int n = in.read(buffer, 0, (int) Math.min(buffer.length, remaining));
            if (n < 0) throw new java.io.EOFException("the connection ended inside a frame");
            remaining -= n;
            return n;
        }

        /** Sends a close frame once (best effort) and drops the connection. */
        @Override
        public void close() {
            if (closing.compareAndSet(false, true)) {
                try {
                    synchronized (this) {
                        writeFrame(0x8, new byte[] {0x03, (byte) 0xe8}, 0, 2); // 1000, normal closure
                    }
                } catch (IOException ignored) {
                    // the connection is gone already
                }
            }
            cancel();
        }

        @Override
        public void cancel() {
            socket.cancel();
        }
    }

    private static byte[] dataFrame(int streamId, int flags, byte[] data, int offset, int length) {
        byte[] frame = new byte[8 + length];
        dataFrameHeader(frame, streamId, flags, length);
        if (length > 0) System.arraycopy(data, offset, frame, 8, length);
        return frame;
    }

    private static void dataFrameHeader(byte[] frame, int streamId, int flags, int length) {
        frame[0] = (byte) (streamId >>> 24 & 0x7f);
        frame[1] = (byte) (streamId >>> 16);
        frame[2] = (byte) (streamId >>> 8);
        frame[3] = (byte) streamId;
        frame[4] = (byte) flags;
        frame[5] = (byte) (length >>> 16);
        frame[6] = (byte) (length >>> 8);
        frame[7] = (byte) length;
    }

    private static byte[] rstStream(int streamId) {
        java.nio.ByteBuffer frame = java.nio.ByteBuffer.allocate(16);
        frame.putShort((short) 0x8003).putShort((short) 3).putInt(8).putInt(streamId).putInt(5); // RST_STREAM, CANCEL
        return frame.array();
    }

    /** One local client on the shared SPDY session: a data stream and an error stream. */
    private final class SpdyClient implements Client {
        private final int id;
        private final Socket socket;
        private final CountDownLatch replied = new CountDownLatch(1);
        private final AtomicBoolean done = new AtomicBoolean();
        private final AtomicLong sent = new AtomicLong();
        private final AtomicLong received = new AtomicLong();
        private final StringBuffer errors = new StringBuffer();
        private volatile SpdySession session;
        private volatile int dataStream;
        private volatile int errorStream;
        private volatile boolean localFinished;
        private volatile boolean remoteFinished;
        /** When the session's reader started a write to this client that has not returned yet (0: none). */
        private volatile long writingSince;
        private OutputStream toClient;
        private Thread pump;

        SpdyClient(int id, Socket socket) {
            this.id = id;
            this.socket = socket;
        }

        @Override
        public void start() {
            pump = new Thread(this::run, name + "-conn-" + id);
            pump.setDaemon(true);
            pump.start();
        }

        private void run() {
            try {
                long started = System.nanoTime();
                toClient = socket.getOutputStream();
                SpdySession current;
                try {
                    current = spdySession();
                } catch (ExitException | SpdyUnsupported e) {
                    close(e.getMessage());
                    return;
                }
                session = current;
                int[] ids = current.openStreams(this);
                if (done.get()) { // the session failed while the streams opened
                    current.forget(ids);
                    return;
                }
                // spdystream drops data that arrives before it has replied to the stream
                if (!replied.await(30, TimeUnit.SECONDS)) {
                    close("the pod side did not accept the stream within 30 s");
                    return;
                }
                if (verbose) {
                    log.accept("connection " + id + " from " + socket.getRemoteSocketAddress() + " opened in "
                            + TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started) + " ms (port-forward, SPDY stream " + dataStream + ")");
                }
                InputStream fromClient = socket.getInputStream();
                byte[] buffer = new byte[8 + CHUNK]; // room for the SPDY data frame header: no copy per frame
                while (!done.get()) {
                    int n = fromClient.read(buffer, 8, CHUNK);
                    if (n < 0) {
                        localFinished = true;
                        current.send(dataFrame(dataStream, 0x01, null, 0, 0)); // half-close, as kubectl does
                        if (remoteFinished) close(null);
                        return;
                    }
                    dataFrameHeader(buffer, dataStream, 0, n);
                    current.send(buffer, 0, 8 + n);
                    sent.addAndGet(n);
                }
            } catch (InterruptedException e) {
                close(null);
            } catch (IOException e) {
                if (verbose && !done.get()) log.accept("connection " + id + ": " + e.getMessage());
                close(null);
            }
        }

        void replied(int streamId, boolean fin) {
            if (streamId == dataStream) replied.countDown();
            if (fin) fromPod(streamId, null, 0, 0, true);
        }

        /**
         * A data frame from the pod side, written to the client on the session's reader thread: no hand-over per
         * frame. A client that stops reading would hold up every stream, so the watchdog cuts it off after a while.
         */
        void fromPod(int streamId, byte[] bytes, int offset, int length, boolean fin) {
            if (streamId == errorStream) {
                if (length > 0) errors.append(new String(bytes, offset, length, StandardCharsets.UTF_8));
                return;
            }
            if (length > 0 && !done.get()) {
                writingSince = System.nanoTime();
                try {
                    toClient.write(bytes, offset, length);
                    received.addAndGet(length);
                } catch (IOException e) {
                    close(null); // the client went away
                    return;
                } finally {
                    writingSince = 0;
                }
            }
            if (fin) { // the pod side finished (Delve closed, or the port-forward ended): as kubectl, close the client
                remoteFinished = true;
                close(explain(errors.toString()));
            }
        }

        void reset(int streamId, int status) {
            if (streamId == dataStream) close(explain(errors.toString()));
        }

        /** Called by the watchdog: true when a write to this client has been stuck longer than {@code nanos}. */
        boolean stuck(long now, long nanos) {
            long since = writingSince;
            return since != 0 && now - since > nanos;
        }

        @Override
        public void close(String why) {
            if (!done.compareAndSet(false, true)) return;
            replied.countDown();
            SpdySession current = session;
            if (current != null && dataStream != 0) {
                current.forget(dataStream, errorStream);
                if (!current.dead && !(localFinished && remoteFinished)) {
                    try {
                        current.send(rstStream(dataStream));
                    } catch (IOException ignored) {
                        // the session is gone: so are its streams
                    }
                }
            }
            closeQuietly(socket);
            connections.remove(this);
            if (why != null && !closed.get()) log.accept("connection " + id + ": " + why);
            else if (verbose) log.accept("connection " + id + " closed (" + sent.get() + " bytes sent, " + received.get() + " received)");
        }
    }

    /** Cuts off SPDY clients that stopped reading, so that they do not hold up the others for long. */
    private void watchdogLoop() {
        long limit = TimeUnit.SECONDS.toNanos(STUCK_CLIENT_SECONDS);
        while (!closed.get()) {
            try {
                Thread.sleep(500);
            } catch (InterruptedException e) {
                return;
            }
            long now = System.nanoTime();
            for (Client client : List.copyOf(connections)) {
                if (client instanceof SpdyClient spdyClient && spdyClient.stuck(now, limit)) {
                    spdyClient.close("the client read nothing for " + STUCK_CLIENT_SECONDS + " s while the pod sent data; "
                            + "closed it so the other connections go on");
                }
            }
        }
    }

    /** The SPDY upgrade request (a POST, as kubectl's SPDY dialer sends it) for pods/portforward. */
    private Request spdyRequest() throws ApiException {
        String path = "/api/v1/namespaces/" + kube.client.escapeString(kube.namespace) + "/pods/" + kube.client.escapeString(pod) + "/portforward";
        Map<String, String> headers = new HashMap<>(Map.of("Connection", "Upgrade", "Upgrade", "SPDY/3.1",
                "X-Stream-Protocol-Version", "portforward.k8s.io"));
        Request request = kube.client.buildRequest(null, path, "POST", new ArrayList<>(), new ArrayList<>(), null,
                headers, new HashMap<>(), new HashMap<>(), new String[] {"BearerToken"}, null);
        return request.newBuilder().post(okhttp3.RequestBody.create(new byte[0])).build();
    }

    /** The upgrade request for a stream of this tunnel's pod. */
    private Request request(List<Pair> query, String protocols) throws ApiException {
        String path = "/api/v1/namespaces/" + kube.client.escapeString(kube.namespace) + "/pods/" + kube.client.escapeString(pod) + "/" + mode.subresource;
        Map<String, String> headers = new HashMap<>(Map.of("Sec-WebSocket-Protocol", protocols));
        return kube.client.buildRequest(null, path, "GET", new ArrayList<>(query), new ArrayList<>(), null,
                headers, new HashMap<>(), new HashMap<>(), new String[] {"BearerToken"}, null);
    }

    /** One line for the error text the pod side sent (port-forward error stream, nc's stderr and exit status). */
    private String explain(String errors) {
        String text = errors.strip();
        if (text.isEmpty()) return null;
        if (text.contains("connection refused") || text.contains("Connection refused")) {
            return "nothing listens on 127.0.0.1:" + remotePort + " in pod " + pod + " (is Delve running with --listen=127.0.0.1:"
                    + remotePort + "?): " + Cli.firstLine(text);
        }
        if (text.contains("executable file not found") || text.contains("nc: not found")) {
            return "the debugger container '" + container + "' has no nc, which --mode exec needs; use --mode port-forward (" + Cli.firstLine(text) + ")";
        }
        return Cli.firstLine(text);
    }

    /** One line for a failed WebSocket upgrade. */
    private String upgradeFailure(Throwable t, Response response) {
        if (response == null) {
            return "cannot reach the API server (" + Cli.firstLine(String.valueOf(t.getMessage())) + "); the listener stays up, the next connection tries again";
        }
        String body = "";
        try {
            if (response.body() != null) body = response.body().string();
        } catch (IOException | IllegalStateException ignored) {
            // the body was already consumed or closed
        }
        String message = body.isBlank() ? "HTTP " + response.code()
                : Kube.statusMessage(new ApiException(response.code(), Map.of(), body)).orElse("HTTP " + response.code());
        if (response.code() == 403) return forbidden(kube, pod, mode) + " (" + message + ")";
        return "the API server refused the " + mode + " stream: " + message;
    }

    /** Plain sockets with Nagle's algorithm off (TLS is layered on top by OkHttp). */
    private static final class NoDelaySocketFactory extends javax.net.SocketFactory {
        private final javax.net.SocketFactory delegate = javax.net.SocketFactory.getDefault();

        private static Socket noDelay(Socket socket) throws SocketException {
            socket.setTcpNoDelay(true);
            return socket;
        }

        @Override
        public Socket createSocket() throws IOException {
            return noDelay(delegate.createSocket());
        }

        @Override
        public Socket createSocket(String host, int port) throws IOException {
            return noDelay(delegate.createSocket(host, port));
        }

        @Override
        public Socket createSocket(String host, int port, java.net.InetAddress localHost, int localPort) throws IOException {
            return noDelay(delegate.createSocket(host, port, localHost, localPort));
        }

        @Override
        public Socket createSocket(java.net.InetAddress host, int port) throws IOException {
            return noDelay(delegate.createSocket(host, port));
        }

        @Override
        public Socket createSocket(java.net.InetAddress address, int port, java.net.InetAddress localAddress, int localPort) throws IOException {
            return noDelay(delegate.createSocket(address, port, localAddress, localPort));
        }
    }

    static void closeQuietly(Closeable closeable) {
        if (closeable == null) return;
        try {
            closeable.close();
        } catch (IOException | RuntimeException ignored) {
            // closing is best effort
        }
    }
}
