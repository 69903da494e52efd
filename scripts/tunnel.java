///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//SOURCES lib/*.java
//DESCRIPTION Expose the Delve of a pod's debugger container on 127.0.0.1, one stream per connection, in one process.

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.PrintWriter;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.UnknownHostException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutionException;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

@Command(name = "tunnel", mixinStandardHelpOptions = true, sortOptions = false,
        description = {"Expose the Delve of a pod's debugger container on 127.0.0.1, one stream per connection, in one process.",
                "",
                "Replaces the article's `tcpserver 127.0.0.1 2345 kubectl exec -i -c debugger POD -- nc 127.0.0.1 2345`. "
                        + "Runs until Ctrl-C, or until the debugger container or the pod goes away (exit code 15)."},
        exitCodeListHeading = "%nExit codes:%n",
        exitCodeList = {"0:Ctrl-C or closed", "2:bad options or kubeconfig", "3:the debugger container is not running",
                "5:no such pod or container", "6:not allowed to open pods/portforward or pods/exec",
                "8:the API server cannot be reached", "14:the local port is in use or cannot be bound",
                "15:the debugger container or the pod went away"})
class TunnelCommand implements Callable<Integer> {
    @Mixin KubeOptions kube;
    @Mixin VerboseOption verbose;

    @Parameters(index = "0", paramLabel = "POD", description = "The pod whose debugger container runs Delve.")
    String pod;

    @Option(names = {"-c", "--container"}, paramLabel = "DEBUGGER",
            description = "The container Delve listens in (default: 'debugger', else the newest running ephemeral container).")
    String container;

    @Option(names = "--local-port", paramLabel = "PORT", defaultValue = "2345",
            description = "Local port to listen on; 0 picks a free one and prints it (default: ${DEFAULT-VALUE}).")
    int localPort;

    @Option(names = "--remote-port", paramLabel = "PORT",
            description = "Port Delve listens on inside the pod, on 127.0.0.1 (default: the KDLV_PORT attach gave the container, else 2345).")
    Integer remotePort;

    @Option(names = "--mode", paramLabel = "MODE", defaultValue = "port-forward",
            description = "port-forward (pods/portforward, needs nothing in the image) or exec (nc in the debugger container over "
                    + "pods/exec, as the article does) (default: ${DEFAULT-VALUE}).")
    String mode;

    @Option(names = "--address", paramLabel = "ADDR", defaultValue = "127.0.0.1",
            description = "Local address to listen on (default: ${DEFAULT-VALUE}). Delve has no authentication: any other address "
                    + "lets whoever reaches it run code in the pod.")
    String address;

    @Option(names = {"-o", "--output"}, paramLabel = "FORMAT", description = "json: print one JSON object with the chosen port when listening.")
    String output;

    @Option(names = "--dry-run", description = "Change nothing: print the manual kubectl steps this command automates.")
    boolean dryRun;

    @Spec CommandSpec spec;

    public static void main(String... args) {
        Cli.main(new TunnelCommand(), args);
    }

    @Override
    public Integer call() throws Exception {
        Tunnel.Mode tunnelMode = parseMode();
        if (localPort < 0 || localPort > 65535) throw usage("--local-port must be 0-65535, not " + localPort);
        if (remotePort != null && (remotePort < 1 || remotePort > 65535)) throw usage("--remote-port must be 1-65535, not " + remotePort);
        if (output != null && !output.equals("json")) throw usage("-o supports only json, not '" + output + "'");
        PrintWriter out = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        if (dryRun) {
            manualSteps(tunnelMode).forEach(out::println);
            out.flush();
            return ExitCode.OK;
        }
        InetAddress bindAddress = resolve(address);
        if (!address.equals("127.0.0.1")) {
            err.println(Cli.yellow("WARNING: listening on " + address + ", not 127.0.0.1: Delve has no authentication, so anyone who "
                    + "reaches " + address + ":" + (localPort == 0 ? "PORT" : localPort) + " can run code in pod " + pod));
            err.flush();
        }
        Kube cluster = kube.kube();
        Tunnel tunnel = Tunnel.open(cluster, pod, container, remotePort == null ? 0 : remotePort, new InetSocketAddress(bindAddress, localPort), tunnelMode,
                line -> {
                    synchronized (err) {
                        err.println(line);
                        err.flush();
                    }
                }, verbose.verbose);
        Thread hook = new Thread(tunnel::close, "kdlv-tunnel-shutdown");
        Runtime.getRuntime().addShutdownHook(hook);
        try {
            announce(tunnel, out, err);
            ExitException reason;
            try {
                reason = tunnel.ended().get();
            } catch (InterruptedException e) {
                return 130; // stopped in-process (as Ctrl-C stops it out of process)
            } catch (ExecutionException e) {
                throw new ExitException(ExitCode.INTERNAL, "the tunnel failed: " + e.getCause(), e.getCause());
            }
            if (reason != null) throw reason;
            return ExitCode.OK;
        } finally {
            tunnel.close();
            try {
                Runtime.getRuntime().removeShutdownHook(hook);
            } catch (IllegalStateException shuttingDown) {
                // Ctrl-C: the hook is running
            }
        }
    }

    private void announce(Tunnel tunnel, PrintWriter out, PrintWriter err) throws Exception {
        String host = tunnel.localAddress().getAddress().getHostAddress();
        String endpoint = (host.contains(":") ? "[" + host + "]" : host) + ":" + tunnel.localPort();
        if ("json".equals(output)) {
            Map<String, Object> json = new LinkedHashMap<>();
            json.put("address", host);
            json.put("localPort", tunnel.localPort());
            json.put("namespace", tunnel.namespace());
            json.put("pod", tunnel.pod());
            json.put("container", tunnel.container());
            json.put("remotePort", tunnel.remotePort());
            json.put("mode", tunnel.mode().flag);
            json.put("connect", "dlv connect " + endpoint);
            out.println(new ObjectMapper().writeValueAsString(json));
        } else {
            out.println("Forwarding " + endpoint + " -> pod " + tunnel.pod() + " (namespace " + tunnel.namespace() + "), container "
                    + tunnel.container() + ", 127.0.0.1:" + tunnel.remotePort() + " via " + tunnel.mode());
            out.println("Connect with: dlv connect " + endpoint + "   (Ctrl-C stops the tunnel)");
        }
        out.flush();
    }

    private Tunnel.Mode parseMode() {
        try {
            return Tunnel.Mode.parse(mode);
        } catch (IllegalArgumentException e) {
            throw usage("--mode must be port-forward or exec, not '" + mode + "'");
        }
    }

    private InetAddress resolve(String host) {
        try {
            return InetAddress.getByName(host);
        } catch (UnknownHostException e) {
            throw new ExitException(ExitCode.LOCAL_PORT, "cannot listen on " + host + ": unknown host; use an address of this machine "
                    + "(--address 127.0.0.1)", e);
        }
    }

    private ExitException usage(String message) {
        return new ExitException(ExitCode.USAGE, message + "; see 'tunnel --help'");
    }

    /** The kubectl steps this command replaces, for the chosen mode. */
    List<String> manualSteps(Tunnel.Mode tunnelMode) {
        List<String> kubectl = new ArrayList<>(List.of("kubectl"));
        if (kube.kubeconfig != null) kubectl.addAll(List.of("--kubeconfig", kube.kubeconfig.toString()));
        if (kube.context != null) kubectl.addAll(List.of("--context", kube.context));
        String namespace = kube.namespace;
        if (namespace == null) {
            try {
                namespace = kube.kube().namespace; // reads the kubeconfig only; nothing is sent to the cluster
            } catch (RuntimeException noKubeconfig) {
                namespace = null;
            }
        }
        if (namespace != null) kubectl.addAll(List.of("-n", namespace));
        String k = String.join(" ", kubectl);
        String debugger = container != null ? container : Tunnel.DEFAULT_CONTAINER;
        int port = remotePort != null ? remotePort : Tunnel.DEFAULT_PORT;
        String local = address.contains(":") ? "[" + address + "]" : address;
        List<String> lines = new ArrayList<>();
        lines.add("# --dry-run: nothing was changed. The manual steps for --mode " + tunnelMode + ":");
        lines.add("# 1. check the debugger container runs (state 'running'):");
        lines.add(k + " get pod " + pod + " -o jsonpath='{.status.ephemeralContainerStatuses[?(@.name==\"" + debugger + "\")].state}'");
        lines.add("# 2. check you may open the stream:");
        lines.add(k + " auth can-i create pods/" + tunnelMode.subresource);
        if (tunnelMode == Tunnel.Mode.PORT_FORWARD) {
            lines.add("# 3. forward the port (kubectl dials 127.0.0.1:" + port + " in the pod's network namespace):");
            lines.add(k + " port-forward --address " + address + " pod/" + pod + " " + (localPort == 0 ? "" : localPort) + ":" + port);
        } else {
            lines.add("# 3. the article's plumbing: one kubectl exec + nc per connection (tcpserver is in Debian's ucspi-tcp):");
            lines.add("tcpserver " + address + " " + localPort + " " + k + " exec -i -c " + debugger + " " + pod + " -- nc 127.0.0.1 " + port);
        }
        lines.add("# 4. connect:");
        lines.add("dlv connect " + local + ":" + (localPort == 0 ? "PORT" : localPort));
        return lines;
    }
}
