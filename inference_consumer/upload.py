"""Stage 3, on the output pool: encode the images and write them once to the object store."""

from __future__ import annotations

import hashlib
import io
import logging
import time

from connectors.object_store import ObjectStoreError
from inference_consumer.config import WorkerConfig
from inference_consumer.engines.base import EngineOutput
from inference_consumer.stages import (
    StageContext,
    TransientFailure,
    cancelled_outcome,
    emit_safely,
    result_outcome,
    retry_outcome,
    with_retries,
)
from inference_consumer.work import Outcome, WorkItem
from schemas.records import GenerationRequest, ImageFormat, ResultImage, ResultStatus

log = logging.getLogger(__name__)

# A result object that something else wrote is hashed to describe it; read at most this much.
MAX_FOREIGN_BYTES = 256 * 1024 * 1024

_PIL_FORMATS = {ImageFormat.WEBP: "WEBP", ImageFormat.PNG: "PNG", ImageFormat.JPEG: "JPEG"}
_CONTENT_TYPES = {
    ImageFormat.WEBP: "image/webp",
    ImageFormat.PNG: "image/png",
    ImageFormat.JPEG: "image/jpeg",
}


def result_key(request: GenerationRequest, index: int, fmt: ImageFormat) -> str:
    """Deterministic: a redo of the same request overwrites the same objects."""
    return f"tenants/{request.tenant_id}/results/{request.request_id}/{index}.{fmt.value.lower()}"


def encoder_options(fmt: ImageFormat, quality: int, config: WorkerConfig) -> dict[str, int]:
    """Pillow's ``save`` options for a result image: the request's quality (PNG is lossless
    and has none) and the worker's encoder effort."""
    if fmt is ImageFormat.WEBP:
        return {"quality": quality, "method": config.webp_method}
    if fmt is ImageFormat.PNG:
        return {"compress_level": config.png_compress_level}
    return {"quality": quality}


def finish(ctx: StageContext, item: WorkItem, output: EngineOutput) -> None:
    if ctx.cancelled(item.request_id):  # made in a batch, or cancelled just after: dropped
        emit_safely(ctx, item, lambda: cancelled_outcome(ctx, item, "after generation"))
        return
    try:
        ctx.emit(encode_and_upload(ctx, item, output))
    except Exception as exc:
        if not isinstance(exc, TransientFailure):
            log.exception("unexpected output failure", extra=item.where())
        why = str(exc) if isinstance(exc, TransientFailure) else f"{type(exc).__name__}: {exc}"
        emit_safely(ctx, item, lambda: retry_outcome(ctx, item, why))


def encode_and_upload(ctx: StageContext, item: WorkItem, output: EngineOutput) -> Outcome:
    """Encode every image of ``output``, upload them, and return the OK result outcome."""
    request = item.request
    assert request is not None
    item.marks["upload_start"] = time.time_ns()
    fmt = request.params.output_format
    options = encoder_options(fmt, request.params.output_quality, ctx.config)
    images = []
    encode_s = upload_s = 0.0
    for index, image in enumerate(output.images):
        started = time.perf_counter()
        buffer = io.BytesIO()
        image.save(buffer, format=_PIL_FORMATS[fmt], **options)
        body = buffer.getvalue()
        encode_s += time.perf_counter() - started
        key = result_key(request, index, fmt)
        started = time.perf_counter()
        digest = hashlib.sha256(body).hexdigest()

        def put(key: str = key, body: bytes = body, digest: str = digest) -> tuple[str, int]:
            try:
                return _write_once(ctx, key, body, digest, _CONTENT_TYPES[fmt])
            except ObjectStoreError as exc:
                raise TransientFailure(f"upload of {key}: {exc}") from exc

        digest, size = with_retries(ctx.config, "result upload", put)
        upload_s += time.perf_counter() - started
        images.append(
            ResultImage(
                uri=f"s3://{ctx.results_bucket}/{key}",
                width=image.width,
                height=image.height,
                format=fmt,
                size_bytes=size,
                sha256=digest,
            )
        )
    item.timings["encode"] = encode_s * 1000
    item.timings["upload"] = upload_s * 1000
    item.marks["upload_end"] = time.time_ns()
    return result_outcome(ctx, item, ResultStatus.OK, images=tuple(images))


def _write_once(
    ctx: StageContext, key: str, body: bytes, digest: str, content_type: str
) -> tuple[str, int]:
    """Upload ``body`` unless the object exists; the sha256 and size of what is stored.

    Result objects are write-once (``If-None-Match: *``): a late or second processing of a
    request (a worker that lost its partition mid-upload, a redo after a crash) must never
    replace an object a committed result may name — on a GPU the redo's bytes differ. The
    object that stands is described instead (its sha256 travels as object metadata), so the
    result always names exactly the bytes in the store.
    """
    store, bucket = ctx.s3, ctx.results_bucket
    if store.put_if_absent(
        bucket, key, body, content_type=content_type, metadata={"sha256": digest}
    ):
        return digest, len(body)
    head = store.head(bucket, key)
    stored = head.metadata.get("sha256")
    if stored is None:  # written by something else: hash what is there
        stored = hashlib.sha256(store.get(bucket, key, max_bytes=MAX_FOREIGN_BYTES)).hexdigest()
    return stored, head.size
