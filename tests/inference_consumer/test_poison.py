"""Bad input never stops the line: each poison message → its FAILED result or DLQ record.

Every poison kind of DESIGN.md is published to one lane between two good requests; the worker
must answer each with the machine-readable reason, write nothing twice, never hand poison to the
engine, and keep serving the good requests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import uuid
import zlib
from datetime import UTC, datetime

import pytest

from connectors.claim_check import face_ref
from connectors.s3 import make_s3_client
from schemas.images import make_sample_face
from schemas.records import (
    DeadLetter,
    FaceImageRef,
    GenerationRequest,
    GenerationResult,
    InlineImage,
    ModelRef,
    ResultStatus,
)
from tests.inference_consumer.conftest import (
    CountingSimEngine,
    metric,
    publish_raw,
    read_dead_letters,
    read_results,
    running_worker,
    sample_request,
    wait_until,
)

pytestmark = pytest.mark.integration


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` followed by a tiny IDAT and IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def inline(data: bytes, content_type: str = "image/png") -> InlineImage:
    return InlineImage(content_type=content_type, data=data)


def request_with_face(face, **fields) -> GenerationRequest:
    fields.setdefault("steps", 2)
    fields.setdefault("true_cfg_scale", 1.0)
    fields.setdefault("width", 64)
    fields.setdefault("height", 64)
    return GenerationRequest.new("acme", "studio portrait", face, **fields)


def test_poison_inputs_end_as_failed_results_or_dead_letters(pipeline, codec) -> None:
    lane = pipeline.topics.lanes_batch
    s3 = make_s3_client(pipeline)
    bucket = pipeline.inputs_bucket

    def upload(data: bytes, content_type: str = "image/png") -> FaceImageRef:
        ref = face_ref(bucket, "acme", data, content_type)
        s3.put_object(Bucket=bucket, Key=ref.key, Body=data, ContentType=content_type)
        return ref

    good_face = upload(make_sample_face(96, seed=5))
    not_an_image = upload(b"this is a text file, not a face " * 8)
    missing = face_ref(bucket, "acme", os.urandom(64), "image/png")  # never uploaded
    outside = FaceImageRef(
        bucket=bucket,
        key="tenants/other/inputs/" + good_face.key.rsplit("/", 1)[1],
        sha256=good_face.sha256,
        content_type="image/png",
        size_bytes=good_face.size_bytes,
    )
    dotdot = FaceImageRef(
        bucket=bucket,
        key="tenants/acme/../other/inputs/face.png",
        sha256=good_face.sha256,
        content_type="image/png",
        size_bytes=good_face.size_bytes,
    )
    wrong_sha = FaceImageRef(
        bucket=bucket,
        key=good_face.key,
        sha256=hashlib.sha256(b"something else").hexdigest(),
        content_type="image/png",
        size_bytes=good_face.size_bytes,
    )
    sample_png = make_sample_face(96, seed=2)
    # An object bigger than the face limit whose reference claims it is small.
    huge = upload(sample_png + os.urandom(10 * 1024 * 1024))
    huge = dataclasses.replace(huge, size_bytes=len(sample_png))

    # Requests that decode: each must get a FAILED result with this code.
    failing: dict[str, GenerationRequest] = {
        "PARAM_OUT_OF_RANGE steps=0": sample_request(steps=0),
        "PARAM_OUT_OF_RANGE width=65": request_with_face(inline(sample_png), width=65),
        "PARAM_OUT_OF_RANGE absurd size": request_with_face(
            inline(sample_png), width=1_000_000, height=1_000_000
        ),
        "NOT_AN_IMAGE inline": request_with_face(inline(b"GIF? no. just bytes" * 4)),
        "NOT_AN_IMAGE s3": request_with_face(not_an_image),
        "TRUNCATED_IMAGE": request_with_face(inline(sample_png[: len(sample_png) // 2])),
        "DECOMPRESSION_BOMB": request_with_face(inline(png_header_only(30000, 30000))),
        "IMAGE_TOO_LARGE absurd face": request_with_face(inline(png_header_only(50000, 4))),
        "IMAGE_TOO_LARGE s3 object": request_with_face(huge),
        "KEY_OUTSIDE_TENANT_PREFIX other": request_with_face(outside),
        "KEY_OUTSIDE_TENANT_PREFIX dotdot": request_with_face(dotdot),
        "FACE_NOT_FOUND": request_with_face(missing),
        "FACE_CHECKSUM_MISMATCH": request_with_face(wrong_sha),
    }
    # Messages that do not decode into an acceptable request: each must become a dead letter.
    valid = codec.encode(lane, sample_request())
    other = sample_request()
    result_bytes = codec.encode(
        pipeline.topics.results,
        GenerationResult(
            request_id=str(uuid.uuid4()),
            tenant_id="acme",
            status=ResultStatus.OK,
            worker_id="w",
            model=ModelRef(name="sim", revision="1"),
            submitted_at=datetime.now(UTC),
            completed_at=datetime.now(UTC),
        ),
    )
    bad_tenant = sample_request(tenant="Not A Tenant!")
    dead: dict[str, tuple[bytes | None, bytes | None]] = {
        "BAD_MAGIC_BYTE": (str(uuid.uuid4()).encode(), b"\x7f" + os.urandom(64)),
        "UNKNOWN_SCHEMA_ID": (
            str(uuid.uuid4()).encode(),
            b"\x00" + struct.pack(">I", 999999) + valid[5:],
        ),
        "TRUNCATED_MESSAGE body": (other.request_id.encode(), codec.encode(lane, other)[:40]),
        "TRUNCATED_MESSAGE header": (str(uuid.uuid4()).encode(), b"\x00\x00\x01"),
        "EMPTY_MESSAGE": (str(uuid.uuid4()).encode(), None),
        "SCHEMA_MISMATCH": (str(uuid.uuid4()).encode(), result_bytes),
        "INVALID_TENANT": (bad_tenant.request_id.encode(), codec.encode(lane, bad_tenant)),
    }
    first_good, last_good = sample_request(), request_with_face(good_face)

    messages = [(first_good.request_id.encode(), codec.encode(lane, first_good), None)]
    messages += [(r.request_id.encode(), codec.encode(lane, r), None) for r in failing.values()]
    messages += [(key, value, [("origin", b"poison-test")]) for key, value in dead.values()]
    engine = CountingSimEngine()
    with running_worker(pipeline, engine) as worker:
        where = publish_raw(pipeline, lane, messages)
        # Published after the poison (same lane) so it queues behind it on its partition.
        where += publish_raw(
            pipeline, lane, [(last_good.request_id.encode(), codec.encode(lane, last_good), None)]
        )
        expected_results = {first_good.request_id, last_good.request_id}
        expected_results |= {r.request_id for r in failing.values()}

        def all_outcomes():
            results = read_results(pipeline, codec)
            letters = read_dead_letters(pipeline, codec)
            done = expected_results <= {r.request_id for r in results}
            return (results, letters) if done and len(letters) >= len(dead) else None

        results, letters = wait_until(all_outcomes, 90, "every poison outcome", step_s=0.2)
        assert worker.healthy()
        assert metric(worker, "f2p_worker_errors_total", reason="BAD_MAGIC_BYTE") == 1
        assert metric(worker, "f2p_worker_errors_total", reason="DECOMPRESSION_BOMB") == 1

    # Exactly one outcome per message, no result for a dead letter, no dead letter twice.
    counts = {}
    for r in results:
        counts[r.request_id] = counts.get(r.request_id, 0) + 1
    assert set(counts) == expected_results
    assert set(counts.values()) == {1}
    by_id = {r.request_id: r for r in results}
    for name, request in failing.items():
        result = by_id[request.request_id]
        assert result.status is ResultStatus.FAILED, name
        assert result.error is not None and result.error.code == name.split()[0], (name, result)
        assert result.error.message
        assert result.images == () and result.attempt == 1
    for good in (first_good, last_good):
        assert by_id[good.request_id].status is ResultStatus.OK
    # Poison never reached the engine.
    assert set(engine.seen) == {first_good.request_id, last_good.request_id}

    assert len(letters) == len(dead)
    letters_by_offset = {(d.source_partition, d.source_offset): d for d in letters}
    assert len(letters_by_offset) == len(dead)
    dead_where = where[1 + len(failing) : 1 + len(failing) + len(dead)]
    for (name, (key, value)), (partition, offset) in zip(dead.items(), dead_where, strict=True):
        letter = letters_by_offset[(partition, offset)]
        assert isinstance(letter, DeadLetter)
        assert letter.error_code == name.split()[0], (name, letter.error_code, letter.error_message)
        assert letter.error_message
        assert letter.source_topic == lane
        assert letter.key == key
        assert letter.value == value
        assert ("origin", b"poison-test") in letter.headers
        assert letter.attempts == 1
    assert letters_by_offset[dead_where[-1]].request_id == bad_tenant.request_id
