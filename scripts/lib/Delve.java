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
        ObjectNode request = JSON.createObjectNode();
        request.put("method", "RPCServer." + method);
        request.putArray("params").add(params);
        int id = nextId++;
        request.put("id", id);
        out.write(JSON.writeValueAsBytes(request));
        out.flush();
        if (in == null) in = JSON.getFactory().createParser(input);
        JsonNode answer = JSON.readTree(in);
        if (answer == null || !answer.isObject()) throw new IOException("the server closed the connection or did not answer JSON-RPC");
        if (answer.hasNonNull("error")) throw new IOException("Delve answered " + method + " with an error: " + answer.get("error").asText());
        if (!answer.has("result")) throw new IOException("the answer to " + method + " has no result: this is not Delve's JSON-RPC API");
        return answer.get("result");
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
