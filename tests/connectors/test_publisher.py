"""The publisher SDK against the real stack: claim check, events, validation, failures."""

from __future__ import annotations

import dataclasses
import io
import threading
import uuid

import pytest
from connector_helpers import (
    IndependentReader,
    lane_end_offsets,
    list_keys,
    private_topics,
    read_requests,
)
from PIL import Image

from connectors.claim_check import face_key, sha256_hex
from connectors.kafka import make_producer
from connectors.publisher import Publisher, PublishError
from connectors.s3 import make_s3_client
from f2p_errors import InvalidInput
from schemas.codec import AvroCodec
from schemas.images import make_sample_face
from schemas.records import FaceImageRef, GenerationRequest, InlineImage, Lane
from schemas.validation import RequestLimits

pytestmark = pytest.mark.integration


@pytest.fixture
def private_settings(stack_settings, admin, unique_name):
    with private_topics(stack_settings, admin, unique_name) as settings:
        yield settings


def _codec(settings) -> AvroCodec:
    from connectors.registry import make_registry_client

    return AvroCodec(make_registry_client(settings), auto_register=False)


def test_same_face_is_stored_once_and_events_decode(private_settings, unique_name) -> None:
    tenant = unique_name("shop")
    face_a, face_b = make_sample_face(seed=1), make_sample_face(seed=2)
    with Publisher(private_settings) as publisher:
        futures = [
            publisher.submit(tenant_id=tenant, prompt="p1", face=face_a, steps=8, seed=7,
                             attributes={"sku": "A-1"}),
            publisher.submit(tenant_id=tenant, prompt="p2", face=face_a, lane="interactive"),
            publisher.submit(tenant_id=tenant, prompt="p3", face=face_b),
        ]  # fmt: skip
        reports = [f.result(timeout=30) for f in futures]

    s3 = make_s3_client(private_settings)
    keys = list_keys(s3, private_settings.inputs_bucket, f"tenants/{tenant}/")
    expected = {face_key(tenant, sha256_hex(f), "image/png") for f in (face_a, face_b)}
    assert keys == expected
    assert sorted(r.face_uploaded for r in reports) == [False, True, True]
    stored = s3.get_object(Bucket=private_settings.inputs_bucket, Key=sorted(expected)[0])
    assert sha256_hex(stored["Body"].read()) in {sha256_hex(face_a), sha256_hex(face_b)}

    assert reports[1].topic == private_settings.topics.requests_interactive
    assert reports[0].topic == private_settings.topics.requests_batch
    messages = {m.key().decode(): m for m in read_requests(private_settings)}
    assert set(messages) == {r.request_id for r in reports}
    first = messages[reports[0].request_id]
    assert (first.topic(), first.partition(), first.offset()) == (
        reports[0].topic, reports[0].partition, reports[0].offset,
    )  # fmt: skip
    request = _codec(private_settings).decode(first.topic(), first.value())
    assert isinstance(request, GenerationRequest)
    assert request.params.steps == 8 and request.params.seed == 7
    assert request.attributes == {"sku": "A-1"}
    assert isinstance(request.face, FaceImageRef) and request.face.sha256 == sha256_hex(face_a)
    raw = IndependentReader(private_settings).decode(first.value())
    assert str(raw["request_id"]) == reports[0].request_id and raw["tenant_id"] == tenant


def _truncated_png() -> bytes:
    return make_sample_face(seed=3)[:600]


def _big_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (128, 128), (10, 20, 30)).save(out, format="PNG")
    return out.getvalue()


INVALID = {
    # name: (fields, face, expected field, expected code, text in the reason)
    "bad uuid": ({"request_id": "not-a-uuid"}, "ok", "request_id", "INVALID_REQUEST_ID", "UUID"),
    "uppercase uuid": ({"request_id": str(uuid.uuid4()).upper()}, "ok", "request_id",
                       "INVALID_REQUEST_ID", "lowercase"),
    "prompt too long": ({"prompt": "x" * 2001}, "ok", "prompt", "PROMPT_TOO_LONG", "2000"),
    "steps too high": ({"steps": 101}, "ok", "params.steps", "PARAM_OUT_OF_RANGE", "100"),
    "steps zero": ({"steps": 0}, "ok", "params.steps", "PARAM_OUT_OF_RANGE", "between 1"),
    "width too large": ({"width": 4096}, "ok", "params.width", "PARAM_OUT_OF_RANGE", "2048"),
    "height not /16": ({"height": 500}, "ok", "params.height", "PARAM_OUT_OF_RANGE", "16"),
    "missing image": ({}, None, "face", "MISSING_IMAGE", "required"),
    "empty image": ({}, b"", "face", "MISSING_IMAGE", "empty"),
    "non-image bytes": ({}, b"%PDF-1.7 not an image" * 10, "face", "NOT_AN_IMAGE", "PNG"),
    "gif": ({}, b"GIF89a" + b"\x00" * 64, "face", "UNSUPPORTED_IMAGE_FORMAT", "gif"),
    "truncated png": ({}, "truncated", "face", "TRUNCATED_IMAGE", "truncated"),
    "bad tenant": ({"tenant_id": "Bad_Tenant!"}, "ok", "tenant_id", "INVALID_TENANT", "match"),
    "path tenant": ({"tenant_id": "../etc"}, "ok", "tenant_id", "INVALID_TENANT", "match"),
    "deadline past": ({"deadline_offset_s": -5}, "ok", "deadline", "INVALID_DEADLINE", "after"),
}  # fmt: skip


def test_each_invalid_request_is_refused_leaving_no_message_and_no_object(
    private_settings, unique_name
) -> None:
    tenant = unique_name("shop")
    s3 = make_s3_client(private_settings)
    bucket = private_settings.inputs_bucket
    before = lane_end_offsets(private_settings)
    faces = {"ok": make_sample_face(seed=4), "truncated": _truncated_png()}
    tenants_seen = {tenant}
    with Publisher(private_settings, s3=s3) as publisher:
        for name, (fields, face, field, code, text) in INVALID.items():
            fields = {"tenant_id": tenant, "prompt": "studio photo", **fields}
            offset = fields.pop("deadline_offset_s", None)
            if offset is not None:
                from datetime import timedelta

                from schemas.records import utc_now

                now = utc_now()
                fields.update(submitted_at=now, deadline=now + timedelta(seconds=offset))
            tenants_seen.add(fields["tenant_id"])
            face_bytes = faces.get(face, face) if isinstance(face, str) else face
            with pytest.raises(InvalidInput) as info:
                publisher.submit(face=face_bytes, **fields)
            assert info.value.field == field, name
            assert info.value.code == code, name
            assert text.lower() in info.value.reason.lower(), (name, info.value.reason)
            assert str(info.value).startswith(f"{field}: "), name
        assert publisher.pending == 0
    assert lane_end_offsets(private_settings) == before
    for t in tenants_seen:
        assert list_keys(s3, bucket, f"tenants/{t}") == set(), t


def test_face_ref_outside_tenant_prefix_and_oversized_inline_are_refused(
    private_settings, unique_name
) -> None:
    tenant = unique_name("shop")
    ref = FaceImageRef(bucket="f2p-inputs", key="tenants/other/inputs/x.png", sha256="0" * 64,
                       content_type="image/png", size_bytes=10)  # fmt: skip
    limits = RequestLimits(max_inline_image_bytes=1000)
    with Publisher(private_settings, limits=limits) as publisher:
        request = GenerationRequest.new(tenant, "prompt", ref)
        with pytest.raises(InvalidInput) as info:
            publisher.submit(request)
        assert (info.value.field, info.value.code) == ("face.key", "KEY_OUTSIDE_TENANT_PREFIX")
        inline = GenerationRequest.new(tenant, "p", InlineImage(content_type="image/png",
                                                                data=_big_png() * 3))  # fmt: skip
        with pytest.raises(InvalidInput) as info:
            publisher.submit(inline)
        assert (info.value.field, info.value.code) == ("face.data", "IMAGE_TOO_LARGE")


def test_inline_small_images_are_sent_in_the_event(private_settings, unique_name) -> None:
    tenant = unique_name("shop")
    face = make_sample_face(seed=5)
    with Publisher(private_settings, inline_small_images=True) as publisher:
        report = publisher.submit(tenant_id=tenant, prompt="p", face=face).result(timeout=30)
    assert not report.face_uploaded
    s3 = make_s3_client(private_settings)
    assert list_keys(s3, private_settings.inputs_bucket, f"tenants/{tenant}/") == set()
    (message,) = read_requests(private_settings)
    request = _codec(private_settings).decode(message.topic(), message.value())
    assert isinstance(request.face, InlineImage) and request.face.data == face


def test_concurrent_submits_all_delivered_one_upload_per_face(
    private_settings, unique_name
) -> None:
    tenant = unique_name("shop")
    faces = [make_sample_face(seed=s) for s in range(3)]
    futures, lock = [], threading.Lock()

    def submit_many(publisher: Publisher, worker: int) -> None:
        for i in range(100):
            future = publisher.submit(tenant_id=tenant, prompt=f"w{worker} #{i}",
                                      face=faces[i % 3], lane=Lane.BATCH)  # fmt: skip
            with lock:
                futures.append(future)

    with Publisher(private_settings, max_in_flight=64) as publisher:
        threads = [threading.Thread(target=submit_many, args=(publisher, w)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert publisher.flush(30) == 0
    reports = [f.result() for f in futures]
    assert len({r.request_id for r in reports}) == 400
    assert sum(r.face_uploaded for r in reports) == 3
    keys = {m.key().decode() for m in read_requests(private_settings)}
    assert keys == {r.request_id for r in reports}


def test_failed_upload_fails_the_future_and_produces_nothing(private_settings, unique_name) -> None:
    tenant = unique_name("shop")
    bad_s3 = make_s3_client(dataclasses.replace(private_settings, s3_secret_key="wrong"))
    with Publisher(private_settings, s3=bad_s3) as publisher:
        future = publisher.submit(tenant_id=tenant, prompt="p", face=make_sample_face(seed=6))
        with pytest.raises(PublishError) as info:
            future.result(timeout=30)
    assert info.value.code == "UPLOAD_FAILED" and info.value.retriable
    assert read_requests(private_settings) == []


def test_failed_delivery_fails_the_future_and_keeps_the_shared_object(
    private_settings, unique_name
) -> None:
    """Produce fails after the upload: the content-addressed object stays (documented choice)."""
    tenant = unique_name("shop")
    missing = private_settings.topics.with_suffix(".does-not-exist")
    settings = dataclasses.replace(private_settings, topics=missing)
    producer = make_producer(settings, delivery_timeout_ms=1500)
    face = make_sample_face(seed=8)
    with Publisher(settings, producer=producer) as publisher:
        future = publisher.submit(tenant_id=tenant, prompt="p", face=face)
        with pytest.raises(PublishError) as info:
            future.result(timeout=30)
    assert info.value.code in ("_MSG_TIMED_OUT", "UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC")
    s3 = make_s3_client(private_settings)
    keys = list_keys(s3, private_settings.inputs_bucket, f"tenants/{tenant}/")
    assert keys == {face_key(tenant, sha256_hex(face), "image/png")}


def test_closed_publisher_refuses_new_requests(private_settings, unique_name) -> None:
    publisher = Publisher(private_settings)
    assert publisher.close() == 0
    with pytest.raises(PublishError) as info:
        publisher.submit(tenant_id=unique_name("shop"), prompt="p", face=make_sample_face())
    assert info.value.code == "PUBLISHER_CLOSED"
