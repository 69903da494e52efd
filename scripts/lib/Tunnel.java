import com.google.gson.reflect.TypeToken;
import io.kubernetes.client.openapi.ApiException;
import io.kubernetes.client.openapi.Pair;
import io.kubernetes.client.openapi.apis.AuthorizationV1Api;
import io.kubernetes.client.openapi.apis.CoreV1Api;
import io.kubernetes.client.openapi.models.V1ContainerState;
import io.kubernetes.client.openapi.models.V1ContainerStateTerminated;
import io.kubernetes.client.openapi.models.V1ContainerStateWaiting;
import io.kubernetes.client.openapi.models.V1ContainerStatus;
import io.kubernetes.client.openapi.models.V1EphemeralContainer;
import io.kubernetes.client.openapi.models.V1Pod;
import io.kubernetes.client.openapi.models.V1ResourceAttributes;
import io.kubernetes.client.openapi.models.V1SelfSubjectAccessReview;
import io.kubernetes.client.openapi.models.V1SelfSubjectAccessReviewSpec;
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
 * Exposes a port on the loopback of a pod (Delve in the debugger container) on a local address: every accepted
 * local connection gets its own WebSocket stream through the API server, either a pods/portforward stream or
 * `nc 127.0.0.1 PORT` run in the debugger container over pods/exec (the article's plumbing, in one process).
 * Watches the pod and ends when the debugger container or the pod goes away; {@link #close()} stops everything.
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

    private static final int CHUNK = 32 * 1024;
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
    private final Set<Connection> connections = ConcurrentHashMap.newKeySet();
    private final AtomicInteger connectionIds = new AtomicInteger();
    private final AtomicBoolean closed = new AtomicBoolean();
    private final CompletableFuture<ExitException> ended = new CompletableFuture<>();
    private final String name;
    private volatile Watch<V1Pod> watch;
    private Thread acceptor;
    private Thread watcher;

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
        this.http = kube.client.getHttpClient().newBuilder().dispatcher(dispatcher).build();
    }

    /** Opens a tunnel that logs nothing; see {@link #open(Kube, String, String, int, InetSocketAddress, Mode, Consumer, boolean)}. */
    static Tunnel open(Kube kube, String pod, String container, int remotePort, InetSocketAddress local, Mode mode) {
        return open(kube, pod, container, remotePort, local, mode, line -> {}, false);
    }

    /**
     * Binds {@code local} (port 0 picks a free one), checks that {@code container} of {@code pod} runs and that this
     * user may open the streams, then accepts connections until closed or until the debugger goes away.
     *
     * @param container the debugger container, or null for "debugger" or else the newest running ephemeral container
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
            Tunnel tunnel = new Tunnel(kube, pod, debugger, remotePort, mode, log, verbose, target.getMetadata().getUid(), server);
            tunnel.start(target);
            return tunnel;
        } catch (RuntimeException e) {
            closeQuietly(server);
            throw e;
        }
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
        for (Connection connection : List.copyOf(connections)) connection.close(null);
        if (watcher != null) watcher.interrupt();
        join(acceptor);
        join(watcher);
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
        for (int i = ephemeral.size() - 1; i >= 0; i--) {
            if (state(pod, ephemeral.get(i)).map(s -> s.getRunning() != null).orElse(false)) return ephemeral.get(i);
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
     * Asks the API server whether this user may open the streams. A WebSocket upgrade is a GET, which Kubernetes
     * authorizes as verb "get" on the subresource (POST, as SPDY clients send, is "create").
     */
    private static void checkAllowed(Kube kube, String pod, Mode mode) {
        V1SelfSubjectAccessReview review = new V1SelfSubjectAccessReview().spec(new V1SelfSubjectAccessReviewSpec()
                .resourceAttributes(new V1ResourceAttributes().namespace(kube.namespace).verb("get").resource("pods")
                        .subresource(mode.subresource).name(pod)));
        V1SubjectAccessReviewStatus status;
        try {
            status = new AuthorizationV1Api(kube.client).createSelfSubjectAccessReview(review).execute().getStatus();
        } catch (ApiException e) {
            if (e.getCode() == 403 || e.getCode() == 404) return; // cannot ask: the stream itself will tell
            throw Kube.failure("cannot check access to pods/" + mode.subresource, e);
        }
        if (status != null && !Boolean.TRUE.equals(status.getAllowed())) {
            throw new ExitException(ExitCode.FORBIDDEN, forbidden(kube, pod, mode)
                    + (status.getReason() != null && !status.getReason().isBlank() ? " (" + Cli.firstLine(status.getReason()) + ")" : ""));
        }
    }

    private static String forbidden(Kube kube, String pod, Mode mode) {
        String other = mode == Mode.EXEC ? "port-forward" : "exec";
        return "not allowed to open pods/" + mode.subresource + " on pod " + pod + " in namespace " + kube.namespace
                + ": ask for get and create on pods/" + mode.subresource + " in a Role, or try --mode " + other;
    }

    // ---- running ---------------------------------------------------------------------------------------------------

    private void start(V1Pod target) {
        acceptor = new Thread(this::acceptLoop, name + "-accept");
        acceptor.setDaemon(true);
        acceptor.start();
        watcher = new Thread(() -> watchLoop(target), name + "-watch");
        watcher.setDaemon(true);
        watcher.start();
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
            Connection connection = new Connection(connectionIds.incrementAndGet(), socket);
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
    private final class Connection extends WebSocketListener {
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

        void start() {
            pump = new Thread(this::run, name + "-conn-" + id);
            pump.setDaemon(true);
            pump.start();
        }

        private void run() {
            try {
                toClient = socket.getOutputStream();
                InputStream fromClient = socket.getInputStream();
                webSocket = http.newWebSocket(request(), this);
                if (!opened.await(30, TimeUnit.SECONDS)) {
                    close("no answer from the API server within 30 s");
                    return;
                }
                if (openFailure != null) {
                    close(openFailure);
                    return;
                }
                if (verbose) log.accept("connection " + id + " from " + socket.getRemoteSocketAddress() + " opened (" + mode + ", " + protocol + ")");
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
            String path = "/api/v1/namespaces/" + kube.client.escapeString(kube.namespace) + "/pods/" + kube.client.escapeString(pod) + "/" + mode.subresource;
            List<Pair> query = new ArrayList<>();
            String protocols;
            if (mode == Mode.PORT_FORWARD) {
                query.add(new Pair("ports", Integer.toString(remotePort)));
                protocols = "v4.channel.k8s.io";
            } else {
                query.add(new Pair("container", container));
                for (String word : List.of("nc", "127.0.0.1", Integer.toString(remotePort))) query.add(new Pair("command", word));
                query.add(new Pair("stdin", "true"));
                query.add(new Pair("stdout", "true"));
                query.add(new Pair("stderr", "true"));
                protocols = "v5.channel.k8s.io, v4.channel.k8s.io";
            }
            Map<String, String> headers = new HashMap<>(Map.of("Sec-WebSocket-Protocol", protocols));
            return kube.client.buildRequest(null, path, "GET", query, new ArrayList<>(), null,
                    headers, new HashMap<>(), new HashMap<>(), new String[] {"BearerToken"}, null);
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
            String text = remoteErrors.toString().strip();
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

        /** Closes the client and the stream once; logs {@code why} when it is worth telling. */
        void close(String why) {
            if (!done.compareAndSet(false, true)) return;
            opened.countDown();
            WebSocket ws = webSocket;
            if (ws != null && !ws.close(1000, null)) ws.cancel();
            closeQuietly(socket);
            connections.remove(this);
            if (why != null && !closed.get()) log.accept("connection " + id + ": " + why);
            else if (verbose) log.accept("connection " + id + " closed (" + sent.get() + " bytes sent, " + received.get() + " received)");
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
