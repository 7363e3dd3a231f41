package io.f2pstream.example;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;

/**
 * The Confluent wire format by hand: {@code 0x00}, the schema id as a 4-byte big-endian int,
 * then the Avro binary body. Schemas come from the registry's Confluent-compatible REST API
 * (Apicurio: {@code /apis/ccompat/v7}), which is all a Confluent-style serde needs too.
 */
final class Registry {
    private static final byte MAGIC = 0;

    /** A subject's schema and its id. */
    record Registered(int id, Schema schema) {}

    private final String baseUrl;
    private final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
    private final ObjectMapper json = new ObjectMapper();
    private final Map<Integer, Schema> byId = new HashMap<>();

    Registry(String baseUrl) {
        this.baseUrl = baseUrl;
    }

    /** The latest schema under {@code <topic>-value} (TopicNameStrategy). */
    Registered latestValueSchema(String topic) throws IOException, InterruptedException {
        String subject = URLEncoder.encode(topic + "-value", StandardCharsets.UTF_8);
        JsonNode body = get("/subjects/" + subject + "/versions/latest");
        Schema schema = new Schema.Parser().parse(body.get("schema").asText());
        int id = body.get("id").asInt();
        byId.put(id, schema);
        return new Registered(id, schema);
    }

    /** The writer schema of a framed message, by id (cached: one request per id). */
    Schema schemaById(int id) throws IOException, InterruptedException {
        Schema cached = byId.get(id);
        if (cached == null) {
            cached = new Schema.Parser().parse(get("/schemas/ids/" + id).get("schema").asText());
            byId.put(id, cached);
        }
        return cached;
    }

    static byte[] encode(Registered writer, GenericRecord record) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.write(MAGIC);
        out.write(ByteBuffer.allocate(4).putInt(writer.id()).array());
        BinaryEncoder encoder = EncoderFactory.get().binaryEncoder(out, null);
        new GenericDatumWriter<GenericRecord>(writer.schema()).write(record, encoder);
        encoder.flush();
        return out.toByteArray();
    }

    GenericRecord decode(byte[] value) throws IOException, InterruptedException {
        if (value == null || value.length < 5 || value[0] != MAGIC) {
            throw new IOException("not a Confluent-framed Avro message");
        }
        int id = ByteBuffer.wrap(value, 1, 4).getInt();
        Schema writer = schemaById(id);
        return new GenericDatumReader<GenericRecord>(writer)
            .read(null, DecoderFactory.get().binaryDecoder(value, 5, value.length - 5, null));
    }

    private JsonNode get(String path) throws IOException, InterruptedException {
        HttpRequest request = HttpRequest.newBuilder(URI.create(baseUrl + path))
            .timeout(Duration.ofSeconds(10))
            .header("Accept", "application/vnd.schemaregistry.v1+json")
            .GET()
            .build();
        HttpResponse<String> response = http.send(request, HttpResponse.BodyHandlers.ofString());
        if (response.statusCode() != 200) {
            throw new IOException("registry " + path + " answered " + response.statusCode() + ": "
                + response.body());
        }
        return json.readTree(response.body());
    }
}
