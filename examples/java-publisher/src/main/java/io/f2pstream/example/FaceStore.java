package io.f2pstream.example;

import java.net.URI;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import software.amazon.awssdk.auth.credentials.AwsBasicCredentials;
import software.amazon.awssdk.auth.credentials.StaticCredentialsProvider;
import software.amazon.awssdk.core.checksums.RequestChecksumCalculation;
import software.amazon.awssdk.core.checksums.ResponseChecksumValidation;
import software.amazon.awssdk.core.sync.RequestBody;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.s3.S3Client;
import software.amazon.awssdk.services.s3.model.GetObjectRequest;
import software.amazon.awssdk.services.s3.model.PutObjectRequest;
import software.amazon.awssdk.services.s3.model.S3Exception;

/** The claim check: the face goes to S3 first, the event carries a reference to it. */
final class FaceStore implements AutoCloseable {
    private final S3Client s3;

    FaceStore(Config config) {
        this.s3 = S3Client.builder()
            .endpointOverride(URI.create(config.s3Endpoint))
            .region(Region.of(config.s3Region))
            .credentialsProvider(StaticCredentialsProvider.create(
                AwsBasicCredentials.create(config.s3AccessKey, config.s3SecretKey)))
            .forcePathStyle(true)
            // SDK 2.30+ sends a CRC32 trailer (aws-chunked upload) with every PutObject by
            // default. S3-compatible stores that do not parse it either refuse the upload or,
            // like SeaweedFS 3.x (seaweedfs#6847, fixed in 4.x by #7623), store the chunk
            // framing inside the object: the worker then fails the request with
            // FACE_CHECKSUM_MISMATCH. Checksums only where the S3 API requires them:
            .requestChecksumCalculation(RequestChecksumCalculation.WHEN_REQUIRED)
            .responseChecksumValidation(ResponseChecksumValidation.WHEN_REQUIRED)
            .build();
    }

    static String sha256(byte[] data) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    /** The content type from the magic bytes: the worker checks the bytes, not the name. */
    static String contentType(byte[] data) {
        if (data.length > 8 && (data[0] & 0xff) == 0x89 && data[1] == 'P' && data[2] == 'N') {
            return "image/png";
        }
        if (data.length > 3 && (data[0] & 0xff) == 0xff && (data[1] & 0xff) == 0xd8) {
            return "image/jpeg";
        }
        if (data.length > 12 && new String(data, 8, 4).equals("WEBP")) {
            return "image/webp";
        }
        throw new IllegalArgumentException("the face must be a PNG, JPEG or WebP image");
    }

    /** {@code tenants/<tenant>/inputs/<sha256>.<ext>}: the one key layout of face images. */
    static String faceKey(String tenant, String sha256, String contentType) {
        String ext = switch (contentType) {
            case "image/png" -> "png";
            case "image/jpeg" -> "jpg";
            default -> "webp";
        };
        return "tenants/" + tenant + "/inputs/" + sha256 + "." + ext;
    }

    /** Store the face unless an object already holds these bytes; true when this call wrote it. */
    boolean putIfAbsent(String bucket, String key, byte[] data, String contentType, String sha256) {
        try {
            s3.putObject(PutObjectRequest.builder()
                    .bucket(bucket).key(key).contentType(contentType)
                    .ifNoneMatch("*")                      // content-addressed: never overwrite
                    .metadata(java.util.Map.of("sha256", sha256))
                    .build(),
                RequestBody.fromBytes(data));
            return true;
        } catch (S3Exception e) {
            if (e.statusCode() == 412) {                   // same key = same bytes: done
                return false;
            }
            throw e;
        }
    }

    byte[] get(String s3Uri) {
        URI uri = URI.create(s3Uri);                       // s3://bucket/key
        String key = uri.getPath().substring(1);
        return s3.getObjectAsBytes(GetObjectRequest.builder().bucket(uri.getHost()).key(key).build())
            .asByteArray();
    }

    @Override
    public void close() {
        s3.close();
    }
}
