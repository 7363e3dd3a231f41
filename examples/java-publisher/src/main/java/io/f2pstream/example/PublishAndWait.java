package io.f2pstream.example;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.awt.Color;
import java.awt.Graphics2D;
import java.awt.image.BufferedImage;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.file.Files;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import javax.imageio.ImageIO;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Publish one GenerationRequest to a lane and wait for its GenerationResult (docs/PUBLISHING.md).
 *
 * <ol>
 *   <li>Upload the face to S3 under {@code tenants/<tenant>/inputs/<sha256>.<ext>} (claim check).
 *   <li>Build the request with the registry's latest schema of the lane's subject and frame it.
 *   <li>Start reading {@code f2p.results.v1} (read_committed) from its current end.
 *   <li>Produce the request keyed by its request_id (idempotent producer, acks=all).
 *   <li>Wait for the result keyed by that request_id; fetch its image and check its sha256.
 * </ol>
 * Prints one JSON line with the outcome; exits 0 when a result arrived (whatever its status),
 * 1 on a timeout, 2 on bad options.
 */
public final class PublishAndWait {
    private static final ObjectMapper JSON = new ObjectMapper();

    public static void main(String[] args) throws Exception {
        System.setProperty("java.awt.headless", "true");
        Config config;
        try {
            config = Config.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println(e.getMessage());
            System.exit(2);
            return;
        }
        System.exit(run(config));
    }

    static int run(Config config) throws Exception {
        Registry registry = new Registry(config.registryUrl);
        try (FaceStore faces = new FaceStore(config);
             KafkaConsumer<String, byte[]> results = resultsConsumer(config);
             KafkaProducer<String, byte[]> producer = producer(config)) {
            // Step 1. Claim check.
            byte[] face = config.face != null ? Files.readAllBytes(config.face) : drawFace();
            String contentType = FaceStore.contentType(face);
            String sha256 = FaceStore.sha256(face);
            String key = FaceStore.faceKey(config.tenant, sha256, contentType);
            faces.putIfAbsent(config.inputsBucket, key, face, contentType, sha256);

            // Step 2. The event, with the schema registered for the lane's subject.
            Registry.Registered writer = registry.latestValueSchema(config.requestTopic());
            String requestId = UUID.randomUUID().toString();
            GenericRecord request = request(config, writer.schema(), requestId,
                faceRef(writer.schema(), config.inputsBucket, key, sha256, contentType, face.length));
            byte[] value = Registry.encode(writer, request);

            // Step 3. Results from now on (before producing, so the result cannot be missed).
            List<TopicPartition> partitions = new ArrayList<>();
            results.partitionsFor(config.resultsTopic()).forEach(
                p -> partitions.add(new TopicPartition(p.topic(), p.partition())));
            results.assign(partitions);
            results.seekToEnd(partitions);
            partitions.forEach(results::position);

            // Step 4. Produce, keyed by request_id.
            RecordMetadata sent = producer
                .send(new ProducerRecord<>(config.requestTopic(), requestId, value)).get();

            // Step 5. Wait for the one result of this request_id.
            GenericRecord result = await(results, registry, requestId, config.timeoutMs);
            ObjectNode out = JSON.createObjectNode()
                .put("request_id", requestId)
                .put("topic", sent.topic())
                .put("partition", sent.partition())
                .put("offset", sent.offset())
                .put("schema_id", writer.id())
                .put("face_key", key);
            if (result == null) {
                out.put("status", "TIMEOUT");
                System.out.println(out);
                return 1;
            }
            describe(result, out, config.download ? faces : null);
            System.out.println(out);
            return 0;
        }
    }

    static GenericRecord request(Config c, Schema schema, String requestId, GenericRecord face) {
        Schema paramsSchema = schema.getField("params").schema();
        GenericRecordBuilder params = new GenericRecordBuilder(paramsSchema)
            .set("seed", new SecureRandom().nextInt(Integer.MAX_VALUE))  // fixed per request
            .set("steps", c.steps)
            .set("width", c.width)
            .set("height", c.height);
        if (c.preset != null && paramsSchema.getField("preset") != null) {
            Schema presetEnum = nonNull(paramsSchema.getField("preset").schema());
            params.set("preset", new GenericData.EnumSymbol(presetEnum, c.preset));
        }
        // Fields not set here take their schema defaults (deadline, negative_prompt, ...).
        return new GenericRecordBuilder(schema)
            .set("request_id", requestId)
            .set("tenant_id", c.tenant)
            .set("submitted_at", System.currentTimeMillis())
            .set("lane", new GenericData.EnumSymbol(schema.getField("lane").schema(),
                c.lane.toUpperCase()))
            .set("face", face)
            .set("prompt", c.prompt)
            .set("params", params.build())
            .set("attributes", c.attributes)
            .build();
    }

    static GenericRecord faceRef(Schema schema, String bucket, String key, String sha256,
                                 String contentType, long size) {
        Schema ref = schema.getField("face").schema().getTypes().stream()
            .filter(s -> s.getName().equals("FaceImageRef")).findFirst().orElseThrow();
        return new GenericRecordBuilder(ref)
            .set("bucket", bucket).set("key", key).set("sha256", sha256)
            .set("content_type", contentType).set("size_bytes", size)
            .build();
    }

    static GenericRecord await(KafkaConsumer<String, byte[]> results, Registry registry,
                               String requestId, long timeoutMs) throws Exception {
        long deadline = System.currentTimeMillis() + timeoutMs;
        while (System.currentTimeMillis() < deadline) {
            for (ConsumerRecord<String, byte[]> record : results.poll(Duration.ofMillis(200))) {
                if (requestId.equals(record.key())) {
                    return registry.decode(record.value());
                }
            }
        }
        return null;
    }

    static void describe(GenericRecord result, ObjectNode out, FaceStore downloads) {
        out.put("status", result.get("status").toString());
        Object error = result.get("error");
        if (error instanceof GenericRecord e) {
            out.put("error_code", e.get("code").toString()).put("error_message", e.get("message").toString());
        }
        ArrayNode images = out.putArray("images");
        for (Object item : (List<?>) result.get("images")) {
            GenericRecord image = (GenericRecord) item;
            ObjectNode node = images.addObject()
                .put("uri", image.get("uri").toString())
                .put("width", (Integer) image.get("width"))
                .put("height", (Integer) image.get("height"))
                .put("sha256", image.get("sha256").toString());
            if (downloads != null) {
                byte[] bytes = downloads.get(image.get("uri").toString());
                node.put("downloaded_bytes", bytes.length)
                    .put("sha256_verified", FaceStore.sha256(bytes).equals(image.get("sha256").toString()));
            }
        }
        ObjectNode attributes = out.putObject("attributes");
        if (result.getSchema().getField("attributes") != null) {
            for (Map.Entry<?, ?> e : ((Map<?, ?>) result.get("attributes")).entrySet()) {
                attributes.put(e.getKey().toString(), e.getValue().toString());
            }
        }
        GenericRecord model = (GenericRecord) result.get("model");
        ObjectNode modelNode = out.putObject("model").put("name", model.get("name").toString());
        Object lora = model.get("lora");
        if (lora == null) {
            modelNode.putNull("lora");
        } else {
            modelNode.put("lora", lora.toString());
        }
        out.put("worker_id", result.get("worker_id").toString());
    }

    static KafkaProducer<String, byte[]> producer(Config c) {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, c.bootstrapServers);
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");  // no duplicates from retries
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, "lz4");
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        return new KafkaProducer<>(p);
    }

    static KafkaConsumer<String, byte[]> resultsConsumer(Config c) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, c.bootstrapServers);
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");  // committed results only
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        return new KafkaConsumer<>(p);
    }

    private static Schema nonNull(Schema union) {
        return union.getTypes().stream().filter(s -> s.getType() != Schema.Type.NULL)
            .findFirst().orElseThrow();
    }

    /** A 256x256 PNG test face (a real image: the worker decodes what it receives). */
    static byte[] drawFace() throws IOException {
        BufferedImage image = new BufferedImage(256, 256, BufferedImage.TYPE_INT_RGB);
        Graphics2D g = image.createGraphics();
        g.setColor(new Color(0xEAE4DA));
        g.fillRect(0, 0, 256, 256);
        g.setColor(new Color(0xE0B594));
        g.fillOval(48, 28, 160, 200);
        g.setColor(new Color(0x3B2A20));
        g.fillOval(92, 100, 18, 12);
        g.fillOval(146, 100, 18, 12);
        g.drawArc(100, 150, 56, 30, 200, 140);
        g.dispose();
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ImageIO.write(image, "png", out);
        return out.toByteArray();
    }
}
