import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.Closeable;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;

/**
 * A client of Delve's JSON-RPC API (version 2), the protocol `dlv connect` speaks: JSON-RPC 1.0 objects
 * written back to back on one stream, the answer read with a streaming parser. Only what the toolkit needs.
 */
final class Delve implements Closeable {
    /** What RPCServer.GetVersion answers. */
    record Version(String delveVersion, int apiVersion, String targetGoVersion, String minGo, String maxGo) {}

    /** What RPCServer.State answers: running or halted, and where (file, line, function, goroutine) when halted. */
    record State(boolean running, boolean exited, int pid, String file, int line, String function, long goroutine) {
        String where() {
            return file.isEmpty() ? "" : file + ":" + line + " " + function + (goroutine > 0 ? " (goroutine " + goroutine + ")" : "");
        }
    }

    private static final ObjectMapper JSON = new ObjectMapper();
    private final Closeable connection;
    private final OutputStream out;
    private final InputStream input;
    private com.fasterxml.jackson.core.JsonParser in; // made on the first answer: making it reads ahead
    private int nextId = 1;

    Delve(InputStream in, OutputStream out, Closeable connection) throws IOException {
        this.connection = connection;
        this.out = out;
        this.input = in;
    }

    /** Connects to a Delve server on a TCP address, with timeouts so that something that is not Delve cannot hang us. */
    static Delve connect(InetSocketAddress address, int timeoutMillis) throws IOException {
        Socket socket = new Socket();
        try {
            socket.connect(address, timeoutMillis);
            socket.setSoTimeout(timeoutMillis);
            return new Delve(socket.getInputStream(), socket.getOutputStream(), socket);
        } catch (IOException e) {
            socket.close();
            throw e;
        }
    }

    /** Calls RPCServer.METHOD with one parameter object and returns its result; a Delve error becomes an IOException. */
    synchronized JsonNode call(String method, ObjectNode params) throws IOException {
        int id = send(method, params);
        if (in == null) in = JSON.getFactory().createParser(input);
        while (true) {
            JsonNode answer = JSON.readTree(in);
            if (answer == null || !answer.isObject()) throw new IOException("the server closed the connection or did not answer JSON-RPC");
            if (answer.has("id") && answer.get("id").isInt() && answer.get("id").asInt() != id) continue; // a late answer to send()
            if (answer.hasNonNull("error")) throw new IOException("Delve answered " + method + " with an error: " + answer.get("error").asText());
            if (!answer.has("result")) throw new IOException("the answer to " + method + " has no result: this is not Delve's JSON-RPC API");
            return answer.get("result");
        }
    }

    /** Sends RPCServer.METHOD without waiting for its answer (continue answers only when the target stops again). */
    synchronized int send(String method, ObjectNode params) throws IOException {
        ObjectNode request = JSON.createObjectNode();
        request.put("method", "RPCServer." + method);
        request.putArray("params").add(params);
        int id = nextId++;
        request.put("id", id);
        out.write(JSON.writeValueAsBytes(request));
        out.flush();
        return id;
    }

    Version version() throws IOException {
        JsonNode result = call("GetVersion", JSON.createObjectNode());
        if (!result.has("DelveVersion")) throw new IOException("the answer to GetVersion has no DelveVersion: this is not Delve");
        String delveVersion = result.path("DelveVersion").asText().strip(); // "Version: 1.27.2\nBuild: $Id: ... $"
        java.util.regex.Matcher number = java.util.regex.Pattern.compile("Version: (\\S+)").matcher(delveVersion);
        return new Version(number.find() ? number.group(1) : delveVersion, result.path("APIVersion").asInt(),
                result.path("TargetGoVersion").asText(""),
                goVersion(result, "MinSupportedVersionOfGo"), goVersion(result, "MaxSupportedVersionOfGo"));
    }

    /** The target's state without blocking, even while it runs. */
    State state() throws IOException {
        return state(call("State", params().put("NonBlocking", true)).path("State"));
    }

    /** Stops the target (Delve answers once it has stopped) and returns where it stopped. */
    State halt() throws IOException {
        return state(call("Command", params().put("name", "halt")).path("State"));
    }

    /**
     * Lets the target run on. Delve answers `continue` only when the target stops again, and drops it when the connection
     * closes before the target runs (seen here with a client that closed right after sending it): so this waits until
     * State says it runs.
     */
    void resume() throws IOException {
        send("Command", params().put("name", "continue"));
        long deadline = System.nanoTime() + 5_000_000_000L;
        while (System.nanoTime() < deadline) {
            State state = state();
            if (state.running() || state.exited()) return;
            try {
                Thread.sleep(10);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IOException("interrupted while resuming the target");
            }
        }
        throw new IOException("the target did not resume within 5 s of `continue`");
    }

    /**
     * Ends the debugger and leaves the target running and untraced: halt (Detach hangs while the target runs),
     * then Detach with Kill=false. The headless Delve exits afterwards. Returns the state the target was detached in
     * (its pid); throws when it has exited.
     */
    State detachSafely() throws IOException {
        State state = state();
        if (state.exited()) throw new IOException("the target has exited; there is nothing to detach from");
        if (state.running()) state = halt();
        call("Detach", params().put("Kill", false));
        return state;
    }

    /** The source files of the target's binary whose path matches the regular expression (all with ""). */
    java.util.List<String> sources(String filter) throws IOException {
        java.util.List<String> sources = new java.util.ArrayList<>();
        call("ListSources", params().put("Filter", filter)).path("Sources").forEach(s -> sources.add(s.asText()));
        return sources;
    }

    /** The ids of the user's breakpoints (Delve's own, such as unrecovered-panic, have negative ids). */
    java.util.List<Integer> breakpoints() throws IOException {
        java.util.List<Integer> ids = new java.util.ArrayList<>();
        call("ListBreakpoints", params().put("All", false)).path("Breakpoints").forEach(b -> {
            if (b.path("id").asInt() > 0) ids.add(b.path("id").asInt());
        });
        return ids;
    }

    void clearBreakpoint(int id) throws IOException {
        call("ClearBreakpoint", params().put("Id", id));
    }

    private static State state(JsonNode state) {
        JsonNode goroutine = state.path("currentGoroutine");
        JsonNode location = goroutine.path("userCurrentLoc").isObject() ? goroutine.path("userCurrentLoc") : state.path("currentThread");
        return new State(state.path("Running").asBoolean(), state.path("exited").asBoolean(), state.path("Pid").asInt(),
                location.path("file").asText(""), location.path("line").asInt(), location.path("function").path("name").asText(""),
                goroutine.path("id").asLong(state.path("currentThread").path("goroutineID").asLong()));
    }

    private static String goVersion(JsonNode result, String field) {
        String version = result.path(field).asText("");
        return version.isEmpty() || version.startsWith("go") ? version : "go" + version;
    }

    static ObjectNode params() {
        return JSON.createObjectNode();
    }

    @Override
    public void close() throws IOException {
        try {
            input.close();
        } finally {
            connection.close();
        }
    }

}
