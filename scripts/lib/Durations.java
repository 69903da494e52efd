import java.time.Duration;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import picocli.CommandLine.ITypeConverter;
import picocli.CommandLine.TypeConversionException;

/** Durations written as kubectl writes them: 90s, 2m, 1m30s, 500ms, or a plain number of seconds. */
final class Durations implements ITypeConverter<Duration> {
    private static final Pattern PART = Pattern.compile("(\\d+)(ms|s|m|h)");

    @Override
    public Duration convert(String text) {
        return parse(text);
    }

    static Duration parse(String text) {
        String value = text.strip();
        if (value.matches("\\d+")) return Duration.ofSeconds(Long.parseLong(value));
        Matcher part = PART.matcher(value);
        Duration total = Duration.ZERO;
        int end = 0;
        while (part.find() && part.start() == end) {
            long amount = Long.parseLong(part.group(1));
            total = total.plus(switch (part.group(2)) {
                case "ms" -> Duration.ofMillis(amount);
                case "s" -> Duration.ofSeconds(amount);
                case "m" -> Duration.ofMinutes(amount);
                default -> Duration.ofHours(amount);
            });
            end = part.end();
        }
        if (end == 0 || end != value.length()) {
            throw new TypeConversionException("'" + text + "' is not a duration; write it like 90s, 2m or 1m30s");
        }
        return total;
    }

    static String format(Duration duration) {
        long seconds = duration.toSeconds();
        if (seconds >= 60 && seconds % 60 == 0) return seconds / 60 + "m";
        return seconds > 0 ? seconds + "s" : duration.toMillis() + "ms";
    }
}
