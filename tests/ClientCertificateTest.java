import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.PrivateKey;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.Base64;
import java.util.List;
import java.util.Optional;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Client keys read with the JDK alone (no Bouncy Castle at start-up), in the PEM forms kubeconfigs carry: each key made
 * by openssl is read back and compared with openssl's own PKCS#8 encoding of it, and a kubeconfig with it connects.
 */
class ClientCertificateTest {
    @TempDir Path dir;

    @ParameterizedTest
    @ValueSource(strings = {"rsa-pkcs1", "rsa-pkcs8", "ec-sec1", "ec-pkcs8", "ed25519-pkcs8"})
    void readsTheKeyAsOpensslEncodesIt(String form) throws Exception {
        Path key = dir.resolve("key.pem");
        Path pkcs8 = dir.resolve("key.der");
        switch (form) {
            case "rsa-pkcs1" -> openssl("genrsa", "-traditional", "-out", key.toString(), "2048");
            case "rsa-pkcs8" -> openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key.toString());
            case "ec-sec1" -> openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.toString());
            case "ec-pkcs8" -> openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", key.toString());
            default -> openssl("genpkey", "-algorithm", "ED25519", "-out", key.toString());
        }
        openssl("pkcs8", "-topk8", "-nocrypt", "-in", key.toString(), "-outform", "DER", "-out", pkcs8.toString());
        String pem = Files.readString(key);
        assertTrue(pem.contains(form.endsWith("pkcs1") ? "RSA PRIVATE KEY" : form.endsWith("sec1") ? "EC PRIVATE KEY" : "BEGIN PRIVATE KEY"), pem);

        Optional<PrivateKey> read = ClientCertificate.privateKey(pem);
        assertTrue(read.isPresent(), "read " + form);
        String algorithm = form.startsWith("rsa") ? "RSA" : form.startsWith("ec") ? "EC" : "Ed25519";
        PrivateKey expected = KeyFactory.getInstance(algorithm).generatePrivate(new PKCS8EncodedKeySpec(Files.readAllBytes(pkcs8)));
        assertEquals(algorithm.equals("Ed25519") ? "EdDSA" : algorithm, read.get().getAlgorithm());
        if (expected instanceof java.security.interfaces.ECPrivateKey ec) { // SEC1 keeps the curve inside; openssl's PKCS#8 drops it
            assertEquals(ec.getS(), ((java.security.interfaces.ECPrivateKey) read.get()).getS(), form);
            assertEquals(ec.getParams().getOrder(), ((java.security.interfaces.ECPrivateKey) read.get()).getParams().getOrder(), form);
        } else {
            assertArrayEquals(expected.getEncoded(), read.get().getEncoded(), form);
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"not a key", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"})
    void leavesOtherFormsToTheClient(String pem) throws Exception {
        assertTrue(ClientCertificate.privateKey(pem).isEmpty());
    }

    /**
     * The key manager made from a kubeconfig's certificate and key: a TLS server that requires a client certificate
     * receives this one, over TLS 1.2 and 1.3.
     */
    @ParameterizedTest
    @ValueSource(strings = {"rsa TLSv1.3", "rsa TLSv1.2", "ec TLSv1.3", "ec TLSv1.2", "ed25519 TLSv1.3"})
    void theServerReceivesTheCertificate(String keyAndProtocol) throws Exception {
        String keyType = keyAndProtocol.split(" ")[0];
        String protocol = keyAndProtocol.split(" ")[1];
        Path key = dir.resolve("client.key");
        Path cert = dir.resolve("client.crt");
        switch (keyType) {
            case "rsa" -> openssl("genrsa", "-traditional", "-out", key.toString(), "2048");
            case "ec" -> openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.toString());
            default -> openssl("genpkey", "-algorithm", "ED25519", "-out", key.toString());
        }
        openssl("req", "-x509", "-new", "-key", key.toString(), "-subj", "/CN=kdlv-test-client", "-days", "1", "-out", cert.toString());
        Path kubeconfig = dir.resolve("kubeconfig");
        Base64.Encoder base64 = Base64.getEncoder();
        Files.writeString(kubeconfig, String.join("\n",
                "apiVersion: v1", "kind: Config", "current-context: test",
                "clusters: [{name: test, cluster: {server: 'https://127.0.0.1:6443'}}]",
                "contexts: [{name: test, context: {cluster: test, user: test}}]",
                "users: [{name: test, user: {client-certificate-data: " + base64.encodeToString(Files.readAllBytes(cert))
                        + ", client-key-data: " + base64.encodeToString(Files.readAllBytes(key)) + "}}]", ""));
        io.kubernetes.client.util.KubeConfig config;
        try (java.io.Reader reader = Files.newBufferedReader(kubeconfig)) {
            config = io.kubernetes.client.util.KubeConfig.loadKubeConfig(reader);
        }
        javax.net.ssl.KeyManager[] keyManagers = ClientCertificate.keyManagers(config).orElseThrow();
        java.security.cert.X509Certificate clientCertificate = (java.security.cert.X509Certificate) java.security.cert.CertificateFactory
                .getInstance("X.509").generateCertificate(new java.io.ByteArrayInputStream(Files.readAllBytes(cert)));

        // The server: its own self-signed RSA certificate; trusts exactly the client's.
        Path serverKey = dir.resolve("server.key");
        Path serverCert = dir.resolve("server.crt");
        Path serverStore = dir.resolve("server.p12");
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", serverKey.toString(), "-subj", "/CN=localhost", "-days", "1", "-out", serverCert.toString());
        openssl("pkcs12", "-export", "-inkey", serverKey.toString(), "-in", serverCert.toString(), "-passout", "pass:test", "-out", serverStore.toString());
        java.security.KeyStore serverKeys = java.security.KeyStore.getInstance("PKCS12");
        serverKeys.load(new java.io.ByteArrayInputStream(Files.readAllBytes(serverStore)), "test".toCharArray());
        javax.net.ssl.KeyManagerFactory serverKeyManagers = javax.net.ssl.KeyManagerFactory.getInstance("SunX509");
        serverKeyManagers.init(serverKeys, "test".toCharArray());
        javax.net.ssl.SSLContext serverContext = javax.net.ssl.SSLContext.getInstance("TLS");
        serverContext.init(serverKeyManagers.getKeyManagers(), trusting(clientCertificate), null);
        javax.net.ssl.SSLContext clientContext = javax.net.ssl.SSLContext.getInstance("TLS");
        clientContext.init(keyManagers, trusting((java.security.cert.X509Certificate) serverKeys.getCertificate(serverKeys.aliases().nextElement())), null);

        try (javax.net.ssl.SSLServerSocket server = (javax.net.ssl.SSLServerSocket) serverContext.getServerSocketFactory()
                .createServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
            server.setNeedClientAuth(true);
            server.setEnabledProtocols(new String[] {protocol});
            server.setSoTimeout(10_000);
            java.util.concurrent.CompletableFuture<java.security.cert.Certificate> received = java.util.concurrent.CompletableFuture.supplyAsync(() -> {
                try (javax.net.ssl.SSLSocket accepted = (javax.net.ssl.SSLSocket) server.accept()) {
                    accepted.setSoTimeout(10_000);
                    accepted.startHandshake();
                    return accepted.getSession().getPeerCertificates()[0];
                } catch (java.io.IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
            });
            try (javax.net.ssl.SSLSocket client = (javax.net.ssl.SSLSocket) clientContext.getSocketFactory()
                    .createSocket(server.getInetAddress(), server.getLocalPort())) {
                client.setSoTimeout(10_000);
                client.setEnabledProtocols(new String[] {protocol});
                client.startHandshake();
                assertEquals(protocol, client.getSession().getProtocol());
                client.getOutputStream().write(1); // TLS 1.3 sends the client's certificate after the client's Finished
                client.getOutputStream().flush();
                assertEquals(clientCertificate, received.get(10, java.util.concurrent.TimeUnit.SECONDS), keyAndProtocol);
            }
        }
    }

    /** Trust managers that trust exactly one certificate. */
    static javax.net.ssl.TrustManager[] trusting(java.security.cert.X509Certificate certificate) throws Exception {
        java.security.KeyStore store = java.security.KeyStore.getInstance("PKCS12");
        store.load(null, null);
        store.setCertificateEntry("trusted", certificate);
        javax.net.ssl.TrustManagerFactory factory = javax.net.ssl.TrustManagerFactory.getInstance("PKIX");
        factory.init(store);
        return factory.getTrustManagers();
    }

    static void openssl(String... args) throws Exception {
        List<String> command = new java.util.ArrayList<>(List.of("openssl"));
        command.addAll(List.of(args));
        Process process = new ProcessBuilder(command).redirectErrorStream(true).start();
        String output = new String(process.getInputStream().readAllBytes());
        assertEquals(0, process.waitFor(), String.join(" ", command) + ": " + output);
    }
}
