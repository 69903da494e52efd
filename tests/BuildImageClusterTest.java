import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;
import org.junit.jupiter.api.io.TempDir;

/**
 * The image build-image makes is the article's debugger: built --for-pod, imported into the node's
 * containerd, run by `kubectl debug` as the ephemeral container that attaches Delve to the target, and
 * reached through the article's exec + nc tunnel.
 */
@Tag("cluster")
@ExtendWith(ClusterExtension.class)
class BuildImageClusterTest {
    static final String IMAGE = "kdlv.test/build-image:e2e";

    @TempDir Path dir;

    @Test
    void theImageRunsAsTheDebugger(Cluster cluster) throws Exception {
        String namespace = cluster.createNamespace("build-image");
        try {
            String pod = cluster.deploy(namespace, "demo-service.yaml", "demo-service", Duration.ofMinutes(2));
            Path tar = dir.resolve("debugger.tar");
            TestTools.Result built = TestTools.run(new BuildImage(), "--kubeconfig", cluster.env().get("KUBECONFIG"), "-n", namespace,
                    "--for-pod", pod, "--tar", tar.toString(), "--image", IMAGE);
            assertEquals(0, built.status(), built::toString);
            assertTrue(built.err().contains("runs on node") && built.out().contains("platforms: linux/"), built::toString);
            cluster.importImage(tar).stdoutOrThrow();

            // The article's step 2, with the listener on pod loopback (see NOTES: never on the pod IP).
            cluster.kubectl("debug", "-n", namespace, pod, "--image=" + IMAGE, "--image-pull-policy=Never", "-c", "debugger",
                    "--target=app", "--profile=general", "--", "dlv", "attach", "1", "--headless", "--listen=127.0.0.1:2345",
                    "--api-version=2", "--accept-multiclient", "--continue", "--only-same-user=false").stdoutOrThrow();
            String logs = "";
            for (int i = 0; i < 60 && !logs.contains("API server listening at"); i++) {
                Thread.sleep(1000);
                logs = cluster.kubectl("logs", "-n", namespace, pod, "-c", "debugger").stdout();
            }
            assertTrue(logs.contains("API server listening at: 127.0.0.1:2345"), () -> "debugger logs:\n"
                    + cluster.kubectl("get", "pod", "-n", namespace, pod, "-o", "jsonpath={.status.ephemeralContainerStatuses}").stdout());

            // The article's step 3: kubectl exec -i ... -- nc 127.0.0.1 2345, one JSON-RPC request through it.
            byte[] request = "{\"method\":\"RPCServer.GetVersion\",\"params\":[{}],\"id\":1}".getBytes(StandardCharsets.UTF_8);
            Cluster.Result answer = cluster.kubectlWithInput(request, Duration.ofSeconds(30),
                    "exec", "-i", "-n", namespace, pod, "-c", "debugger", "--", "nc", "127.0.0.1", "2345");
            assertTrue(answer.ok() && answer.stdout().contains("\"DelveVersion\""), answer::toString);
        } finally {
            cluster.deleteNamespace(namespace);
            Files.deleteIfExists(dir.resolve("debugger.tar"));
        }
    }
}
