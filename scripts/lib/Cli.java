//JAVA 17+
//DEPS info.picocli:picocli:4.7.7
//DEPS io.kubernetes:client-java:27.0.0
//DEPS com.fasterxml.jackson.dataformat:jackson-dataformat-yaml:2.22.0
//DEPS org.slf4j:slf4j-nop:2.0.17
//DEPS com.google.cloud.tools:jib-core:0.28.1

// The one place where dependency versions are pinned: JBang merges the //DEPS of every //SOURCES file,
// so each script that pulls in lib/*.java gets exactly these.

import io.kubernetes.client.openapi.ApiException;
import java.io.PrintWriter;
import picocli.CommandLine;
import picocli.CommandLine.Help.Ansi;
import picocli.CommandLine.Option;

/** Named exit codes, shared by every script so that runbooks can branch on them. */
final class ExitCode {
    static final int OK = 0;
    /** Something failed that has no more precise code. */
    static final int FAILURE = 1;
    /** Bad input: options, arguments, kubeconfig. */
    static final int USAGE = 2;
    /** The cluster or the target is not in the state the step needs (pod not running, container gone). */
    static final int STATE = 3;
    /** A bug in the toolkit: rerun with -v and report the stack trace. */
    static final int INTERNAL = 4;
    /** A named object does not exist (pod, namespace, container). */
    static final int NOT_FOUND = 5;
    /** RBAC (or the API server's authentication) refused the request. */
    static final int FORBIDDEN = 6;
    /** A wait ran out of time. */
    static final int TIMEOUT = 7;
    /** A server (API server, Delve, registry) could not be reached. */
    static final int UNREACHABLE = 8;
    /** The cluster, runtime or target does not support what was asked (feature off, Go version). */
    static final int UNSUPPORTED = 9;
    /** The debugger container started but Delve did not come up (attach refused, container exited). */
    static final int DEBUGGER_FAILED = 10;
    /** The debug image cannot be pulled or run (ErrImagePull, ImagePullBackOff, InvalidImageName). */
    static final int IMAGE = 11;
    /** Admission policy (PodSecurity) forbids the debugger's security context in this namespace. */
    static final int POLICY = 12;
    /** The name is already used in the pod (ephemeral container names can never be reused). */
    static final int NAME_TAKEN = 13;
    /** The local address or port cannot be bound (in use, not a local address). */
    static final int LOCAL_PORT = 14;
    /** The debugger container or its pod went away while the command was running (tunnel, connect). */
    static final int GONE = 15;
    /** A program the step needs is not installed (the Go toolchain, docker, podman, buildah). */
    static final int TOOL_MISSING = 16;
    /** A local file cannot be read or written (an image archive, --dlv-binary). */
    static final int LOCAL_FILE = 17;
    /** Something answers on the address, but it is not Delve's JSON-RPC API (an HTTP server, a silent port). */
    static final int NOT_DELVE = 18;

    private ExitCode() {}
}

/** Ends a command with one line for the user and a named exit code; thrown anywhere, printed once. */
class ExitException extends RuntimeException {
    final int status;

    ExitException(int status, String message) {
        this(status, message, null);
    }

    ExitException(int status, String message, Throwable cause) {
        super(message, cause);
        this.status = status;
    }
}

/** The -v/--verbose option every script has: stack traces and more detail on errors. */
class VerboseOption {
    @Option(names = {"-v", "--verbose"}, description = "Print stack traces and more detail on errors.")
    boolean verbose;
}

/** Builds the picocli CommandLine of a script: one-line errors, exit codes, colour only on terminals. */
final class Cli {
    static final String VERSION = "kdlv 0.1.0";

    private Cli() {}

    /** Runs a command as a program: parses, executes and exits with its status. */
    static void main(Object command, String... args) {
        System.exit(command(command).execute(args));
    }

    /** The CommandLine for a command, without exiting: tests call execute() on it. */
    static CommandLine command(Object command) {
        CommandLine cli = new CommandLine(command);
        cli.setColorScheme(CommandLine.Help.defaultColorScheme(ansi()));
        cli.setParameterExceptionHandler(Cli::badInput);
        cli.setExecutionExceptionHandler((e, commandLine, parseResult) -> failed(e, commandLine, parseResult.hasMatchedOption("-v")));
        return cli;
    }

    /** Colour on terminals only, and never when NO_COLOR is set (https://no-color.org). */
    static Ansi ansi() {
        String noColor = System.getenv("NO_COLOR");
        if (noColor != null && !noColor.isEmpty()) return Ansi.OFF;
        return System.console() != null ? Ansi.ON : Ansi.OFF;
    }

    static String red(String text) {
        return ansi().string("@|bold,red " + text.replace("|@", "| @") + "|@");
    }

    static String yellow(String text) {
        return ansi().string("@|yellow " + text.replace("|@", "| @") + "|@");
    }

    private static int badInput(CommandLine.ParameterException e, String[] args) {
        CommandLine cli = e.getCommandLine();
        PrintWriter err = cli.getErr();
        err.println(red(firstLine(e.getMessage())));
        err.println("Try '" + cli.getCommandSpec().qualifiedName() + " --help' for more information.");
        err.flush();
        return ExitCode.USAGE;
    }

    private static int failed(Exception e, CommandLine cli, boolean verbose) {
        PrintWriter err = cli.getErr();
        int status;
        String message;
        if (e instanceof ExitException exit) {
            status = exit.status;
            message = exit.getMessage();
        } else if (e instanceof ApiException api) {
            ExitException exit = Kube.failure("the API server refused the request", api);
            status = exit.status;
            message = exit.getMessage();
        } else {
            status = ExitCode.INTERNAL;
            message = "internal error: " + e + (verbose ? "" : " (rerun with -v for the stack trace)");
        }
        err.println(red(firstLine(message)));
        if (verbose) e.printStackTrace(err);
        err.flush();
        return status;
    }

    static String firstLine(String message) {
        if (message == null || message.isBlank()) return "failed without a message";
        String line = message.strip();
        int newline = line.indexOf('\n');
        return newline < 0 ? line : line.substring(0, newline).strip();
    }
}
