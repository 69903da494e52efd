import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonIOException;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.gson.JsonSyntaxException;
import com.google.gson.stream.JsonReader;
import com.google.gson.stream.JsonToken;
import java.io.Closeable;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;

/**
 * A client of Delve's JSON-RPC API (version 2), the protocol `dlv connect` speaks: JSON-RPC 1.0 objects
 * written back to back on one stream, the answer read with a streaming parser. Only what the toolkit needs. Written
 * with Gson, which the Kubernetes client has loaded already (debug asks Delve while the debugger starts).
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

    private final Closeable connection;
    private final OutputStream out;
    private final InputStream input;
    private JsonReader in; // made on the first answer: it reads ahead
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
    synchronized JsonObject call(String method, JsonObject params) throws IOException {
        int id = send(method, params);
        if (in == null) {
            in = new JsonReader(new InputStreamReader(input, StandardCharsets.UTF_8));
            in.setStrictness(com.google.gson.Strictness.LENIENT); // one value after another
        }
        while (true) {
            JsonElement read = next(in);
            if (read == null) throw new IOException("the server closed the connection without an answer");
            if (!read.isJsonObject()) throw notJsonRpc("it sent " + read, null);
            JsonObject answer = read.getAsJsonObject();
            if (number(answer, "id", id) != id) continue; // a late answer to send()
            if (answer.has("error") && !answer.get("error").isJsonNull()) {
                throw new IOException("Delve answered " + method + " with an error: " + text(answer, "error"));
            }
            if (!answer.has("result")) throw new IOException("the answer to " + method + " has no result: this is not Delve's JSON-RPC API");
            return object(answer, "result");
        }
    }

    /** The next JSON value on the stream, or null at its end. */
    private static JsonElement next(JsonReader in) throws IOException {
        try {
            return in.peek() == JsonToken.END_DOCUMENT ? null : JsonParser.parseReader(in);
        } catch (JsonIOException e) {
            throw e.getCause() instanceof IOException cause ? cause : new IOException(e.getMessage(), e);
        } catch (JsonSyntaxException e) { // Gson wraps the reader's MalformedJsonException, whose message says where
            throw notJsonRpc(String.valueOf((e.getCause() != null ? e.getCause() : e).getMessage()), e);
        }
    }

    private static IOException notJsonRpc(String what, Throwable cause) {
        return new IOException("something that is not JSON-RPC (" + Cli.firstLine(what) + ")", cause);
    }

    /** Sends RPCServer.METHOD without waiting for its answer (continue answers only when the target stops again). */
    synchronized int send(String method, JsonObject params) throws IOException {
        JsonObject request = new JsonObject();
        request.addProperty("method", "RPCServer." + method);
        JsonArray array = new JsonArray();
        array.add(params);
        request.add("params", array);
        int id = nextId++;
        request.addProperty("id", id);
        out.write(request.toString().getBytes(StandardCharsets.UTF_8));
        out.flush();
        return id;
    }

    Version version() throws IOException {
        JsonObject result = call("GetVersion", new JsonObject());
        if (!result.has("DelveVersion")) throw new IOException("the answer to GetVersion has no DelveVersion: this is not Delve");
        String delveVersion = text(result, "DelveVersion").strip(); // "Version: 1.27.2\nBuild: $Id: ... $"
        java.util.regex.Matcher number = java.util.regex.Pattern.compile("Version: (\\S+)").matcher(delveVersion);
        return new Version(number.find() ? number.group(1) : delveVersion, (int) number(result, "APIVersion", 0),
                text(result, "TargetGoVersion"),
                goVersion(result, "MinSupportedVersionOfGo"), goVersion(result, "MaxSupportedVersionOfGo"));
    }

    /** The target's state without blocking, even while it runs. */
    State state() throws IOException {
        return state(object(call("State", params("NonBlocking", true)), "State"));
    }

    /** Stops the target (Delve answers once it has stopped) and returns where it stopped. */
    State halt() throws IOException {
        return state(object(call("Command", params("name", "halt")), "State"));
    }

    /**
     * Lets the target run on. Delve answers `continue` only when the target stops again, and drops it when the connection
     * closes before the target runs (seen here with a client that closed right after sending it): so this waits until
     * State says it runs.
     */
    void resume() throws IOException {
        send("Command", params("name", "continue"));
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
        call("Detach", params("Kill", false));
        return state;
    }

    /** The source files of the target's binary whose path matches the regular expression (all with ""). */
    java.util.List<String> sources(String filter) throws IOException {
        java.util.List<String> sources = new java.util.ArrayList<>();
        array(call("ListSources", params("Filter", filter)), "Sources").forEach(s -> sources.add(s.isJsonPrimitive() ? s.getAsString() : ""));
        return sources;
    }

    /** The ids of the user's breakpoints (Delve's own, such as unrecovered-panic, have negative ids). */
    java.util.List<Integer> breakpoints() throws IOException {
        java.util.List<Integer> ids = new java.util.ArrayList<>();
        array(call("ListBreakpoints", params("All", false)), "Breakpoints").forEach(b -> {
            long id = b.isJsonObject() ? number(b.getAsJsonObject(), "id", 0) : 0;
            if (id > 0) ids.add((int) id);
        });
        return ids;
    }

    void clearBreakpoint(int id) throws IOException {
        call("ClearBreakpoint", params("Id", id));
    }

    private static State state(JsonObject state) {
        JsonObject goroutine = object(state, "currentGoroutine");
        JsonElement user = goroutine.get("userCurrentLoc");
        JsonObject location = user != null && user.isJsonObject() ? user.getAsJsonObject() : object(state, "currentThread");
        return new State(bool(state, "Running"), bool(state, "exited"), (int) number(state, "Pid", 0),
                text(location, "file"), (int) number(location, "line", 0), text(object(location, "function"), "name"),
                number(goroutine, "id", number(object(state, "currentThread"), "goroutineID", 0)));
    }

    private static String goVersion(JsonObject result, String field) {
        String version = text(result, field);
        return version.isEmpty() || version.startsWith("go") ? version : "go" + version;
    }

    /** The one parameter object of a call, with one field. */
    private static JsonObject params(String name, Object value) {
        JsonObject params = new JsonObject();
        if (value instanceof Boolean b) params.addProperty(name, b);
        else if (value instanceof Number n) params.addProperty(name, n);
        else params.addProperty(name, String.valueOf(value));
        return params;
    }

    // Reading an answer as it may come: a field that is missing, null or of another type reads as empty, 0 or false.

    private static JsonObject object(JsonObject o, String field) {
        JsonElement e = o.get(field);
        return e != null && e.isJsonObject() ? e.getAsJsonObject() : new JsonObject();
    }

    private static JsonArray array(JsonObject o, String field) {
        JsonElement e = o.get(field);
        return e != null && e.isJsonArray() ? e.getAsJsonArray() : new JsonArray();
    }

    private static String text(JsonObject o, String field) {
        JsonElement e = o.get(field);
        return e != null && e.isJsonPrimitive() ? e.getAsString() : "";
    }

    private static long number(JsonObject o, String field, long otherwise) {
        JsonElement e = o.get(field);
        return e != null && e.isJsonPrimitive() && e.getAsJsonPrimitive().isNumber() ? e.getAsLong() : otherwise;
    }

    private static boolean bool(JsonObject o, String field) {
        JsonElement e = o.get(field);
        return e != null && e.isJsonPrimitive() && e.getAsJsonPrimitive().isBoolean() && e.getAsBoolean();
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
