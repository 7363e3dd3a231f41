package io.f2pstream.example;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * Where the cluster is and what to publish. Each endpoint comes from, in order: a flag, an
 * {@code F2P_*} environment variable (the names the Python tools use), or the JSON that
 * {@code f2p stack status --json} prints for the embedded stack ({@code --stack-status FILE}).
 */
final class Config {
    String bootstrapServers;
    String registryUrl;
    String s3Endpoint;
    String s3AccessKey;
    String s3SecretKey;
    String s3Region = "us-east-1";
    String inputsBucket = "f2p-inputs";
    String lane = "interactive";
    String tenant = "java-shop";
    String prompt = "studio photo, full body, white shirt, soft light";
    Path face;
    String topicSuffix = "";
    int steps = 8;
    int width = 512;
    int height = 512;
    String preset;
    long timeoutMs = 60_000;
    boolean download = true;
    final Map<String, String> attributes = new LinkedHashMap<>();

    static final String USAGE = String.join("\n",
        "usage: PublishAndWait [options]",
        "  --stack-status FILE   JSON of `f2p stack status --json` (the embedded stack's endpoints)",
        "  --bootstrap-servers, --registry-url, --s3-endpoint, --s3-access-key, --s3-secret-key,",
        "  --s3-region, --inputs-bucket   override F2P_BOOTSTRAP_SERVERS, F2P_REGISTRY_URL, ...",
        "  --lane interactive|batch (default interactive)   --tenant ID (default java-shop)",
        "  --prompt TEXT   --face FILE (PNG/JPEG/WebP; default: a drawn test face)",
        "  --steps N (8)   --width N --height N (512; multiples of 16)   --preset QUALITY|FAST|FASTEST",
        "  --attribute KEY=VALUE (repeatable; carried through to the result)",
        "  --topic-suffix S   appended to every topic name (as F2P_TOPIC_SUFFIX)",
        "  --timeout-s N (60)   --no-download (do not fetch and verify the result image)");

    static Config parse(String[] args) throws IOException {
        Config c = new Config();
        Map<String, String> env = System.getenv();
        c.bootstrapServers = env.get("F2P_BOOTSTRAP_SERVERS");
        c.registryUrl = env.get("F2P_REGISTRY_URL");
        c.s3Endpoint = env.get("F2P_S3_ENDPOINT_URL");
        c.s3AccessKey = env.get("F2P_S3_ACCESS_KEY");
        c.s3SecretKey = env.get("F2P_S3_SECRET_KEY");
        c.s3Region = env.getOrDefault("F2P_S3_REGION", c.s3Region);
        c.inputsBucket = env.getOrDefault("F2P_INPUTS_BUCKET", c.inputsBucket);
        c.topicSuffix = env.getOrDefault("F2P_TOPIC_SUFFIX", c.topicSuffix);
        for (int i = 0; i < args.length; i++) {
            String flag = args[i];
            if (flag.equals("--help")) {
                throw new IllegalArgumentException(USAGE);
            }
            if (flag.equals("--no-download")) {
                c.download = false;
                continue;
            }
            if (i + 1 >= args.length) {
                throw new IllegalArgumentException(flag + " needs a value\n" + USAGE);
            }
            String value = args[++i];
            switch (flag) {
                case "--stack-status" -> c.fillFromStackStatus(Path.of(value));
                case "--bootstrap-servers" -> c.bootstrapServers = value;
                case "--registry-url" -> c.registryUrl = value;
                case "--s3-endpoint" -> c.s3Endpoint = value;
                case "--s3-access-key" -> c.s3AccessKey = value;
                case "--s3-secret-key" -> c.s3SecretKey = value;
                case "--s3-region" -> c.s3Region = value;
                case "--inputs-bucket" -> c.inputsBucket = value;
                case "--lane" -> c.lane = value.toLowerCase();
                case "--tenant" -> c.tenant = value;
                case "--prompt" -> c.prompt = value;
                case "--face" -> c.face = Path.of(value);
                case "--steps" -> c.steps = Integer.parseInt(value);
                case "--width" -> c.width = Integer.parseInt(value);
                case "--height" -> c.height = Integer.parseInt(value);
                case "--preset" -> c.preset = value.toUpperCase();
                case "--topic-suffix" -> c.topicSuffix = value;
                case "--timeout-s" -> c.timeoutMs = (long) (Double.parseDouble(value) * 1000);
                case "--attribute" -> {
                    int eq = value.indexOf('=');
                    if (eq < 1) {
                        throw new IllegalArgumentException("--attribute needs KEY=VALUE, got " + value);
                    }
                    c.attributes.put(value.substring(0, eq), value.substring(eq + 1));
                }
                default -> throw new IllegalArgumentException("unknown option " + flag + "\n" + USAGE);
            }
        }
        c.require();
        return c;
    }

    /** Values the environment did not set, from `f2p stack status --json`. */
    private void fillFromStackStatus(Path file) throws IOException {
        JsonNode status = new ObjectMapper().readTree(Files.readString(file));
        JsonNode s3 = status.path("s3");
        bootstrapServers = orElse(bootstrapServers, status.path("bootstrap_servers").asText(null));
        registryUrl = orElse(registryUrl, status.path("registry_url").asText(null));
        s3Endpoint = orElse(s3Endpoint, s3.path("endpoint_url").asText(null));
        s3AccessKey = orElse(s3AccessKey, s3.path("access_key").asText(null));
        s3SecretKey = orElse(s3SecretKey, s3.path("secret_key").asText(null));
        if (s3.hasNonNull("region")) {
            s3Region = s3.get("region").asText();
        }
    }

    private static String orElse(String value, String fallback) {
        return value != null && !value.isEmpty() ? value : fallback;
    }

    private void require() {
        if (!lane.equals("interactive") && !lane.equals("batch")) {
            throw new IllegalArgumentException("--lane must be interactive or batch, got " + lane);
        }
        String[][] needed = {
            {bootstrapServers, "F2P_BOOTSTRAP_SERVERS / --bootstrap-servers"},
            {registryUrl, "F2P_REGISTRY_URL / --registry-url"},
            {s3Endpoint, "F2P_S3_ENDPOINT_URL / --s3-endpoint"},
            {s3AccessKey, "F2P_S3_ACCESS_KEY / --s3-access-key"},
            {s3SecretKey, "F2P_S3_SECRET_KEY / --s3-secret-key"},
        };
        for (String[] pair : needed) {
            if (pair[0] == null || pair[0].isEmpty()) {
                throw new IllegalArgumentException(
                    pair[1] + " is not set (or pass --stack-status with `f2p stack status --json`)");
            }
        }
        registryUrl = registryUrl.replaceAll("/+$", "");
    }

    String requestTopic() {
        return "f2p.requests." + lane + topicSuffix;
    }

    String resultsTopic() {
        return "f2p.results.v1" + topicSuffix;
    }
}
