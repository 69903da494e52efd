import io.kubernetes.client.openapi.ApiClient;
import io.kubernetes.client.openapi.ApiException;
import io.kubernetes.client.openapi.apis.AuthorizationV1Api;
import io.kubernetes.client.openapi.models.V1ResourceAttributes;
import io.kubernetes.client.openapi.models.V1SelfSubjectAccessReview;
import io.kubernetes.client.openapi.models.V1SelfSubjectAccessReviewSpec;
import io.kubernetes.client.openapi.models.V1Status;
import io.kubernetes.client.openapi.models.V1SubjectAccessReviewStatus;
import io.kubernetes.client.util.ClientBuilder;
import io.kubernetes.client.util.Config;
import io.kubernetes.client.util.KubeConfig;
import java.io.File;
import java.io.IOException;
import java.io.Reader;
import java.net.ConnectException;
import java.net.SocketTimeoutException;
import java.net.UnknownHostException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.KeyManager;
import picocli.CommandLine.Option;

/**
 * The kubectl options every cluster-facing script has: --kubeconfig, --context and -n/--namespace, resolved
 * as kubectl resolves them, and the ApiClient they describe.
 */
class KubeOptions {
    @Option(names = "--kubeconfig", paramLabel = "FILE",
            description = "Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).")
    Path kubeconfig;

    @Option(names = "--context", paramLabel = "NAME", description = "The kubeconfig context to use (default: its current context).")
    String context;

    @Option(names = {"-n", "--namespace"}, paramLabel = "NAMESPACE",
            description = "The namespace of the target (default: the context's namespace, else 'default').")
    String namespace;

    private Kube kube;

    /** The cluster these options describe, resolved once. */
    Kube kube() {
        if (kube == null) kube = Kube.connect(kubeconfig, context, namespace);
        return kube;
    }
}

/** A connection to one cluster: the ApiClient, the namespace to work in, and where they came from. */
final class Kube {
    final ApiClient client;
    final String namespace;
    /** Where the configuration came from, for messages: a kubeconfig path or "in-cluster". */
    final String source;
    /** The context used, or null in-cluster. */
    final String context;

    private Kube(ApiClient client, String namespace, String source, String context) {
        this.client = client;
        this.namespace = namespace;
        this.source = source;
        this.context = context;
    }

    /**
     * Loads, on the other core, what the first API calls need while the command line and the kubeconfig are read: the
     * client's JSON models (a pod's type adapters alone are a few hundred classes) and TLS. The Gson built here is
     * thrown away (the ApiClient builds its own): the gain is the classes loaded, about 50 ms net on 2 cores.
     */
    static void warmUp() {
        Thread thread = new Thread(() -> {
            try {
                new io.kubernetes.client.openapi.JSON().getGson().getAdapter(io.kubernetes.client.openapi.models.V1Pod.class);
                javax.net.ssl.SSLContext.getDefault();
            } catch (RuntimeException | java.security.NoSuchAlgorithmException | LinkageError ignored) {
                // only a head start: the real calls load what they need
            }
        }, "kdlv-warm-up");
        thread.setDaemon(true);
        thread.start();
    }

    static Kube connect(Path kubeconfig, String context, String namespace) {
        Optional<Path> file = kubeconfigFile(kubeconfig);
        if (file.isEmpty()) {
            if (inCluster()) return inClusterConnection(context, namespace);
            throw new ExitException(ExitCode.USAGE, "no Kubernetes configuration: "
                    + (System.getenv("KUBECONFIG") != null ? "no file of KUBECONFIG exists" : "~/.kube/config does not exist")
                    + " and this is not a pod; pass --kubeconfig FILE or set KUBECONFIG");
        }
        KubeConfig config = load(file.get());
        if (context != null && !config.setContext(context)) {
            throw new ExitException(ExitCode.USAGE, "context '" + context + "' is not in " + file.get() + "; it has: "
                    + String.join(", ", contextNames(config)) + ". Pick one with --context");
        }
        if (config.getCurrentContext() == null || config.getCurrentContext().isEmpty()) {
            throw new ExitException(ExitCode.USAGE, file.get() + " has no current context; pass --context NAME"
                    + (contextNames(config).isEmpty() ? "" : " (one of: " + String.join(", ", contextNames(config)) + ")"));
        }
        if (config.getServer() == null) {
            throw new ExitException(ExitCode.USAGE, "context '" + config.getCurrentContext() + "' of " + file.get()
                    + " names no cluster server; fix the kubeconfig or pick another --context");
        }
        ApiClient client;
        try {
            // No ConfigPersister: refreshed tokens are never written back into the user's kubeconfig.
            ClientBuilder builder = ClientBuilder.kubeconfig(config);
            Optional<KeyManager[]> certificate = ClientCertificate.keyManagers(config);
            if (certificate.isPresent()) builder.setAuthentication(api -> api.setKeyManagers(certificate.get()));
            client = builder.build();
        } catch (IOException | RuntimeException e) {
            throw new ExitException(ExitCode.USAGE, "cannot use context '" + config.getCurrentContext() + "' of " + file.get()
                    + ": " + Cli.firstLine(String.valueOf(e.getMessage())), e);
        }
        tune(client);
        String ns = namespace != null ? namespace : Optional.ofNullable(config.getNamespace()).filter(s -> !s.isEmpty()).orElse("default");
        return new Kube(client, ns, file.get().toString(), config.getCurrentContext());
    }

    /** --kubeconfig, else the first existing file of $KUBECONFIG, else ~/.kube/config if it exists. */
    static Optional<Path> kubeconfigFile(Path option) {
        if (option != null) {
            if (!Files.isRegularFile(option)) {
                throw new ExitException(ExitCode.USAGE, "kubeconfig " + option + " does not exist; check the --kubeconfig path");
            }
            return Optional.of(option);
        }
        String env = System.getenv("KUBECONFIG");
        if (env != null && !env.isBlank()) {
            for (String part : env.split(File.pathSeparator)) {
                if (!part.isBlank() && Files.isRegularFile(Path.of(part))) return Optional.of(Path.of(part));
            }
            return Optional.empty();
        }
        Path home = Path.of(System.getProperty("user.home"), ".kube", "config");
        return Files.isRegularFile(home) ? Optional.of(home) : Optional.empty();
    }

    private static KubeConfig load(Path file) {
        try (Reader reader = Files.newBufferedReader(file)) {
            KubeConfig config = KubeConfig.loadKubeConfig(reader);
            if (config == null) throw new IllegalArgumentException("it is empty");
            config.setFile(file.toAbsolutePath().toFile()); // relative certificate paths resolve against it
            return config;
        } catch (IOException e) {
            throw new ExitException(ExitCode.USAGE, "cannot read kubeconfig " + file + ": " + e.getMessage(), e);
        } catch (RuntimeException e) { // SnakeYAML's parse errors, or a document that is not a mapping
            throw new ExitException(ExitCode.USAGE, "kubeconfig " + file + " is not a valid kubeconfig: "
                    + Cli.firstLine(String.valueOf(e.getMessage())) + "; fix the file or point --kubeconfig at another", e);
        }
    }

    @SuppressWarnings("unchecked")
    private static List<String> contextNames(KubeConfig config) {
        List<String> names = new ArrayList<>();
        if (config.getContexts() != null) {
            for (Object context : config.getContexts()) {
                if (context instanceof Map<?, ?> map && map.get("name") != null) names.add(map.get("name").toString());
            }
        }
        return names;
    }

    private static boolean inCluster() {
        return System.getenv(Config.ENV_SERVICE_HOST) != null
                && Files.isRegularFile(Path.of(Config.SERVICEACCOUNT_TOKEN_PATH));
    }

    private static Kube inClusterConnection(String context, String namespace) {
        if (context != null) {
            throw new ExitException(ExitCode.USAGE, "--context " + context + " needs a kubeconfig, and this pod has none; drop --context");
        }
        try {
            ApiClient client = ClientBuilder.cluster().build();
            tune(client);
            String ns = namespace;
            if (ns == null) {
                Path file = Path.of(Config.SERVICEACCOUNT_NAMESPACE_PATH);
                ns = Files.isRegularFile(file) ? Files.readString(file).strip() : "default";
            }
            return new Kube(client, ns, "in-cluster", null);
        } catch (IOException e) {
            throw new ExitException(ExitCode.USAGE, "cannot read this pod's service account: " + e.getMessage(), e);
        }
    }

    /** Short connect timeout so an unreachable server fails fast; reads stay unbounded for watches and streams. */
    private static void tune(ApiClient client) {
        client.setHttpClient(client.getHttpClient().newBuilder()
                .connectTimeout(10, TimeUnit.SECONDS)
                .readTimeout(0, TimeUnit.SECONDS)
                .build());
    }

    /** What RBAC says of VERB on pods/SUBRESOURCE in this namespace (of one pod, or any when NAME is null): a SelfSubjectAccessReview. */
    V1SubjectAccessReviewStatus access(String verb, String subresource, String name) throws ApiException {
        V1SelfSubjectAccessReview review = new V1SelfSubjectAccessReview().spec(new V1SelfSubjectAccessReviewSpec()
                .resourceAttributes(new V1ResourceAttributes().namespace(namespace).verb(verb).resource("pods").subresource(subresource).name(name)));
        return new AuthorizationV1Api(client).createSelfSubjectAccessReview(review).execute().getStatus();
    }

    /**
     * One line for an ApiException: the server's Status message (never the response headers), prefixed by
     * what was being done, with the exit code that matches the HTTP status.
     */
    static ExitException failure(String doing, ApiException e) {
        if (e.getCode() == 0) {
            Throwable cause = e.getCause() != null ? e.getCause() : e;
            String why = cause instanceof ConnectException ? "connection refused"
                    : cause instanceof UnknownHostException ? "unknown host " + cause.getMessage()
                    : cause instanceof SocketTimeoutException ? "timed out"
                    : String.valueOf(cause.getMessage());
            return new ExitException(ExitCode.UNREACHABLE, doing + ": cannot reach the API server (" + why
                    + "); check the cluster is up and the kubeconfig context points at it", e);
        }
        String message = statusMessage(e).orElse("HTTP " + e.getCode());
        int status = switch (e.getCode()) {
            case 401, 403 -> ExitCode.FORBIDDEN;
            case 404 -> ExitCode.NOT_FOUND;
            case 409 -> ExitCode.STATE;
            case 400, 422 -> ExitCode.USAGE;
            case 408, 504 -> ExitCode.TIMEOUT;
            default -> ExitCode.FAILURE;
        };
        return new ExitException(status, doing + ": " + message, e);
    }

    /** The message of the Status object the API server put in the response body, if there is one. */
    static Optional<String> statusMessage(ApiException e) {
        String body = e.getResponseBody();
        if (body == null || body.isBlank()) return Optional.empty();
        try {
            V1Status status = new io.kubernetes.client.openapi.JSON().deserialize(body, V1Status.class);
            return Optional.ofNullable(status).map(V1Status::getMessage).filter(m -> !m.isBlank());
        } catch (RuntimeException notAStatus) {
            return Optional.of(Cli.firstLine(body));
        }
    }
}

/**
 * A kubeconfig user that is a client certificate and key, loaded with the JDK alone. client-java loads every key with
 * Bouncy Castle, whose signed jar and provider take about half a second to load, the largest part of start-up after the
 * JVM itself. PKCS#8 ("PRIVATE KEY"), PKCS#1 RSA ("RSA PRIVATE KEY", kubeadm and kind) and SEC1 EC ("EC PRIVATE KEY",
 * k3s) keys are read here; anything else (encrypted keys, tokens, exec plugins) is left to client-java.
 */
final class ClientCertificate {
    private static final java.util.Set<String> CERTIFICATE_ONLY = java.util.Set.of("client-certificate", "client-certificate-data", "client-key", "client-key-data");

    private ClientCertificate() {}

    static Optional<KeyManager[]> keyManagers(KubeConfig config) {
        try {
            if (!certificateOnly(config)) return Optional.empty();
            byte[] certificate = config.getDataOrFileRelative(config.getClientCertificateData(), config.getClientCertificateFile());
            byte[] key = config.getDataOrFileRelative(config.getClientKeyData(), config.getClientKeyFile());
            if (certificate == null || key == null) return Optional.empty();
            Optional<java.security.PrivateKey> privateKey = privateKey(new String(key, java.nio.charset.StandardCharsets.US_ASCII));
            if (privateKey.isEmpty()) return Optional.empty();
            java.security.cert.X509Certificate[] chain = java.security.cert.CertificateFactory.getInstance("X.509")
                    .generateCertificates(new java.io.ByteArrayInputStream(certificate)).toArray(java.security.cert.X509Certificate[]::new);
            if (chain.length == 0) return Optional.empty();
            return Optional.of(new KeyManager[] {new OneKey(privateKey.get(), chain)});
        } catch (IOException | java.security.GeneralSecurityException | RuntimeException e) {
            return Optional.empty(); // client-java tries, and says what is wrong
        }
    }

    /**
     * The client's key and certificate chain, offered to every server that asks for one of the key's type. A PKCS#12
     * KeyStore and the JDK's KeyManagerFactory would do the same, after encrypting the key and decrypting it again
     * with PBKDF2 (about 100 ms of CPU).
     */
    private static final class OneKey extends javax.net.ssl.X509ExtendedKeyManager {
        private final java.security.PrivateKey key;
        private final java.security.cert.X509Certificate[] chain;

        OneKey(java.security.PrivateKey key, java.security.cert.X509Certificate[] chain) {
            this.key = key;
            this.chain = chain;
        }

        private String alias(String... keyTypes) {
            return keyTypes != null && java.util.Arrays.asList(keyTypes).contains(key.getAlgorithm()) ? "client" : null;
        }

        @Override public String chooseClientAlias(String[] keyTypes, java.security.Principal[] issuers, java.net.Socket socket) { return alias(keyTypes); }
        @Override public String chooseEngineClientAlias(String[] keyTypes, java.security.Principal[] issuers, javax.net.ssl.SSLEngine engine) { return alias(keyTypes); }
        @Override public String[] getClientAliases(String keyType, java.security.Principal[] issuers) { return alias(keyType) == null ? null : new String[] {"client"}; }
        @Override public java.security.cert.X509Certificate[] getCertificateChain(String alias) { return "client".equals(alias) ? chain.clone() : null; }
        @Override public java.security.PrivateKey getPrivateKey(String alias) { return "client".equals(alias) ? key : null; }
        @Override public String chooseServerAlias(String keyType, java.security.Principal[] issuers, java.net.Socket socket) { return null; }
        @Override public String[] getServerAliases(String keyType, java.security.Principal[] issuers) { return null; }
    }

    /** The current context's user has a client certificate and key, and nothing else (no token, exec or password). */
    @SuppressWarnings("unchecked")
    private static boolean certificateOnly(KubeConfig config) {
        String user = null;
        for (Object context : Optional.ofNullable(config.getContexts()).orElse(new java.util.ArrayList<>())) {
            if (context instanceof Map<?, ?> map && config.getCurrentContext().equals(map.get("name")) && map.get("context") instanceof Map<?, ?> c) {
                user = (String) c.get("user");
            }
        }
        for (Object entry : Optional.ofNullable(config.getUsers()).orElse(new java.util.ArrayList<>())) {
            if (entry instanceof Map<?, ?> map && user != null && user.equals(map.get("name")) && map.get("user") instanceof Map<?, ?> fields) {
                return !fields.isEmpty() && CERTIFICATE_ONLY.containsAll(fields.keySet());
            }
        }
        return false;
    }

    static Optional<java.security.PrivateKey> privateKey(String pem) throws java.security.GeneralSecurityException {
        java.util.regex.Matcher block = java.util.regex.Pattern.compile("-----BEGIN ([A-Z ]+)-----([^-]+)-----END \\1-----").matcher(pem);
        if (!block.find()) return Optional.empty();
        byte[] der = java.util.Base64.getMimeDecoder().decode(block.group(2));
        return switch (block.group(1)) {
            case "PRIVATE KEY" -> Optional.of(pkcs8(der, oid(der)));
            case "RSA PRIVATE KEY" -> Optional.of(java.security.KeyFactory.getInstance("RSA").generatePrivate(
                    new java.security.spec.PKCS8EncodedKeySpec(privateKeyInfo(RSA_ALGORITHM, der))));
            case "EC PRIVATE KEY" -> ecCurve(der).map(curve -> {
                byte[] algorithm = sequence(concat(EC_PUBLIC_KEY, curve));
                try {
                    return java.security.KeyFactory.getInstance("EC").generatePrivate(new java.security.spec.PKCS8EncodedKeySpec(privateKeyInfo(algorithm, der)));
                } catch (java.security.GeneralSecurityException e) {
                    throw new IllegalArgumentException(e);
                }
            });
            default -> Optional.empty();
        };
    }

    // DER: AlgorithmIdentifier rsaEncryption with NULL parameters, and the OID of id-ecPublicKey.
    private static final byte[] RSA_ALGORITHM = {0x30, 0x0d, 0x06, 0x09, 0x2a, (byte) 0x86, 0x48, (byte) 0x86, (byte) 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00};
    private static final byte[] EC_PUBLIC_KEY = {0x06, 0x07, 0x2a, (byte) 0x86, 0x48, (byte) 0xce, 0x3d, 0x02, 0x01};

    private static java.security.PrivateKey pkcs8(byte[] der, String algorithmOid) throws java.security.GeneralSecurityException {
        String algorithm = algorithmOid.equals("1.2.840.10045.2.1") ? "EC" : algorithmOid.equals("1.3.101.112") ? "Ed25519" : "RSA";
        return java.security.KeyFactory.getInstance(algorithm).generatePrivate(new java.security.spec.PKCS8EncodedKeySpec(der));
    }

    /** The algorithm OID of a PKCS#8 PrivateKeyInfo: SEQUENCE { INTEGER, SEQUENCE { OID, ... }, ... }. */
    private static String oid(byte[] der) {
        int[] at = {0};
        enter(der, at); // PrivateKeyInfo
        skip(der, at);  // version
        enter(der, at); // AlgorithmIdentifier
        int start = at[0];
        skip(der, at);
        return java.util.Arrays.equals(java.util.Arrays.copyOfRange(der, start, at[0]), EC_PUBLIC_KEY) ? "1.2.840.10045.2.1"
                : der[start + 1] == 3 && der[start + 2] == 0x2b && der[start + 3] == 0x65 && der[start + 4] == 0x70 ? "1.3.101.112" : "rsa";
    }

    /** The named curve of a SEC1 ECPrivateKey: SEQUENCE { INTEGER 1, OCTET STRING, [0] { OID } , [1] ... }. */
    private static Optional<byte[]> ecCurve(byte[] der) {
        int[] at = {0};
        enter(der, at);
        skip(der, at);
        skip(der, at);
        if (at[0] >= der.length || (der[at[0]] & 0xff) != 0xa0) return Optional.empty();
        enter(der, at);
        int start = at[0];
        skip(der, at);
        return Optional.of(java.util.Arrays.copyOfRange(der, start, at[0]));
    }

    private static byte[] privateKeyInfo(byte[] algorithm, byte[] key) {
        return sequence(concat(new byte[] {0x02, 0x01, 0x00}, algorithm, tlv(0x04, key)));
    }

    private static void enter(byte[] der, int[] at) {
        at[0]++;
        length(der, at);
    }

    private static void skip(byte[] der, int[] at) {
        at[0]++;
        int length = length(der, at);
        at[0] += length;
    }

    private static int length(byte[] der, int[] at) {
        int first = der[at[0]++] & 0xff;
        if (first < 0x80) return first;
        int length = 0;
        for (int i = 0; i < (first & 0x7f); i++) length = (length << 8) | (der[at[0]++] & 0xff);
        return length;
    }

    private static byte[] sequence(byte[] content) {
        return tlv(0x30, content);
    }

    private static byte[] tlv(int tag, byte[] content) {
        java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
        out.write(tag);
        int length = content.length;
        if (length < 0x80) {
            out.write(length);
        } else {
            int bytes = length > 0xffffff ? 4 : length > 0xffff ? 3 : length > 0xff ? 2 : 1;
            out.write(0x80 | bytes);
            for (int i = bytes - 1; i >= 0; i--) out.write(length >>> (8 * i));
        }
        out.writeBytes(content);
        return out.toByteArray();
    }

    private static byte[] concat(byte[]... parts) {
        java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
        for (byte[] part : parts) out.writeBytes(part);
        return out.toByteArray();
    }
}
