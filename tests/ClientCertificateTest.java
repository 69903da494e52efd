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

    static void openssl(String... args) throws Exception {
        List<String> command = new java.util.ArrayList<>(List.of("openssl"));
        command.addAll(List.of(args));
        Process process = new ProcessBuilder(command).redirectErrorStream(true).start();
        String output = new String(process.getInputStream().readAllBytes());
        assertEquals(0, process.waitFor(), String.join(" ", command) + ": " + output);
    }
}
