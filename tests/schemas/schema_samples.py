"""Sample records for the schemas tests (imported as ``schema_samples``).

"v1-shaped" samples use only what the first schema versions can express (fields added later are
at their defaults, enum symbols added later are not used), so bytes written by any historical
writer decode back into exactly the same record.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from schemas.analytics_records import AnalyticsWindow, LatencySummary
from schemas.control_records import ControlCommand, IngressRef, RequestState, RequestStatus
from schemas.images import make_sample_face
from schemas.records import (
    DeadLetter,
    FaceImageRef,
    GenerationRequest,
    GenerationResult,
    ImageFormat,
    InlineImage,
    Lane,
    ModelRef,
    Preset,
    RequestParams,
    ResultError,
    ResultImage,
    ResultStatus,
    StageTimings,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
REQUEST_ID = "6f1d3c2a-8b4e-4f5a-9c7d-0e1f2a3b4c5d"
SHA = hashlib.sha256(b"face").hexdigest()


def face_ref(tenant: str = "acme") -> FaceImageRef:
    return FaceImageRef(
        bucket="f2p-inputs",
        key=f"tenants/{tenant}/faces/{SHA}.png",
        sha256=SHA,
        content_type="image/png",
        size_bytes=2048,
    )


def v1_request(face: FaceImageRef | InlineImage | None = None) -> GenerationRequest:
    return GenerationRequest(
        request_id=REQUEST_ID,
        tenant_id="acme",
        submitted_at=T0,
        deadline=T0 + timedelta(minutes=5),
        lane=Lane.INTERACTIVE,
        face=face or face_ref(),
        prompt="studio portrait, white shirt, soft light",
        negative_prompt="blurry",
        params=RequestParams(
            seed=42,
            steps=8,
            true_cfg_scale=1.5,
            width=768,
            height=1024,
            num_images=2,
            output_format=ImageFormat.PNG,
            output_quality=80,
        ),
        attributes={"sku": "SHIRT-001"},
    )


def full_request() -> GenerationRequest:
    return GenerationRequest(
        request_id=REQUEST_ID,
        tenant_id="acme",
        submitted_at=T0,
        lane=Lane.BATCH,
        face=InlineImage(content_type="image/png", data=make_sample_face(64)),
        prompt="full body, red dress",
        params=RequestParams(
            seed=7, lora_scale=0.7, output_format=ImageFormat.JPEG, preset=Preset.FASTEST
        ),
        replay_of="0b7e4d1c-2f3a-4b5c-8d9e-a0b1c2d3e4f5",
        trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )


def v1_result() -> GenerationResult:
    return GenerationResult(
        request_id=REQUEST_ID,
        tenant_id="acme",
        status=ResultStatus.OK,
        images=(
            ResultImage(
                uri="s3://f2p-results/tenants/acme/results/x/0.webp",
                width=768,
                height=1024,
                format=ImageFormat.WEBP,
                size_bytes=51234,
                sha256=SHA,
            ),
        ),
        timings=StageTimings(queued_ms=12, engine_ms=3000, upload_ms=40, total_ms=3100),
        worker_id="worker-0",
        model=ModelRef(name="sim", revision="calibrated-h100"),
        submitted_at=T0,
        completed_at=T0 + timedelta(seconds=3.1),
    )


def full_result() -> GenerationResult:
    return GenerationResult(
        request_id=REQUEST_ID,
        tenant_id="acme",
        status=ResultStatus.CANCELLED,
        error=ResultError(code="CANCELLED", message="cancelled by acme-ops"),
        timings=StageTimings(
            fetch_ms=5, encode_ms=7, engine_ms=900, transformer_evaluations=6, steps_executed=3
        ),
        worker_id="worker-1",
        model=ModelRef(
            name="qwen-f2p", revision="main", lora="DiffSynth-Studio/F2P@v1", preset="FAST"
        ),
        attempt=3,
        submitted_at=T0,
        completed_at=T0 + timedelta(seconds=1),
        attributes={"sku": "SHIRT-001", "campaign": "spring"},
    )


def v1_dead_letter() -> DeadLetter:
    return DeadLetter(
        source_topic="f2p.requests.batch",
        source_partition=3,
        source_offset=12345,
        key=REQUEST_ID.encode(),
        value=b"\x01garbage",
        headers=(("traceparent", b"00-abc"), ("empty", None), ("traceparent", b"dup")),
        error_code="BAD_MAGIC_BYTE",
        error_message="first byte is 0x01",
        failed_at=T0,
    )


def full_dead_letter() -> DeadLetter:
    return DeadLetter(
        source_topic="f2p.requests.batch",
        source_partition=0,
        source_offset=1,
        key=b"k" * 16,
        value=b"\x00" * 32,
        error_code="RETRIES_EXHAUSTED",
        error_message="S3 timeout",
        attempts=5,
        failed_at=T0,
        request_id="not-even-a-uuid",
        key_size=4096,
        value_size=8_000_000,
        key_sha256=SHA,
        value_sha256=SHA,
        truncated=True,
        original_uri="s3://f2p-results/dlq/f2p.requests.batch/0/1",
    )


def v1_status() -> RequestStatus:
    return RequestStatus(
        request_id=REQUEST_ID, status=RequestState.RUNNING, at=T0, source="worker/worker-0"
    )


def full_status() -> RequestStatus:
    return RequestStatus(
        request_id=REQUEST_ID,
        tenant_id="acme",
        status=RequestState.DUPLICATE,
        lane="interactive",
        reason="DUPLICATE_REQUEST_ID",
        detail="already accepted at f2p.requests.batch/3/17",
        at=T0,
        source="admission/admission-0",
        duplicates=2,
        ingress=IngressRef(topic="f2p.requests.interactive", partition=5, offset=99),
        trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )


def v1_control() -> ControlCommand:
    return ControlCommand(request_id=REQUEST_ID, issued_at=T0)


def full_control() -> ControlCommand:
    return ControlCommand(
        request_id=REQUEST_ID,
        command="cancel",
        tenant_id="acme",
        reason="customer closed the page",
        issued_at=T0,
        issued_by="storefront-gateway",
    )


def v1_window() -> AnalyticsWindow:
    return AnalyticsWindow(
        tenant_id="acme",
        window_start=T0.replace(microsecond=0, second=0),
        window_end=T0.replace(microsecond=0, second=10),
        final=True,
        count=3,
        by_status={"OK": 2, "FAILED": 1, "EXPIRED": 0, "REJECTED": 0, "CANCELLED": 0},
        throughput_per_s=0.3,
        error_rate=1 / 3,
        errors_by_code={"ENGINE_ERROR": 1},
        latency_ms=LatencySummary(
            count=2, sampled=2, p50=1500.0, p90=1900.0, p99=1990.0, mean=1500.0, max=2000
        ),
        gpu_seconds=6.5,
        emitted_at=T0 + timedelta(seconds=12),
    )


def empty_window() -> AnalyticsWindow:
    return AnalyticsWindow(
        tenant_id="acme",
        window_start=T0.replace(microsecond=0, second=0),
        window_end=T0.replace(microsecond=0, second=10),
        final=False,
        count=0,
        throughput_per_s=0.0,
        error_rate=0.0,
        gpu_seconds=0.0,
        emitted_at=T0,
    )


V1_SAMPLES = {
    "GenerationRequest": v1_request,
    "GenerationResult": v1_result,
    "DeadLetter": v1_dead_letter,
    "RequestStatus": v1_status,
    "ControlCommand": v1_control,
    "AnalyticsWindow": v1_window,
}
FULL_SAMPLES = {
    "GenerationRequest": full_request,
    "GenerationResult": full_result,
    "DeadLetter": full_dead_letter,
    "RequestStatus": full_status,
    "ControlCommand": full_control,
    "AnalyticsWindow": empty_window,
}
