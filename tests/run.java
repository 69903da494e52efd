///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//DEPS org.junit.jupiter:junit-jupiter:5.14.4
//DEPS org.junit.platform:junit-platform-console:1.14.4
//SOURCES ../scripts/*.java
//SOURCES support/*.java
//SOURCES *Test.java
//MAIN Run
//DESCRIPTION Runs the kdlv tests with JUnit's console launcher, one group at a time.

import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import org.junit.platform.console.ConsoleLauncher;
import org.junit.platform.launcher.listeners.TestExecutionSummary;

/**
 * The test runner: `./jbang tests/run.java [GROUP...] [TestClass...]`. Tests are grouped by tag by what they need:
 * untagged tests are `fast` (pure logic and the scripts' command lines), `delve` needs a dlv binary,
 * `cluster` a Kubernetes cluster (see tests/support/ClusterExtension.java), `docker` a Docker engine,
 * `registry` Debian's docker-registry, skopeo, htpasswd and a Go toolchain (build-image).
 * Each group runs through the console launcher on its own; a group whose needs are missing is skipped
 * and said so at the end, and on CI (CI=true) a missing group other than `docker` fails the run.
 */
class Run {
    static final List<String> GROUPS = List.of("fast", "delve", "cluster", "docker", "registry");

    public static void main(String... args) {
        // Arguments are groups, or test class names (capitalised) to run only those classes.
        List<String> classes = Arrays.stream(args).filter(a -> Character.isUpperCase(a.charAt(0))).toList();
        List<String> groups = Arrays.stream(args).filter(a -> !Character.isUpperCase(a.charAt(0))).toList();
        List<String> wanted = groups.isEmpty() ? GROUPS : groups;
        for (String group : wanted) {
            if (!GROUPS.contains(group)) {
                System.err.println("unknown test group '" + group + "'; the groups are " + String.join(", ", GROUPS));
                System.exit(2);
            }
        }
        boolean ci = "true".equals(System.getenv("CI"));
        PrintWriter out = new PrintWriter(System.out, true);
        PrintWriter err = new PrintWriter(System.err, true);
        Map<String, String> outcome = new LinkedHashMap<>();
        long passed = 0, failed = 0, skipped = 0;
        boolean missingOnCi = false;
        for (String group : wanted) {
            Optional<String> missing = unavailable(group);
            if (missing.isPresent()) {
                outcome.put(group, "SKIPPED: " + missing.get());
                if (ci && !group.equals("docker")) missingOnCi = true;
                continue;
            }
            out.println();
            out.println("=== test group: " + group + " ===");
            List<String> launcherArgs = new ArrayList<>(List.of("execute", "--disable-banner", "--details=tree"));
            if (classes.isEmpty()) {
                launcherArgs.addAll(List.of("--scan-classpath", testClasses().toString()));
            } else {
                classes.forEach(c -> launcherArgs.addAll(List.of("--select-class", c)));
            }
            if (System.console() == null || System.getenv("NO_COLOR") != null) launcherArgs.add("--disable-ansi-colors");
            if (group.equals("fast")) {
                GROUPS.stream().filter(g -> !g.equals("fast")).forEach(g -> launcherArgs.addAll(List.of("--exclude-tag", g)));
            } else {
                launcherArgs.addAll(List.of("--include-tag", group));
            }
            TestExecutionSummary summary = (TestExecutionSummary) ConsoleLauncher.run(out, err, launcherArgs.toArray(String[]::new))
                    .getValue().orElseThrow(() -> new IllegalStateException("the console launcher returned no summary"));
            long groupFailed = summary.getTotalFailureCount();
            long groupSkipped = summary.getTestsSkippedCount() + summary.getTestsAbortedCount();
            passed += summary.getTestsSucceededCount();
            failed += groupFailed;
            skipped += groupSkipped;
            outcome.put(group, String.format("ran: %d passed, %d failed, %d skipped or aborted",
                    summary.getTestsSucceededCount(), groupFailed, groupSkipped));
        }
        out.println();
        out.println("=== test groups ===");
        outcome.forEach((group, what) -> out.printf("%-8s %s%n", group, what));
        if (outcome.values().stream().anyMatch(what -> what.startsWith("SKIPPED"))) {
            out.println("WARNING: SOME TEST GROUPS DID NOT RUN (see SKIPPED above): their features are untested on this machine");
        }
        if (missingOnCi) out.println("CI=true: every group but docker must run here; install what is missing (tests/setup)");
        if (passed + failed == 0) out.println("NO TEST RAN");
        out.println();
        out.printf("%d passed, %d failed, %d skipped%n", passed, failed, skipped);
        System.exit(failed > 0 || missingOnCi || passed + failed == 0 ? 1 : 0);
    }

    /** Why a group cannot run on this machine, or empty when it can. */
    static Optional<String> unavailable(String group) {
        return switch (group) {
            case "fast" -> Optional.empty();
            case "delve" -> TestTools.dlv().isPresent() ? Optional.empty()
                    : Optional.of("no dlv binary on PATH or in " + TestTools.binDir() + " (run tests/setup)");
            case "cluster" -> ClusterExtension.unavailableReason();
            case "registry" -> BuildImageRegistryTest.unavailable();
            case "docker" -> TestTools.onPath("docker").isPresent() && TestTools.succeeds("docker", "info")
                    ? Optional.empty() : Optional.of("no Docker engine answers `docker info` (Testcontainers' k3s needs one)");
            default -> Optional.of("unknown group");
        };
    }

    /** The jar JBang built from the test sources: the only class path root the launcher scans. */
    static Path testClasses() {
        try {
            return Path.of(Run.class.getProtectionDomain().getCodeSource().getLocation().toURI());
        } catch (Exception e) {
            throw new IllegalStateException("cannot locate the compiled tests", e);
        }
    }
}
