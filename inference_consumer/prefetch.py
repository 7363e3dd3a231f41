"""Stage 1, on the prefetch pool: decode, validate, fetch and decode the face.

A face is decoded under the worker's decode budget (bytes being decoded at once) and held scaled
down to the engine's condition area, its bytes counted in the held budget until the engine has
used it (``release_face``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime

from connectors.object_store import ObjectStoreError, ObjectTooLarge
from f2p_errors import InvalidInput
from inference_consumer.memory import image_bytes
from inference_consumer.stages import (
    PermanentFailure,
    StageContext,
    TransientFailure,
    cancelled_outcome,
    classify_s3_error,
    emit_safely,
    expired_outcome,
    failed_outcome,
    retry_outcome,
    with_retries,
)
from inference_consumer.work import WorkItem
from schemas.codec import UndecodableMessage
from schemas.images import decode_face_image
from schemas.records import FaceImageRef, GenerationRequest, InlineImage
from schemas.validation import check_face_key_in_tenant_prefix, validate_identity, validate_request

log = logging.getLogger(__name__)


def prefetch(ctx: StageContext, item: WorkItem) -> WorkItem | None:
    """Decode, validate and fetch the face of ``item``; None when an outcome was emitted."""
    try:
        return _prefetch(ctx, item)
    except UndecodableMessage as exc:
        ctx.emit(failed_outcome(ctx, item, exc.code, str(exc)))
    except InvalidInput as exc:
        # A request whose identity is invalid cannot get a result keyed by it: dead letter.
        ctx.emit(failed_outcome(ctx, item, exc.code, str(exc)))
    except PermanentFailure as exc:
        ctx.emit(failed_outcome(ctx, item, exc.code, str(exc)))
    except TransientFailure as exc:
        ctx.emit(retry_outcome(ctx, item, str(exc)))
    except Exception as exc:  # a bug or an unknown failure: retry, never kill the worker
        log.exception("unexpected prefetch failure", extra=item.where())
        why = f"{type(exc).__name__}: {exc}"
        emit_safely(ctx, item, lambda: retry_outcome(ctx, item, why))
    return None


def _prefetch(ctx: StageContext, item: WorkItem) -> WorkItem | None:
    started = time.perf_counter()
    try:
        record = ctx.codec.decode(
            item.topic,
            item.value,
            partition=item.partition,
            offset=item.offset,
            expect=GenerationRequest,
        )
    except UndecodableMessage:
        raise
    except Exception as exc:  # registry unreachable: the message may be fine
        raise TransientFailure(f"decoding failed: {exc}") from exc
    assert isinstance(record, GenerationRequest)
    item.request = record
    validate_identity(record, ctx.limits)
    item.request_id = record.request_id  # from here on the request can be answered by id
    validate_request(record, ctx.limits)
    if expired(record):
        ctx.emit(expired_outcome(ctx, item))
        return None
    if ctx.cancelled(item.request_id):
        ctx.emit(cancelled_outcome(ctx, item, "while queued"))
        return None
    face_bytes = _face_bytes(ctx, record)
    face = decode_face_image(
        face_bytes,
        max_bytes=ctx.limits.max_face_image_bytes,
        min_side=ctx.limits.min_face_side,
        max_area=ctx.face_area,
        reserve=ctx.decode_budget.reserve,
    )
    item.face = face
    item.reserved_bytes = image_bytes(face)
    ctx.held.add(item.reserved_bytes)
    item.timings["fetch"] = (time.perf_counter() - started) * 1000
    item.marks["prefetched"] = time.time_ns()
    return item


def release_face(ctx: StageContext, item: WorkItem) -> None:
    """Drop the decoded face and give its bytes back to the held budget."""
    item.face = None
    if item.reserved_bytes:
        ctx.held.release(item.reserved_bytes)
        item.reserved_bytes = 0


def _face_bytes(ctx: StageContext, request: GenerationRequest) -> bytes:
    face = request.face
    if isinstance(face, InlineImage):
        return face.data
    if not isinstance(face, FaceImageRef):
        raise InvalidInput("face", "no face image in the request", code="MISSING_IMAGE")
    check_face_key_in_tenant_prefix(face, request.tenant_id)

    limit = ctx.limits.max_face_image_bytes

    def get() -> bytes:
        try:
            # Whatever size_bytes claimed: an object above the limit is not downloaded at all.
            return ctx.s3.get(face.bucket, face.key, max_bytes=limit)
        except ObjectTooLarge as exc:
            raise PermanentFailure(
                "IMAGE_TOO_LARGE", f"face object is {exc.size} bytes, limit is {limit}"
            ) from exc
        except ObjectStoreError as exc:
            raise classify_s3_error(exc, f"s3://{face.bucket}/{face.key}") from exc

    data = with_retries(ctx.config, "face fetch", get)
    if face.sha256 and hashlib.sha256(data).hexdigest() != face.sha256:
        raise PermanentFailure("FACE_CHECKSUM_MISMATCH", "face object does not match its sha256")
    return data


def expired(request: GenerationRequest) -> bool:
    return request.deadline is not None and request.deadline <= datetime.now(UTC)
